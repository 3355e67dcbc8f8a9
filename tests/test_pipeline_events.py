"""Upload events without a Prefect server: the `watch` poller, the SQS bridge (moto's real S3
notifications into a real SQS queue), the deployment objects, and the run planning."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
from pipeline_frames import write_frames
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.config import load_config
from flows.pipeline.actors import report_row
from flows.pipeline.bridge_sqs import NotificationError, bridge_once, parse_notification, uploads_for_source
from flows.pipeline.deploy import build_deployments
from flows.pipeline.run_report import summarize
from flows.pipeline.tasks import Candidate, Discovery, plan_run
from flows.pipeline.upload_events import (
    SOURCE_LABEL,
    UPLOAD_EVENT,
    EventEmitError,
    FrameUpload,
    event_fields,
    prefect_emitter,
)
from flows.pipeline.watch import WatchOptions, WatchStateError, load_state, poll_once, save_state, watch
from storage.ledger import LedgerEntry
from storage.sidecars import FrameRef
from storage.stores import open_store

pytestmark = pytest.mark.timeout(60)


class Recorder:
    """An emitter that keeps what it was given (the tests' stand-in for the Prefect server)."""

    def __init__(self) -> None:
        self.batches: list[list[FrameUpload]] = []

    def __call__(self, uploads: Sequence[FrameUpload]) -> None:
        self.batches.append(list(uploads))

    @property
    def keys(self) -> list[str]:
        return [u.key for b in self.batches for u in b]


# -- watch -------------------------------------------------------------------------------------


def test_watch_emits_new_frames_once_and_ignores_sidecars(tmp_path: Path) -> None:
    store = open_store(tmp_path / "inbox")
    write_frames(store, ["a", "sub/b"])  # frames + .sharp.png + .kernel.npy + a .mask.png
    store.put("notes.txt", b"not a frame")
    state = tmp_path / "state.json"
    rec = Recorder()
    assert watch(store, rec, WatchOptions(state_path=state, once=True)) == 2
    assert rec.keys == ["a.png", "sub/b.png"]
    assert {u.source for u in rec.batches[0]} == {store.uri}
    assert all(u.etag == store.head(u.key).etag for u in rec.batches[0])
    assert set(load_state(state, store.uri)) == {"a.png", "sub/b.png"}

    # Second poll: nothing new. A new frame: exactly that one.
    assert watch(store, rec, WatchOptions(state_path=state, once=True)) == 0
    write_frames(store, ["c"], truth=False, mask_first=False, seed=5)
    assert watch(store, rec, WatchOptions(state_path=state, once=True)) == 1
    assert rec.keys[-1] == "c.png" and len(rec.batches) == 2


def test_watch_baseline_cap_and_changes(tmp_path: Path) -> None:
    store = open_store(tmp_path / "inbox")
    write_frames(store, ["a", "b", "c"], truth=False, mask_first=False)
    rec = Recorder()
    result, seen = poll_once(store, {}, rec, emit_events=False)  # baseline: record silently
    assert rec.batches == [] and len(result.uploads) == 3 and set(seen) == {"a.png", "b.png", "c.png"}

    write_frames(store, ["d", "e", "f"], truth=False, mask_first=False, seed=9)
    result, seen = poll_once(store, seen, rec, max_events=2)
    assert len(result.uploads) == 3 and result.emitted == 2 and rec.keys == ["d.png", "e.png"]
    assert len(seen) == 6  # capped events still count as seen: the run restores all pending frames

    # An overwritten frame is only noticed with check_changes (one HEAD per frame).
    write_frames(store, ["a"], truth=False, mask_first=False, seed=77)
    result, _ = poll_once(store, seen, rec)
    assert result.uploads == ()
    result, seen = poll_once(store, seen, rec, check_changes=True)
    assert [u.key for u in result.uploads] == ["a.png"]


def test_watch_state_file_is_per_source(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    save_state(state, "file:///one", {"x.png": '"e"'})
    assert load_state(state, "file:///one") == {"x.png": '"e"'}
    with pytest.raises(WatchStateError, match="belongs to source"):
        load_state(state, "file:///two")
    state.write_text("{not json")
    with pytest.raises(WatchStateError):
        load_state(state, "file:///one")
    assert load_state(tmp_path / "missing.json", "file:///one") == {}


def test_events_carry_the_source_label() -> None:
    fields = event_fields(FrameUpload(source="s3://bucket/inbox", key="lane 1/f.png", etag='"e"', size=3))
    assert fields["event"] == UPLOAD_EVENT
    assert fields["resource"][SOURCE_LABEL] == "s3://bucket/inbox"
    assert fields["resource"]["prefect.resource.id"] == "checkout.frame.s3://bucket/inbox/lane 1/f.png"
    assert fields["payload"] == {"key": "lane 1/f.png", "etag": '"e"', "size": 3}


def test_prefect_emitter_needs_a_server() -> None:
    with (temporary_settings(restore_defaults={PREFECT_API_URL}),
          pytest.raises(EventEmitError, match="PREFECT_API_URL")):
        prefect_emitter([FrameUpload(source="file:///x", key="a.png")])


# -- SQS bridge --------------------------------------------------------------------------------


def _record(key: str, bucket: str = "bkt", name: str = "ObjectCreated:Put") -> dict:
    obj = {"key": key, "size": 5, "eTag": "abc"}
    return {"eventName": name, "s3": {"bucket": {"name": bucket}, "object": obj}}


def test_parse_notification_decodes_keys_and_envelopes() -> None:
    body = json.dumps({"Records": [_record("inbox/lane+1/f%C3%BC%2Bx.png"),
                                   _record("inbox/gone.png", name="ObjectRemoved:Delete")]})
    [rec] = parse_notification(body)
    assert (rec.bucket, rec.key, rec.etag, rec.size) == ("bkt", "inbox/lane 1/fü+x.png", '"abc"', 5)
    sns = json.dumps({"Type": "Notification", "Message": body})
    assert parse_notification(sns) == [rec]
    assert parse_notification(json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"})) == []
    no_key = json.dumps({"Records": [{"eventName": "ObjectCreated:Put"}]})
    for bad in ("not json", "[]", json.dumps({"foo": 1}), no_key):
        with pytest.raises(NotificationError):
            parse_notification(bad)


def test_uploads_for_source_keeps_frames_under_the_prefix() -> None:
    recs = parse_notification(json.dumps({"Records": [
        _record("inbox/a.png"), _record("inbox/a.mask.png"), _record("inbox/sub/b.JPG"),
        _record("inboxes/c.png"), _record("other/d.png"), _record("inbox/e.png", bucket="elsewhere"),
        _record("inbox/bad//key.png"),
    ]}))
    ups = uploads_for_source(recs, "s3://bkt/inbox/")
    assert [(u.source, u.key) for u in ups] == [("s3://bkt/inbox", "a.png"), ("s3://bkt/inbox", "sub/b.JPG")]
    assert [u.key for u in uploads_for_source(recs, "s3://bkt")][:2] == ["inbox/a.png", "inbox/sub/b.JPG"]


def test_bridge_turns_real_s3_notifications_into_events(s3_bucket: str) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"q-{s3_bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration={
        "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]})
    inbox = open_store(f"s3://{s3_bucket}/inbox")
    inbox.put("lane 1/fü+x.png", b"frame")  # a key that S3 must URL-encode in the notification
    inbox.put("lane 1/fü+x.mask.png", b"mask")
    sqs.send_message(QueueUrl=queue, MessageBody="garbage")  # unparsable: left for the dead-letter queue
    rec = Recorder()
    handled = sent = 0
    for _ in range(5):  # the test event, two notifications and the garbage may arrive over several polls
        h, s = bridge_once(sqs, queue, inbox.uri, rec, wait_s=1)
        handled, sent = handled + h, sent + s
    assert rec.keys == ["lane 1/fü+x.png"] and sent == 1
    assert rec.batches[0][0].source == inbox.uri
    assert handled == 3  # test event + two ObjectCreated notifications, deleted after emitting
    left = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                               VisibilityTimeout=0).get("Messages", [])
    assert [m["Body"] for m in left] in ([], ["garbage"])  # invisible for a while after a failed receive


# -- deployments -------------------------------------------------------------------------------


def test_deployments_nightly_cron_and_debounced_upload_trigger(tmp_path: Path) -> None:
    cfg = load_config("default")
    nightly, upload = build_deployments("file:///in", str(tmp_path / "out"), cfg, "default")
    assert nightly.name == "nightly" and upload.name == "on-upload"
    [sched] = nightly.schedules
    assert (sched.schedule.cron, sched.schedule.timezone) == (cfg.schedule.cron, cfg.schedule.timezone)
    assert nightly.parameters == upload.parameters == {"source": "file:///in", "dest": str(tmp_path / "out"),
                                                       "config": "default"}
    [trigger] = upload.triggers
    debounce = timedelta(seconds=cfg.schedule.upload_debounce_seconds)
    assert trigger.expect == {UPLOAD_EVENT}
    assert trigger.match.model_dump() == {SOURCE_LABEL: "file:///in"}
    assert (trigger.posture, trigger.threshold, trigger.within, trigger.schedule_after) == (
        "Reactive", 1, debounce, debounce)
    assert nightly.entrypoint == upload.entrypoint == "flows.pipeline.flow.restore_frames"


# -- planning ----------------------------------------------------------------------------------


def _entry(ref: FrameRef, etag: str, config_hash: str = "h", model: str = "m") -> LedgerEntry:
    return LedgerEntry(frame_id=ref.id, source_key=ref.key, source_etag=etag, config_hash=config_hash,
                       model_version=model, outputs=())


def test_plan_run_skips_current_frames_and_applies_the_limit() -> None:
    refs = [FrameRef(key=f"f{i}.png", id=f"f{i}", etag=f'"e{i}"') for i in range(5)]
    dup = FrameRef(key="g.jpg", id="g", etag='"g"', duplicates=("g.png",))
    found = Discovery(candidates=[
        Candidate(refs[0], _entry(refs[0], '"e0"')),  # up to date
        Candidate(refs[1], _entry(refs[1], '"old"')),  # source changed
        Candidate(refs[2], _entry(refs[2], '"e2"', config_hash="other")),  # config changed
        Candidate(refs[3], _entry(refs[3], '"e3"', model="old-model")),  # models changed
        Candidate(refs[4], _entry(refs[4], '"e4"'), quarantined="truncated_image"),  # known bad, unchanged
        Candidate(dup, None),
    ], invalid=[("bad\\key.png", "contains '\\'")])
    plan = plan_run(found, "h", "m", limit=None)
    # new or changed inputs first, then the backlog (same input, other settings or models)
    assert [r.key for r in plan.pending] == ["f1.png", "g.jpg", "f2.png", "f3.png"] and plan.deferred == 0
    by_key = {r["key"]: (r["status"], r["reason"]) for r in plan.rows}
    assert by_key == {"f0.png": ("skipped", "up_to_date"),
                      "f4.png": ("skipped", "quarantined_before:truncated_image"),
                      "g.png": ("quarantined", "duplicate_id"),
                      "bad\\key.png": ("quarantined", "invalid_key")}
    limited = plan_run(found, "h", "m", limit=1)
    assert [r.key for r in limited.pending] == ["f1.png"] and limited.deferred == 3


def test_summarize_counts_and_means() -> None:
    ref = FrameRef(key="a.png", id="a")
    rows = [report_row(ref, "restored", residual=1.0, psnr=30.0), report_row(ref, "restored", residual=3.0),
            report_row(ref, "skipped"), report_row(ref, "quarantined", reason="corrupt_image")]
    s = summarize(rows, run_id="r")
    assert s["counts"] == {"restored": 2, "skipped": 1, "quarantined": 1, "total": 4}
    assert s["fallbacks"] == 0 and s["fallback_rate"] == 0
    assert s["means"]["residual"] == 2.0 and s["means"]["psnr"] == 30.0 and s["means"]["kernel_mse"] is None
    assert s["quarantine_reasons"] == {"corrupt_image": 1} and s["run_id"] == "r"


def test_guard_fallbacks_are_counted_and_gated() -> None:
    from flows.reports.values import quality_gate_failed, quality_gate_text

    ref = FrameRef(key="a.png", id="a")
    rows = [report_row(ref, "restored", fallback="fit", kernel_choice="classical"),
            report_row(ref, "restored", fallback="", kernel_choice="parametric"),
            report_row(ref, "restored", fallback="sparsity")]
    s = summarize(rows, max_quarantine_rate=0.5, max_fallback_rate=0.5)
    assert s["fallbacks"] == 2 and s["fallback_reasons"] == {"fit": 1, "sparsity": 1}
    assert s["fallback_rate"] == pytest.approx(2 / 3)
    assert quality_gate_failed(s) and "alerts.max_fallback_rate" in quality_gate_text(s)
    assert not quality_gate_failed({**s, "max_fallback_rate": None})
    assert not quality_gate_failed(summarize(rows[1:2], max_quarantine_rate=0.5, max_fallback_rate=0.5))
