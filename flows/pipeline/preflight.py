"""Checks before anything starts: the config, the stores, their overlap.

``run`` calls :func:`check_run` before it starts a Prefect server, creates a folder or a Ray
cluster, so a typo in the config, a bad URI, a missing folder or bucket, or missing credentials
fails in seconds with one line (``flows.errors.describe``). No Prefect, Ray or torch import here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from flows.config import PipelineConfig, load_config
from storage.base import folder_uri
from storage.errors import OverlappingStoresError, StoreAccessError
from storage.stores import open_store


@dataclass(frozen=True)
class Checked:
    config: PipelineConfig
    source_uri: str
    dest_uri: str


def _local_dest_uri(dest: str) -> str | None:
    """Canonical URI of a local destination without creating it (None for s3://)."""
    if dest.startswith("s3://"):
        return None
    path = Path(dest.removeprefix("file://")) if dest.startswith("file://") else Path(dest)
    real = Path(os.path.realpath(os.path.abspath(path)))
    parent = real
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise StoreAccessError(f"destination {real} cannot be created: {parent} is not a writable folder",
                               operation="open", key=None)
    return real.as_uri()


def check_run(source: str, dest: str, config: str) -> Checked:
    """Validate config, source and destination without writing anything; raise the permanent
    error (``flows.errors.is_permanent``) that would otherwise fail the run later."""
    cfg = load_config(config)
    src = open_store(source, read_only=True)
    next(iter(src.list()), None)  # missing bucket / credentials / access denied surface here
    dest_uri = _local_dest_uri(dest)
    if dest_uri is None:
        dst = open_store(dest, read_only=True)
        next(iter(dst.list_dirs("")), None)
        dest_uri = dst.uri
    a, b = folder_uri(src.uri), folder_uri(dest_uri)
    if a.startswith(b) or b.startswith(a):
        raise OverlappingStoresError(f"source {src.uri} and destination {dest_uri} overlap")
    return Checked(config=cfg, source_uri=src.uri, dest_uri=dest_uri)
