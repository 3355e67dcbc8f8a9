"""Idempotency ledger: what produced each output, so reruns skip finished work.

Choice: one small JSON object per frame at ``ledger/<id>.json`` in the destination store,
written by :func:`record_done` *after* the frame's outputs. It is the commit marker: a run that
dies half-way through a frame leaves no ledger entry, so the frame stays pending. (The outputs
also carry the same facts as S3 user metadata, :func:`output_metadata`, for provenance, but
only the ledger decides.) A frame is up to date when its entry names the same source key,
the source ETag seen now, the ETags of its sidecars seen now (mask, truth: a sidecar changed,
added or removed makes the frame pending), the same config hash (computed by the caller:
``flows.config.PipelineConfig.config_hash``) and the same model version. A frame whose content
cannot be restored gets an entry without outputs and with its ``quarantine_reason``
(:func:`record_quarantined`), so reruns skip it until something changes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from storage.base import ObjectStore
from storage.errors import LedgerError, ObjectNotFoundError
from storage.keys import ledger_key, output_keys
from storage.sidecars import FrameRef

log = logging.getLogger(__name__)

LEDGER_SCHEMA = 1


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """The content of ``ledger/<id>.json``."""

    frame_id: str
    source_key: str
    source_etag: str
    config_hash: str
    model_version: str
    outputs: tuple[str, ...]
    run_id: str | None = None
    completed_at: str = ""
    source_uri: str = ""
    schema: int = LEDGER_SCHEMA
    sidecar_etags: dict[str, str] = dataclasses.field(default_factory=dict)
    quarantine_reason: str | None = None

    def to_json(self) -> bytes:
        record = dataclasses.asdict(self)
        record["outputs"] = list(self.outputs)
        return json.dumps(record, indent=1, sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> LedgerEntry:
        record = json.loads(data)
        if not isinstance(record, dict):
            raise ValueError("ledger entry is not a JSON object")
        record["outputs"] = tuple(record.get("outputs", ()))
        sidecars = record.get("sidecar_etags") or {}
        if not isinstance(sidecars, dict) or not all(isinstance(v, str) for v in sidecars.values()):
            raise ValueError("ledger entry: sidecar_etags is not a {key: etag} object")
        record["sidecar_etags"] = sidecars
        reason = record.get("quarantine_reason")
        record["quarantine_reason"] = reason if isinstance(reason, str) else None
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def is_current(self, ref: FrameRef, etag: str, config_hash: str, model_version: str) -> bool:
        """True when this entry was produced from exactly this input (frame *and* sidecars, as
        ``ref.sidecar_etags`` saw them), config and model."""
        return (
            self.schema == LEDGER_SCHEMA
            and self.source_key == ref.key
            and self.source_etag == etag
            and self.sidecar_etags == dict(ref.sidecar_etags)
            and self.config_hash == config_hash
            and self.model_version == model_version
        )


def read_ledger(dest: ObjectStore, frame_id: str) -> LedgerEntry | None:
    """The entry for ``frame_id``, or None if absent or unreadable (then the frame is redone)."""
    key = ledger_key(frame_id)
    try:
        data = dest.get(key)
    except ObjectNotFoundError:
        return None
    try:
        return LedgerEntry.from_json(data)
    except (ValueError, TypeError, AttributeError) as exc:
        log.warning("unreadable ledger entry %r in %s (%s): frame will be redone", key, dest.uri, exc)
        return None


def output_metadata(
    ref: FrameRef, config_hash: str, model_version: str, run_id: str | None = None
) -> dict[str, str]:
    """User metadata for a frame's outputs (percent-encoded, so any key fits S3 headers)."""
    meta = {
        "source-key": quote(ref.key, safe="/"),
        "config-hash": quote(config_hash, safe=""),
        "model-version": quote(model_version, safe=""),
    }
    if ref.etag is not None:
        meta["source-etag"] = quote(ref.etag, safe='"')
    if run_id is not None:
        meta["run-id"] = run_id
    return meta


def current_etags(source: ObjectStore, ref: FrameRef) -> FrameRef:
    """``ref`` with the ETags of its frame and of its sidecars as the source holds them now
    (a sidecar deleted since the listing is left out). :class:`ObjectNotFoundError` if the
    frame itself is gone."""
    etag = source.head(ref.key).etag
    sidecars: list[tuple[str, str]] = []
    for key in ref.sidecar_keys:
        try:
            sidecars.append((key, source.head(key).etag))
        except ObjectNotFoundError:
            continue
    return dataclasses.replace(ref, etag=etag, sidecar_etags=tuple(sorted(sidecars)))


def look_up(source: ObjectStore, dest: ObjectStore, ref: FrameRef) -> tuple[FrameRef, LedgerEntry | None]:
    """``ref`` with its current ETags (:func:`current_etags`, read *before* the frame is
    processed: pass that ref on to :func:`record_done`) and its ledger entry (:func:`read_ledger`).
    The frame is up to date when ``entry.is_current(ref, ref.etag, config_hash, model_version)``;
    :class:`ObjectNotFoundError` if the frame is gone since the listing."""
    ref = current_etags(source, ref)
    return ref, read_ledger(dest, ref.id)


def record_done(
    dest_store: ObjectStore,
    ref: FrameRef,
    *,
    config_hash: str,
    model_version: str,
    outputs: Sequence[str] | None = None,
    run_id: str | None = None,
    source_uri: str = "",
    verify: bool = True,
) -> LedgerEntry:
    """Write ``ledger/<id>.json`` for a finished frame; call it after writing the outputs.

    ``ref.etag`` must be set (use the refs :func:`look_up` returns). ``outputs`` defaults to
    the three standard outputs; with ``verify`` each must exist, else :class:`LedgerError`.
    """
    if ref.etag is None:
        raise ValueError(
            f"FrameRef {ref.key!r} has no etag: use the refs from look_up(), or "
            "dataclasses.replace(ref, etag=source.head(ref.key).etag) before processing"
        )
    names = tuple(outputs) if outputs is not None else output_keys(ref.id)
    if verify:
        missing = [k for k in names if not dest_store.exists(k)]
        if missing:
            raise LedgerError(
                f"not recording {ref.id!r} as done: outputs missing in {dest_store.uri}: {missing}"
            )
    entry = LedgerEntry(
        frame_id=ref.id,
        source_key=ref.key,
        source_etag=ref.etag,
        config_hash=config_hash,
        model_version=model_version,
        outputs=names,
        run_id=run_id,
        completed_at=_now(),
        source_uri=source_uri,
        sidecar_etags=dict(ref.sidecar_etags),
    )
    dest_store.put(
        ledger_key(ref.id),
        entry.to_json(),
        metadata=output_metadata(ref, config_hash, model_version, run_id),
    )
    return entry


def record_quarantined(
    dest_store: ObjectStore,
    ref: FrameRef,
    reason: str,
    *,
    config_hash: str,
    model_version: str,
    run_id: str | None = None,
    source_uri: str = "",
) -> LedgerEntry:
    """``ledger/<id>.json`` for a frame whose *content* cannot be restored (a
    :class:`storage.errors.FrameError`): no outputs, and its ``quarantine_reason``; reruns skip
    the frame until its bytes, a sidecar, the config or the models change."""
    if ref.etag is None:
        raise ValueError(f"FrameRef {ref.key!r} has no etag: use current_etags() first")
    entry = LedgerEntry(
        frame_id=ref.id, source_key=ref.key, source_etag=ref.etag, config_hash=config_hash,
        model_version=model_version, outputs=(), run_id=run_id, completed_at=_now(),
        source_uri=source_uri, sidecar_etags=dict(ref.sidecar_etags), quarantine_reason=reason,
    )
    dest_store.put(
        ledger_key(ref.id), entry.to_json(), metadata=output_metadata(ref, config_hash, model_version, run_id)
    )
    return entry


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


__all__ = [
    "LEDGER_SCHEMA",
    "LedgerEntry",
    "current_etags",
    "look_up",
    "output_metadata",
    "read_ledger",
    "record_done",
    "record_quarantined",
]

