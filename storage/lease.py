"""The run lease: one restore run per destination at a time.

``leases/run.json`` in the destination names the run that holds it (run id, flow run id, host,
pid), when it last proved alive (``heartbeat_at``) and until when the lease holds
(``expires_at``). Every write of it is conditional — S3 conditional writes (``IfNoneMatch='*'``
to create, ``IfMatch=<etag>`` to renew, take over or release), or, on a local folder, a
compare-and-swap under ``flock`` (:meth:`storage.local.LocalStore.put_if`) — so of two runs that
race for it exactly one wins. The holder renews it every ``ttl_s / 4`` seconds from a thread
(:meth:`RunLease.heartbeat`) and releases it at the end.

A lease is *stale*, and the next run takes it over, when it was released, when it expired (its
holder stopped renewing: killed, or cut off), or at once when its holder ran on this machine and
that process is gone. :attr:`RunLease.previous` then holds the dead holder's record, so the
caller can clean up after it (mark its Prefect flow run crashed, remove its temp folders).
Otherwise :func:`acquire` waits up to ``wait_s`` seconds and then raises :class:`LeaseHeldError`,
which says who holds the destination and until when.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.base import ObjectStore
from storage.errors import ObjectNotFoundError, PreconditionFailedError, StorageError

log = logging.getLogger(__name__)

LEASE_KEY = "leases/run.json"
DEFAULT_TTL_S = 120.0
LEASE_SCHEMA = 1


class LeaseHeldError(StorageError):
    """Another live run holds the destination's run lease."""


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def process_identity(pid: int | None = None) -> dict[str, Any]:
    """What identifies a process beyond its pid: host, boot and pid namespace, start time (a
    reused pid has another start time). Linux ``/proc``; elsewhere only host and pid."""
    pid = os.getpid() if pid is None else pid
    space = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            space.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            space.append("?")
    return {"host": socket.gethostname(), "pid": pid, "space": " ".join(space), "start": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks since boot


def helper_identity(pid: int, what: str) -> dict[str, Any]:
    """A process the run started (e.g. its temporary Prefect server), recorded in the lease so the
    run that takes over from a dead driver can stop it (``start`` tells a reused pid apart)."""
    return {"pid": pid, "start": _start_time(pid), "what": what}


def stop_helpers(record: Mapping[str, Any], wait_s: float = 5.0) -> list[str]:
    """SIGTERM (then SIGKILL) the helpers of a dead holder of this machine that still run;
    returns what was stopped. Another machine's or a reused pid is left alone."""
    import signal

    me = process_identity()
    if record.get("space") != me["space"] or record.get("host") != me["host"]:
        return []
    stopped = []
    for helper in record.get("helpers") or ():
        pid, start = helper.get("pid"), helper.get("start")
        if not isinstance(pid, int) or start is None or _start_time(pid) != start:
            continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while _start_time(pid) == start and time.monotonic() < deadline:
                time.sleep(0.1)
            if _start_time(pid) != start:
                break
        stopped.append(f"{helper.get('what')} (pid {pid})")
    return stopped


def holder_is_dead(record: Mapping[str, Any]) -> bool:
    """True when the record's process ran in this machine's pid space and is gone."""
    me = process_identity()
    if record.get("space") != me["space"] or record.get("host") != me["host"] or "?" in me["space"]:
        return False  # another machine or container: only the expiry can tell
    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    start = _start_time(pid)
    return start is None or start != record.get("start")


@dataclass
class RunLease:
    """A held lease; :func:`acquire` returns it."""

    store: ObjectStore
    record: dict[str, Any]
    etag: str
    ttl_s: float
    previous: dict[str, Any] | None = None  # the stale holder this lease was taken over from
    lost: bool = False  # another run took it over (we failed to renew in time)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def describe(self) -> str:
        return describe(self.record)

    def _write(self, record: dict[str, Any]) -> None:
        data = json.dumps(record, indent=1, sort_keys=True).encode()
        self.etag = self.store.put_if(LEASE_KEY, data, if_match=self.etag)  # type: ignore[attr-defined]
        self.record = record

    def renew(self) -> None:
        """Move ``heartbeat_at``/``expires_at`` forward; :class:`PreconditionFailedError` if the
        lease is no longer ours."""
        now = time.time()
        self._write({**self.record, "heartbeat_at": _iso(now), "expires_at": _iso(now + self.ttl_s),
                     "expires_ts": now + self.ttl_s})

    def release(self) -> None:
        """Mark the lease released (stores never delete), if it is still ours."""
        self._stop.set()
        if self.lost:
            return
        now = time.time()
        try:
            self._write({**self.record, "released": True, "heartbeat_at": _iso(now), "expires_at": _iso(now),
                         "expires_ts": now})
        except StorageError as exc:
            log.warning("could not release the run lease %s in %s: %s", LEASE_KEY, self.store.uri, exc)

    @contextmanager
    def heartbeat(self) -> Iterator[RunLease]:
        """Renew every ``ttl_s / 4`` seconds in a daemon thread while the block runs; release after."""
        def beat() -> None:
            while not self._stop.wait(self.ttl_s / 4):
                try:
                    self.renew()
                except PreconditionFailedError:
                    self.lost = True
                    log.error("run lease in %s was taken over by another run: %s", self.store.uri,
                              self._current())
                    return
                except StorageError as exc:  # transient: try again next beat, before expiry
                    log.warning("could not renew the run lease in %s: %s", self.store.uri, exc)

        thread = threading.Thread(target=beat, name="run-lease", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=5)
            self.release()

    def _current(self) -> str:
        try:
            return describe(json.loads(self.store.get(LEASE_KEY)))
        except (StorageError, ValueError):
            return "unknown holder"


def describe(record: Mapping[str, Any]) -> str:
    r = record
    return (f"run {r.get('run_id')} (flow run {r.get('flow_run_id')}, host {r.get('host')}, "
            f"pid {r.get('pid')}), heartbeat {r.get('heartbeat_at')}, expires {r.get('expires_at')}")


def _read(store: ObjectStore) -> tuple[dict[str, Any] | None, str | None]:
    try:
        etag = store.head(LEASE_KEY).etag
        data = store.get(LEASE_KEY)
    except ObjectNotFoundError:
        return None, None
    try:
        record = json.loads(data)
    except ValueError:
        record = {}
    return (record if isinstance(record, dict) else {}), etag


def held_message(uri: str, record: Mapping[str, Any]) -> str:
    """The one line a run prints when another live run holds the lease (docs/pipeline.md)."""
    return (f"another run is restoring into {uri}: {describe(record)}; this run stops "
            "(wait for it with --wait-for-lease, or for the lease to expire if that run died on another "
            "machine)")


def live_holder(store: ObjectStore) -> dict[str, Any] | None:
    """The lease record of a live run holding ``store``'s lease, else None (reads only)."""
    current, _ = _read(store)
    return None if current is None or is_stale(current) else current


def is_stale(record: Mapping[str, Any], now: float | None = None) -> bool:
    """Released, expired (or unreadable), or held by a process of this machine that is gone."""
    now = time.time() if now is None else now
    if record.get("released"):
        return True
    try:
        expired = float(record["expires_ts"]) < now
    except (KeyError, TypeError, ValueError):
        return True  # an unreadable lease protects nothing
    return expired or holder_is_dead(record)


def acquire(store: ObjectStore, *, run_id: str, flow_run_id: str | None = None, ttl_s: float = DEFAULT_TTL_S,
            wait_s: float = 0.0, poll_s: float = 2.0,
            helpers: list[dict[str, Any]] | None = None) -> RunLease:
    """Take the destination's run lease, waiting up to ``wait_s`` seconds for a live holder;
    :class:`LeaseHeldError` if it still holds it then. ``helpers``: processes this run started
    (:func:`helper_identity`), for the run that takes over from a dead driver to stop."""
    if not hasattr(store, "put_if"):
        raise TypeError(f"{type(store).__name__} has no conditional put; a run lease needs one")
    deadline = time.monotonic() + wait_s
    while True:
        current, etag = _read(store)
        if current is None or is_stale(current):
            now = time.time()
            record = {"schema": LEASE_SCHEMA, "run_id": run_id, "flow_run_id": flow_run_id,
                      "helpers": helpers or [],
                      **process_identity(), "acquired_at": _iso(now), "heartbeat_at": _iso(now),
                      "expires_at": _iso(now + ttl_s), "expires_ts": now + ttl_s, "released": False}
            try:
                data = json.dumps(record, indent=1, sort_keys=True).encode()
                new_etag = store.put_if(LEASE_KEY, data, if_match=etag)  # type: ignore[attr-defined]
            except PreconditionFailedError:
                continue  # another run got there first: look again
            if _read(store)[0] != record:  # a store without conditional writes: last writer won
                continue
            previous = current if current is not None and not current.get("released") else None
            return RunLease(store=store, record=record, etag=new_etag, ttl_s=ttl_s, previous=previous)
        if time.monotonic() >= deadline:
            raise LeaseHeldError(held_message(store.uri, current))
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())) or poll_s)
