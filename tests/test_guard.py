"""The no-reference guard (restoration/guard.py): what each statistic means, and that it rejects
restorations made with deliberately wrong kernels while it keeps those made with the right one."""

from __future__ import annotations

import glob

import pytest
import torch

from restoration import kernels as kern
from restoration.classical import sparse_deconv
from restoration.guard import GuardSettings, guard_stats, judge
from restoration.kernel_ops import delta_kernel, resample_kernel
from restoration.metrics import psnr
from restoration.operators import blur
from restoration.synthetic import HELDOUT_SEED_START, render_canvas

FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
SIGMA = 0.02  # noise std on the [-1, 1] scale
SIZE, K = 96, 21


def _frame(i: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blurred + noisy y, sharp x, kernel k) of one held-out render, valid convolution."""
    k = kern.sample_kernels(1, K, g, ("motion",) if i % 2 else ("gaussian",)).double()
    k = k / k.sum()
    canvas = render_canvas(HELDOUT_SEED_START + 777 + i, SIZE + K - 1, SIZE + K - 1, FONTS)
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].double() / 127.5 - 1
    y = blur(x, k, method="direct") + SIGMA * torch.randn(1, 3, SIZE, SIZE, generator=g, dtype=torch.float64)
    c = K // 2
    return y, x[..., c : c + SIZE, c : c + SIZE], k


def _wrong(k: torch.Tensor, which: int) -> torch.Tensor:
    """Deliberately wrong kernels: twice as wide, a doubled (ghost) copy, or turned by 90°."""
    if which == 0:
        wide = resample_kernel(k, 2 * K - 1)[..., K // 2 : K // 2 + K, K // 2 : K // 2 + K]
        return wide / wide.sum()
    if which == 1:
        ghost = k + k.roll(5, -1)
        return ghost / ghost.sum()
    return k.transpose(-1, -2).flip(-1)


def _restore(y: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return sparse_deconv(y, k, None, SIGMA).clamp(-1, 1)


def test_statistics_mean_what_the_docstring_says() -> None:
    g = torch.Generator().manual_seed(0)
    y, _, _ = _frame(0, g)
    delta = delta_kernel(K)
    same = guard_stats(y, None, y, delta)[0]
    assert same["fit"] == pytest.approx(0.0, abs=1e-9)
    assert same["sparsity"] == pytest.approx(1.0)
    assert same["chroma"] == pytest.approx(1.0)
    noisy = y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)  # dense texture
    assert guard_stats(y, None, noisy, delta)[0]["sparsity"] > 1.0
    fringe = y.clone()
    fringe[:, 0] = fringe[:, 0].roll(2, -1)  # red shifted by 2 px: colour fringes at every edge
    assert guard_stats(y, None, fringe, delta)[0]["chroma"] > 2.0


def test_guard_keeps_right_kernels_and_rejects_harmful_wrong_ones() -> None:
    """Planted wrong kernels: at most 1 harmful output in 20 passes (a miss); the right kernel's
    restorations all pass (no false alarm). Harmful = PSNR below the input's by more than 0.3 dB."""
    g = torch.Generator().manual_seed(1)
    limits = GuardSettings()
    false_alarms, misses, harmful = 0, 0, 0
    for i in range(8):
        y, sharp, k = _frame(i, g)
        before = float(psnr((y + 1) / 2, (sharp + 1) / 2)[0])
        right = _restore(y, k)
        ok = judge(guard_stats(y, None, right, k), limits).ok[0]
        false_alarms += not ok
        for which in range(3):
            kw = _wrong(k, which)
            x = _restore(y, kw)
            verdict = judge(guard_stats(y, None, x, kw), limits)
            if float(psnr((x + 1) / 2, (sharp + 1) / 2)[0]) < before - 0.3:
                harmful += 1
                misses += verdict.ok[0]
    assert false_alarms == 0
    assert harmful >= 12  # the planted kernels do harm: the test has its point
    assert misses * 20 <= harmful, f"{misses} of {harmful} harmful outputs passed"


def test_a_nan_statistic_fails_the_frame() -> None:
    v = judge([{"fit": float("nan"), "sparsity": 0.9, "chroma": 1.0, "structure": 1.0}], GuardSettings())
    assert v.ok == [False] and v.reason == ["fit"]


def test_noise_floor_reads_the_noise_where_texture_inflates_the_frame_wide_estimate() -> None:
    """White noise alone: the floor reads a few per cent low (the 10th percentile of 16-px squares).
    Half the frame fine texture: the frame-wide median reads high, the floor still reads the noise."""
    from restoration.noise import estimate_noise_sigma, noise_floor

    g = torch.Generator().manual_seed(3)
    sigma = 0.02
    flat = sigma * torch.randn(1, 3, 128, 128, generator=g, dtype=torch.float64)
    assert 0.85 * sigma < float(noise_floor(flat)[0]) <= sigma
    textured = flat.clone()
    textured[..., :, 48:] += 0.2 * torch.randn(1, 1, 128, 80, generator=g, dtype=torch.float64)  # grain
    assert float(estimate_noise_sigma(textured)[0]) > 2 * sigma
    assert float(noise_floor(textured)[0]) < 1.1 * sigma
