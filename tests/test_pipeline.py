"""The restore-frames flow end to end: real Prefect (temporary server), in-process Ray with two
actors, the shipped priors with configs/smoke.yaml, on a local folder and on moto's S3 server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pipeline_frames
import pytest
import ray
import yaml
from pipeline_frames import SIZE, CrashOn, CrashOnce, truncated_png, write_frames
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.testing.utilities import prefect_test_harness
from s3server import MotoS3

from flows.cli.pipeline import main
from flows.config import load_config
from flows.pipeline.actors import RunContext
from flows.pipeline.fanout import ActorPool, fan_out
from flows.pipeline.flow import restore_frames, run_pipeline
from flows.pipeline.ray_local import ensure_ray
from storage.errors import FrameError
from storage.images import decode_frame
from storage.keys import kernel_npy_key, kernel_png_key, ledger_key, restored_key
from storage.ledger import read_ledger
from storage.reports import load_frames_report, new_run_id
from storage.sidecars import discover, load_kernel
from storage.stores import open_store

pytestmark = pytest.mark.slow  # the module takes over a minute (Prefect server + Ray start-up)

FRAMES = ["cam1/f0", "cam1/f1", "cam2/f2", "cam2/f3", "cam3/f4"]  # + a bad one: 2 batches of 4, 2 actors
CONTENT_REASONS = {cls.reason for cls in FrameError.__subclasses__()}


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect server (own SQLite database) for the module's flow runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory: pytest.TempPathFactory, moto_s3: MotoS3) -> Iterator[None]:
    """One in-process Ray instance for the module (each run still starts and stops its actors).

    A stale ``ray_current_cluster`` file (a crashed session's) sits in Ray's default temp folder:
    a plain ``ray.init()`` would try to join that dead cluster; ``ensure_ray`` must not.
    Actors inherit the driver's environment when Ray starts (no credentials in ``runtime_env``),
    so the moto endpoint and its dummy credentials are set before.
    """
    ray.cloudpickle.register_pickle_by_value(pipeline_frames)  # workers cannot import tests/
    ray_tmp = tmp_path_factory.mktemp("raytmp")
    (ray_tmp / "ray").mkdir()
    (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in moto_s3.env().items():
            mp.setenv(name, value)
        mp.setenv("RAY_TMPDIR", str(ray_tmp))
        mp.delenv("RAY_ADDRESS", raising=False)
        with ensure_ray(load_config("smoke").cluster) as local:
            assert local and ray.is_initialized()
            yield


def _stores(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> tuple[str, str]:
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        return f"s3://{bucket}/inbox", f"s3://{bucket}/out"
    return str(tmp_path / "inbox"), str(tmp_path / "out")


def _changed_config(tmp_path: Path) -> Path:
    data = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    data["restoration"]["steps"] = data["restoration"]["steps"] - 2
    path = tmp_path / "smoke-fewer-steps.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.timeout(200)
@pytest.mark.parametrize("backend", ["local", "s3"])
def test_restore_rerun_and_config_change(backend: str, prefect_api: None, local_ray: None, tmp_path: Path,
                                         request: pytest.FixtureRequest) -> None:
    src, dst = _stores(backend, tmp_path, request)
    source = open_store(src)
    write_frames(source, FRAMES)
    source.put("cam2/bad.png", truncated_png())
    dest = open_store(dst)

    # First run: three frames restored, the truncated one quarantined with its reason.
    first = restore_frames(src, dst, "smoke")
    n = len(FRAMES)
    assert first["counts"] == {"restored": n, "skipped": 0, "quarantined": 1, "total": n + 1}
    assert first["actors"] == 2
    rows = load_frames_report(dest, first["run_id"]).set_index("key")
    assert sorted(rows.index) == sorted([f"{f}.png" for f in FRAMES] + ["cam2/bad.png"])
    bad = rows.loc["cam2/bad.png"]
    assert bad["status"] == "quarantined" and bad["reason"] in CONTENT_REASONS and bad["detail"]
    good = rows.drop(index="cam2/bad.png")
    assert (good["status"] == "restored").all()
    for col in ("psnr", "ssim", "kernel_mse", "kernel_ncc", "residual", "seconds"):
        assert np.isfinite(good[col].to_numpy(float)).all(), col  # every good frame has truth sidecars
    assert np.isnan(float(bad["psnr"]))
    for fid in FRAMES:
        assert decode_frame(dest.get(restored_key(fid))).shape == (*SIZE, 3)
        assert abs(float(load_kernel(dest.get(kernel_npy_key(fid))).sum()) - 1) < 1e-5
        assert dest.exists(kernel_png_key(fid))
        assert read_ledger(dest, fid).run_id == first["run_id"]
    for name in ("frames.parquet", "frames.csv", "summary.json"):
        assert dest.exists(f"reports/{first['run_id']}/{name}")
    assert dest.exists(first["report_key"]) and dest.exists("reports/index.html")
    assert json.loads(dest.get(f"reports/{first['run_id']}/summary.json"))["counts"] == first["counts"]

    # Rerun: nothing restored, every frame skipped (the bad one because its bytes did not change).
    second = restore_frames(src, dst, "smoke")
    assert second["counts"] == {"restored": 0, "skipped": n + 1, "quarantined": 0, "total": n + 1}
    assert second["actors"] == 0  # nothing pending: Ray was not needed
    rows2 = load_frames_report(dest, second["run_id"]).set_index("key")
    assert rows2.loc["cam2/bad.png", "reason"] == f"quarantined_before:{bad['reason']}"
    assert (rows2.drop(index="cam2/bad.png")["reason"] == "up_to_date").all()
    assert all(read_ledger(dest, fid).run_id == first["run_id"] for fid in FRAMES)

    # A changed config (fewer steps) redoes everything, the bad frame included.
    changed = _changed_config(tmp_path)
    third = restore_frames(src, dst, str(changed))
    assert third["counts"] == {"restored": n, "skipped": 0, "quarantined": 1, "total": n + 1}
    assert third["config_hash"] == load_config(str(changed)).config_hash() != first["config_hash"]
    for fid in FRAMES:
        entry = read_ledger(dest, fid)
        assert (entry.run_id, entry.config_hash) == (third["run_id"], third["config_hash"])

    if backend == "local":
        _check_artifacts(third)


def _check_artifacts(summary: dict) -> None:
    with get_client(sync_client=True) as client:
        def latest(key: str) -> object:
            arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
            return max(arts, key=lambda a: a.created)

        table = latest("restore-frames-frames")
        assert table.type == "table"
        data = json.loads(table.data) if isinstance(table.data, str) else table.data
        assert {r["key"] for r in data} == {f"{f}.png" for f in FRAMES} | {"cam2/bad.png"}
        markdown = latest("restore-frames-summary")
        assert markdown.type == "markdown" and summary["run_id"] in markdown.data
        link = latest("restore-frames-report")
        assert summary["report_uri"] in link.data  # Prefect stores link artifacts as markdown links
        progress = latest("restore-frames-progress")
        assert progress.type == "progress" and float(progress.data) == 100.0


@flow(name="restore-frames-crash-test")
def _flow_with_crash(source: str, dest: str, marker: str) -> dict:
    return run_pipeline(source, dest, "smoke", fault_hook=CrashOnce(marker))


@pytest.mark.timeout(150)
def test_actor_killed_mid_batch_every_frame_restored_once(prefect_api: None, local_ray: None,
                                                          tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    names = [f"lane/f{i}" for i in range(6)]
    write_frames(open_store(src), names, truth=False)
    marker = tmp_path / "crashed"
    summary = _flow_with_crash(str(src), str(dst), str(marker))
    crashed_key = marker.read_text()  # the worker died right after writing this frame's outputs
    assert crashed_key in {f"{n}.png" for n in names}
    assert summary["resubmitted_batches"] >= 1
    assert summary["counts"] == {"restored": 6, "skipped": 0, "quarantined": 0, "total": 6}
    dest = open_store(dst)
    rows = load_frames_report(dest, summary["run_id"])
    assert sorted(rows["key"]) == sorted(f"{n}.png" for n in names)  # each frame exactly once
    assert (rows["status"] == "restored").all()
    for n in names:
        assert dest.exists(ledger_key(n)) and read_ledger(dest, n).run_id == summary["run_id"]


@pytest.mark.timeout(120)
def test_run_command_prints_run_id_and_report(prefect_api: None, local_ray: None, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), ["a", "b", "c"], truth=False)
    assert main(["run", "--source", str(src), "--dest", str(dst), "--config", "smoke", "--limit", "2"]) == 0
    out = dict(line.split(":", 1) for line in capsys.readouterr().out.strip().splitlines())
    run_id, report = out["run id"].strip(), out["report"].strip()
    assert out["frames"].strip() == "2 restored, 0 skipped, 0 quarantined, 1 left for a later run (--limit)"
    assert report == f"{open_store(dst).uri}/reports/{run_id}/index.html"
    assert Path(report.removeprefix("file://")).is_file()
    frames = load_frames_report(open_store(dst), run_id)
    assert len(frames) == 2
    # codes readable before/after restoration (these frames carry no codes: 0 and 0)
    assert out["codes"].strip() == "readable before 0, after 0"
    assert {"codes_in", "codes_out", "codes_agree", "noise_sigma"} <= set(frames.columns)
    assert (frames["noise_sigma"] > 0).all() and (frames["codes_agree"] == 1.0).all()
    assert 'id="codes-readable">before 0, after 0' in Path(report.removeprefix("file://")).read_text()


@pytest.mark.timeout(150)
def test_a_frame_that_always_kills_its_actor_is_isolated_and_quarantined(local_ray: None,
                                                                          tmp_path: Path) -> None:
    src, dst = open_store(tmp_path / "inbox"), open_store(tmp_path / "out")
    names = [f"f{i}" for i in range(4)]
    write_frames(src, names, truth=False)
    refs = [replace(r, etag=src.head(r.key).etag) for r in discover(src)]
    cfg = load_config("smoke")
    ctx = RunContext(run_id=new_run_id(), source_uri=src.uri, dest_uri=dst.uri, config_hash=cfg.config_hash())
    pool = ActorPool(cfg.cluster, cfg.restoration, ctx, local=True, fault_hook=CrashOn("f2.png"))
    try:
        pool.ready()
        rows, resubmitted = fan_out(pool, [refs], max_in_flight=2, max_attempts=1)
    finally:
        pool.close()
    by_key = {r["key"]: r for r in rows}
    assert len(rows) == len(by_key) == 4
    assert by_key["f2.png"]["status"] == "quarantined" and by_key["f2.png"]["reason"] == "worker_crashed"
    assert all(by_key[f"{n}.png"]["status"] == "restored" for n in names if n != "f2")
    assert resubmitted == 4  # the batch of 4 was split into single frames after its first crash
    assert read_ledger(dst, "f2") is None and read_ledger(dst, "f1") is not None


# ----------------------------------------------------------------------------- the operator's night


class _Hook:
    """A webhook receiver on 127.0.0.1 that records the POSTed JSON bodies."""

    def __init__(self) -> None:
        import http.server
        import threading

        bodies = self.bodies = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log record of the flow and task run loggers, formatted."""
    import logging

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    handler = Keep(level=logging.DEBUG)
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def _all_text(root: Path) -> str:
    return "\n".join(p.read_bytes().decode("utf-8", "replace") for p in root.rglob("*") if p.is_file())


@pytest.mark.timeout(150)
def test_failed_run_is_reported_alerted_and_exits_non_zero(
        prefect_api: None, local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], log_lines: list[str]) -> None:
    import flows.pipeline.flow as pipeline_module
    from flows.pipeline.actors import PipelineError

    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), ["a", "b"], truth=False)
    assert main(["run", "--source", str(src), "--dest", str(dst), "--config", "smoke"]) == 0  # a good night
    capsys.readouterr()

    def broken(*_: object) -> str:
        raise PipelineError("priors do not load: image prior checksum mismatch")

    monkeypatch.setattr(pipeline_module, "expected_model_version", broken)
    hook = _Hook()
    token = "hook-token-3b9f1c77"
    monkeypatch.setenv("CHECKOUT_RESTORE_WEBHOOK_URL", hook.url(f"/services/{token}"))
    try:
        from flows.cli import main as cli_main

        assert cli_main(["run", "--source", str(src), "--dest", str(dst), "--config", "smoke"]) == 1
    finally:
        hook.close()
    out, err = capsys.readouterr()
    assert "status:      failed" in out and "report:" in out
    assert err.strip().splitlines() == [
        "checkout-restore: error: PipelineError: priors do not load: image prior checksum mismatch",
        "checkout-restore: rerun with --debug for the traceback"]

    dest = open_store(dst)
    runs = sorted(p.name for p in (dst / "reports").iterdir() if p.is_dir())
    failed = json.loads(dest.get(f"reports/{runs[-1]}/summary.json"))
    assert failed["status"] == "failed"
    assert failed["error"] == {"type": "PipelineError",
                               "message": "priors do not load: image prior checksum mismatch"}
    index = (dst / "reports" / "index.html").read_text()
    assert index.index(runs[-1]) < index.index(runs[0])  # on top
    assert 'id="latest-failed"' in index and '<tr class="failed" data-status="failed">' in index
    page = (dst / "reports" / runs[-1] / "index.html").read_text()
    assert 'class="banner failed"' in page and "checksum mismatch" in page

    assert len(hook.bodies) == 1
    path, body = hook.bodies[0]
    assert path == f"/services/{token}" and body["status"] == "failed" and body["run_id"] == runs[-1]
    assert "PipelineError" in body["text"]
    assert any("webhook" in line and "delivered" in line for line in log_lines)
    # the URL (it carries a token) is in no file, report or log line
    assert token not in _all_text(dst) and token not in out + err
    assert not any(token in line for line in log_lines)


@pytest.mark.timeout(150)
def test_unreachable_destination_fails_fast_to_the_local_fallback(
        prefect_api: None, tmp_path: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch,
        log_lines: list[str]) -> None:
    from storage.errors import StoreAccessError

    src = tmp_path / "inbox"
    write_frames(open_store(src), ["a"], truth=False)
    fallback = tmp_path / "fallback"
    monkeypatch.setenv("CHECKOUT_RESTORE_FALLBACK_DIR", str(fallback))
    with pytest.raises(StoreAccessError, match="NoSuchBucket") as err:
        restore_frames(str(src), "s3://no-such-bucket-0c4d/out", "smoke")
    report_uri = err.value.report_uri  # type: ignore[attr-defined]
    assert report_uri.startswith(fallback.as_uri())
    runs = [p.name for p in (fallback / "reports").iterdir() if p.is_dir()]
    assert len(runs) == 1
    summary = json.loads((fallback / "reports" / runs[0] / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]["type"] == "StoreAccessError"
    assert summary["dest"] == "s3://no-such-bucket-0c4d/out"
    assert (fallback / "reports" / "index.html").is_file()
    assert any("fallback" in line and str(fallback) in line for line in log_lines)
    # a missing bucket is permanent: discover-frames ran once, no Prefect retry
    assert not any("Retry" in line and "discover-frames" in line for line in log_lines)


@pytest.mark.timeout(200)
def test_quality_gate_unsupported_files_progress_lines_and_dashboard_link(
        prefect_api: None, local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        log_lines: list[str]) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    source = open_store(src)
    write_frames(source, ["good"], truth=True)
    source.put("bad1.png", truncated_png(1))
    source.put("bad2.png", truncated_png(2))
    source.put("scan.bmp", b"BM" + bytes(60))
    source.put("lane/x.tiff", b"II*\x00" + bytes(60))
    config = tmp_path / "gate.yaml"
    config.write_text("restoration:\n  working_size: 48\n  kernel_size: 15\n  steps: 8\n  batch_size: 1\n"
                      "alerts:\n  max_quarantine_rate: 0.5\n"
                      "reports:\n  dashboard_url: http://127.0.0.1:8765\n")
    assert main(["run", "--source", str(src), "--dest", str(dst), "--config", str(config)]) == 1
    out, err = capsys.readouterr()
    assert "status:      failed_quality" in out and "(2 unsupported files)" in out
    assert "quality gate: 67% of the processed frames were quarantined (threshold 50%" in err

    dest = open_store(dst)
    run_id = next(p.name for p in (dst / "reports").iterdir() if p.is_dir())
    summary = json.loads(dest.get(f"reports/{run_id}/summary.json"))
    assert summary["status"] == "failed_quality"  # every frame was processed, then the gate closed
    assert summary["counts"] == {"restored": 1, "skipped": 2, "quarantined": 2, "total": 5}
    assert summary["skip_reasons"] == {"unsupported_format": 2}
    assert summary["quarantine_rate"] == pytest.approx(2 / 3)
    rows = load_frames_report(dest, run_id).set_index("key")
    for key in ("scan.bmp", "lane/x.tiff"):
        assert (rows.loc[key, "status"], rows.loc[key, "reason"]) == ("skipped", "unsupported_format")
        assert ".png, .jpg, .jpeg, .webp" in rows.loc[key, "detail"]
    assert np.isfinite(rows.loc["good.png", "psnr_in"]) and np.isfinite(rows.loc["good.png", "psnr"])
    page = (dst / "reports" / run_id / "index.html").read_text()
    assert 'data-status="failed_quality"' in page and 'id="before-after"' in page
    assert any("unsupported_format" in line for line in log_lines)
    # three frames in three batches: one compact progress line (every 100 frames and at the end)
    progress = [line for line in log_lines if line.startswith(("3/3 frames", "batch "))]
    assert progress == [next(p for p in progress if p.startswith("3/3 frames"))]

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
            "restore-frames-report"])))
    mine = [a for a in arts if str(a.flow_run_id) == summary["flow_run_id"]]
    assert len(mine) == 1  # Prefect stores a link artifact as a markdown link: [text](url)
    assert f"(http://127.0.0.1:8765/{run_id}/)" in mine[0].data and "Open it with" not in mine[0].data
