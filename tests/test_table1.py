"""The Table-1 bench suite (`bench --suites table1`) and the `restore` subcommand, end to end."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flows.cli import main as cli_main
from flows.evaluation.bench import main
from flows.evaluation.scoring import COLUMNS
from flows.evaluation.table1 import METHOD_NAMES, parse_tasks
from restoration.tasks import TASK_NAMES
from storage.images import decode_frame, encode_png
from storage.sidecars import save_kernel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_suites_argument_selects_table1_tasks() -> None:
    assert parse_tasks("motion,gaussian") is None
    assert parse_tasks("table1") == list(TASK_NAMES)
    assert parse_tasks("table1:sr4,table1:phase-retrieval") == ["sr4", "phase-retrieval"]


def test_bench_table1_fills_every_cell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "t1"
    argv = ["--suites", "table1", "--size", "32", "--limit", "1", "--steps", "2", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert list(df.columns) == [*COLUMNS, "task"]
    assert len(df) == len(TASK_NAMES) * len(METHOD_NAMES)
    for (task, method), row in df.set_index(["task", "method"]).iterrows():
        if (task, method) == ("phase-retrieval", "dmps"):
            assert math.isnan(row["psnr"]) and row["note"].startswith("n/a")
        else:
            assert np.isfinite(row["psnr"]) and row["psnr"] > 0, (task, method)
    text = (out / "results.md").read_text()
    assert "| method | sr4 | inpaint-box" in text and "n/a" in text
    parts = sorted(p.name for p in (out / "parts").iterdir())
    assert len(parts) == len(TASK_NAMES)
    # a rerun with the same settings reuses every finished task
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().err.count("reusing") == len(TASK_NAMES)


def test_restore_cli_writes_a_deblurred_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = np.random.default_rng(0)
    frame = g.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    (tmp_path / "f.png").write_bytes(encode_png(frame))
    k = np.zeros((5, 5), np.float32)
    k[2, 1:4] = 1 / 3
    (tmp_path / "k.npy").write_bytes(save_kernel(k))
    before = (tmp_path / "f.png").read_bytes()
    for method in ("classical", "cvsa-prox"):
        target = tmp_path / f"{method}.png"
        rc = cli_main([
            "restore", "--task", "deblur-motion", "--input", str(tmp_path / "f.png"),
            "--kernel", str(tmp_path / "k.npy"), "--out", str(target), "--method", method,
        ])  # fmt: skip
        assert rc == 0
        assert decode_frame(target.read_bytes()).shape == frame.shape
    assert (tmp_path / "f.png").read_bytes() == before  # the input is never modified
    rc = cli_main(["restore", "--task", "deblur-motion", "--input", str(tmp_path / "f.png"),
                   "--out", str(tmp_path / "x.png")])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().startswith("restore:") and "--kernel" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_denoise_task_is_the_identity_at_the_runs_noise_level() -> None:
    from restoration.tasks import DENOISE, TaskParams, degrade, problem

    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 16, 16, generator=g) * 2 - 1
    y, truth = degrade(DENOISE, x, TaskParams(noise_sigma=0.2), torch.Generator().manual_seed(1))
    assert torch.equal(truth, x) and 0.15 < float((y - x).std()) < 0.25
    prob = problem(DENOISE, y, TaskParams(noise_sigma=0.2))
    assert torch.equal(prob.forward(x), x) and torch.equal(prob.adjoint(y), y)
    assert prob.noise_sigma == pytest.approx(0.2)


def test_denoise_yardstick_runs_on_a_folder(tmp_path: Path) -> None:
    """`bench --suites denoise --photos DIR`: one row per method, sigma and image; the prior beats
    the noisy input at sigma = 50 on smooth images."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        ramp = np.add.outer(np.linspace(40, 200, 24), np.linspace(0, 30 * i, 32))
        Image.fromarray(ramp.astype(np.uint8)).save(photos / f"g{i}.png")
    out = tmp_path / "out"
    assert main(["--suites", "denoise", "--photos", str(photos), "--sigma", "50", "--methods",
                 "noisy,cvsa-prox", "--out", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 4 and set(df["method"]) == {"noisy", "cvsa-prox"}
    means = df.groupby("method")["psnr"].mean()
    assert means["cvsa-prox"] > means["noisy"] + 3
