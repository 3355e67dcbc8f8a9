"""Classical baselines on held-out renders: oracle Wiener / hyper-Laplacian and L0 blind deconv."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from flows.fonts import find_fonts
from restoration.classical import (
    BlindConfig,
    ClassicalInputError,
    classical_blind,
    sparse_deconv,
    wiener_deconv,
)
from restoration.kernel_ops import centre_of_mass
from restoration.kernels import gaussian_kernel, sample_kernels
from restoration.metrics import kernel_ncc, psnr, psnr_masked
from restoration.operators import blur
from restoration.synthetic import HELDOUT_SEED_START, render_canvas

SIZE = 96
K = 15
SIGMA = 0.04  # σ = 0.02 on [0, 1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These FFT-bound loops run fastest single-threaded on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@cache
def _frames(n: int = 3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, sharp, kernels): renders blurred by valid convolution of a larger canvas + noise."""
    fonts = find_fonts()
    g = torch.Generator().manual_seed(1234)
    ks = sample_kernels(n, K, g, ("motion",))
    ys, xs = [], []
    for i in range(n):
        img = render_canvas(HELDOUT_SEED_START + 700 + i, SIZE + K - 1, SIZE + K - 1, fonts)
        x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        ys.append(blur(x, ks[i : i + 1]) + SIGMA * torch.randn(1, 3, SIZE, SIZE, generator=g))
        c = (K - 1) // 2
        xs.append(x[..., c : c + SIZE, c : c + SIZE])
    return torch.cat(ys), torch.cat(xs), ks


def _p(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return psnr((x.clamp(-1, 1) + 1) / 2, (ref + 1) / 2)


def _hand_mask() -> torch.Tensor:
    m = torch.ones(1, 1, SIZE, SIZE)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    blob = ((yy - SIZE) / 30.0) ** 2 + ((xx - SIZE * 0.6) / 22.0) ** 2 < 1.0
    m[0, 0][blob] = 0
    return m


def test_oracle_deconvolution_beats_blurred() -> None:
    y, sharp, k = _frames()
    base = _p(y, sharp)
    wiener = _p(wiener_deconv(y, k, None, SIGMA), sharp)
    sparse = _p(sparse_deconv(y, k, None, SIGMA), sharp)
    print(f"\nPSNR blurred {base.tolist()}\n     wiener {wiener.tolist()}\n     sparse {sparse.tolist()}")
    assert float((wiener - base).mean()) > 1.5
    assert float((sparse - base).mean()) > 2.0
    assert bool((wiener > base).all()) and bool((sparse > base).all())


def test_wiener_treats_occlusion_as_missing_data() -> None:
    y, sharp, k = _frames()
    mask = _hand_mask().expand(3, 1, SIZE, SIZE)
    occluded = torch.where(mask > 0.5, y, torch.full_like(y, 0.9))  # a flat bright "hand"
    naive = wiener_deconv(occluded, k, None, SIGMA)
    aware = wiener_deconv(occluded, k, mask, SIGMA)
    out_naive = psnr_masked((naive.clamp(-1, 1) + 1) / 2, (sharp + 1) / 2, mask)
    out_aware = psnr_masked((aware.clamp(-1, 1) + 1) / 2, (sharp + 1) / 2, mask)
    print(f"\nPSNR outside the hand: ignoring mask {out_naive.tolist()}, using it {out_aware.tolist()}")
    assert bool((out_aware > out_naive).all())
    assert aware.shape == y.shape and bool(torch.isfinite(aware).all())


def test_classical_blind_recovers_motion_kernels() -> None:
    y, sharp, k = _frames()
    x_hat, k_hat = classical_blind(y, None, K, SIGMA)
    assert x_hat.shape == y.shape and k_hat.shape == (3, 1, K, K)
    assert bool((k_hat >= 0).all())
    assert torch.allclose(k_hat.sum(dim=(1, 2, 3)), torch.ones(3), atol=1e-5)
    # sub-pixel re-centring: the centre of mass sits on the centre pixel, as for the generator
    assert torch.allclose(centre_of_mass(k_hat.double()), torch.full((3, 2), (K - 1) / 2.0,
                                                                      dtype=torch.float64),
                          atol=0.05)
    delta = torch.zeros(1, 1, K, K)
    delta[..., K // 2, K // 2] = 1.0
    ncc = kernel_ncc(k_hat, k)
    ncc_delta = kernel_ncc(delta.expand(3, 1, K, K), k)
    ncc_gauss = kernel_ncc(gaussian_kernel(K, 2.0, 2.0)[None, None].expand(3, 1, K, K), k)
    print(f"\nkernel NCC blind {ncc.tolist()}\n           delta {ncc_delta.tolist()}"
          f"\n           gauss2 {ncc_gauss.tolist()}"
          f"\nPSNR blurred {_p(y, sharp).tolist()} blind {_p(x_hat, sharp).tolist()}")
    assert float(ncc.mean()) > 0.75
    assert float(ncc.mean()) > float(torch.maximum(ncc_delta, ncc_gauss).mean()) + 0.15


def test_classical_blind_with_occlusion() -> None:
    y, _, k = _frames()
    y, k = y[:2], k[:2]
    mask = _hand_mask().expand(2, 1, SIZE, SIZE)
    occluded = torch.where(mask > 0.5, y, torch.full_like(y, 0.9))
    x_hat, k_hat = classical_blind(occluded, mask, K, SIGMA)
    ncc = kernel_ncc(k_hat, k)
    ncc_gauss = kernel_ncc(gaussian_kernel(K, 2.0, 2.0)[None, None].expand(2, 1, K, K), k)
    print(f"\nkernel NCC with a hand mask {ncc.tolist()} (gauss2 {ncc_gauss.tolist()})")
    assert bool(torch.isfinite(x_hat).all())
    assert float(ncc.mean()) > float(ncc_gauss.mean()) + 0.1


def test_batch_independence_and_determinism() -> None:
    y, _, _ = _frames()
    cfg = BlindConfig(iters_per_scale=2)
    x_b, k_b = classical_blind(y[:2], None, 9, SIGMA, cfg)
    x_1, k_1 = classical_blind(y[1:2], None, 9, SIGMA, cfg)
    assert torch.allclose(k_b[1:], k_1, atol=1e-5)
    assert torch.allclose(x_b[1:], x_1, atol=1e-4)
    x_again, k_again = classical_blind(y[:2], None, 9, SIGMA, cfg)
    assert torch.equal(x_again, x_b) and torch.equal(k_again, k_b)


def test_input_errors() -> None:
    y = torch.zeros(1, 3, 32, 32)
    k = torch.ones(1, 1, 5, 5) / 25
    with pytest.raises(ClassicalInputError):
        classical_blind(y, None, 4, SIGMA)
    with pytest.raises(ClassicalInputError):
        classical_blind(y[0], None, 5, SIGMA)
    with pytest.raises(ClassicalInputError):
        wiener_deconv(y, torch.ones(1, 1, 4, 4) / 16, None, SIGMA)
    with pytest.raises(ClassicalInputError):
        wiener_deconv(y, k, torch.ones(1, 1, 16, 16), SIGMA)
    with pytest.raises(ClassicalInputError):
        wiener_deconv(y, k, None, sigma=0.0)
