"""The ``restore-frames`` flow's discovery and restoration tasks (module docstring of
flows/pipeline/flow.py): which frames are pending, and their batches fanned out to the actors."""


from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.config import ReportSettings
from flows.errors import is_transient
from flows.pipeline import supervisor
from flows.pipeline.actors import frame_failure_row, report_row
from flows.pipeline.fanout import NOT_ATTEMPTED, ActorPool, BatchDone, fan_out
from storage import ledger_index
from storage.base import ObjectStore
from storage.errors import FrameError, InvalidKeyError, ObjectNotFoundError, StoreAccessError
from storage.keys import ledger_key, output_keys
from storage.ledger import LedgerEntry, look_up
from storage.sidecars import IMAGE_EXTENSIONS, FrameRef, discover, discover_keys
from storage.stores import open_store

LOOKUP_WORKERS = 8
ARTIFACT_PREFIX = "restore-frames"


@dataclass(frozen=True)
class Candidate:
    """A discovered frame with its source and sidecar ETags (read now) and its ledger entry (if
    any); ``quarantined`` is the reason when that entry records a content error instead of
    outputs; ``failed`` is the quarantine row when looking the frame up failed (this frame only)."""

    ref: FrameRef
    entry: LedgerEntry | None
    quarantined: str | None = None
    failed: dict | None = None


@dataclass(frozen=True)
class Discovery:
    candidates: list[Candidate]
    invalid: list[tuple[str, str]]  # (key, problem) for keys that break the key rules
    unsupported: list[str] = field(default_factory=list)  # neither a frame nor a sidecar (.bmp, .tiff...)
    # the ledger index (storage.ledger_index) when the source lists ETags (S3), else None
    index: dict[str, dict] | None = None
    indexed: bool = False  # True: decided from the listing and a complete index (no per-frame request)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: backend/network failures, not bad input, config, a missing
    bucket or credentials (``flows.errors.is_permanent``)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


IO_TASK = {"retries": 3, "retry_delay_seconds": [1, 5, 20], "retry_condition_fn": _transient,
           "cache_policy": NO_CACHE}


@task(name="discover-frames", **IO_TASK)
def discover_frames(source_uri: str, dest_uri: str) -> Discovery:
    """Every frame under the source with its current ETag and ledger entry (discovery order)."""
    return find_frames(open_store(source_uri, read_only=True), open_store(dest_uri))


def find_frames(source: ObjectStore, dest: ObjectStore) -> Discovery:
    """:func:`discover` the source and :func:`storage.ledger.look_up` each frame (threads);
    :func:`plan_run` then decides what is pending. Writes nothing."""
    listed = getattr(source, "list_etags", None)
    index = ledger_index.load(dest) if listed is not None else None
    if listed is not None and index is None and ledger_index.is_fresh(dest):
        index = {}  # a destination without any ledger entry: every frame is new
    if index is not None:
        return find_from_listing(source, dest, index)
    invalid: list[tuple[str, str]] = []
    unsupported: list[str] = []

    def look(ref: FrameRef) -> Candidate | None:
        try:
            check_output_keys(dest, ref.id)
            current, entry = look_up(source, dest, ref)
        except ObjectNotFoundError:
            return None  # deleted since the listing
        except Exception as exc:  # this frame's lookup only: its row, not the run's failure
            return Candidate(ref=ref, entry=None, failed=frame_failure_row(ref, exc, stage="read"))
        return Candidate(ref=current, entry=entry, quarantined=entry.quarantine_reason if entry else None)

    refs = discover(source, on_invalid=lambda key, problem: invalid.append((key, problem)),
                    on_other=unsupported.append)
    with ThreadPoolExecutor(LOOKUP_WORKERS, thread_name_prefix="discover") as pool:
        found = [c for c in pool.map(look, refs) if c is not None]
    failed = [c for c in found if c.failed is not None and c.failed["reason"] == "read_error"]
    if failed and len(failed) == len(found):
        # Every lookup failed on the store: that is the store, not the frames (Prefect retries).
        raise StoreAccessError(f"every frame lookup failed, e.g. {failed[0].failed['detail']}",
                               operation="discover", key=None)
    rebuilt = {c.ref.id: ledger_index.facts(c.entry) for c in found if c.entry is not None} \
        if listed is not None else None
    return Discovery(candidates=found, invalid=invalid, unsupported=unsupported, index=rebuilt)


def find_from_listing(source: ObjectStore, dest: ObjectStore, index: dict[str, dict]) -> Discovery:
    """Discovery from the listing's ETags and a complete ledger index: no request per frame."""
    etags: dict[str, str] = {}
    invalid: list[tuple[str, str]] = []
    unsupported: list[str] = []

    def keys() -> Iterator[str]:
        for key, etag in source.list_etags():  # type: ignore[attr-defined]
            etags[key] = etag
            yield key

    def other(key: str) -> None:
        unsupported.append(key)
        etags.pop(key, None)

    found: list[Candidate] = []
    for ref in discover_keys(keys(), on_invalid=lambda k, p: invalid.append((k, p)), on_other=other):
        sidecars = tuple(sorted((k, etags.pop(k)) for k in ref.sidecar_keys if k in etags))
        ref = replace(ref, etag=etags.pop(ref.key, None), sidecar_etags=sidecars)
        for dup in ref.duplicates:
            etags.pop(dup, None)
        try:
            check_output_keys(dest, ref.id)
        except InvalidKeyError as exc:
            found.append(Candidate(ref=ref, entry=None, failed=frame_failure_row(ref, exc, stage="read")))
            continue
        f = index.get(ref.id)
        entry = ledger_index.entry_of(ref.id, f) if f is not None else None
        found.append(Candidate(ref=ref, entry=entry, quarantined=entry.quarantine_reason if entry else None))
    return Discovery(candidates=found, invalid=invalid, unsupported=unsupported, index=index, indexed=True)


def check_output_keys(dest: ObjectStore, frame_id: str) -> None:
    """:class:`InvalidKeyError` when the destination could not hold one of the frame's outputs or
    its ledger entry (e.g. a name over the file system's limit): the frame is refused before it
    is restored, so nothing is written for it (issue 23)."""
    check = getattr(dest, "check_key", None)
    for key in (*output_keys(frame_id), ledger_key(frame_id)):
        if check is not None:
            check(key)


@dataclass(frozen=True)
class Plan:
    pending: list[FrameRef]
    deferred: int  # pending frames left for a later run by ``limit``
    rows: list[dict]  # skipped and quarantined-before-restoration rows


def plan_run(found: Discovery, config_hash: str, model_version: str, limit: int | None,
             retry_quarantined: bool = False, max_backlog: int | None = None) -> Plan:
    """Split candidates into skipped (up to date, or unchanged since a permanent failure) and
    pending; apply ``limit`` to the pending. ``retry_quarantined``: standing failures are pending.
    New frames (no ledger entry) go first, then the backlog (frames done before under other
    settings, models or input), of which at most ``max_backlog`` are taken (the rest deferred):
    after a model change a night must not spend itself on the archive while uploads wait."""
    rows: list[dict] = []
    pending: list[FrameRef] = []
    backlog: list[FrameRef] = []
    for key, problem in found.invalid:
        rows.append(report_row(FrameRef(key=key, id=key), "quarantined", reason="invalid_key",
                               detail=problem))
    supported = ", ".join(IMAGE_EXTENSIONS)
    for key in found.unsupported:
        ext = os.path.splitext(key)[1].lower() or "(no extension)"
        rows.append(report_row(FrameRef(key=key, id=key), "skipped", reason="unsupported_format",
                               detail=f"{ext} is not restored; supported frame formats: {supported}"))
    for cand in found.candidates:
        ref = cand.ref
        for dup in ref.duplicates:
            rows.append(report_row(FrameRef(key=dup, id=ref.id), "quarantined", reason="duplicate_id",
                                   detail=f"same id as {ref.key!r}, which is restored instead"))
        if cand.failed is not None:
            rows.append(cand.failed)
            continue
        assert ref.etag is not None
        current = cand.entry is not None and cand.entry.is_current(ref, ref.etag, config_hash, model_version)
        if current and cand.quarantined and not retry_quarantined:
            rows.append(report_row(ref, "skipped", reason=f"quarantined_before:{cand.quarantined}",
                                   detail="unchanged since a run found it unusable"))
        elif current and not cand.quarantined:
            rkey, kkey, kpng = output_keys(ref.id)
            rows.append(report_row(ref, "skipped", reason="up_to_date", restored_key=rkey, kernel_key=kkey,
                                   kernel_png_key=kpng))
        else:
            # Backlog: the same input done before under other settings or models; a new or
            # re-uploaded frame goes first.
            redo = cand.entry is not None and cand.entry.source_etag == ref.etag
            (backlog if redo else pending).append(ref)
    deferred = 0
    if max_backlog is not None and len(backlog) > max_backlog:
        deferred, backlog = len(backlog) - max_backlog, backlog[:max_backlog]
    pending += backlog
    if limit is not None and len(pending) > limit:
        deferred += len(pending) - limit
        pending = pending[:limit]
    return Plan(pending=pending, deferred=deferred, rows=rows)


class Progress:
    """Progress of the restore phase: one log line every ``every`` frames or ``seconds`` seconds
    (whichever comes first) and at the end, with done/total, rate and ETA — in log files as on a
    terminal (issue 23: a file showed nothing for 28 minutes); on a terminal also a tqdm bar."""

    def __init__(self, total: int, logger: Any, every: int = 100, stream: Any = None,
                 seconds: float = 60.0) -> None:
        from tqdm import tqdm

        self.total, self.logger, self.every, self.seconds = total, logger, every, seconds
        stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, unit="frame", desc="restoring", file=stream, dynamic_ncols=True) \
            if tty else None
        self.logged, self.logged_at = 0, 0.0

    def update(self, done: int, elapsed_s: float, resubmitted: int) -> None:
        rate = done / elapsed_s if elapsed_s > 0 else float("nan")
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(resubmitted=resubmitted, refresh=False)
        due = done - self.logged >= self.every or elapsed_s - self.logged_at >= self.seconds
        if done != self.logged and (due or done == self.total):
            self.logged, self.logged_at = done, elapsed_s
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            self.logger.info("%d/%d frames (%.0f%%), %.2f frames/s, ETA %s, %d batches resubmitted", done,
                             self.total, 100.0 * done / self.total, rate, eta_text(eta), resubmitted)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def eta_text(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``; ``?`` before a rate is known."""
    if not math.isfinite(seconds):
        return "?"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@task(name="restore-batches", cache_policy=NO_CACHE)
def restore_batches(pool: ActorPool, refs: list[FrameRef], batch_size: int, max_in_flight: int,
                    progress_id: Any, settings: ReportSettings | None = None) -> tuple[list[dict], int]:
    """Fan the frames out to the actors; :class:`Progress` logs how far it got (every
    ``settings.progress_every`` frames or ``progress_seconds`` seconds, with rate and ETA; a bar too
    on a terminal). The progress artifact moves with every batch. A SIGTERM/SIGINT (the run's
    :mod:`flows.pipeline.supervisor` token) stops the fan-out: the rest is ``not_attempted``."""
    logger = get_run_logger()
    batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    logger.info("restoring %d frames in %d batches on %d actors", len(refs), len(batches), len(pool.actors))
    settings = settings or ReportSettings()
    progress = Progress(len(refs), logger, settings.progress_every, seconds=settings.progress_seconds)

    def on_batch(done: BatchDone) -> None:
        for row in done.rows:
            if row["status"] == "quarantined":
                logger.warning("quarantined %s: %s (%s)", row["key"], row["reason"], row["detail"])
        progress.update(done.frames_done, done.elapsed_s, done.resubmitted)
        if progress_id is not None:
            update_progress_artifact(progress_id, progress=100.0 * done.frames_done / done.frames_total)

    token = supervisor.active()
    try:
        return fan_out(pool, batches, max_in_flight=max_in_flight, on_batch=on_batch, logger=logger,
                       stop=token.is_set if token is not None else None,
                       stall_s=pool.stall_timeout_s)
    finally:
        progress.close()


# Reasons recorded in the ledger (record_quarantined): the frame is not retried while unchanged.
REMEMBERED = frozenset({cls.reason for cls in FrameError.__subclasses__()} | {"restore_error"})


def update_ledger_index(dest: ObjectStore, found: Discovery, pending: list[FrameRef], rows: list[dict],
                        config_hash: str, model_version: str) -> None:
    """Bring the ledger index (storage.ledger_index) up to this run's ledger writes and mark it
    complete; only where the source lists ETags (the index is what makes that listing enough)."""
    if found.index is None or any(r["reason"] == NOT_ATTEMPTED for r in rows):
        return  # a stopped run may have committed frames it has no row for: stays incomplete
    index = dict(found.index)
    by_key = {ref.key: ref for ref in pending}
    changed: set[str] | None = set() if found.indexed else None  # else every shard is written
    for row in rows:
        ref = by_key.get(row["key"])
        if ref is None or not (row["status"] == "restored" or row["reason"] in REMEMBERED):
            continue
        quarantined = None if row["status"] == "restored" else row["reason"]
        index[ref.id] = ledger_index.ref_facts(ref, config_hash, model_version, quarantined)
        if changed is not None:
            changed.add(ref.id)
    ledger_index.save(dest, index, changed)
