"""Ctrl-C and SIGTERM as a request to stop cleanly: the work in hand finishes its step and checkpoints."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any


class InterruptFlag:
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's preemption or time limit, ``timeout``) sets ``raised`` so the work
    in hand finishes its step and checkpoints; a second signal aborts at once.

    A repeat within ``SAME_SIGNAL_S`` of the first counts as the first: a signal sent to a process group (Ctrl-C in
    a terminal, a scheduler's kill) reaches a grid's workers twice, directly and passed on by the grid. ``forward``
    is called with every signal that counts (the grid passes it to its workers).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    SAME_SIGNAL_S = 1.0

    def __init__(self, say: Callable[[str], None], forward: Callable[[int], None] | None = None) -> None:
        self.raised = False
        self._raised_at = 0.0
        self._say = say
        self._forward = forward
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> InterruptFlag:
        try:
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        except ValueError:  # not the main thread: no handler, the signals behave as usual
            self._previous = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        now = time.monotonic()
        if self.raised and now - self._raised_at < self.SAME_SIGNAL_S:
            return
        if self._forward is not None:
            self._forward(signum)
        if self.raised:
            raise KeyboardInterrupt
        self.raised, self._raised_at = True, now
        self._say(
            f"{signal.Signals(signum).name}: finishing this step and writing a checkpoint (again to abort without one)"
        )

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
