"""Kernel candidates and their no-reference choice (restoration/kernel_choice.py)."""

from __future__ import annotations

import glob
import math
import typing

import pytest
import torch

from restoration import kernel_choice as kc
from restoration.kernel_ops import centre_of_mass
from restoration.kernels import gaussian_kernel, line_kernel
from restoration.metrics import registration_shift
from restoration.operators import blur
from restoration.settings import KernelStrategy
from restoration.synthetic import HELDOUT_SEED_START, render_canvas

FONTS = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _frame(kernel: torch.Tensor, seed: int = 0, size: int = 96, sigma: float = 0.02) -> torch.Tensor:
    """A held-out render blurred by the valid convolution with ``kernel`` (K, K), noise on [0, 1]."""
    k = kernel.double()[None, None]
    side = size + k.shape[-1] - 1
    canvas = render_canvas(HELDOUT_SEED_START + 500 + seed, side, side, FONTS)
    x = torch.from_numpy(canvas).permute(2, 0, 1)[None].double() / 255.0
    g = torch.Generator().manual_seed(seed)
    y = blur(x, k) + sigma * torch.randn(1, 3, size, size, generator=g, dtype=torch.float64)
    return (y.clamp(0, 1) * 255).round() / 255 * 2 - 1


def test_line_kernel_is_centred_and_normalised() -> None:
    for length, angle in ((0.0, 0.0), (3.0, 0.4), (12.0, 2.0)):
        k = line_kernel(15, length, angle)
        assert abs(float(k.sum()) - 1) < 1e-12 and float(k.min()) >= 0
        com = centre_of_mass(k[None, None])[0]
        assert torch.allclose(com, torch.tensor([7.0, 7.0], dtype=torch.float64), atol=1e-6)
    with pytest.raises(ValueError):
        line_kernel(15, 20.0, 0.0)


def test_whittle_fit_recovers_an_exact_spectrum() -> None:
    """With P equal to the model spectrum, the fit returns its c and n and the true kernel wins."""
    spec = kc.gradient_spectrum(torch.zeros(1, 3, 64, 64), None, min_size=15)
    truth = gaussian_kernel(15, 2.0, 1.0, 0.5).double()[None, None]
    others = torch.stack([kc.delta_kernel(15)[0], gaussian_kernel(15, 1.0, 1.0).double()[None],
                          gaussian_kernel(15, 3.0, 2.0, 0.5).double()[None]])  # fmt: skip
    a = kc.signal_power(truth, spec)[0]
    power = 0.3 * a + 2e-3 * spec.laplace
    nll, c, n = kc.whittle_nll(power, spec.laplace, spec.weight, kc.signal_power(truth, spec), iters=400)
    assert abs(float(c[0]) - 0.3) < 3e-3 and abs(float(n[0]) - 2e-3) < 1e-4
    rival = kc.whittle_nll(power, spec.laplace, spec.weight, kc.signal_power(others, spec), iters=400)[0]
    assert bool((rival > nll[0] + 1e-4).all())
    # the exact minimum of log S + P / S is at S = P: nll = mean(log P) + 1
    w, keep = spec.weight, spec.weight > 0
    expect = float((w[keep] * (torch.log(power[keep]) + 1)).sum() / w.sum())
    assert abs(float(nll[0]) - expect) < 1e-4


def test_sharp_frames_keep_the_identity_and_blurred_frames_do_not() -> None:
    sharp = _frame(kc.delta_kernel(15)[0, 0])
    blurred = _frame(gaussian_kernel(15, 2.0, 2.0).double())
    y = torch.cat([sharp, blurred])
    choice = kc.choose_kernel(y, None, 15, 0.04, candidates=("identity", "parametric"))
    assert choice.name == ["identity", "parametric"]
    assert set(choice.scores[1]) == {"identity", "parametric"}
    assert choice.score(1) < choice.scores[1]["identity"]
    # alone equals in a batch
    alone = kc.choose_kernel(blurred, None, 15, 0.04, candidates=("identity", "parametric"))
    assert alone.name == choice.name[1:] and torch.equal(alone.kernel[0], choice.kernel[1])


def test_strategy_table_matches_the_setting() -> None:
    assert set(typing.get_args(KernelStrategy)) == set(kc.KERNEL_STRATEGIES)
    assert set(kc.KERNEL_STRATEGIES) >= kc.USES_KERNEL_PRIOR


@pytest.mark.parametrize("name", sorted(kc.KERNEL_STRATEGIES))
def test_every_strategy_returns_a_plan(name: str) -> None:
    y = _frame(gaussian_kernel(9, 1.2, 1.2).double(), size=48)
    mask = torch.ones(1, 1, 48, 48)
    mask[..., :10, :10] = 0
    plan = kc.KERNEL_STRATEGIES[name](y, mask, 9, 0.04)
    assert len(plan.choice.name) == 1
    fixed = plan.known_kernel is not None
    assert not (fixed and plan.kernel_init is not None)
    assert fixed or name in kc.USES_KERNEL_PRIOR  # a free kernel process needs the prior
    k = plan.known_kernel if fixed else plan.kernel_init
    if k is not None:
        assert k.shape == (1, 1, 9, 9) and abs(float(k.sum()) - 1) < 1e-6


def test_registration_shift_finds_a_subpixel_translation() -> None:
    x = _frame(kc.delta_kernel(3)[0, 0], size=64, sigma=0.0)
    shift = (1.25, -0.5)
    fy = torch.fft.fftfreq(64, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(64, dtype=torch.float64)[None, :]
    phase = torch.exp(-2j * math.pi * (fy * shift[0] + fx * shift[1]))
    moved = torch.fft.ifft2(torch.fft.fft2(x) * phase).real
    est = registration_shift((moved + 1) / 2, (x + 1) / 2)[0]
    assert abs(float(est[0]) - shift[0]) < 0.2 and abs(float(est[1]) - shift[1]) < 0.2
    assert float(registration_shift((x + 1) / 2, (x + 1) / 2)[0].norm()) < 0.05  # parabola bias only
