"""Remembered failures (issue 23): a frame refused for good is not retried while its bytes and the
settings are unchanged, a frame whose outputs the destination cannot hold gets nothing written,
and an unchanged folder gets the same verdict every night. Real Prefect (temporary server),
in-process Ray, the shipped priors with a smoke-sized config, through ``checkout-restore run``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pipeline_frames
import pytest
import ray
from pipeline_frames import PidRestorer, SlowPidRestorer, make_frame, write_frames
from prefect import flow
from prefect.testing.utilities import prefect_test_harness

from flows.cli.pipeline import main
from flows.config import load_config
from flows.pipeline.flow import run_pipeline, run_shape
from flows.pipeline.ray_local import ensure_ray
from storage.images import encode_png
from storage.reports import load_frames_report, load_run_index
from storage.stores import open_store

pytestmark = pytest.mark.slow

LONG_ID = "L" * 246  # <id>.png fits a 255-byte name with the store's .json suffix; ledger/<id>.json does not


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            yield


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    ray.cloudpickle.register_pickle_by_value(pipeline_frames)
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("RAY_ADDRESS", raising=False)
        with ensure_ray(load_config("smoke").cluster):
            yield


@pytest.mark.timeout(400)
def test_two_permanently_bad_files_same_verdict_three_nights_nothing_redone(
        prefect_api: None, local_ray: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    source = open_store(src)
    write_frames(source, ["g0", "g1", "g2"], truth=False)
    source.put("tiny.png", encode_png(np.full((1, 1, 3), 128, np.uint8)))  # 1x1: the sampler refuses it
    source.put(f"{LONG_ID}.png", encode_png(make_frame(7)[0]))
    config = tmp_path / "gate.yaml"
    config.write_text("restoration:\n  working_size: 48\n  kernel_size: 15\n  steps: 4\n  batch_size: 2\n"
                      "alerts:\n  max_quarantine_rate: 0.5\n")
    argv = ["run", "--source", str(src), "--dest", str(dst), "--config", str(config)]
    codes = [main(argv) for _ in range(3)]
    capsys.readouterr()
    dest = open_store(dst)
    runs = list(reversed(load_run_index(dest)))  # oldest first
    summaries = [json.loads(dest.get(f"reports/{r['run_id']}/summary.json")) for r in runs]
    assert len(summaries) == 3
    first, *later = summaries
    assert first["counts"]["restored"] == 3 and first["counts"]["quarantined"] == 2, first["counts"]
    assert set(first["quarantine_reasons"]) >= {"invalid_key"}
    for s in later:
        assert s["counts"]["restored"] == 0, s["counts"]  # nothing redone on the 2nd and 3rd night
        assert s["skip_reasons"].get("up_to_date") == 3
        assert s["standing_failures"] + s["counts"]["quarantined"] == 2
    assert len({(s["status"], s["quarantine_rate"]) for s in summaries}) == 1, summaries
    assert summaries[0]["status"] == "succeeded" and codes == [0, 0, 0]
    # refused before restoration: not one output (nor a ledger entry) for the long name
    assert not [k for k in dest.list() if LONG_ID in k and not k.startswith("reports/")]

    assert main([*argv, "--retry-quarantined"]) == 0  # forced: the 1x1 frame is tried (and refused) again
    capsys.readouterr()
    forced = json.loads(dest.get(f"reports/{load_run_index(dest)[0]['run_id']}/summary.json"))
    assert forced["standing_failures"] == 0 and forced["counts"]["quarantined"] == 2
    assert forced["counts"]["restored"] == 0


@flow(name="restore-frames-shape")
def _run_fake(source: str, dest: str, config: str, factory: str = "pid") -> dict:
    factories = {"pid": PidRestorer, "slow": SlowPidRestorer}
    return run_pipeline(source, dest, config, restorer_factory=factories[factory])


@pytest.mark.timeout(200)
def test_small_run_spreads_over_all_actors(prefect_api: None, local_ray: None, tmp_path: Path) -> None:
    assert run_shape(4, 2, 4) == (2, 2) and run_shape(1, 2, 4) == (1, 1) and run_shape(100, 2, 4) == (2, 4)
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), [f"u{i}" for i in range(4)], truth=False)
    summary = _run_fake(str(src), str(dst), "smoke")  # batch_size 4, 2 actors
    rows = load_frames_report(open_store(dst), summary["run_id"])
    assert summary["actors"] == 2 and list(rows["status"]) == ["restored"] * 4
    assert rows["nfe"].nunique() == 2, rows[["key", "nfe"]]  # both actors restored frames


@pytest.mark.timeout(200)
def test_log_file_run_shows_progress_with_rate_and_eta_and_warns_on_an_empty_prefix(
        prefect_api: None, local_ray: None, tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), [f"p{i:02d}" for i in range(20)], truth=False)
    config = tmp_path / "progress.yaml"
    config.write_text("restoration:\n  working_size: 48\n  kernel_size: 15\n  batch_size: 2\n"
                      "reports:\n  progress_every: 6\n  progress_seconds: 2\n")
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)  # a log file, not a terminal
    logging.getLogger("prefect").addHandler(handler)
    try:
        _run_fake(str(src), str(dst), str(config), "slow")
        empty = tmp_path / "inbx"  # a prefix typo: the folder exists but holds no frame
        empty.mkdir()
        typo = _run_fake(str(empty), str(tmp_path / "out2"), str(config))
    finally:
        logging.getLogger("prefect").removeHandler(handler)
        handler.close()
    text = log_file.read_text()
    progress = [line for line in text.splitlines() if "/20 frames (" in line]
    assert len(progress) >= 3, text
    rate_eta = re.compile(r"\d+\.\d\d frames/s, ETA (\d+ s|\d+ min \d\d s)")
    assert all(rate_eta.search(line) for line in progress), progress
    assert progress[-1].startswith("20/20 frames (100%)")
    assert typo["counts"]["total"] == 0 and "no frames under" in typo["warnings"][0]
    assert "no frames under" in text and "check the source URI" in text
