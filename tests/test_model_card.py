"""Model-card measurement helpers added for issue 11 (native set, gain history, kernel sizes)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from flows.evaluation.model_card import GAIN_HISTORY, cmd_gain_curve, record_gains
from flows.evaluation.prior_measures import kernel_size_rows, native_crops
from restoration.priors import load_shipped


def test_native_crops_are_seeded_cached_and_in_range(tmp_path: Path) -> None:
    a = native_crops([11_000_000], 64, tmp_path)
    assert a.shape == (1, 3, 64, 64) and a.min() >= -1 and a.max() <= 1
    assert len(list(tmp_path.glob("native-crops-*.npy"))) == 1
    torch.testing.assert_close(native_crops([11_000_000], 64, tmp_path), a)  # from the cache
    torch.testing.assert_close(native_crops([11_000_000], 64, None), a)  # rendered again


def test_record_gains_and_curve(tmp_path: Path) -> None:
    prior = load_shipped("image")
    rows = [{"t": t, "gain_db": g} for t, g in ((0.05, 6.0), (0.1, 4.0), (0.2, 2.5), (0.4, 1.7))]
    record_gains(tmp_path / GAIN_HISTORY, "v2", prior, "scene", rows)
    record_gains(tmp_path / GAIN_HISTORY, "v2", prior, "native", rows)
    lines = (tmp_path / GAIN_HISTORY).read_text().splitlines()
    assert lines[0] == "run,version,cumulative_steps,set,t,gain_db" and len(lines) == 9
    assert lines[1].split(",")[:4] == ["v2", prior.version, str(prior.meta["steps"]), "scene"]
    cmd_gain_curve(argparse.Namespace(docs=tmp_path))
    assert (tmp_path / "prior_image_gain_curve.png").stat().st_size > 0


def test_kernel_size_rows_cover_both_canvases() -> None:
    prior = load_shipped("kernel")
    rows = kernel_size_rows(prior, 4, 0, ["motion", "gaussian"], 31)
    cases = {r["case"] for r in rows}
    assert len(cases) == 3 and len(rows) == 3 * 5
    for r in rows:
        assert 0 <= r["ncc"] <= 1.0 + 1e-9 and r["mse_1e4"] >= 0
    # t = 0 on the prior's own canvas is the projection alone: near-perfect
    own = next(r for r in rows if r["t"] == 0 and r["case"].startswith("31 px"))
    assert own["ncc"] > 0.97
