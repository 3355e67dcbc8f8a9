"""``checkout-restore watch``: poll a store that cannot notify, emit an upload event per new frame.

For local folders and S3-compatible endpoints without bucket notifications. Each poll lists the
store, HEADs only the frame keys it has not seen (``check_changes`` HEADs every frame to catch
overwritten objects, which costs one request per frame per poll), emits
``checkout.frame.uploaded`` for them, and only then saves the state file (key -> ETag), so a
crash between the two re-emits rather than loses events. Sidecars never produce events.

Events only wake the on-upload deployment; the flow restores whatever the ledger says is
pending. So ``max_events`` caps the events of one poll (a first poll over a full bucket sends a
bounded burst, and the debounced trigger starts one run anyway), and ``baseline`` records what
is already there without emitting anything.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from flows.errors import is_permanent
from flows.pipeline.daemon import Backoff
from flows.pipeline.upload_events import Emitter, EventEmitError, FrameUpload, is_frame_key
from storage.base import ObjectStore
from storage.errors import InvalidKeyError, ObjectNotFoundError, StorageError
from storage.keys import validate_key

log = logging.getLogger("checkout_restore.watch")

DEFAULT_INTERVAL_S = 10.0
DEFAULT_MAX_EVENTS = 1000
STATE_FORMAT = "checkout-restore-watch/1"


class WatchStateError(ValueError):
    """The state file is unreadable or belongs to another source."""


@dataclass(frozen=True)
class PollResult:
    """One poll: the uploads found (new or changed frames) and how many events were sent."""

    uploads: tuple[FrameUpload, ...]
    emitted: int
    seen: int


def default_state_path(source_uri: str) -> Path:
    """``$XDG_CACHE_HOME/checkout-restore/watch-<hash of the source URI>.json``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(source_uri.encode()).hexdigest()[:16]
    return cache / "checkout-restore" / f"watch-{digest}.json"


def load_state(path: Path, source_uri: str) -> dict[str, str | None]:
    """Seen frame keys -> ETag (None: seen, ETag unknown). A missing file is an empty state."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise WatchStateError(f"cannot read watch state {path}: {exc}") from exc
    if not (isinstance(data, dict) and data.get("format") == STATE_FORMAT
            and isinstance(data.get("seen"), dict)):
        raise WatchStateError(f"{path} is not a watch state file ({STATE_FORMAT})")
    if data.get("source") != source_uri:
        raise WatchStateError(f"{path} belongs to source {data.get('source')!r}, not {source_uri!r}")
    return {str(k): (None if v is None else str(v)) for k, v in data["seen"].items()}


def save_state(path: Path, source_uri: str, seen: dict[str, str | None]) -> None:
    """Write the state atomically (temp file + rename): a crash leaves the old or the new state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"format": STATE_FORMAT, "source": source_uri, "seen": seen}, sort_keys=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def poll_once(
    store: ObjectStore,
    seen: dict[str, str | None],
    emit: Emitter,
    *,
    max_events: int = DEFAULT_MAX_EVENTS,
    check_changes: bool = False,
    emit_events: bool = True,
) -> tuple[PollResult, dict[str, str | None]]:
    """List ``store`` once; return the result and the new state (deleted keys drop out of it).

    ``emit`` is called once with at most ``max_events`` uploads (in key order); with
    ``emit_events=False`` (baseline) nothing is emitted and the state still advances.
    """
    if max_events < 1:
        raise ValueError("max_events must be >= 1")
    current: dict[str, str | None] = {}
    uploads: list[FrameUpload] = []
    for key in store.list():
        try:
            validate_key(key)
        except InvalidKeyError:
            continue  # the flow reports invalid keys; an event for one would be useless
        if not is_frame_key(key):
            continue
        known = key in seen
        if known and not check_changes:
            current[key] = seen[key]
            continue
        try:
            info = store.head(key)
        except ObjectNotFoundError:
            continue  # deleted between list and head
        current[key] = info.etag
        if not known or (seen[key] is not None and seen[key] != info.etag):
            uploads.append(FrameUpload(source=store.uri, key=key, etag=info.etag, size=info.size))
    batch = uploads[:max_events] if emit_events else []
    if batch:
        emit(batch)
    if len(uploads) > len(batch) and emit_events:
        log.info("%d new frames, sent %d events (max_events); the run restores them all",
                 len(uploads), len(batch))
    return PollResult(uploads=tuple(uploads), emitted=len(batch), seen=len(current)), current


@dataclass(frozen=True)
class WatchOptions:
    """How :func:`watch` polls (the flags of ``checkout-restore watch``)."""

    state_path: Path | None = None  # seen-keys state file (default: in ~/.cache, per store)
    interval_s: float = DEFAULT_INTERVAL_S
    once: bool = False
    baseline: bool = False
    max_events: int = DEFAULT_MAX_EVENTS
    check_changes: bool = False
    max_backoff_s: float = 60.0


def watch(
    store: ObjectStore, emit: Emitter, options: WatchOptions | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Poll until ``stop`` is set (or once); return the number of events sent.

    ``options.baseline`` makes the first poll record the store's current frames without emitting. A poll
    that fails transiently (store unreachable, Prefect API down) is retried with backoff up to
    ``max_backoff_s``, logging one line when the outage starts and one when it ends; nothing is
    marked seen until its events were sent. Permanent errors (missing bucket, credentials) and
    any failure with ``once`` are raised.
    """
    opts = options or WatchOptions()
    interval_s, once, max_backoff_s = opts.interval_s, opts.once, opts.max_backoff_s
    if interval_s <= 0:
        raise ValueError("interval_s must be > 0")
    path = opts.state_path or default_state_path(store.uri)
    stop = stop or threading.Event()
    seen = load_state(path, store.uri)
    log.info("watching %s (state %s, %d frames already seen)", store.uri, path, len(seen))
    total = 0
    first = True
    backoff = Backoff(f"watch of {store.uri}", log, initial=min(1.0, interval_s, max_backoff_s),
                      maximum=max_backoff_s)
    while True:
        try:
            emit_events = not (opts.baseline and first)
            result, seen = poll_once(store, seen, emit, max_events=opts.max_events,
                                     check_changes=opts.check_changes, emit_events=emit_events)
        except (StorageError, EventEmitError, ConnectionError, TimeoutError) as exc:
            if once or is_permanent(exc):
                raise
            if stop.wait(backoff.failed(exc)):
                return total
            continue
        backoff.succeeded()
        save_state(path, store.uri, seen)
        total += result.emitted
        if result.uploads:
            log.info("%d new/changed frames, %d events sent", len(result.uploads), result.emitted)
        first = False
        if once or stop.wait(interval_s):
            return total
