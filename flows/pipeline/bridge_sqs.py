"""``checkout-restore bridge-sqs``: S3 ObjectCreated notifications from SQS -> upload events.

Wiring a real bucket (docs/pipeline.md has the commands): an S3 event notification for
``s3:ObjectCreated:*`` on the source prefix delivers to an SQS queue (directly, or through SNS
with raw delivery off — both bodies are understood); this bridge long-polls the queue, emits one
``checkout.frame.uploaded`` event per new frame under the served source, and deletes a message
only after its events were sent (at-least-once). Messages it cannot parse are left in the queue,
so the queue's redrive policy moves them to a dead-letter queue.

S3 URL-encodes object keys in notifications (form encoding: a space arrives as ``+``), so keys
are decoded with :func:`urllib.parse.unquote_plus`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from flows.errors import UserError
from flows.pipeline.daemon import Backoff
from flows.pipeline.upload_events import Emitter, EventEmitError, FrameUpload, is_frame_key
from storage.errors import InvalidKeyError
from storage.keys import validate_key
from storage.s3 import parse_s3_uri

log = logging.getLogger("checkout_restore.bridge_sqs")

MAX_MESSAGES = 10  # SQS's maximum per ReceiveMessage
DEFAULT_WAIT_S = 20  # SQS's maximum long-poll wait


class NotificationError(ValueError):
    """An SQS message body that is neither an S3 event notification nor an SNS envelope of one."""


@dataclass(frozen=True)
class S3ObjectCreated:
    """One ``ObjectCreated:*`` record: bucket, decoded key, ETag and size as S3 sent them."""

    bucket: str
    key: str
    etag: str | None
    size: int | None
    event_name: str


def parse_notification(body: str) -> list[S3ObjectCreated]:
    """The ObjectCreated records of one SQS message body (``[]`` for S3's test event and for
    other event types). Accepts S3's own JSON and an SNS ``Notification`` envelope around it."""
    try:
        doc = json.loads(body)
    except ValueError as exc:
        raise NotificationError(f"message body is not JSON: {exc}") from exc
    if isinstance(doc, dict) and doc.get("Type") == "Notification" and isinstance(doc.get("Message"), str):
        return parse_notification(doc["Message"])
    if not isinstance(doc, dict):
        raise NotificationError("message body is not a JSON object")
    if doc.get("Event") == "s3:TestEvent":
        return []
    records = doc.get("Records")
    if not isinstance(records, list):
        raise NotificationError("no 'Records' list: not an S3 event notification")
    out: list[S3ObjectCreated] = []
    for record in records:
        name = record.get("eventName", "") if isinstance(record, Mapping) else ""
        if not isinstance(name, str) or not name.startswith("ObjectCreated:"):
            continue
        try:
            s3 = record["s3"]
            bucket = s3["bucket"]["name"]
            obj = s3["object"]
            key = unquote_plus(obj["key"])
        except (KeyError, TypeError) as exc:
            raise NotificationError(f"ObjectCreated record without bucket/key: {exc!r}") from exc
        etag = obj.get("eTag") or obj.get("etag")
        size = obj.get("size")
        out.append(S3ObjectCreated(
            bucket=str(bucket), key=key, event_name=name,
            etag=f'"{etag}"' if isinstance(etag, str) and not etag.startswith('"') else etag,
            size=int(size) if isinstance(size, int | float) else None,
        ))
    return out


def uploads_for_source(records: list[S3ObjectCreated], source_uri: str) -> list[FrameUpload]:
    """The records that are frames under ``source_uri`` (``s3://bucket[/prefix]``), with
    store-relative keys. Sidecars, other buckets/prefixes and invalid keys are dropped."""
    bucket, prefix = parse_s3_uri(source_uri)
    root = prefix.strip("/") + "/" if prefix.strip("/") else ""
    canonical = f"s3://{bucket}/{root.rstrip('/')}" if root else f"s3://{bucket}"
    out: list[FrameUpload] = []
    for rec in records:
        if rec.bucket != bucket or not rec.key.startswith(root):
            continue
        key = rec.key[len(root):]
        try:
            validate_key(key)
        except InvalidKeyError:
            log.warning("ignoring notification for invalid key %r", rec.key)
            continue
        if is_frame_key(key):
            out.append(FrameUpload(source=canonical, key=key, etag=rec.etag, size=rec.size))
    return out


def bridge_once(
    sqs: Any,
    queue_url: str,
    source_uri: str,
    emit: Emitter,
    *,
    wait_s: int = DEFAULT_WAIT_S,
    max_messages: int = MAX_MESSAGES,
) -> tuple[int, int]:
    """One long poll: emit events for the frames in the received messages, then delete the
    messages that were handled. Returns (messages deleted, events sent)."""
    resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=max_messages, WaitTimeSeconds=wait_s)
    messages = resp.get("Messages", [])
    if not messages:
        return 0, 0
    uploads: list[FrameUpload] = []
    handled: list[dict[str, str]] = []
    for msg in messages:
        try:
            records = parse_notification(msg.get("Body", ""))
        except NotificationError as exc:
            log.warning("leaving unparsable message %s in the queue: %s", msg.get("MessageId"), exc)
            continue
        uploads.extend(uploads_for_source(records, source_uri))
        handled.append({"Id": str(len(handled)), "ReceiptHandle": msg["ReceiptHandle"]})
    if uploads:
        emit(uploads)
    if handled:
        resp = sqs.delete_message_batch(QueueUrl=queue_url, Entries=handled)
        for failed in resp.get("Failed", []):
            log.warning("could not delete a handled message (it will be redelivered): %s", failed)
    return len(handled), len(uploads)


MISSING_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def check_queue(sqs: Any, queue_url: str) -> None:
    """Raise :class:`flows.errors.UserError` (one line, exit 2) when the queue does not exist or
    cannot be read; other failures (network, throttling) are left to the polling loop's backoff."""
    from botocore.exceptions import ClientError

    try:
        sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in MISSING_QUEUE_CODES:
            raise UserError(f"SQS queue {queue_url} does not exist — create it (docs/pipeline.md, "
                            "'Wiring a real bucket') or fix --queue-url / --region") from None
        if code in {"AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch"}:
            raise UserError(f"SQS queue {queue_url}: {code} — the credentials need sqs:GetQueueAttributes, "
                            "sqs:ReceiveMessage and sqs:DeleteMessage on it") from None


def bridge(
    sqs: Any,
    queue_url: str,
    source_uri: str,
    emit: Emitter,
    *,
    wait_s: int = DEFAULT_WAIT_S,
    once: bool = False,
    stop: threading.Event | None = None,
    max_backoff_s: float = 60.0,
) -> int:
    """Long-poll until ``stop`` is set (or one poll with ``once``); return the events sent.

    A poll that fails (SQS or the Prefect API unreachable, the queue gone) is retried with
    backoff up to ``max_backoff_s``, one log line per outage; messages are deleted only after
    their events were sent, so nothing is lost meanwhile."""
    from botocore.exceptions import BotoCoreError, ClientError

    stop = stop or threading.Event()
    total = 0
    backoff = Backoff(f"SQS bridge {queue_url}", log, initial=min(1.0, max_backoff_s), maximum=max_backoff_s)
    log.info("bridging %s -> %s events for %s", queue_url, "checkout.frame.uploaded", source_uri)
    while not stop.is_set():
        try:
            handled, sent = bridge_once(sqs, queue_url, source_uri, emit, wait_s=wait_s)
        except (ClientError, BotoCoreError, EventEmitError, ConnectionError, TimeoutError) as exc:
            if once:
                raise
            if stop.wait(backoff.failed(exc)):
                break
            continue
        backoff.succeeded()
        total += sent
        if handled:
            log.info("%d messages handled, %d events sent", handled, sent)
        if once:
            break
    return total
