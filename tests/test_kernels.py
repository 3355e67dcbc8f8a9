"""Blur-kernel generators, the prior representation pair, and kernel statistics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from restoration.kernel_ops import centre_of_mass, from_prior, project, to_prior
from restoration.kernels import (
    KINDS,
    KernelError,
    defocus_kernel,
    gaussian_kernel,
    kernel_extent,
    mass_concentration,
    motion_kernel,
    motion_trajectory,
    path_curvature,
    random_kernel,
    sample_kernels,
    support_size,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_valid(k: torch.Tensor, com_tol: float = 1.0) -> None:
    assert k.dim() == 4 and k.shape[1] == 1 and k.shape[-1] % 2 == 1
    assert k.dtype == torch.float32
    assert (k >= 0).all()
    torch.testing.assert_close(k.sum(dim=(1, 2, 3)), torch.ones(k.shape[0]), atol=1e-5, rtol=0)
    c = (k.shape[-1] - 1) / 2
    dev = (centre_of_mass(k.double()) - c).abs().max()
    assert dev <= com_tol, f"centre of mass {dev:.3f} px off centre"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("size", [15, 33])
def test_every_kind_valid_over_many_seeds(kind: str, size: int) -> None:
    k = sample_kernels(64, size, gen(size), kinds=(kind,))
    assert k.shape == (64, 1, size, size)
    assert_valid(k)
    dev = (centre_of_mass(k.double()) - (size - 1) / 2).abs().max().item()
    mc = mass_concentration(k)
    ext = kernel_extent(k)
    print(f"{kind:8s} K={size}: max CoM offset {dev:.2e} px, concentration(96) "
          f"{mc.min():.3f}..{mc.max():.3f}, extent90 {ext.min():.1f}..{ext.max():.1f} px")


def test_mixed_kinds_and_single_kernel() -> None:
    k = sample_kernels(100, 31, gen(1))
    assert_valid(k)
    one = random_kernel(31, gen(2))
    assert one.shape == (31, 31)
    assert_valid(one[None, None])
    m = motion_kernel(21, 0.7, gen(3))
    assert_valid(m[None, None], com_tol=1e-3)  # motion centring is sub-pixel exact


def test_seeded_determinism() -> None:
    a = sample_kernels(16, 25, gen(10))
    b = sample_kernels(16, 25, gen(10))
    c = sample_kernels(16, 25, gen(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(motion_kernel(25, 0.5, gen(4)), motion_kernel(25, 0.5, gen(4)))
    assert not torch.equal(motion_kernel(25, 0.5, gen(4)), motion_kernel(25, 0.5, gen(5)))


def test_bad_arguments_raise() -> None:
    with pytest.raises(KernelError):
        sample_kernels(2, 16, gen(0))
    with pytest.raises(KernelError):
        sample_kernels(2, 5, gen(0), kinds=("motion",))
    with pytest.raises(KernelError):
        sample_kernels(2, 15, gen(0), kinds=("box",))
    with pytest.raises(KernelError):
        motion_kernel(15, 1.5, gen(0))
    with pytest.raises(KernelError):
        gaussian_kernel(15, 0.0, 1.0)
    with pytest.raises(KernelError):
        defocus_kernel(15, 9.0)
    with pytest.raises(KernelError):
        to_prior(torch.ones(3, 3))


def test_intensity_increases_curvature() -> None:
    """Curvature = 1 - end-to-end distance / path length, mean over 50 trajectories."""
    means = []
    for inten in (0.0, 0.5, 1.0):
        g = gen(7)
        c = torch.stack([path_curvature(motion_trajectory(inten, g)) for _ in range(50)])
        means.append(c.mean().item())
    print("mean curvature at intensity 0, 0.5, 1:", [round(m, 3) for m in means])
    assert means[0] < 1e-9  # exactly straight
    assert means[0] < means[1] < means[2]
    assert means[2] - means[1] > 0.05


def test_straight_motion_is_a_line_and_lengths_vary() -> None:
    size = 33
    minor, extents = [], []
    g = gen(8)
    for _ in range(60):
        k = motion_kernel(size, 0.0, g)[None, None].double()
        com = centre_of_mass(k)[0]
        r = torch.arange(size, dtype=torch.float64)
        y, x = r[:, None] - com[0], r[None, :] - com[1]
        w = k[0, 0]
        cov = torch.tensor([[(w * x * x).sum(), (w * x * y).sum()],
                            [(w * x * y).sum(), (w * y * y).sum()]])
        minor.append(torch.linalg.eigvalsh(cov)[0].sqrt().item())
        sup = (w > 0.02 * w.max()).nonzero()
        extents.append(int((sup.max(0).values - sup.min(0).values).max()) + 1)
    print(f"straight motion: max std across the line {max(minor):.3f} px; "
          f"extents {min(extents)}..{max(extents)} px")
    assert max(minor) < 0.8  # thickness of a line: bilinear splat + 3x3 smoothing only
    assert min(extents) <= 8 and max(extents) >= size - 8


def test_gaussian_and_defocus_moments() -> None:
    k = gaussian_kernel(41, 3.0, 1.5, math.pi / 6)[None, None].double()
    r = torch.arange(41, dtype=torch.float64) - 20
    w = k[0, 0]
    x, y = r[None, :], r[:, None]
    cov = torch.tensor([[(w * x * x).sum(), (w * x * y).sum()],
                        [(w * x * y).sum(), (w * y * y).sum()]])
    ev, vec = torch.linalg.eigh(cov)
    torch.testing.assert_close(ev.sqrt(), torch.tensor([1.5, 3.0], dtype=torch.float64),
                               atol=0.02, rtol=0)
    major = vec[:, 1]
    assert abs(abs(major[0].item()) - math.cos(math.pi / 6)) < 0.01
    d = defocus_kernel(31, 6.0)[None, None]
    r31 = torch.arange(31, dtype=torch.float32) - 15
    rad2 = r31[None, :] ** 2 + r31[:, None] ** 2
    # uniform disc of radius R: E[d^2] = R^2 / 2
    assert (d[0, 0] * rad2).sum().item() == pytest.approx(36.0 / 2, abs=0.3)
    assert_valid(d, com_tol=1e-5)


def test_statistics() -> None:
    delta = torch.zeros(1, 1, 15, 15)
    delta[0, 0, 3, 10] = 1
    torch.testing.assert_close(centre_of_mass(delta), torch.tensor([[3.0, 10.0]]))
    assert mass_concentration(delta).item() == pytest.approx(1.0)
    assert kernel_extent(delta).item() == 0.0
    assert support_size(delta).item() == 1
    flat = torch.full((1, 1, 15, 15), 1 / 225)
    assert mass_concentration(flat, n=96).item() == pytest.approx(96 / 225, abs=1e-5)
    assert support_size(flat).item() == math.ceil(0.9 * 225)
    disc = defocus_kernel(41, 10.0)[None, None]
    assert kernel_extent(disc).item() == pytest.approx(10 * math.sqrt(0.9), abs=0.6)
    both = torch.cat([delta, flat])
    torch.testing.assert_close(mass_concentration(both)[1:], mass_concentration(flat))


def test_prior_roundtrip_is_close() -> None:
    k = sample_kernels(128, 33, gen(20))
    p = to_prior(k)
    assert p.min() >= -1 and p.max() <= 1
    back = from_prior(p)
    assert_valid(back)
    err = (back - k).abs().sum(dim=(1, 2, 3))
    print(f"round trip L1 error: mean {err.mean():.4f}, max {err.max():.4f}")
    assert err.mean() < 0.03 and err.max() < 0.12
    # idempotent on its own output: a projected kernel is a fixed point
    torch.testing.assert_close(project(back), back, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sigma", [0.05, 0.1])
def test_prior_projection_is_noise_robust(sigma: float) -> None:
    """from_prior(to_prior(k) + N(0, sigma^2)) keeps its mass on the true support."""
    k = sample_kernels(128, 33, gen(21))
    noisy = to_prior(k) + sigma * torch.randn(k.shape, generator=gen(22))
    out = from_prior(noisy)
    assert_valid(out)
    support = F.max_pool2d((k > 0.01 * k.amax(dim=(2, 3), keepdim=True)).float(), 3, 1, 1) > 0
    inside = (out * support).sum(dim=(1, 2, 3))
    print(f"sigma {sigma}: mass in true support: min {inside.min():.4f}, "
          f"mean {inside.mean():.4f}; concentration(96) mean "
          f"{mass_concentration(out).mean():.3f} vs truth {mass_concentration(k).mean():.3f}")
    assert inside.min() >= 0.9


def test_projection_of_garbage_is_a_valid_kernel() -> None:
    p = torch.rand(8, 1, 21, 21, generator=gen(30)) * 2 - 1
    p[0] = -1.0  # all background -> delta
    out = from_prior(p)
    assert_valid(out)
    assert out[0, 0, 10, 10] == 1.0


def test_from_prior_is_per_sample() -> None:
    k = sample_kernels(6, 25, gen(40))
    p = to_prior(k) + 0.1 * torch.randn(k.shape, generator=gen(41))
    batch = from_prior(p)
    for i in range(6):
        torch.testing.assert_close(from_prior(p[i: i + 1]), batch[i: i + 1])
