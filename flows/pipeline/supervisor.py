"""Graceful SIGTERM/SIGINT for a run: the first signal asks the run to stop, the run then ends
``cancelled`` with its report, index row, released lease and stopped processes; a second signal
interrupts at once (``KeyboardInterrupt``).

Why our own handler: Prefect's flow engine turns SIGTERM into a crash (no report) and ``ray.init``
installs ``sys.exit`` as the SIGTERM handler, which unwinds from inside Ray calls (exit 134, a C
abort, seen in issue 23). :func:`cancel_on_signals` is installed by the flow body, and
``flows.pipeline.ray_local.ensure_ray`` puts it back after ``ray.init``. No Prefect or Ray import.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("checkout_restore.supervisor")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunCancelled(Exception):
    """The run stopped on a signal after writing its ``cancelled`` report; exit 128 + signal."""

    def __init__(self, message: str, signum: int, report_uri: str | None = None) -> None:
        super().__init__(message)
        self.signum = signum
        self.report_uri = report_uri

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class CancelToken:
    """Set by the first SIGTERM/SIGINT; the run checks it between phases and between batches."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum = 0

    def is_set(self) -> bool:
        return self.event.is_set()

    def cancel(self, signum: int) -> None:
        global last_signum
        self.signum = last_signum = signum
        self.event.set()

    def handler(self, signum: int, _frame: Any) -> None:
        if self.event.is_set():  # a second signal: stop now
            raise KeyboardInterrupt
        log.warning("received %s: stopping the run (its report is written; a second signal stops at once)",
                    signal.Signals(signum).name)
        self.cancel(signum)


_active: CancelToken | None = None  # the token of the run in this process, if any
last_signum = 0  # the signal that cancelled the last run of this process (the CLI's exit code)


def active() -> CancelToken | None:
    return _active


def reinstall() -> None:
    """Put the active run's handlers back (after a library such as Ray replaced them)."""
    if _active is not None and threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            signal.signal(sig, _active.handler)


@contextmanager
def cancel_on_signals() -> Iterator[CancelToken]:
    """The run's token; in the main thread SIGTERM/SIGINT set it (previous handlers restored after)."""
    global _active
    token = CancelToken()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, token.handler) for sig in SIGNALS}
    outer, _active = _active, token
    try:
        yield token
    finally:
        _active = outer
        for sig, handler in previous.items():
            signal.signal(sig, handler)
