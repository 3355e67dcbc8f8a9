"""The long-running commands survive outages: backoff, one log line per outage, nothing lost,
a missing queue is one clear line, SIGTERM stops them cleanly."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from flows.errors import UserError
from flows.pipeline.bridge_sqs import bridge, check_queue
from flows.pipeline.daemon import Backoff
from flows.pipeline.tasks import Progress  # imports Prefect, which sets up logging: before caplog does
from flows.pipeline.upload_events import EventEmitError, FrameUpload
from flows.pipeline.watch import WatchOptions, watch
from storage.errors import StoreAccessError
from storage.stores import open_store

REPO = Path(__file__).resolve().parents[1]


def _png() -> bytes:
    import numpy as np

    from storage.images import encode_png

    return encode_png(np.zeros((8, 8, 3), np.uint8))


class _Flaky:
    """An emitter that fails ``failures`` times (Prefect API down), then records what it sends."""

    def __init__(self, failures: int, stop: threading.Event, expect: int) -> None:
        self.failures, self.stop, self.expect = failures, stop, expect
        self.sent: list[FrameUpload] = []
        self.calls = 0

    def __call__(self, uploads: list[FrameUpload]) -> None:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise EventEmitError("could not send 2 event(s): [Errno 111] Connection refused")
        self.sent.extend(uploads)
        if len(self.sent) >= self.expect:
            self.stop.set()


def test_backoff_doubles_and_logs_one_line_per_outage(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.backoff")
    backoff = Backoff("thing", log, initial=1, maximum=8)
    with caplog.at_level(logging.INFO, logger="test.backoff"):
        delays = [backoff.failed(ConnectionError("down")) for _ in range(6)]
        backoff.succeeded()
        backoff.succeeded()
        backoff.failed(TimeoutError())
    assert delays == [1, 2, 4, 8, 8, 8]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # outage 1 start, end; outage 2 start
    assert "thing unavailable (ConnectionError: down)" in messages[0]
    assert "thing back after" in messages[1] and "6 failed attempts" in messages[1]


def test_watch_rides_out_a_prefect_outage_and_loses_nothing(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(tmp_path / "inbox")
    store.put("a.png", _png())
    store.put("b.png", _png())
    stop = threading.Event()
    emit = _Flaky(failures=3, stop=stop, expect=2)
    with caplog.at_level(logging.INFO, logger="checkout_restore.watch"):
        sent = watch(store, emit, WatchOptions(state_path=tmp_path / "state.json", interval_s=0.01,
                                               max_backoff_s=0.05), stop=stop)
    assert sent == 2 and sorted(u.key for u in emit.sent) == ["a.png", "b.png"] and emit.calls == 4
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1 and sum("back after" in m for m in messages) == 1
    assert not any(r.exc_info for r in caplog.records)


def test_watch_retries_a_store_outage_but_not_a_permanent_error(tmp_path: Path) -> None:
    store = open_store(tmp_path / "inbox")
    store.put("a.png", _png())

    class Outage:
        def __init__(self, inner: object, failures: int, code: str | None) -> None:
            self.inner, self.failures, self.code = inner, failures, code

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

        def list(self, prefix: str = ""):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise StoreAccessError("S3 ListObjectsV2 failed", operation="ListObjectsV2", key=None,
                                       code=self.code)
            return self.inner.list(prefix)

    stop = threading.Event()
    emit = _Flaky(failures=0, stop=stop, expect=1)
    fast = WatchOptions(state_path=tmp_path / "s1.json", interval_s=0.01, max_backoff_s=0.02)
    assert watch(Outage(store, 2, "SlowDown"), emit, fast, stop) == 1  # type: ignore[arg-type]
    with pytest.raises(StoreAccessError):
        watch(Outage(store, 1, "NoSuchBucket"), emit,  # type: ignore[arg-type]
              replace(fast, state_path=tmp_path / "s2.json"), threading.Event())


def test_bridge_checks_the_queue_and_rides_out_sqs_outages(s3_env: object,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    import boto3
    from botocore.exceptions import EndpointConnectionError

    sqs = boto3.client("sqs")
    with pytest.raises(UserError, match="does not exist — create it"):
        check_queue(sqs, sqs.meta.endpoint_url + "/123456789012/no-such-queue")
    queue = sqs.create_queue(QueueName="bridge-outage")["QueueUrl"]
    check_queue(sqs, queue)

    stop = threading.Event()

    class FlakySQS:
        def __init__(self) -> None:
            self.failures = 2

        def receive_message(self, **kw: object) -> dict:
            if self.failures:
                self.failures -= 1
                raise EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
            stop.set()
            return {}

    with caplog.at_level(logging.INFO, logger="checkout_restore.bridge_sqs"):
        assert bridge(FlakySQS(), queue, "s3://b/in", lambda u: None, wait_s=0, stop=stop,
                      max_backoff_s=0.02) == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1 and sum("back after" in m for m in messages) == 1


def test_watch_command_survives_an_unreachable_prefect_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    open_store(inbox).put("a.png", _png())
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": "http://127.0.0.1:9/api",
           "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "watch", "--source", str(inbox),
                             "--interval", "0.2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        lines: list[str] = []
        assert proc.stderr is not None
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "unavailable" in line:
                break
        assert any("unavailable" in line for line in lines), lines
        time.sleep(1.5)  # several failed attempts
        proc.send_signal(signal.SIGTERM)
        out, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines) + rest
    assert proc.returncode == 0, err
    assert err.count("unavailable") == 1 and "Traceback" not in err
    assert out.strip() == "0 events sent"


def test_the_documented_prefect_automation_is_valid() -> None:
    """The alert recipe in docs/pipeline.md parses as a Prefect automation (`prefect automation create`)."""
    import re

    import yaml
    from prefect.events.schemas.automations import AutomationCore

    doc = (REPO / "docs" / "pipeline.md").read_text()
    block = re.search(r"```yaml\n(# restore-frames-alert\.yaml.*?)```", doc, re.S)
    assert block is not None
    automation = AutomationCore.model_validate(yaml.safe_load(block.group(1)))
    assert automation.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    assert automation.actions[0].type == "send-notification"


def test_serve_waits_for_an_unreachable_prefect_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--source", str(tmp_path / "inbox"),
                             "--dest", str(tmp_path / "out"), "--config", "smoke"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "unavailable" in line or not line:
                break
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(lines) + rest
    assert "Prefect API unavailable" in err and err.count("unavailable") == 1, err
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_progress_is_a_bar_on_a_terminal_and_a_line_every_n_frames_otherwise(
        caplog: pytest.LogCaptureFixture) -> None:
    import io

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    log = logging.getLogger("test.progress")
    tty = Tty()
    with caplog.at_level(logging.INFO, logger="test.progress"):
        bar = Progress(250, log, every=100, stream=tty)
        for done in range(10, 251, 10):  # 25 batches of 10
            bar.update(done, done / 5.0, 0)
        bar.close()
        assert len(caplog.records) == 3  # the bar, and the same lines as in a log file
        assert "250/250" in tty.getvalue() and "frame" in tty.getvalue()
        caplog.clear()

        plain = io.StringIO()
        lines = Progress(250, log, every=100, stream=plain)
        for done in range(10, 251, 10):
            lines.update(done, done / 5.0, 1)
        lines.close()
    assert plain.getvalue() == ""
    assert [r.getMessage() for r in caplog.records] == [
        "100/250 frames (40%), 5.00 frames/s, ETA 30 s, 1 batches resubmitted",
        "200/250 frames (80%), 5.00 frames/s, ETA 10 s, 1 batches resubmitted",
        "250/250 frames (100%), 5.00 frames/s, ETA 0 s, 1 batches resubmitted"]
    slow = Progress(1000, log, every=100, stream=io.StringIO(), seconds=60.0)  # 1 frame/s: time decides
    with caplog.at_level(logging.INFO, logger="test.progress"):
        caplog.clear()
        for done in range(10, 131, 10):
            slow.update(done, float(done), 0)
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["60/1000 frames (6%)",
                                                                      "120/1000 frames (12%)"]
    assert "ETA 15 min 40 s" in caplog.records[0].getMessage()


@pytest.mark.timeout(200)
def test_serve_stops_within_10_s_of_one_sigterm(tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    (tmp_path / "inbox").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": str(PREFECT_API_URL.value())}
            proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--source",
                                     str(tmp_path / "inbox"), "--dest", str(tmp_path / "out"), "--config",
                                     "smoke"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
            lines: list[str] = []
            assert proc.stdout is not None
            threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
            try:
                deadline = time.monotonic() + 150
                while not any("/deployments" in line for line in lines):  # serving: the UI hint printed
                    assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
                    time.sleep(0.3)
                sent = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                rc = proc.wait(timeout=30)
                took = time.monotonic() - sent
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    # stopped, cleanly, within 10 s; the exit status races inside Prefect's serve: after its own
    # "shutting down" it sometimes ends by the SIGINT it re-raises (-2) instead of exiting 0
    text = "".join(lines)
    assert took < 10 and rc in (0, -signal.SIGINT), (rc, took, text[-3000:])
    assert rc == 0 or "shutting down" in text, text[-3000:]
    print(f"serve: exit {rc} {took:.1f} s after one SIGTERM")
