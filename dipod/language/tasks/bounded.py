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
  child rather than sharing the parent's pipes.

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
import threading
import time
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT_S = 120.0
"""How long a fresh child may take to import its modules before calls give up on it (sympy takes ~1 s)."""


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
        self._owner_pid = os.getpid()
        self._buffer = b""
        atexit.register(self.close)

    def call(self, name: str, args: list[Any], *, timeout_s: float, default: Any) -> Any:
        """``FUNCTIONS[name](*args)`` in the child, or ``default`` when it takes longer than ``timeout_s``
        seconds, runs out of memory, raises, or the child dies. Never raises."""
        with self._lock:
            if os.getpid() != self._owner_pid:  # a forked copy: the pipes belong to the parent
                self._proc, self._spare, self._ready, self._buffer = None, None, False, b""
                self._owner_pid = os.getpid()
            try:
                if not self._ensure_ready():
                    return default
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
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()

    def _spawn(self) -> subprocess.Popen:
        env = {**os.environ, "DIPOD_WORKER_MEMORY_BYTES": str(self.memory_bytes), "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(
            [sys.executable, "-P", self.worker_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )

    def _restart(self) -> None:
        """Kill the child; the warm spare (if alive) takes over, and a new spare starts importing."""
        self._kill(self._proc)
        spare_alive = self._spare is not None and self._spare.poll() is None
        self._proc = self._spare if spare_alive else self._spawn()
        self._spare = self._spawn()
        self._ready, self._buffer = False, b""

    def _ensure_ready(self) -> bool:
        if self._proc is None or self._proc.poll() is not None:
            self._kill(self._proc)
            self._proc, self._ready, self._buffer = self._spawn(), False, b""
        if self._spare is None or self._spare.poll() is not None:
            self._kill(self._spare)
            self._spare = self._spawn()
        if not self._ready:
            self._ready = self._read_line(time.monotonic() + STARTUP_TIMEOUT_S) == b"ready"
            if not self._ready:
                self._kill(self._proc)
                self._proc = None
        return self._ready

    def _read_line(self, deadline: float) -> bytes | None:
        """One line from the child, or None at the deadline or at end of file."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line
