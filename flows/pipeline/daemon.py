"""Long-running commands (`watch`, `bridge-sqs`, `serve`): backoff on transient failures, one log
line when an outage starts and one when it ends (never a traceback per attempt), and a clean
stop on SIGTERM / Ctrl-C."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__


class Backoff:
    """Exponential backoff (``initial`` doubling up to ``maximum`` seconds) that logs one warning
    when an outage begins and one info line when the next attempt succeeds."""

    def __init__(self, what: str, logger: logging.Logger, *, initial: float = 1.0,
                 maximum: float = 60.0) -> None:
        if initial <= 0 or maximum < initial:
            raise ValueError("need 0 < initial <= maximum")
        self.what, self.log, self.initial, self.maximum = what, logger, initial, maximum
        self.failures = 0
        self.since: float | None = None

    @property
    def in_outage(self) -> bool:
        return self.failures > 0

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; return how long to wait before the next one."""
        if self.failures == 0:
            self.since = time.monotonic()
            self.log.warning("%s unavailable (%s); retrying with backoff (up to every %.0f s) until it "
                             "is back", self.what, one_line(exc), self.maximum)
        self.failures += 1
        return min(self.maximum, self.initial * 2 ** (self.failures - 1))

    def succeeded(self) -> None:
        if self.failures:
            assert self.since is not None
            self.log.info("%s back after %.0f s (%d failed attempts)", self.what,
                          time.monotonic() - self.since, self.failures)
        self.failures = 0
        self.since = None


@contextmanager
def stop_on_signals(stop: threading.Event | None = None) -> Iterator[threading.Event]:
    """Set ``stop`` on SIGINT/SIGTERM while inside the block (main thread only), then restore the
    previous handlers."""
    stop = stop or threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
