"""Blind CVSA (Algorithm 2 and its proximal extension) on a tiny analytic setup."""

import pytest
import torch
from samplers import blind

from restoration.analytic import gaussian_prior_score
from restoration.cld import CLD
from restoration.kernel_ops import from_prior, to_prior
from restoration.metrics import kernel_mse, kernel_ncc
from restoration.operators import blur
from restoration.rng import generator_for

K = 7
CLD_DEFAULT = CLD()


def line_kernel(horizontal: bool) -> torch.Tensor:
    k = torch.zeros(1, 1, K, K, dtype=torch.float64)
    k[..., 3, 1:6] = 1.0
    k = k / k.sum()
    return k if horizontal else k.transpose(-1, -2).contiguous()


def blocks_image(seed: int, size: int = 38) -> torch.Tensor:
    """Piecewise-constant 'product' image: sharp edges are what make the kernel identifiable."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    for _ in range(10):
        a, b = torch.randint(0, size - 8, (2,), generator=g).tolist()
        c, d = torch.randint(3, 12, (2,), generator=g).tolist()
        x[..., a : a + c, b : b + d] = torch.rand(1, generator=g, dtype=torch.float64) * 2 - 1
    return x


@pytest.fixture(scope="module")
def problem():
    """Known kernel family {horizontal, vertical line}; analytic Gaussian priors for image and kernel."""
    fam = torch.cat([line_kernel(True), line_kernel(False)])
    truth = fam[:1]
    x = blocks_image(0)
    g = torch.Generator().manual_seed(0)
    y = blur(x, truth) + 0.02 * torch.randn(1, 1, 32, 32, generator=g, dtype=torch.float64)
    prior_mean = to_prior(fam).mean(0, keepdim=True)
    kernel_score = gaussian_prior_score(CLD_DEFAULT, prior_mean, 0.2)
    image_score = gaussian_prior_score(CLD_DEFAULT, 0.0, 0.5)
    return y, truth, prior_mean, image_score, kernel_score


# The two proximal state updates, each with the settings it was measured with on this problem.
SCORE_SHIFT = dict(renoise=None, prox_strength=3.0, grid_power=1.0, grad_reg=0.0)
RENOISE = dict(renoise=1.0, prox_strength=3.0, grad_reg=0.0)


def run(problem, y=None, generator=None, steps=100, method="proximal", **kw):
    y0, _, _, image_score, kernel_score = problem
    y = y0 if y is None else y
    return blind(
        y, None, image_score, kernel_score, image_cld=CLD_DEFAULT, kernel_cld=CLD_DEFAULT,
        kernel_size=K, steps=steps, noise_sigma=0.02, method=method,
        generator=generator if generator is not None else torch.Generator().manual_seed(1),
        image_guidance=1.0, kernel_guidance=0.5, **kw,
    )  # fmt: skip


@pytest.mark.parametrize("variant", [SCORE_SHIFT, RENOISE], ids=["score-shift", "renoise"])
def test_proximal_blind_recovers_the_kernel_better_than_its_initial_guess(problem, variant) -> None:
    _, truth, prior_mean, _, _ = problem
    initial = from_prior(prior_mean)  # the kernel process starts at the prior's mean
    res = run(problem, **variant)
    mse0, ncc0 = kernel_mse(initial, truth).item(), kernel_ncc(initial, truth).item()
    mse1, ncc1 = kernel_mse(res.kernel, truth).item(), kernel_ncc(res.kernel, truth).item()
    print(f"initial mse {mse0:.2e} ncc {ncc0:.3f} -> blind mse {mse1:.2e} ncc {ncc1:.3f}")
    assert mse1 < mse0 and ncc1 > ncc0 + 0.05
    assert 0.5 < res.diagnostics["residual_ratio"].item() < 1.5  # fits the data to the noise level
    assert torch.all(res.kernel >= 0)
    torch.testing.assert_close(res.kernel.sum(dim=(1, 2, 3)), torch.ones(1, dtype=res.kernel.dtype))
    assert res.x.shape == problem[0].shape


@pytest.mark.parametrize("method", ["proximal", "paper"])
def test_blind_batch_independence_and_determinism(problem, method) -> None:
    y0 = problem[0]
    ys = torch.cat([y0, y0.flip(-1), y0.flip(-2)])
    keys = ["a", "b", "c"]
    batch = run(problem, ys, [generator_for(k) for k in keys], steps=8, method=method)
    alone = run(problem, ys[1:2], [generator_for("b")], steps=8, method=method)
    again = run(problem, ys, [generator_for(k) for k in keys], steps=8, method=method)
    torch.testing.assert_close(batch.x[1:2], alone.x, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(batch.kernel[1:2], alone.kernel, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(again.x, batch.x, rtol=0, atol=0)
    assert batch.nfe == 16
