"""Analytic Gaussian prior under CLD: exact velocity score and exact linear-Gaussian posterior.

Used to prove the samplers (tests) and by the demo when no learned prior is wanted. For
x0 ~ N(m, s^2 I), u_t is Gaussian per pixel with mean D_t (m, 0) and covariance
s^2 d d^T + Sigma_t, d = (D^xx, D^vx), so grad_v log p(u_t) is linear in u_t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from restoration.cld import CLD, ScoreFn


def gaussian_prior_score(cld: CLD, mean: Tensor | float, var: float) -> ScoreFn:
    """Exact velocity score of the CLD marginal p(u_t) for x0 ~ N(mean, var I)."""

    def score(x: Tensor, v: Tensor, t: Tensor) -> Tensor:
        d = cld.mean_matrix(t)  # (B, 2, 2)
        dx, dv = d[:, 0, 0], d[:, 1, 0]
        c = cld.covariance(t) + var * torch.stack(
            [torch.stack([dx * dx, dx * dv], -1), torch.stack([dv * dx, dv * dv], -1)], -2
        )
        inv = torch.linalg.inv(c)
        shape = (-1,) + (1,) * (x.dim() - 1)

        def col(a: Tensor) -> Tensor:
            return a.reshape(shape).to(x)

        rx = x - col(dx) * mean
        rv = v - col(dv) * mean
        return -(col(inv[:, 1, 0]) * rx + col(inv[:, 1, 1]) * rv)

    return score


def gaussian_posterior(
    a: Tensor, y: Tensor, mean: Tensor, var: float, noise_sigma: float
) -> tuple[Tensor, Tensor]:
    """Exact posterior N(mu, P^-1) of x ~ N(mean, var I) given y = A x + N(0, sigma^2 I) (vectors)."""
    n = a.shape[1]
    precision = torch.eye(n, dtype=a.dtype) / var + a.T @ a / noise_sigma**2
    cov = torch.linalg.inv(precision)
    mu = cov @ (mean / var + a.T @ y / noise_sigma**2)
    return mu, cov
