"""Per-frame noise estimation against known synthetic noise levels."""

import numpy as np
import pytest
import torch

from restoration import kernels as kern
from restoration.noise import MAD_TO_STD, estimate_noise_sigma, grouped_median
from restoration.operators import blur
from restoration.rng import generator_for
from restoration.synthetic import HELDOUT_SEED_START, render_canvas


def quantise(y: torch.Tensor) -> torch.Tensor:
    return (y.clamp(0, 1) * 255).round() / 255


def test_mad_constant_and_grouped_median_of_a_lattice() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200_000, generator=g, dtype=torch.float64)
    assert abs(float(z.abs().median()) / MAD_TO_STD - 1.0) < 0.01
    # on a coarse lattice the plain median snaps to a lattice point; the grouped one does not
    sigma, step = 1.2, 1.0
    lattice = (z * sigma / step).round() * step
    plain = float(lattice.abs().median()) / MAD_TO_STD
    grouped = grouped_median(lattice.abs()) / MAD_TO_STD
    want = (sigma**2 + step**2 / 12) ** 0.5  # rounding adds step^2 / 12 of variance
    assert abs(grouped - want) / want < 0.06 < abs(plain - want) / want


@pytest.mark.parametrize("sigma", [0.005, 0.01, 0.02, 0.04])
def test_pure_noise_on_a_flat_8bit_frame(sigma: float) -> None:
    g = torch.Generator().manual_seed(1)
    y = quantise(0.5 + sigma * torch.randn(2, 3, 120, 160, generator=g, dtype=torch.float64))
    want = (sigma**2 + (1 / 255) ** 2 / 12) ** 0.5
    est = estimate_noise_sigma(y)
    assert est.shape == (2,)
    assert torch.allclose(est, torch.full_like(est, want), rtol=0.08), (est, want)


@pytest.mark.parametrize("kind", ["motion", "gaussian"])
def test_blurred_renders_at_known_noise_levels(kind: str) -> None:
    """Blurred product frames (valid convolution, 8-bit): within 40 % at sigma 0.005..0.02, never
    under by more than 5 % (over-estimating only regularises more), and ordered like the truth."""
    fonts: list[str] = []
    ests = []
    for i, sigma in enumerate((0.005, 0.01, 0.02)):
        g = generator_for(f"noise-test/{kind}/{i}")
        k = kern.sample_kernels(1, 15, g, (kind,)).double()
        k = k / k.sum()
        canvas = render_canvas(HELDOUT_SEED_START + 500 + i, 174, 174, fonts)
        x = torch.from_numpy(np.ascontiguousarray(canvas)).permute(2, 0, 1)[None].double() / 255
        y = blur(x, k)
        y = quantise(y + sigma * torch.randn(y.shape, generator=g, dtype=torch.float64))
        est = float(estimate_noise_sigma(y)[0])
        assert 0.95 * sigma < est < 1.4 * sigma, (kind, sigma, est)
        ests.append(est)
    assert ests == sorted(ests)


def test_occluded_pixels_are_ignored_and_the_floor_holds() -> None:
    g = torch.Generator().manual_seed(3)
    y = 0.5 + 0.01 * torch.randn(1, 3, 64, 64, generator=g, dtype=torch.float64)
    mask = torch.ones(1, 1, 64, 64, dtype=torch.float64)
    y[..., :, :32] = torch.rand(1, 3, 64, 32, generator=g, dtype=torch.float64)  # wild texture
    mask[..., :, :32] = 0
    assert abs(float(estimate_noise_sigma(y, mask)[0]) - 0.01) < 0.001
    assert float(estimate_noise_sigma(y)[0]) > 0.02  # without the mask the texture inflates it
    flat = torch.full((1, 3, 16, 16), 0.5, dtype=torch.float64)
    assert float(estimate_noise_sigma(flat, floor=0.003)[0]) == 0.003
    none_observed = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    assert float(estimate_noise_sigma(y[..., :16, :16], none_observed, floor=0.002)[0]) == 0.002
