"""CVSA Algorithm 1 against an analytic Gaussian prior and its exact posterior."""

import pytest
import torch
from samplers import guided

from restoration.analytic import gaussian_posterior, gaussian_prior_score
from restoration.cld import CLD
from restoration.rng import generator_for

CLD_DEFAULT = CLD()


def blur_matrix(n: int, taps: tuple[float, ...]) -> torch.Tensor:
    """A small 1-D blur as a dense matrix (zero boundary), rows sum to <= 1."""
    a = torch.zeros(n, n, dtype=torch.float64)
    half = len(taps) // 2
    for i in range(n):
        for j, w in enumerate(taps):
            k = i + j - half
            if 0 <= k < n:
                a[i, k] = w
    return a


def test_unguided_sampler_reproduces_a_gaussian_prior() -> None:
    m, s2 = 0.3, 0.25
    score = gaussian_prior_score(CLD_DEFAULT, m, s2)
    res = guided(
        None, None, score, cld=CLD_DEFAULT, shape=(512, 1, 4, 4), steps=300, noise_sigma=0.05,
        generator=torch.Generator().manual_seed(0), dtype=torch.float64,
    )  # fmt: skip
    x = res.x.flatten()
    assert res.nfe == 300
    assert abs(x.mean().item() - m) < 0.02, x.mean()
    assert abs(x.var().item() / s2 - 1.0) < 0.06, x.var()


def test_the_papers_printed_sign_does_not_reproduce_the_prior() -> None:
    """Flipping the score sign (the paper's '-2 Gamma beta s') must fail the same check."""
    m, s2 = 0.3, 0.25
    exact = gaussian_prior_score(CLD_DEFAULT, m, s2)

    def flipped(x, v, t):
        return -exact(x, v, t)

    res = guided(
        None, None, flipped, cld=CLD_DEFAULT, shape=(256, 1, 4, 4), steps=300, noise_sigma=0.05,
        generator=torch.Generator().manual_seed(0), dtype=torch.float64,
    )  # fmt: skip
    x = res.x.flatten()
    assert not (abs(x.mean().item() - m) < 0.05 and abs(x.var().item() / s2 - 1.0) < 0.2)


@pytest.fixture(scope="module")
def blur_problem():
    n, sigma, s2 = 16, 0.05, 0.25
    a = blur_matrix(n, (0.25, 0.5, 0.25))
    g = torch.Generator().manual_seed(7)
    mean = torch.full((n,), 0.2, dtype=torch.float64)
    x_true = mean + s2**0.5 * torch.randn(n, generator=g, dtype=torch.float64)
    y = a @ x_true + sigma * torch.randn(n, generator=g, dtype=torch.float64)
    post_mu, post_cov = gaussian_posterior(a, y, mean, s2, sigma)
    return a, y, mean, s2, sigma, post_mu, post_cov


def run_guided(problem, steps: int, guidance: str = "literal", scale: float = 1.0, batch: int = 256):
    a, y, _, s2, sigma, _, _ = problem

    def operator(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ a.T

    return guided(
        y.expand(batch, -1), operator, gaussian_prior_score(CLD_DEFAULT, 0.2, s2),
        cld=CLD_DEFAULT, shape=(batch, 1, 4, 4), steps=steps, noise_sigma=sigma,
        generator=torch.Generator().manual_seed(11), guidance=guidance, guidance_scale=scale,
    )  # fmt: skip


@pytest.mark.slow
def test_guided_samples_match_the_exact_posterior(blur_problem) -> None:
    _, _, mean, _, _, post_mu, post_cov = blur_problem
    res = run_guided(blur_problem, steps=300)
    x = res.x.flatten(1)
    dist = torch.linalg.norm(x.mean(0) - post_mu) / torch.linalg.norm(mean - post_mu)
    var_ratio = x.var(0).mean() / torch.diagonal(post_cov).mean()
    print(f"posterior-mean distance ratio {dist:.3f}, variance ratio {var_ratio:.3f}")
    assert dist < 0.25
    assert 0.5 < var_ratio < 2.0


def test_batch_independence_and_seeded_determinism(blur_problem) -> None:
    """A sample restored alone equals it restored in a batch (one generator per sample)."""
    a, y, _, s2, sigma, _, _ = blur_problem

    def operator(x):
        return x.flatten(1) @ a.T

    score = gaussian_prior_score(CLD_DEFAULT, 0.2, s2)
    keys = [f"frame-{i}" for i in range(4)]

    def go(ks):
        return guided(
            y.expand(len(ks), -1), operator, score, cld=CLD_DEFAULT, shape=(len(ks), 1, 4, 4),
            steps=30, noise_sigma=sigma, generator=[generator_for(k) for k in ks],
        ).x  # fmt: skip

    batch = go(keys)
    alone = go(keys[2:3])
    torch.testing.assert_close(batch[2:3], alone, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(go(keys), batch, rtol=0, atol=0)
    assert not torch.allclose(batch[0], batch[1])
