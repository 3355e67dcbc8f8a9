"""FrameRestorer: frames of any size and aspect come back at their own size and resolution; batch
independence; the kernel region; the noise-level setting."""

import numpy as np
import pytest
import torch

from flows.config import load_config
from restoration.priors import load_shipped
from restoration.service import FrameInput, FrameRestorer, kernel_region


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
        assert o.noise_sigma > 0.0  # 'auto': estimated per frame (noise ~40 grey levels here)
    assert 0.1 < outs[0].noise_sigma < 0.25


def test_a_frame_restored_alone_equals_it_in_a_batch(restorer: FrameRestorer) -> None:
    # 32-px score tiles: the 40 x 32 frames' canvases (54 x 46) take 2 x 2 tiles, so tiling runs
    tiled = FrameRestorer(
        restorer.settings.model_copy(update={"tile_size": 32, "tile_overlap": 8, "steps": 4}),
        priors=(restorer.image_prior, restorer.kernel_prior),
    )
    frames = [frame("a", 40, 32, 0), frame("b", 40, 32, 1), frame("c", 40, 32, 2)]
    batch = tiled(frames)
    alone = tiled([frames[1]])
    assert np.abs(batch[1].restored.astype(int) - alone[0].restored.astype(int)).max() <= 1
    np.testing.assert_allclose(batch[1].kernel, alone[0].kernel, atol=1e-5)


def test_kernel_region_is_the_most_textured_observed_window() -> None:
    y = torch.zeros(3, 100, 140)
    g = torch.Generator().manual_seed(0)
    y[:, 60:90, 100:130] = torch.rand(3, 30, 30, generator=g)  # texture, bottom right
    y[:, 5:35, 5:35] = 2 * torch.rand(3, 30, 30, generator=g)  # stronger texture, top left...
    mask = torch.ones(1, 100, 140)
    rows, cols = kernel_region(y, mask, 48)
    assert rows.stop - rows.start == 48 and cols.stop - cols.start == 48
    assert rows.start <= 5 and cols.start <= 5
    mask[:, :40, :40] = 0  # ...but occluded: the kernel must come from what the camera saw
    rows, cols = kernel_region(y, mask, 48)
    assert rows.start <= 60 and rows.stop >= 90 and cols.start <= 100 and cols.stop >= 130
    assert kernel_region(y, mask, 500) == (slice(0, 100), slice(0, 140))  # small frame: all of it


def test_a_noise_level_setting_overrides_the_estimate(restorer: FrameRestorer) -> None:
    fixed = FrameRestorer(
        restorer.settings.model_copy(update={"noise_sigma": 0.03}),
        priors=(restorer.image_prior, restorer.kernel_prior),
    )
    f = frame("a", 24, 24, 0)
    assert fixed([f])[0].noise_sigma == pytest.approx(0.03)
    with pytest.raises(ValueError):
        load_config("smoke").restoration.model_validate({"noise_sigma": -1.0})
    with pytest.raises(ValueError):
        load_config("smoke").restoration.model_validate({"kernel_size": 64})


def test_a_320px_frame_comes_back_with_native_detail(restorer: FrameRestorer) -> None:
    """A mildly motion-blurred 320 px checkout frame: the output beats what any downscale-restore-
    upscale path through the old 128-px working size could give (the sharp truth itself sent
    through 128 px and back), so this fails on that path however good its restoration."""
    from PIL import Image

    from restoration import kernels as kern
    from restoration.metrics import psnr
    from restoration.operators import blur
    from restoration.rng import generator_for
    from restoration.synthetic import HELDOUT_SEED_START, render_canvas

    size, ksize = 320, 9
    g = generator_for("test/native-detail")
    k = kern.sample_kernels(1, ksize, g, ("motion",)).double()
    canvas = render_canvas(HELDOUT_SEED_START + 777, size + ksize - 1, size + ksize - 1)
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].double() / 255
    y = blur(x, k / k.sum()) + 0.01 * torch.randn(1, 3, size, size, generator=g, dtype=torch.float64)
    y8 = (y.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()
    c = (ksize - 1) // 2
    sharp = canvas[c : c + size, c : c + size]

    settings = restorer.settings.model_copy(update={"tile_size": 128, "tile_overlap": 16, "steps": 6})
    native = FrameRestorer(settings, priors=(restorer.image_prior, restorer.kernel_prior))
    out = native([FrameInput("f", y8, None, "test/native-detail")])[0]
    assert out.restored.shape == (size, size, 3)

    def db(a: np.ndarray) -> float:
        t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].double() / 255
        return float(psnr(t, torch.from_numpy(sharp).permute(2, 0, 1)[None].double() / 255)[0])

    small = Image.fromarray(sharp).resize((128, 128), Image.Resampling.BOX)
    through_128 = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC))
    assert db(out.restored) > db(through_128) + 1.0, (db(out.restored), db(through_128), db(y8))
    assert db(out.restored) > db(y8) + 1.0


def test_the_guard_ships_the_input_when_a_wrong_kernel_destroys_the_frame() -> None:
    """A planted, badly wrong kernel (a wide disc on a sharp frame): the guard rejects the
    restoration, the input is shipped byte for byte, and the output says why; with the guard off
    the same restoration ships."""
    from restoration.kernel_choice import KernelChoice, KernelPlan
    from restoration.kernels import defocus_kernel

    on = load_config("smoke").restoration
    priors = (load_shipped("image"), load_shipped("kernel"))
    rng = np.random.default_rng(7)
    img = np.kron(rng.integers(0, 256, (12, 12, 3)), np.ones((6, 6, 1))).astype(np.uint8)  # sharp blocks
    f = FrameInput(key="f", image=img, mask=None, seed_key="f/test")
    k = on.kernel_size
    wrong = defocus_kernel(k, (k - 1) / 2).double()[None, None]

    def plant(r: FrameRestorer) -> FrameRestorer:
        r.estimate_kernel = lambda y, m, s: [KernelPlan(KernelChoice(wrong, ["planted"], [{"planted": 0.0}]),
                                                        known_kernel=wrong)]
        return r

    guarded = plant(FrameRestorer(on, priors=priors))([f])[0]
    assert guarded.fallback in ("fit", "sparsity", "chroma") and guarded.guard is not None
    assert np.array_equal(guarded.restored, img) and guarded.rejected is not None
    unguarded = plant(FrameRestorer(on.model_copy(update={"guard": False}), priors=priors))([f])[0]
    assert unguarded.fallback == "" and unguarded.guard is None
    assert np.array_equal(unguarded.restored, guarded.rejected)
