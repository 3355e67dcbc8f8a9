"""`checkout-restore bench`: deterministic set generation, the runner, the results table."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flows.evaluation.bench import main
from flows.evaluation.frames import BenchError
from flows.evaluation.suites import MANIFEST, BenchSpec, generate_set, hand_occluder
from flows.fonts import find_fonts
from storage.stores import open_store

FONTS = tuple(find_fonts())
TINY = BenchSpec(frames_per_suite=2, size=48, fonts=FONTS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("set")
    generate_set(open_store(root), TINY, progress=False)
    return root


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_set_layout_and_deterministic_bytes(tiny_set: Path, tmp_path: Path) -> None:
    files = _files(tiny_set)
    for suite in ("motion", "gaussian", "motion+occlusion"):
        for i in range(2):
            for suffix in (".png", ".sharp.png", ".kernel.npy"):
                assert f"{suite}/f{i:03d}{suffix}" in files
    assert "motion+occlusion/f000.mask.png" in files and "motion/f000.mask.png" not in files
    assert MANIFEST in files
    again = tmp_path / "again"
    again.mkdir()
    generate_set(open_store(again), TINY, progress=False)
    assert _files(again) == files  # same bytes, every file
    # the same spec is reused; a different spec in the same folder is refused
    generate_set(open_store(again), TINY, progress=False)
    with pytest.raises(BenchError):
        generate_set(open_store(again), BenchSpec(frames_per_suite=3, size=48, fonts=FONTS))


def test_hand_occluder_coverage() -> None:
    for i in range(4):
        g = torch.Generator().manual_seed(i)
        hand, colour = hand_occluder(96, 128, g, (0.10, 0.25))
        assert hand.shape == (96, 128) and colour.shape == (96, 128, 3)
        assert 0.09 <= hand.mean() <= 0.26
        assert colour.min() >= 0 and colour.max() <= 1


def test_runner_table_and_oracle_beats_blurred(tiny_set: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    methods = "blurred,classical-blind,oracle-wiener"
    rc = main(["--data", str(tiny_set), "--methods", methods, "--limit", "4", "--out", str(out),
               "--no-progress", "--threads", "1"])  # fmt: skip
    assert rc == 0
    df = pd.read_parquet(out / "results.parquet")
    for col in ("method", "frame", "suite", "psnr", "ssim", "kernel_mse", "kernel_ncc",
                "seconds", "nfe", "psnr_in_mask", "psnr_out_mask"):  # fmt: skip
        assert col in df.columns
    frames = sorted(df["frame"].unique())
    assert frames == ["gaussian/f000", "gaussian/f001", "motion+occlusion/f000",
                      "motion+occlusion/f001"]  # fmt: skip
    assert len(df) == 4 * 3 + 4  # three methods + the fixed-kernel guess per frame
    assert set(df["method"]) == {"blurred", "classical-blind", "oracle-wiener", "fixed-kernel"}
    mean = df.groupby("method")["psnr"].mean()
    assert mean["oracle-wiener"] > mean["blurred"]
    blind = df[df["method"] == "classical-blind"]
    assert blind["kernel_ncc"].between(0, 1).all() and (blind["kernel_mse"] > 0).all()
    occl = df[df["suite"] == "motion+occlusion"]
    restored = occl[occl["method"] != "fixed-kernel"]
    assert restored["psnr_in_mask"].notna().all() and restored["psnr_out_mask"].notna().all()
    assert df[df["suite"] == "gaussian"]["psnr_in_mask"].isna().all()
    assert (df[df["method"] == "blurred"]["nfe"] == 0).all()
    text = (out / "results.md").read_text()
    assert "| suite | method |" in text and "oracle-wiener" in text and "hindsight" in text


def test_frames_without_truth_and_bad_arguments(tiny_set: Path, tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "shot.png").write_bytes((tiny_set / "motion" / "f000.png").read_bytes())
    out = tmp_path / "out"
    assert main(["--data", str(bare), "--methods", "blurred,classical-blind", "--out", str(out),
                 "--no-progress"]) == 0  # fmt: skip
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 and df["psnr"].isna().all() and df["kernel_mse"].isna().all()
    assert all(math.isfinite(v) for v in df["sharpness_gain"])
    # an oracle needs the true kernel; unknown methods are named
    assert main(["--data", str(bare), "--methods", "oracle-wiener", "--out", str(out),
                 "--no-progress"]) == 2  # fmt: skip
    assert main(["--data", str(bare), "--methods", "magic", "--out", str(out)]) == 2
    assert np.isfinite(df["seconds"]).all()


def test_near_sharp_suite_extends_a_set_and_harm_is_counted(tmp_path: Path) -> None:
    from flows.evaluation.suites import SUITE_KERNELS, near_sharp_kernel

    for i in range(12):  # identity, Gaussian sigma <= 0.6 or motion <= 3 px: little spread
        k = near_sharp_kernel(15, torch.Generator().manual_seed(i))[0, 0]
        assert abs(float(k.sum()) - 1) < 1e-9
        r = torch.arange(15, dtype=torch.float64) - 7
        spread = float((k.sum(0) * r**2).sum() + (k.sum(1) * r**2).sum()) ** 0.5
        assert spread <= 1.6
    assert list(SUITE_KERNELS)[:3] == ["motion", "gaussian", "motion+occlusion"]  # seeds stay put
    root = tmp_path / "set"
    store = open_store(root)
    small = BenchSpec(suites=("gaussian",), frames_per_suite=2, size=48, fonts=FONTS)
    generate_set(store, small, progress=False)
    before = _files(root)
    generate_set(store, BenchSpec(suites=("gaussian", "near-sharp"), frames_per_suite=2, size=48,
                                  fonts=FONTS), progress=False)  # fmt: skip
    after = _files(root)
    assert all(after[k] == v for k, v in before.items() if MANIFEST not in k)  # frames untouched
    assert "near-sharp/f001.png" in after
    out = tmp_path / "out"
    assert main(["--set", str(root), "--suites", "near-sharp", "--frames-per-suite", "2", "--size", "48",
                 "--methods", "blurred,oracle-wiener", "--out", str(out), "--no-progress"]) == 0  # fmt: skip
    df = pd.read_parquet(out / "results.parquet")
    assert set(df["suite"]) == {"near-sharp"}
    blurred = df[df["method"] == "blurred"]
    assert (blurred["harmed"] == 0).all() and (blurred["shift_px"] < 0.5).all()
    assert np.allclose(blurred["psnr_input"], blurred["psnr"])
    text = (out / "results.md").read_text()
    assert "frames harmed" in text and "gap to oracle-cvsa" in text
