"""Critically-damped Langevin diffusion (CLD) in position-velocity space.

Conventions (docs/design.md §6, proven in tests/test_cld.py against matrix exponentials):

forward SDE (t: 0 -> 1), state u = (x, v)::

    dx = (beta / M) v dt
    dv = (-beta x - (Gamma beta / M) v) dt + sqrt(2 Gamma beta) dW

i.e. du = F u dt + G dW with F = beta [[0, 1/M], [-1, -Gamma/M]] and G = diag(0, sqrt(2 Gamma beta)).
The CVSA paper prints "+Gamma beta M^-1 v" in the forward drift: a typo (friction removes energy).

Transition u_t | x0 (with v0 ~ N(0, gamma M) marginalised, i.e. Sigma_0 = diag(0, gamma M)) is Gaussian with
mean D_t (x0, 0) and covariance Sigma_t (2x2, shared by every pixel). The CVSA paper (Eq. 11) reprints the
CLD covariance with typos ("-beta^2 t Sigma0xx" and "4 beta t^2 Gamma^-2"); the form below follows the
CLD paper and is checked against Van Loan's method to 1e-10.

All per-time scalars are computed in float64 and cast to the dtype of the tensors they multiply.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

ScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""A velocity score s(x_t, v_t, t) (t a (B,) tensor): a prior network, an analytic score, or a
wrapper of one (tiles, autocast)."""


@dataclass(frozen=True)
class Perturbed:
    """A sample of u_t | x0 and the standard normal noises that produced it."""

    x: Tensor
    v: Tensor
    eps_x: Tensor
    eps_v: Tensor


def _as_time(t: Tensor | float) -> Tensor:
    return torch.as_tensor(t, dtype=torch.float64)


def _per_sample(c: Tensor, like: Tensor) -> Tensor:
    """Broadcast a (B,) per-time coefficient over the trailing (C, H, W) dims of `like`."""
    c = c.to(device=like.device, dtype=like.dtype)
    return c.reshape(c.shape + (1,) * (like.dim() - c.dim()))


@dataclass(frozen=True)
class CLD:
    """CLD hyper-parameters; critical damping Gamma^2 = 4 M is enforced."""

    beta: float = 4.0
    mass: float = 0.25
    friction: float = 1.0
    gamma: float = 0.04
    t_min: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("beta", "mass", "friction", "gamma", "t_min"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CLD.{name} must be positive, got {getattr(self, name)}")
        if not math.isclose(self.friction**2, 4.0 * self.mass, rel_tol=1e-9):
            raise ValueError(
                f"CLD needs critical damping friction^2 = 4*mass; got friction={self.friction}, "
                f"mass={self.mass}"
            )

    # -- forward process -------------------------------------------------------------------------

    def drift_matrix(self) -> Tensor:
        """F of the linear forward SDE du = F u dt + G dW (float64, 2x2)."""
        b, m, g = self.beta, self.mass, self.friction
        return torch.tensor([[0.0, b / m], [-b, -g * b / m]], dtype=torch.float64)

    def diffusion_sq(self) -> float:
        """(G G^T)_vv = 2 Gamma beta; the x row has no noise."""
        return 2.0 * self.friction * self.beta

    def mean_matrix(self, t: Tensor | float) -> Tensor:
        """D_t = exp(F t) (CVSA Eq. 10), shape (..., 2, 2), float64."""
        t = _as_time(t)
        b, g = self.beta, self.friction
        e = torch.exp(-2.0 * b * t / g)
        row0 = torch.stack([1.0 + 2.0 * b * t / g, 4.0 * b * t / g**2], dim=-1)
        row1 = torch.stack([-b * t, 1.0 - 2.0 * b * t / g], dim=-1)
        return e[..., None, None] * torch.stack([row0, row1], dim=-2)

    def covariance(self, t: Tensor | float) -> Tensor:
        """Sigma_t of u_t | x0 with Sigma_0 = diag(0, gamma M) (CLD closed form; CVSA Eq. 11 fixed).

        expm1 keeps the small-t cancellation (Sigma_xx ~ t^2) accurate.
        """
        t = _as_time(t)
        b, g = self.beta, self.friction
        s0vv = self.gamma * self.mass
        a = 4.0 * b * t / g
        bt2 = (b * t) ** 2
        e = torch.exp(-a)
        sxx = torch.expm1(a) - a - 8.0 * bt2 / g**2 + 16.0 * bt2 / g**4 * s0vv
        sxv = 4.0 * b * t / g**2 * s0vv + 4.0 * bt2 / g - 8.0 * bt2 / g**3 * s0vv
        svv = g**2 / 4.0 * torch.expm1(a) + b * t * g - 2.0 * bt2 + s0vv * (
            1.0 + 4.0 * bt2 / g**2 - a
        )
        row0 = torch.stack([sxx, sxv], dim=-1)
        row1 = torch.stack([sxv, svv], dim=-1)
        return e[..., None, None] * torch.stack([row0, row1], dim=-2)

    def cholesky(self, t: Tensor | float) -> Tensor:
        """Lower Cholesky factor [[L11, 0], [L21, L22]] of Sigma_t, shape (..., 2, 2), float64."""
        s = self.covariance(t)
        l11 = torch.sqrt(s[..., 0, 0])
        l21 = s[..., 1, 0] / l11
        l22 = torch.sqrt(s[..., 1, 1] - l21**2)
        zero = torch.zeros_like(l11)
        return torch.stack(
            [torch.stack([l11, zero], dim=-1), torch.stack([l21, l22], dim=-1)], dim=-2
        )

    def perturb(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Perturbed:
        """Sample u_t | x0 (v0 marginalised): x = mu_x + L11 eps_x, v = mu_v + L21 eps_x + L22 eps_v.

        `t` is (B,); the noises are drawn from `generator` (explicit randomness).
        """
        d = self.mean_matrix(t)
        ell = self.cholesky(t)
        eps_x = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        eps_v = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x = _per_sample(d[..., 0, 0], x0) * x0 + _per_sample(ell[..., 0, 0], x0) * eps_x
        v = (
            _per_sample(d[..., 1, 0], x0) * x0
            + _per_sample(ell[..., 1, 0], x0) * eps_x
            + _per_sample(ell[..., 1, 1], x0) * eps_v
        )
        return Perturbed(x=x, v=v, eps_x=eps_x, eps_v=eps_v)

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> tuple[Tensor, Tensor]:
        """u at t = 1 from the equilibrium N(0, I) x N(0, M I) (CVSA Alg. 1, initialisation)."""
        x = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        v = torch.randn(shape, generator=generator, device=device, dtype=dtype) * math.sqrt(
            self.mass
        )
        return x, v

    # -- score parameterisation ------------------------------------------------------------------

    def score_from_eps(self, eps_v: Tensor, t: Tensor) -> Tensor:
        """Velocity score from the predicted velocity noise: s = -eps_v / L22 (docs/design.md §6)."""
        l22 = self.cholesky(t)[..., 1, 1]
        return -eps_v / _per_sample(l22, eps_v)

    def eps_from_score(self, score: Tensor, t: Tensor) -> Tensor:
        """Inverse of `score_from_eps`."""
        l22 = self.cholesky(t)[..., 1, 1]
        return -score * _per_sample(l22, score)

    def x0_hat_coefficients(self, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """(sigma^xv, sigma^vv, d_t) of CVSA Alg. 1 step 2 (entries of Sigma_t^-1 and D_t), float64.

        d_t = sigma^xv D^xx + sigma^vv D^vx, so that x0_hat = (sigma^xv x + sigma^vv v + s) / d_t.
        """
        s = self.covariance(t)
        d = self.mean_matrix(t)
        det = s[..., 0, 0] * s[..., 1, 1] - s[..., 0, 1] ** 2
        inv_xv = -s[..., 0, 1] / det
        inv_vv = s[..., 0, 0] / det
        d_t = inv_xv * d[..., 0, 0] + inv_vv * d[..., 1, 0]
        return inv_xv, inv_vv, d_t

    def x0_hat(self, x_t: Tensor, v_t: Tensor, score: Tensor, t: Tensor) -> Tensor:
        """Posterior-mean estimate E[x0 | u_t] (CVSA Prop. 4.2 / Eq. 12 with v0 = 0; Alg. 1 step 2).

        From Tweedie for the linear-Gaussian transition: grad_v log p(u_t) =
        [Sigma_t^-1 (D_t (E[x0|u_t], 0) - u_t)]_v. Exact when `score` is the exact velocity score.
        """
        inv_xv, inv_vv, d_t = self.x0_hat_coefficients(t)
        return (
            _per_sample(inv_xv, x_t) * x_t + _per_sample(inv_vv, x_t) * v_t + score
        ) / _per_sample(d_t, x_t)

    # -- reverse process -------------------------------------------------------------------------

    def reverse_drift(self, x: Tensor, v: Tensor, score: Tensor) -> tuple[Tensor, Tensor]:
        """Drift of the reverse SDE in tau = 1 - t (CVSA Alg. 1 step 4, sign fixed).

        Reverse of du = F u dt + G dW is du = (-F u + G G^T grad log p) dtau + G dW_bar:
        dx = -(beta/M) v, dv = beta x + (Gamma beta / M) v + 2 Gamma beta s.
        The paper's "-2 Gamma beta s_t" is a typo: tests/test_cvsa.py shows the unguided sampler
        reproduces a Gaussian prior only with the plus sign.
        """
        b, m, g = self.beta, self.mass, self.friction
        dx = -(b / m) * v
        dv = b * x + (g * b / m) * v + 2.0 * g * b * score
        return dx, dv
