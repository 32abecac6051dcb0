"""A grading function run in a child process with a hard wall-clock limit and a memory limit.

Some graders (math-verify on LaTeX) can spend seconds and hundreds of megabytes on one hostile answer,
and their own time limits use ``signal.alarm``, which works in the main thread only. ``BoundedWorker``
runs such a function in a persistent child process instead, so the limit holds in any thread and any
process:

- the child is a fresh interpreter (``subprocess`` with ``python -P worker.py``: no fork of a process
  that holds threads, no re-import of the caller's ``__main__``), started once and reused;
- each call sends one JSON line and waits at most ``timeout_s`` for the answer line; past it the child
  is killed (SIGKILL) and the call returns ``default``. A spare child, started with the first and kept
  warm, takes over at once, and a new spare starts in the background: a call after a killed one does
  not wait for a fresh interpreter's imports, so each call's wall-clock time stays near ``timeout_s``;
- the child's address space is capped (``RLIMIT_AS``), so a call that needs more fails inside the child
  (``MemoryError``) and returns ``default`` too;
- calls from several threads take turns (a lock); a forked copy of the owning process starts its own
  child rather than sharing the parent's pipes;
- a child that cannot start (its imports fail, or it does not say ``ready`` within ``STARTUP_TIMEOUT_S``)
  raises ``WorkerStartError`` with the child's error output: a broken environment, unlike a hostile
  answer, must not turn every grade into a silent "wrong".

The child is a stand-alone script (``math_worker.py``): it imports only what its functions need, not
dipod. Its protocol: after its imports it prints ``ready``; then for each request line
``{"name": ..., "args": [...]}`` it prints ``{"ok": true, "result": ...}``, or ``{"ok": false}`` when the
function raised (``MemoryError`` included); it ends when its stdin closes. Only JSON values cross the pipe.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 120.0
"""How long a fresh child may take to import its modules before it counts as broken (sympy takes ~1 s)."""
ERROR_TAIL_CHARS = 2000
"""How much of a broken child's error output ``WorkerStartError`` quotes."""


class WorkerStartError(RuntimeError):
    """The grading process could not start; the message names the script and quotes its error output."""


class BoundedWorker:
    """Calls ``FUNCTIONS[name](*args)`` of the script ``worker_path`` in a child process, with hard limits."""

    def __init__(self, worker_path: str | Path, *, memory_bytes: int) -> None:
        """Args:
        worker_path: a script that answers JSON-line requests (the protocol above).
        memory_bytes: the child's address-space limit (``RLIMIT_AS``), imports included.
        """
        self.worker_path = str(worker_path)
        self.memory_bytes = int(memory_bytes)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._spare: subprocess.Popen | None = None
        """Started with the first child, so that a kill swaps in a child that has done its imports."""
        self._ready = False
        self._errors: dict[int, Any] = {}
        """Each child's error output (a temporary file), by process id."""
        self._owner_pid = os.getpid()
        self._buffer = b""
        atexit.register(self.close)

    def call(self, name: str, args: list[Any], *, timeout_s: float, default: Any) -> Any:
        """``FUNCTIONS[name](*args)`` in the child, or ``default`` when it takes longer than ``timeout_s``
        seconds, runs out of memory, raises, or the child dies. Raises only ``WorkerStartError``."""
        with self._lock:
            if os.getpid() != self._owner_pid:  # a forked copy: the pipes belong to the parent
                self._proc, self._spare, self._ready, self._buffer, self._errors = None, None, False, b"", {}
                self._owner_pid = os.getpid()
            self._ensure_ready()
            try:
                request = json.dumps({"name": name, "args": args}) + "\n"
                assert self._proc is not None and self._proc.stdin is not None
                self._proc.stdin.write(request.encode())
                self._proc.stdin.flush()
                line = self._read_line(time.monotonic() + timeout_s)
            except (OSError, ValueError):  # a broken pipe: the child died
                line = None
            try:
                reply = None if line is None else json.loads(line)
            except ValueError:  # not a reply: the child broke the protocol
                reply = None
            if not isinstance(reply, dict):
                self._restart()
                return default
            return reply.get("result", default) if reply.get("ok") else default

    def close(self) -> None:
        """Stop the children (also at interpreter exit)."""
        self._kill(self._proc)
        self._kill(self._spare)
        self._proc, self._spare, self._ready = None, None, False

    def _kill(self, proc: subprocess.Popen | None) -> None:
        if proc is None or os.getpid() != self._owner_pid:
            return
        proc.kill()
        proc.wait()
        for stream in (proc.stdin, proc.stdout, self._errors.pop(proc.pid, None)):
            if stream is not None:
                stream.close()

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "DIPOD_WORKER_MEMORY_BYTES": str(self.memory_bytes), "OMP_NUM_THREADS": "1"}
        errors = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the child; a file, not a pipe, so a chatty child never blocks
        proc = subprocess.Popen(
            [sys.executable, "-P", self.worker_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            env=env,
        )
        self._errors[proc.pid] = errors
        return proc

    def _restart(self) -> None:
        """Kill the child; the warm spare (if alive) takes over, and a new spare starts importing."""
        self._kill(self._proc)
        spare_alive = self._spare is not None and self._spare.poll() is None
        self._proc = self._spare if spare_alive else self._spawn()
        self._spare = self._spawn()
        self._ready, self._buffer = False, b""

    def _ensure_ready(self) -> None:
        """A started child that has said ``ready`` (and a spare on its way), or ``WorkerStartError``."""
        if self._proc is None or self._proc.poll() is not None:
            self._kill(self._proc)
            self._proc, self._ready, self._buffer = self._spawn(), False, b""
        if self._spare is None or self._spare.poll() is not None:
            self._kill(self._spare)
            self._spare = self._spawn()
        if self._ready:
            return
        self._ready = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S) == b"ready"
        if not self._ready:
            message = self._error_tail(self._proc)
            self.close()
            raise WorkerStartError(
                f"the grading process {self.worker_path} did not start (no 'ready' within {STARTUP_TIMEOUT_S:.0f} s "
                f"or it exited); its error output ends with:\n{message}"
            )

    def _error_tail(self, proc: subprocess.Popen | None) -> str:
        errors = None if proc is None else self._errors.get(proc.pid)
        if errors is None:
            return ""
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        errors.seek(0)
        return errors.read().decode(errors="replace")[-ERROR_TAIL_CHARS:]

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the child, or None at the deadline or at end of file."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        poller = select.poll()  # not select.select: it fails on descriptors past 1024 in a busy process
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(max(1, int(left * 1000))):
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line
