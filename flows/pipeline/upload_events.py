"""The ``checkout.frame.uploaded`` event: what `watch` and `bridge-sqs` emit, what `serve` listens for.

An event is a wake-up signal, not the work list: the triggered flow run restores everything the
ledger says is pending, so a lost or extra event never loses or duplicates work. Each event's
resource carries the source store URI as the ``checkout.source`` label; the on-upload deployment
matches on it, so deployments serving different sources do not wake each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from storage.sidecars import classify

UPLOAD_EVENT = "checkout.frame.uploaded"
SOURCE_LABEL = "checkout.source"
RESOURCE_PREFIX = "checkout.frame."


class EventEmitError(RuntimeError):
    """Events cannot be sent (no Prefect server configured, or the server refused them)."""


@dataclass(frozen=True)
class FrameUpload:
    """A frame that appeared (or changed) in a source store.

    ``source`` is the canonical store URI (``ObjectStore.uri``), ``key`` the store-relative key.
    """

    source: str
    key: str
    etag: str | None = None
    size: int | None = None


Emitter = Callable[[Sequence[FrameUpload]], None]
"""Sends one event per upload; raises :class:`EventEmitError` when they cannot be delivered."""


def is_frame_key(key: str) -> bool:
    """True for a frame (``<id>.png|jpg|jpeg|webp``), False for sidecars and other files."""
    found = classify(key)
    return found is not None and found[0] == "frame"


def event_fields(upload: FrameUpload) -> dict[str, Any]:
    """Keyword arguments of :func:`prefect.events.emit_event` / ``Event`` for one upload."""
    return {
        "event": UPLOAD_EVENT,
        "resource": {
            "prefect.resource.id": f"{RESOURCE_PREFIX}{upload.source.rstrip('/')}/{upload.key}",
            "prefect.resource.name": upload.key,
            SOURCE_LABEL: upload.source,
        },
        "payload": {"key": upload.key, "etag": upload.etag, "size": upload.size},
    }


def prefect_emitter(uploads: Sequence[FrameUpload]) -> None:
    """Send the events to the Prefect server at ``PREFECT_API_URL`` and return once they are sent.

    Uses the events websocket client directly (not the background ``emit_event`` worker) so a
    caller that records "seen" state after this returns never records an event that was lost.
    """
    if not uploads:
        return
    from prefect.events import Event
    from prefect.events.clients import get_events_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise EventEmitError("PREFECT_API_URL is not set: point it at the Prefect server that runs `serve`")

    async def send() -> None:
        async with get_events_client() as client:
            for upload in uploads:
                await client.emit(Event(**event_fields(upload)))

    try:
        asyncio.run(send())
    except Exception as exc:  # websockets/httpx errors have no common base worth naming
        raise EventEmitError(f"could not send {len(uploads)} event(s): {exc}") from exc
