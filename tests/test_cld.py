"""CLD closed forms against matrix exponentials (Van Loan) and statistical checks of `perturb`."""

import math

import pytest
import torch

from restoration.cld import CLD

TIMES = torch.cat([torch.tensor([1e-3, 2e-3, 5e-3]), torch.linspace(0.01, 1.0, 40)]).double()


def van_loan(cld: CLD, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """exp(F t) and the covariance of u_t | x0 with Sigma_0 = diag(0, gamma M) by Van Loan's method."""
    f = cld.drift_matrix()
    q = torch.diag(torch.tensor([0.0, cld.diffusion_sq()], dtype=torch.float64))
    block = torch.zeros(4, 4, dtype=torch.float64)
    block[:2, :2] = -f
    block[:2, 2:] = q
    block[2:, 2:] = f.T
    e = torch.linalg.matrix_exp(block * t)
    phi = e[2:, 2:].T  # exp(F t)
    noise_cov = phi @ e[:2, 2:]  # int_0^t exp(Fs) Q exp(F^T s) ds
    sigma0 = torch.diag(torch.tensor([0.0, cld.gamma * cld.mass], dtype=torch.float64))
    return phi, phi @ sigma0 @ phi.T + noise_cov


@pytest.mark.parametrize("cld", [CLD(), CLD(beta=2.0, mass=1.0, friction=2.0, gamma=0.1)])
def test_mean_and_covariance_match_matrix_exponential(cld: CLD) -> None:
    d = cld.mean_matrix(TIMES)
    s = cld.covariance(TIMES)
    for i, t in enumerate(TIMES.tolist()):
        phi, sigma = van_loan(cld, t)
        torch.testing.assert_close(d[i], phi, rtol=1e-6, atol=0.0)
        # every entry to 1e-6 relative of its own magnitude
        rel = ((s[i] - sigma).abs() / sigma.abs()).max().item()
        assert rel < 1e-6, (t, rel, s[i], sigma)


def test_covariance_is_not_the_papers_printed_typo() -> None:
    """The CVSA paper's Sigma_xv term '-beta^2 t Sigma0xx' vanishes here; its 'beta t^2' term does not:
    the printed Sigma_vv uses 4 beta t^2 / Gamma^2 where the exact form has 4 beta^2 t^2 / Gamma^2."""
    cld = CLD()
    t = torch.tensor(0.3, dtype=torch.float64)
    b, g, s0 = cld.beta, cld.friction, cld.gamma * cld.mass
    a = 4 * b * t / g
    printed_vv = torch.exp(-a) * (
        g**2 / 4 * torch.expm1(a) + b * t * g - 2 * (b * t) ** 2 + s0 * (1 + 4 * b * t**2 / g**2 - a)
    )
    _, exact = van_loan(cld, 0.3)
    assert abs(printed_vv - exact[1, 1]) > 1e-4
    assert abs(cld.covariance(t)[1, 1] - exact[1, 1]) < 1e-12


def test_cholesky_reproduces_covariance() -> None:
    cld = CLD()
    ell = cld.cholesky(TIMES)
    s = cld.covariance(TIMES)
    torch.testing.assert_close(ell @ ell.transpose(-1, -2), s, rtol=1e-10, atol=1e-14)
    assert torch.all(ell[..., 0, 1] == 0)
    assert torch.all(ell[..., 0, 0] > 0) and torch.all(ell[..., 1, 1] > 0)


def test_critical_damping_is_enforced() -> None:
    with pytest.raises(ValueError, match="critical damping"):
        CLD(mass=0.5, friction=1.0)
    with pytest.raises(ValueError, match="positive"):
        CLD(beta=-1.0)


@pytest.mark.parametrize("t", [0.02, 0.3, 1.0])
def test_perturb_has_the_closed_form_mean_and_covariance(t: float) -> None:
    cld = CLD()
    g = torch.Generator().manual_seed(1234)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 0.7, dtype=torch.float64)
    p = cld.perturb(x0, torch.full((n,), t, dtype=torch.float64), generator=g)
    samples = torch.stack([p.x.flatten(), p.v.flatten()])
    mean = samples.mean(dim=1)
    cov = torch.cov(samples)
    d = cld.mean_matrix(t)
    sigma = cld.covariance(t)
    expected_mean = d[:, 0] * 0.7
    # 5 standard errors of the mean, per component
    se = torch.sqrt(torch.diagonal(sigma) / n)
    assert torch.all((mean - expected_mean).abs() < 5 * se), (mean, expected_mean)
    # covariance entries: relative to the scale sqrt(s_ii s_jj), 5 standard errors ~ 5*sqrt(2/n)
    scale = torch.sqrt(torch.outer(torch.diagonal(sigma), torch.diagonal(sigma)))
    assert torch.all((cov - sigma).abs() / scale < 5 * math.sqrt(2.0 / n)), (cov, sigma)


def test_x0_hat_is_exact_for_a_point_mass() -> None:
    """If x0 is a point mass at c, the exact velocity score of u_t is the transition score and
    x0_hat must return c exactly, at every t (CVSA Prop. 4.2)."""
    cld = CLD()
    g = torch.Generator().manual_seed(0)
    c = torch.randn(4, 3, 5, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0], dtype=torch.float64)
    p = cld.perturb(c, t, generator=g)
    score = cld.score_from_eps(p.eps_v, t)  # grad_v log N(u; D(c,0), Sigma) = -eps_v / L22
    torch.testing.assert_close(cld.x0_hat(p.x, p.v, score, t), c, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(cld.eps_from_score(score, t), p.eps_v)


def test_score_from_eps_is_the_transition_score() -> None:
    """-eps_v / L22 equals [-Sigma^-1 (u - mu)]_v computed directly."""
    cld = CLD()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(3, 1, 2, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0.05, 0.4, 0.9], dtype=torch.float64)
    p = cld.perturb(x0, t, generator=g)
    d, s = cld.mean_matrix(t), cld.covariance(t)
    r = torch.stack([p.x - d[:, 0, 0, None, None, None] * x0, p.v - d[:, 1, 0, None, None, None] * x0])
    inv = torch.linalg.inv(s)
    direct = -(inv[:, 1, 0, None, None, None] * r[0] + inv[:, 1, 1, None, None, None] * r[1])
    torch.testing.assert_close(cld.score_from_eps(p.eps_v, t), direct)
