"""Checks before anything starts: the config, the stores, their overlap.

``run`` calls :func:`check_run` before it starts a Prefect server, creates a folder or a Ray
cluster, so a typo in the config, a bad URI, a missing folder or bucket, or missing credentials
fails in seconds with one line (``flows.errors.describe``). No Prefect, Ray or torch import here.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from flows.config import PipelineConfig, load_config
from flows.errors import UserError
from storage.base import folder_uri
from storage.errors import OverlappingStoresError, StoreAccessError
from storage.lease import LeaseHeldError, held_message, live_holder
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


def check_run(source: str, dest: str, config: str, *, lease: bool = False) -> Checked:
    """Validate config, source and destination without writing anything; raise the permanent
    error (``flows.errors.is_permanent``) that would otherwise fail the run later. ``lease``: also
    stop when another live run holds the destination's run lease (:class:`LeaseHeldError`)."""
    cfg = load_config(config)
    check_ray_address(os.environ.get("RAY_ADDRESS") or cfg.cluster.address, cfg.cluster.connect_timeout_s)
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
    if lease:
        check_lease(dest_uri)
    return Checked(config=cfg, source_uri=src.uri, dest_uri=dest_uri)


class RayUnreachableError(UserError):
    """The Ray address the operator gave does not answer (exit 2, one line)."""


def check_ray_address(address: str | None, timeout_s: float) -> None:
    """A TCP connect to ``host:port`` (or ``ray://host:port``) within ``timeout_s``: ``ray.init``
    itself retries an unreachable GCS for minutes without a word. ``auto``/``local``/none: nothing."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        return  # a form Ray resolves itself (e.g. a bare host): left to ray.init
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise RayUnreachableError(
            f"cannot connect to the Ray cluster at {address} (RAY_ADDRESS or cluster.address): {reason} "
            f"(connect timeout {timeout_s:g} s) — start the cluster, fix the address, or unset RAY_ADDRESS "
            "for a local Ray") from None


def check_lease(dest_uri: str) -> None:
    """:class:`LeaseHeldError` when a live run holds the destination's lease (one read, no write)."""
    if dest_uri.startswith("file://") and not os.path.isdir(dest_uri.removeprefix("file://")):
        return  # a destination not created yet has no lease
    holder = live_holder(open_store(dest_uri, read_only=True))
    if holder is not None:
        raise LeaseHeldError(held_message(dest_uri, holder))
