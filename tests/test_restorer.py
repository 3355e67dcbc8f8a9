"""FrameRestorer: frames of any size and aspect come back at their input size; batch independence."""

import numpy as np
import pytest

from flows.config import load_config
from flows.restorer import FrameInput, FrameRestorer
from restoration.priors import load_shipped


@pytest.fixture(scope="module")
def restorer() -> FrameRestorer:
    settings = load_config("smoke").restoration
    return FrameRestorer(settings, priors=(load_shipped("image"), load_shipped("kernel")))


def frame(key: str, h: int, w: int, seed: int, masked: bool = False) -> FrameInput:
    rng = np.random.default_rng(seed)
    img = np.clip(rng.normal(128, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = None
    if masked:
        mask = np.ones((h, w), bool)
        mask[: h // 3, : w // 3] = False
    return FrameInput(key=key, image=img, mask=mask, seed_key=f"{key}/test")


def test_any_size_and_aspect_comes_back_at_input_size(restorer: FrameRestorer) -> None:
    frames = [frame("a", 40, 32, 0), frame("b", 90, 150, 1, masked=True), frame("c", 33, 47, 2)]
    outs = restorer(frames)
    assert [o.key for o in outs] == ["a", "b", "c"]
    for f, o in zip(frames, outs, strict=True):
        assert o.restored.shape == f.image.shape and o.restored.dtype == np.uint8
        k = restorer.settings.kernel_size
        assert o.kernel.shape == (k, k)
        assert abs(float(o.kernel.sum()) - 1.0) < 1e-4 and (o.kernel >= 0).all()
        assert np.isfinite([o.residual, o.sharpness_gain, o.kernel_extent]).all()
    assert outs[1].scale < 1.0 and outs[0].scale == 1.0  # 150 px > working size 48: downscaled


def test_a_frame_restored_alone_equals_it_in_a_batch(restorer: FrameRestorer) -> None:
    frames = [frame("a", 40, 32, 0), frame("b", 40, 32, 1), frame("c", 40, 32, 2)]
    batch = restorer(frames)
    alone = restorer([frames[1]])
    assert np.abs(batch[1].restored.astype(int) - alone[0].restored.astype(int)).max() <= 1
    np.testing.assert_allclose(batch[1].kernel, alone[0].kernel, atol=1e-5)
