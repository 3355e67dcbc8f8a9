"""restoration.metrics against scikit-image and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from restoration.kernels import gaussian_kernel
from restoration.metrics import (
    MetricInputError,
    kernel_extent,
    kernel_mse,
    kernel_ncc,
    psnr,
    psnr_masked,
    residual_ratio,
    sharpness_gain,
    ssim,
)
from restoration.operators import blur


def _pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    rand = rng.random((2, 3, 40, 52))
    noisy = np.clip(rand + 0.1 * rng.standard_normal(rand.shape), 0, 1)
    yy, xx = np.mgrid[0:48, 0:48] / 47.0
    struct = np.stack([np.sin(6 * xx) * 0.5 + 0.5, (xx > 0.5) * 0.8 + 0.1, yy * xx])[None]
    struct = np.concatenate([struct, struct[:, ::-1]], axis=0)
    blurred = struct.copy()
    blurred[..., 1:-1, 1:-1] = (struct[..., :-2, 1:-1] + struct[..., 2:, 1:-1]) / 2
    return [(noisy, rand), (blurred, struct), (np.clip(struct + 0.02, 0, 1), struct)]


@pytest.mark.parametrize("case", range(3))
def test_psnr_ssim_match_skimage(case: int) -> None:
    x, ref = _pairs()[case]
    ours_p, ours_s = psnr(x, ref), ssim(torch.from_numpy(x), torch.from_numpy(ref))
    assert ours_p.shape == (x.shape[0],) and ours_s.shape == (x.shape[0],)
    for i in range(x.shape[0]):
        want_p = peak_signal_noise_ratio(ref[i], x[i], data_range=1.0)
        want_s = structural_similarity(ref[i], x[i], data_range=1.0, channel_axis=0)
        assert abs(float(ours_p[i]) - want_p) < 1e-4
        assert abs(float(ours_s[i]) - want_s) < 1e-4


def test_psnr_hand_value_and_identity() -> None:
    ref = torch.zeros(1, 3, 4, 4)
    x = ref + 0.1  # MSE 0.01 -> 20 dB
    assert abs(float(psnr(x, ref)[0]) - 20.0) < 1e-5
    assert math.isinf(float(psnr(ref, ref)[0]))
    assert abs(float(ssim(torch.rand(1, 3, 9, 9), torch.rand(1, 3, 9, 9)).abs()[0])) <= 1.0
    same = torch.rand(2, 3, 10, 11)
    assert torch.allclose(ssim(same, same), torch.ones(2, dtype=torch.float64))


def test_per_sample_batch_independence() -> None:
    x, ref = _pairs()[0]
    batch = ssim(x, ref)
    alone = ssim(x[1:], ref[1:])
    assert float(batch[1]) == float(alone[0])


def _line(size: int, row: int, cols: range) -> torch.Tensor:
    k = torch.zeros(1, 1, size, size)
    k[0, 0, row, list(cols)] = 1.0 / len(cols)
    return k


def test_kernel_mse_shift_alignment() -> None:
    truth = _line(15, 7, range(5, 10))  # 5-px horizontal line, centred
    shifted2 = _line(15, 7, range(7, 12))  # same line moved 2 px right
    shifted5 = _line(15, 7, range(10, 15))  # moved 5 px: beyond the +-3 search
    assert float(kernel_mse(shifted2, truth)[0]) == 0.0
    assert abs(float(kernel_ncc(shifted2, truth)[0]) - 1.0) < 1e-12
    # Best shift for the 5-px move is 3 px: the lines overlap on 3 of 5 pixels.
    # Residual: 2 px of 0.2 on each side -> sse = 4 * 0.04; mean over 15^2.
    assert abs(float(kernel_mse(shifted5, truth)[0]) - 4 * 0.04 / 225) < 1e-12
    assert abs(float(kernel_ncc(shifted5, truth)[0]) - 3 / 5) < 1e-12
    # No shift allowed: overlap 0 -> sse = 10 * 0.04.
    assert abs(float(kernel_mse(shifted5, truth, max_shift=0)[0]) - 10 * 0.04 / 225) < 1e-12
    assert float(kernel_ncc(shifted5, truth, max_shift=0)[0]) == 0.0


def test_kernel_mse_normalises_pads_and_canvas() -> None:
    truth = _line(15, 7, range(5, 10))
    small = _line(5, 2, range(5)) * 3.0  # same line on a 5x5 canvas, wrong scale
    assert float(kernel_mse(small, truth)[0]) < 1e-15
    assert abs(float(kernel_ncc(small, truth)[0]) - 1.0) < 1e-12
    delta = torch.zeros(1, 1, 3, 3)
    delta[0, 0, 1, 1] = 1.0
    # delta vs 5-px line: sse = (1 - 0.2)^2 + 4 * 0.2^2 = 0.8 at best alignment
    assert abs(float(kernel_mse(delta, truth)[0]) - 0.8 / 225) < 1e-12
    assert abs(float(kernel_mse(delta, truth, canvas=31)[0]) - 0.8 / 961) < 1e-12
    assert abs(float(kernel_ncc(delta, truth)[0]) - 0.2 / math.sqrt(5 * 0.04)) < 1e-12
    # a batch of 2 estimates against 1 truth broadcasts; a numpy 2-D kernel is accepted
    pair = torch.cat([torch.nn.functional.pad(small, (5, 5, 5, 5)), truth])
    assert torch.allclose(kernel_ncc(pair, truth), torch.ones(2, dtype=torch.float64))
    assert float(kernel_mse(small.numpy()[0, 0], truth)[0]) < 1e-15
    with pytest.raises(MetricInputError):
        kernel_mse(torch.ones(1, 1, 4, 4), truth)
    with pytest.raises(MetricInputError):
        kernel_mse(truth, truth, canvas=30)


def test_ncc_separates_gaussian_from_line() -> None:
    line = _line(21, 10, range(4, 17))
    g2 = gaussian_kernel(21, 2.0, 2.0)[None, None]
    assert float(kernel_ncc(g2, line)[0]) < 0.7 < float(kernel_ncc(line, line)[0])


def test_residual_ratio_hand_value() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 24, 24, generator=g)
    k = gaussian_kernel(5, 1.0, 1.0)[None, None].expand(2, 1, 5, 5)
    clean = blur(x, k)  # 20x20
    noise = 0.05 * torch.randn(clean.shape, generator=g)
    # x given on the canvas: residual is exactly the noise
    got = residual_ratio(clean + noise, x, k, None, sigma=0.05)
    want = noise.flatten(1).pow(2).mean(1).sqrt() / 0.05
    assert torch.allclose(got, want.double(), atol=1e-5)
    # mask: only observed pixels count; a huge error under the mask is ignored
    mask = torch.ones(2, 1, 20, 20)
    mask[:, :, :5] = 0
    corrupted = clean + noise
    corrupted[:, :, :5] += 10.0
    got_m = residual_ratio(corrupted, x, k, mask, sigma=0.05)
    want_m = noise[:, :, 5:].flatten(1).pow(2).mean(1).sqrt() / 0.05
    assert torch.allclose(got_m, want_m.double(), atol=1e-5)
    # same-size restoration: compared on the centre crop
    same = residual_ratio(torch.nn.functional.pad(clean, (2, 2, 2, 2)), x[..., 2:-2, 2:-2], k,
                          None, sigma=0.05)
    assert same.shape == (2,)
    with pytest.raises(MetricInputError):
        residual_ratio(clean, x, k, None, sigma=0.0)


def test_sharpness_gain() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.rand(1, 3, 32, 32, generator=g)
    assert abs(float(sharpness_gain(2 * x, x)[0]) - 4.0) < 1e-9
    k = gaussian_kernel(5, 1.5, 1.5)[None, None]
    y = torch.nn.functional.pad(blur(x, k), (2, 2, 2, 2), mode="replicate")
    assert float(sharpness_gain(x, y)[0]) > 2.0
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., :16, :] = 1
    xm = x.clone()
    xm[..., 16:, :] = 0  # unobserved half changed: the masked gain ignores it
    assert abs(float(sharpness_gain(xm, x, mask)[0]) - 1.0) < 1e-6
    with pytest.raises(MetricInputError):
        sharpness_gain(x, x[..., :10])


def test_psnr_masked_and_extent() -> None:
    ref = torch.zeros(1, 3, 4, 4)
    x = ref.clone()
    x[..., :2, :] = 0.1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert abs(float(psnr_masked(x, ref, mask)[0]) - 20.0) < 1e-5
    assert math.isinf(float(psnr_masked(x, ref, 1 - mask)[0]))
    assert math.isnan(float(psnr_masked(x, ref, torch.zeros_like(mask))[0]))
    delta = torch.zeros(1, 1, 5, 5)
    delta[0, 0, 2, 2] = 1
    assert float(kernel_extent(delta)[0]) == 0.0
