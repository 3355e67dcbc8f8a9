"""A compact copy of the ledger for discovery at scale: ``ledger-index/<shard>.json`` (64 shards)
with, per frame id, what :meth:`storage.ledger.LedgerEntry.is_current` compares, plus
``ledger-index/meta.json`` saying whether the copy is complete.

Why: deciding up to date frame by frame costs a HEAD per frame and sidecar and a ledger GET
(about 50 minutes for 6·10⁵ frames on S3, issue 23). With the listing's ETags and this index,
discovery costs the listing pages plus 65 GETs whatever the size (docs/scaling.md). The per-frame
ledger entries stay the commit markers; the index is a cache written under the run lease: a run
marks it incomplete before its first ledger write and complete once it has saved it, so a run
that died in between leaves an incomplete index and the next run reads the ledger frame by frame
(and saves a complete index again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from storage.base import ObjectStore
from storage.errors import ObjectNotFoundError
from storage.ledger import LedgerEntry
from storage.sidecars import FrameRef

INDEX_PREFIX = "ledger-index/"
META_KEY = f"{INDEX_PREFIX}meta.json"
SHARDS = 64
SCHEMA = 1


def shard_of(frame_id: str) -> int:
    return int(hashlib.sha1(frame_id.encode(), usedforsecurity=False).hexdigest()[:4], 16) % SHARDS


def _shard_key(n: int) -> str:
    return f"{INDEX_PREFIX}{n:02d}.json"


def facts(entry: LedgerEntry) -> dict[str, Any]:
    return {"k": entry.source_key, "e": entry.source_etag, "s": entry.sidecar_etags, "c": entry.config_hash,
            "m": entry.model_version, "q": entry.quarantine_reason}


def ref_facts(ref: FrameRef, config_hash: str, model_version: str, quarantined: str | None) -> dict[str, Any]:
    return {"k": ref.key, "e": ref.etag, "s": dict(ref.sidecar_etags), "c": config_hash, "m": model_version,
            "q": quarantined}


def entry_of(frame_id: str, f: Mapping[str, Any]) -> LedgerEntry:
    """A :class:`LedgerEntry` carrying what the index holds (enough for ``is_current``)."""
    return LedgerEntry(frame_id=frame_id, source_key=f["k"], source_etag=f["e"], config_hash=f["c"],
                       model_version=f["m"], outputs=(), sidecar_etags=dict(f.get("s") or {}),
                       quarantine_reason=f.get("q"))


def load(dest: ObjectStore) -> dict[str, dict[str, Any]] | None:
    """The complete index (frame id -> facts), or None when missing or marked incomplete."""
    try:
        meta = json.loads(dest.get(META_KEY))
    except (ObjectNotFoundError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA or not meta.get("complete"):
        return None

    def read(n: int) -> dict[str, dict[str, Any]]:
        try:
            return json.loads(dest.get(_shard_key(n)))
        except ObjectNotFoundError:
            return {}

    index: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(8, thread_name_prefix="ledger-index") as pool:
        for part in pool.map(read, range(SHARDS)):
            index.update(part)
    return index


def mark_incomplete(dest: ObjectStore) -> None:
    """Before a run's first ledger write: the index no longer covers every entry."""
    dest.put(META_KEY, json.dumps({"schema": SCHEMA, "complete": False}).encode())


def save(dest: ObjectStore, index: Mapping[str, Mapping[str, Any]], ids: Iterable[str] | None = None) -> None:
    """Write the shards (only those holding ``ids`` when given), then mark the index complete."""
    shards: dict[int, dict[str, Any]] = {n: {} for n in range(SHARDS)}
    for frame_id, f in index.items():
        shards[shard_of(frame_id)][frame_id] = f
    todo = sorted({shard_of(i) for i in ids}) if ids is not None else list(range(SHARDS))
    def write(n: int) -> None:
        dest.put(_shard_key(n), json.dumps(shards[n], sort_keys=True).encode())

    with ThreadPoolExecutor(8, thread_name_prefix="ledger-index") as pool:
        list(pool.map(write, todo))
    dest.put(META_KEY, json.dumps({"schema": SCHEMA, "complete": True, "frames": len(index)}).encode())


def is_fresh(dest: ObjectStore) -> bool:
    """No ledger entry and no index yet (two requests): an empty index is complete."""
    from storage.keys import LEDGER_PREFIX

    return next(iter(dest.list(LEDGER_PREFIX)), None) is None and not dest.exists(META_KEY)
