"""Deployments end to end: a real ``prefect server`` on 127.0.0.1, ``serve`` in a subprocess,
upload events from ``watch``, and exactly one debounced triggered run restoring the new frames."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pipeline_frames import write_frames
from s3server import free_port

from flows.config import load_config
from storage.keys import restored_key
from storage.stores import open_store

CONFIG = "smoke"


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the process group we started (serve's flow-run children included), then SIGKILL."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _wait(what: str, check, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    """``prefect server start`` on a free port with its own PREFECT_HOME; yields (api url, env)."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": api,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_UI_ENABLED": "false",
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_LOGGING_LEVEL": "INFO"}
    log = (home / "server.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--no-ui"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"{api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                assert proc.poll() is None, (home / "server.log").read_text()[-3000:]
                return False

        _wait("the Prefect server", healthy, timeout=120)
        yield api, env
    finally:
        _stop(proc)
        log.close()


def _runs(api: str, deployment_id: str) -> list[dict]:
    resp = httpx.post(f"{api}/flow_runs/filter", json={"deployments": {"id": {"any_": [deployment_id]}}},
                      timeout=10)
    resp.raise_for_status()
    return resp.json()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_serve_nightly_and_one_debounced_upload_run(server: tuple[str, dict[str, str]],
                                                    tmp_path: Path) -> None:
    api, env = server
    cfg = load_config(CONFIG)
    src, dst = tmp_path / "inbox", tmp_path / "out"
    src.mkdir()
    source_uri = open_store(src).uri
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        serve = subprocess.Popen([sys.executable, "-m", "flows.cli.pipeline", "serve", "--source", str(src),
                                  "--dest", str(dst), "--config", CONFIG], env=env, stdout=log,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            def deployment(name: str) -> dict | None:
                assert serve.poll() is None, log_path.read_text()[-4000:]
                resp = httpx.get(f"{api}/deployments/name/restore-frames/{name}", timeout=5)
                return resp.json() if resp.status_code == 200 else None

            nightly = _wait("the nightly deployment", lambda: deployment("nightly"), timeout=90)
            upload = _wait("the on-upload deployment", lambda: deployment("on-upload"), timeout=30)

            # The nightly schedule is registered with the config's cron and time zone.
            [sched] = nightly["schedules"]
            assert sched["active"] is True
            assert sched["schedule"]["cron"] == cfg.schedule.cron
            assert sched["schedule"]["timezone"] == cfg.schedule.timezone
            assert nightly["parameters"] == {"source": source_uri, "dest": str(dst), "config": CONFIG}

            # The on-upload trigger's automation is in place before any upload.
            def automation() -> list[dict]:
                resp = httpx.post(f"{api}/automations/filter", json={}, timeout=5)
                return [a for a in resp.json() if a["actions"][0].get("deployment_id") == upload["id"]]

            [auto] = _wait("the on-upload automation", automation, timeout=30)
            trigger = auto["trigger"]
            assert trigger["expect"] == ["checkout.frame.uploaded"]
            assert trigger["match"] == {"checkout.source": source_uri}
            assert trigger["within"] == cfg.schedule.upload_debounce_seconds
            time.sleep(2)  # let the trigger service load the new automation
            assert _runs(api, upload["id"]) == []

            # A burst of three uploads, announced by the poller: three events, one run.
            write_frames(open_store(src), ["lane1/a", "lane1/b", "lane2/c"], truth=False, seed=40)
            watch = subprocess.run([sys.executable, "-m", "flows.cli.pipeline", "watch", "--source", str(src),
                                    "--once", "--state", str(tmp_path / "watch.json")], env=env,
                                   capture_output=True, text=True, timeout=60)
            assert watch.returncode == 0, watch.stderr[-3000:]
            assert "3 events sent" in watch.stdout
            seen = json.loads((tmp_path / "watch.json").read_text())["seen"]
            assert sorted(seen) == ["lane1/a.png", "lane1/b.png", "lane2/c.png"]

            def finished() -> list[dict]:
                runs = _runs(api, upload["id"])
                assert all(r["state_type"] not in ("FAILED", "CRASHED") for r in runs), \
                    log_path.read_text()[-6000:]
                return [r for r in runs if r["state_type"] == "COMPLETED"]

            [run] = _wait("the triggered run to complete", finished, timeout=150, every=1)
            time.sleep(cfg.schedule.upload_debounce_seconds + 2)  # a second run would be scheduled by now
            runs = _runs(api, upload["id"])
            assert len(runs) == 1, [(r["name"], r["state_type"]) for r in runs]
            assert run["parameters"]["source"] == source_uri

            # That run restored exactly the new frames.
            dest = open_store(dst)
            for fid in ("lane1/a", "lane1/b", "lane2/c"):
                assert dest.exists(restored_key(fid))
            [summary_key] = [k for k in dest.list("reports/") if k.endswith("/summary.json")]
            summary = json.loads(dest.get(summary_key))
            assert summary["counts"] == {"restored": 3, "skipped": 0, "quarantined": 0, "total": 3}
            assert summary["flow_run_id"] == run["id"]
            assert _runs(api, nightly["id"]) == [] or all(
                r["state_type"] == "SCHEDULED" for r in _runs(api, nightly["id"]))
        finally:
            _stop(serve)
    # SIGTERM paused the served deployments (Prefect's default for serve).
    resp = httpx.get(f"{api}/deployments/name/restore-frames/nightly", timeout=5)
    assert resp.json()["paused"] is True
