"""The bench's real-photo suites (flows/bench_photos.py): deterministic frames from a folder of
photographs given on the command line, valid-convolution borders, the manifest names no path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flows.evaluation.bench import main
from flows.evaluation.bench_photos import PHOTO_SUITES
from flows.evaluation.frames import BenchError
from flows.evaluation.suites import BenchSpec, generate_set
from restoration.operators import blur
from storage.stores import open_store


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three 'photographs' (smooth random fields with edges), 300 x 260 px."""
    root = tmp_path_factory.mktemp("photos")
    g = np.random.default_rng(5)
    for i in range(3):
        base = g.random((33, 38, 3))
        img = np.asarray(Image.fromarray((base * 255).astype(np.uint8)).resize((300, 260), Image.BICUBIC))
        Image.fromarray(img).save(root / f"p{i}.png")
    return root


def _spec(photos: Path, suites: tuple[str, ...]) -> BenchSpec:
    return BenchSpec(suites=suites, frames_per_suite=2, size=48, photos=str(photos))


def test_frames_are_deterministic_and_valid_convolutions(photos: Path, tmp_path: Path) -> None:
    suites = ("real-motion", "real-motion-jpeg", "real-motion+occlusion")
    a, b = open_store(tmp_path / "a"), open_store(tmp_path / "b")
    recs = generate_set(a, _spec(photos, suites), progress=False)
    generate_set(b, _spec(photos, suites), progress=False)
    for r in recs:
        key = r["key"]
        assert (tmp_path / "a" / key).read_bytes() == (tmp_path / "b" / key).read_bytes()
        assert r["photo"] in {"p0.png", "p1.png", "p2.png"}
    manifest = json.loads((tmp_path / "a" / "bench.json").read_text())
    assert manifest["spec"]["photos"] == photos.name  # the folder's name, never its path
    assert (tmp_path / "a" / "real-motion+occlusion" / "f000.mask.png").exists()
    # the blurred frame is the valid convolution of a crop that extends K//2 px past the truth
    rec = next(r for r in recs if r["suite"] == "real-motion")
    fid = rec["key"][:-4]
    k = np.load(tmp_path / "a" / f"{fid}.kernel.npy")
    assert abs(k.sum() - 1) < 1e-6 and k.shape[0] % 2 == 1
    sharp = np.asarray(Image.open(tmp_path / "a" / f"{fid}.sharp.png")).astype(float) / 255
    y = np.asarray(Image.open(tmp_path / "a" / f"{fid}.png")).astype(float) / 255
    assert sharp.shape == y.shape == (48, 48, 3)
    c = k.shape[0] // 2
    inner = torch.from_numpy(sharp).permute(2, 0, 1)[None]
    kt = torch.from_numpy(k).double()[None, None]
    reblur = blur(inner, kt, method="direct")[0].permute(1, 2, 0).numpy()
    centre = y[c:-c, c:-c] if c else y
    assert np.abs(reblur - centre).mean() < 0.03  # noise (<= 0.02) and 8 bits: close, not exact


def test_native_suites_crop_256_to_512(photos: Path, tmp_path: Path) -> None:
    recs = generate_set(open_store(tmp_path), _spec(photos, ("real-native-gaussian",)), progress=False)
    for r in recs:
        assert min(r["height"], r["width"]) >= 256 - 41 and max(r["height"], r["width"]) <= 300
        assert 9 <= r["kernel_size"] <= 41


def test_suites_need_the_photos_folder(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="--photos"):
        generate_set(open_store(tmp_path), BenchSpec(suites=("real-gaussian",), frames_per_suite=1, size=48),
                     progress=False)
    assert main(["--suites", "real", "--set", str(tmp_path / "s"), "--generate-only", "--no-progress",
                 "--photos", str(tmp_path / "missing")]) == 2
    assert set(PHOTO_SUITES) >= {"real-motion", "real-gaussian", "real-near-sharp"}
