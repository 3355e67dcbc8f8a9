"""The bench's native suites (codes that must read) and `bench-pipeline --sizes`."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.evaluation.bench import main
from flows.evaluation.bench_sizes import SizeBenchError, bench_sizes, parse_sizes, size_frame
from flows.evaluation.suites import BenchSpec, generate_set
from restoration.codes import codes_agree, decode_codes
from restoration.rng import generator_for
from restoration.synthetic.coded import native_frame
from storage.stores import open_store

FONTS = tuple(sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf")))


def test_native_frames_have_camera_sizes_real_codes_and_valid_blur() -> None:
    for i, kind in enumerate(("motion", "gaussian", "motion")):
        f = native_frame(generator_for(f"test/native/{i}"), 10_300_000 + i, kind, FONTS)
        h, w = f.blurred.shape[:2]
        assert 256 <= max(h, w) <= 640 and f.sharp.shape == f.blurred.shape
        assert round(max(h, w) / min(h, w), 2) in (1.0, 1.33)
        assert f.kernel.shape[0] % 2 == 1 and f.kernel.shape[0] <= 41
        assert abs(f.kernel.sum() - 1) < 1e-9 and 0.005 <= f.noise_sigma <= 0.02
        assert f.codes and len(f.codes[0]) == 13  # an EAN-13 first
        # the truth reads: the frames test restoration, not a renderer that draws unreadable codes
        assert set(f.codes) & set(decode_codes(f.sharp))
    again = native_frame(generator_for("test/native/0"), 10_300_000, "motion", FONTS)
    first = native_frame(generator_for("test/native/0"), 10_300_000, "motion", FONTS)
    assert np.array_equal(again.blurred, first.blurred) and again.codes == first.codes


def test_codes_agree_means_nothing_lost_or_changed() -> None:
    assert codes_agree(("a",), ("a", "b")) and codes_agree((), ("b",))
    assert not codes_agree(("a",), ()) and not codes_agree(("a",), ("a2",))


def test_native_suite_set_and_code_columns(tmp_path: Path) -> None:
    spec = BenchSpec(suites=("native-motion", "native-gaussian"), frames_per_suite=1, fonts=FONTS)
    generate_set(open_store(tmp_path / "set"), spec, progress=False)
    codes = json.loads((tmp_path / "set" / "native-motion" / "f000.codes.json").read_text())
    assert codes["codes"] and isinstance(codes["price"], str)
    out = tmp_path / "out"
    rc = main(["--data", str(tmp_path / "set"), "--methods", "blurred", "--out", str(out), "--no-progress"])
    assert rc == 0
    df = pd.read_parquet(out / "results.parquet")
    rows = df[df["method"] == "blurred"]
    assert (rows["codes_true"] >= 1).all() and (rows["codes_decoded"] <= rows["codes_true"]).all()
    assert (rows["codes_sharp"] >= 1).all()
    text = (out / "results.md").read_text()
    assert "| codes read | sharp reads | codes lost |" in text and "native-gaussian" in text


def test_unknown_suite_and_alias(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="unknown suites"):
        BenchSpec(suites=("nope",)).validate()
    rc = main(["--suites", "native", "--frames-per-suite", "1", "--set", str(tmp_path / "s"),
               "--generate-only", "--no-progress", "--fonts", FONTS[0] if FONTS else "none"])
    assert rc == 0
    dirs = {p.name for p in (tmp_path / "s").iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert dirs == {"native-motion", "native-gaussian"}


def test_parse_sizes_and_one_size_run() -> None:
    assert parse_sizes("320x320, 640x480") == [(320, 320), (640, 480)]
    for bad in ("", "640", "0x10", "axb"):
        with pytest.raises(SizeBenchError):
            parse_sizes(bad)
    assert size_frame(40, 24).shape == (24, 40, 3)
    (row,) = bench_sizes([(40, 24)], "smoke", threads=1, device="cpu", steps=2)
    assert row["size"] == "40x24" and row["shape_ok"] and row["steps"] == 2
    assert row["restore_s"] > 0 and 0.1 < row["peak_rss_gib"] < 8
