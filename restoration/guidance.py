"""Guidance plug-ins of the sampler loop (:mod:`restoration.sampler`): what one step does with the
prior's score and the data.

- :class:`PriorGuidance`: the prior alone, or with DMPS's closed-form likelihood score;
- :class:`GradientGuidance`: CVSA Alg. 1's literal likelihood gradient, or DPS's weighting;
- :class:`ProximalGuidance`: the data-consistency solve on x̂0 (proximal CVSA, non-blind);
- :class:`BlindProximal`: the production blind step — a kernel strategy (:class:`FixedKernel`, or
  :class:`PriorKernel`: the kernel prior's process with a least-squares kernel update) then the
  proximal image step with that kernel;
- :class:`BlindPaper`: CVSA Alg. 2 as printed (both processes guided by the literal gradient).

Each is a small stateful object for one run: it remembers its last estimates (x̂0, the kernel),
which the entry points of :mod:`restoration.cvsa` return.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from restoration.cld import CLD, ScoreFn
from restoration.kernel_ops import from_prior, resample_kernel, soft_kernel, soft_project, to_prior
from restoration.operators import blur
from restoration.physics import BlurMask, Physics, conjugate_gradient
from restoration.sampler import State, Step, Update, col, proximal_rho
from restoration.settings import BlindSettings, ProximalSettings


@dataclass(frozen=True)
class ScorePrior:
    """A diffusion prior as the samplers see it: its velocity score, its CLD, and (kernel priors)
    the canvas it was trained on (None: any); :class:`restoration.priors.Prior` qualifies."""

    score: ScoreFn
    cld: CLD
    canvas: int | None = None


# ----------------------------------------------------------------------------- likelihoods


def misfit(y: Tensor, operator: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample squared residual ||y - H(x)||^2, reduced over (C, H, W) only -> (B,)."""
    r = y - operator(x)
    return r.flatten(1).pow(2).sum(dim=1)


def literal_log_likelihood(r2: Tensor, noise_sigma: float, scale: float) -> Tensor:
    """CVSA Eq. 13: log p(y | x0_hat) = -||y - H(x0_hat)||^2 / (2 sigma^2), times `scale` (1 = literal)."""
    return -scale * r2 / (2.0 * noise_sigma**2)


def dps_log_likelihood(r2: Tensor, noise_sigma: float, scale: float) -> Tensor:
    """DPS weighting (Chung et al. 2023, Alg. 1): zeta * ||y - H(x0_hat)|| (not squared), zeta = `scale`."""
    del noise_sigma  # DPS normalises by the residual norm instead of the noise level
    return -scale * torch.sqrt(r2 + 1e-12)


GUIDANCE: dict[str, Callable[[Tensor, float, float], Tensor]] = {
    "literal": literal_log_likelihood,
    "dps": dps_log_likelihood,
}
#: Guidance computed in closed form (no backpropagation through the network); needs H^T.
CLOSED_FORM_GUIDANCE = ("dmps",)


def conditional_score(
    state: State, t: Tensor, problem: Physics, prior: ScorePrior, guidance: str, scale: float
) -> tuple[Tensor, Tensor, Tensor]:
    """CVSA Alg. 1 steps 2-3 (Eqs. 5, 12, 13): s = s_theta + grad_{v_t} log p(y | x0_hat(u_t)).

    Gradients are enabled locally: x0_hat depends on v_t directly and through the network.
    Returns (conditional score, x0_hat, per-sample misfit), all detached.
    """
    x, v = state
    log_likelihood = GUIDANCE[guidance]
    with torch.enable_grad():
        v_req = v.detach().requires_grad_(True)
        s = prior.score(x, v_req, t)
        x0 = prior.cld.x0_hat(x, v_req, s, t)
        r2 = misfit(problem.y, problem.forward, x0)
        (grad_v,) = torch.autograd.grad(log_likelihood(r2, problem.noise_sigma, scale).sum(), v_req)
    return s.detach() + grad_v, x0.detach(), r2.detach()


def dmps_velocity_score(state: State, t: Tensor, problem: Physics, cld: CLD, cg_iters: int) -> Tensor:
    """DMPS's closed-form likelihood score (Meng & Kabashima 2024, Theorem 1) transplanted to CLD.

    DMPS's Assumption 1 takes p(x0) uninformative w.r.t. p(u_t | x0) = N(D_t (x0, 0), Sigma_t)
    (v0 marginalised into Sigma_t). Per pixel, with d = (D^xx, D^vx) and Sigma_t^-1 entries
    sigma^..: x0 | u_t ~ N(m_t, tau_t^2), tau_t^-2 = a_t = d^T Sigma_t^-1 d and
    m_t = d^T Sigma_t^-1 u_t / a_t, so for y = H x0 + n

        p~(y | u_t) = N(y; H m_t, sigma^2 I + tau_t^2 H H^T),
        grad_{v_t} log p~(y | u_t) = (d_t / a_t) H^T (sigma^2 I + tau_t^2 H H^T)^-1 (y - H m_t),

    d_t = sigma^xv D^xx + sigma^vv D^vx being CVSA Alg. 1's coefficient (dm_t/dv_t = d_t / a_t).
    It is DMPS's Eq. (10) with (1/sqrt(abar_t), (1 - abar_t)/abar_t) replaced by CLD's
    (d_t / a_t, tau_t^2). The inverse is solved by CG (exact in 1-2 iterations for masks and
    area downsampling, whose H H^T is diagonal). Linear H only.
    """
    (x, v), y, sigma2 = state, problem.y, problem.noise_sigma**2
    operator, adjoint = problem.forward, problem.adjoint
    assert adjoint is not None
    inv_xv, _, d_t = cld.x0_hat_coefficients(t)
    cov = cld.covariance(t)
    det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
    inv_xx = cov[..., 1, 1] / det
    dm = cld.mean_matrix(t)
    dxx, dvx = dm[..., 0, 0], dm[..., 1, 0]
    cx = inv_xx * dxx + inv_xv * dvx  # (Sigma^-1 d)_x
    a_t = cx * dxx + d_t * dvx  # d^T Sigma^-1 d
    m = (col(cx / a_t, x) * x + col(d_t / a_t, x) * v).to(x.dtype)
    tau2 = col(1.0 / a_t, y).to(y.dtype)
    r = y - operator(m)

    def cov_y(z: Tensor) -> Tensor:
        return sigma2 * z + tau2 * operator(adjoint(z))

    z = conjugate_gradient(cov_y, r, r / (sigma2 + tau2), cg_iters)
    return col(d_t / a_t, x).to(x.dtype) * adjoint(z)


# ----------------------------------------------------------------------------- non-blind


class PriorGuidance:
    """The prior's score alone (``problem`` None: sampling the prior), or plus ``scale`` times DMPS's
    closed-form likelihood score (no backpropagation through the network)."""

    def __init__(
        self, prior: ScorePrior, problem: Physics | None, scale: float, cg_iters: int
    ):
        self.prior, self.problem, self.scale, self.cg_iters = prior, problem, scale, cg_iters
        self.x0: Tensor | None = None
        self.r2: Tensor | None = None

    def __call__(self, step: Step, states: Sequence[State]) -> list[Update]:
        x, v = states[0]
        with torch.no_grad():
            s = self.prior.score(x, v, step.t)
            self.x0 = self.prior.cld.x0_hat(x, v, s, step.t)
            if self.problem is not None:
                dmps = dmps_velocity_score(states[0], step.t, self.problem, self.prior.cld, self.cg_iters)
                s = s + self.scale * dmps
                self.r2 = misfit(self.problem.y, self.problem.forward, self.x0)
        return [Update(score=s)]


class GradientGuidance:
    """CVSA Alg. 1 (``guidance="literal"``: the likelihood gradient through x̂0 and the network) or
    DPS's weighting (``"dps"``), times ``scale``."""

    def __init__(self, prior: ScorePrior, problem: Physics, guidance: str, scale: float):
        self.prior, self.problem, self.guidance, self.scale = prior, problem, guidance, scale
        self.x0: Tensor | None = None
        self.r2: Tensor | None = None

    def __call__(self, step: Step, states: Sequence[State]) -> list[Update]:
        s, self.x0, self.r2 = conditional_score(
            states[0], step.t, self.problem, self.prior, self.guidance, self.scale
        )
        return [Update(score=s)]


class ProximalGuidance:
    """Proximal CVSA's image step: x̂0 from the prior replaced by the data-consistent
    argmin ||y - H x||² + ρ_t ||x - x̂0||² (+ μ||∇x||²), ρ_t = :func:`proximal_rho`. With ``blend``
    (restore_blind's ``image_guidance``) the estimate is x̂0 + blend (x' - x̂0) and the velocity score
    is shifted so that x̂0 becomes it (for the score-shift variant, ``renoise`` None)."""

    def __init__(
        self, prior: ScorePrior, problem: Physics, settings: ProximalSettings, blend: float | None = None
    ):
        self.prior, self.problem, self.settings, self.blend = prior, problem, settings, blend
        self.x0: Tensor | None = None

    def denoise(self, state: State, t: Tensor) -> tuple[Tensor, Tensor]:
        """The prior's (score, x̂0) at u_t."""
        x, v = state
        s = self.prior.score(x, v, t)
        return s, self.prior.cld.x0_hat(x, v, s, t)

    def correct(self, t: Tensor, s: Tensor, x0: Tensor, problem: Physics) -> tuple[Tensor, Tensor]:
        """(shifted score, corrected x0): the data-consistency solve on x̂0 with ``problem``."""
        cfg, cld = self.settings, self.prior.cld
        rho = proximal_rho(cld, t, problem.noise_sigma, cfg.prox_strength, cfg.prior_var)
        rho = rho.to(x0.dtype).reshape(-1, 1, 1, 1)
        x_new = problem.data_consistency(x0, rho, cfg.grad_reg, cfg.cg_iters)
        if self.blend is None:
            return s, x_new
        _, _, dx = cld.x0_hat_coefficients(t)
        s = s + self.blend * dx.to(x0.dtype).reshape(-1, 1, 1, 1) * (x_new - x0)
        return s, x0 + self.blend * (x_new - x0)

    def __call__(self, step: Step, states: Sequence[State]) -> list[Update]:
        with torch.no_grad():
            s, x0 = self.denoise(states[0], step.t)
            s, self.x0 = self.correct(step.t, s, x0, self.problem)
        return [Update(score=s, x0=self.x0)]


# ----------------------------------------------------------------------------- blind


class FixedKernel:
    """A known (or chosen) kernel: the kernel process stays idle."""

    def __init__(self, kernel: Tensor):
        self.kernel = kernel

    def __call__(self, step: Step, state: State, x0: Tensor) -> tuple[Update, Tensor]:
        return Update(), self.kernel

    def final(self) -> Tensor:
        return self.kernel


class PriorKernel:
    """The kernel prior's process, its x̂0 blended (weight ``kernel_guidance``) towards an anchor:
    ``kernel_init`` and/or, once t <= ``kernel_t_start``, a least-squares kernel on the gradients of
    the image's x̂0 (:meth:`BlurMask.update_kernel`, an explicit M-step as in Fast Diffusion EM);
    the kernel score is shifted so that its x̂0 becomes the blend. The kernel process runs on the
    prior's canvas (``prior.canvas``), the data term on the problem's K x K."""

    def __init__(self, prior: ScorePrior, problem: BlurMask, settings: BlindSettings, init: Tensor | None):
        self.prior, self.problem, self.settings, self.init = prior, problem, settings, init
        self.k_est: Tensor | None = None
        self.p_ls: Tensor | None = None

    def _start(self, kp: Tensor) -> None:
        size, canvas = self.problem.kernel_size, kp.shape[-1]
        k = resample_kernel(soft_kernel(kp, threshold=self.settings.kernel_threshold), size)
        self.k_est = k if self.init is None else self.init.to(kp.dtype)
        self.p_ls = to_prior(resample_kernel(self.k_est, canvas))

    def __call__(self, step: Step, state: State, x0: Tensor) -> tuple[Update, Tensor]:
        (kp, kv), cfg, cld = state, self.settings, self.prior.cld
        if self.k_est is None:
            self._start(kp)
        t_now = float(step.t[0])
        sk = self.prior.score(kp, kv, step.t)
        p0 = cld.x0_hat(kp, kv, sk, step.t)
        if (step.i % cfg.kernel_every == 0 or step.last) and t_now <= cfg.kernel_t_start:
            k_ls = soft_project(
                self.problem.update_kernel(x0, self.k_est, cfg.kernel_reg, cfg.proximal.cg_iters)
            )
            self.p_ls = to_prior(resample_kernel(k_ls, kp.shape[-1]))
        blend = cfg.kernel_guidance if self.init is not None or t_now <= cfg.kernel_t_start else 0.0
        p_new = p0 + blend * (self.p_ls - p0)
        _, _, dk = cld.x0_hat_coefficients(step.t)
        sk = sk + dk.to(p0.dtype).reshape(-1, 1, 1, 1) * (p_new - p0)
        self.k_est = resample_kernel(soft_kernel(p_new, threshold=cfg.kernel_threshold), self.k_est.shape[-1])
        return Update(score=sk, x0=p_new), self.k_est

    def final(self) -> Tensor:
        assert self.k_est is not None
        return from_prior(to_prior(self.k_est))


class BlindProximal:
    """restore_blind's "proximal" step: the kernel strategy, then the proximal image step with the
    kernel it returns (processes: image, kernel)."""

    def __init__(self, image: ProximalGuidance, kernel: FixedKernel | PriorKernel):
        self.image, self.kernel = image, kernel
        self.x_est: Tensor | None = None

    def __call__(self, step: Step, states: Sequence[State]) -> list[Update]:
        problem = self.image.problem
        assert isinstance(problem, BlurMask)
        with torch.no_grad():
            s, x0 = self.image.denoise(states[0], step.t)
            kernel_update, kernel = self.kernel(step, states[1], x0)
            s, self.x_est = self.image.correct(step.t, s, x0, problem.with_kernel(kernel))
        return [Update(score=s, x0=self.x_est), kernel_update]


class BlindPaper:
    """CVSA Alg. 2 steps 2-5 as printed (sign fixed): both velocity scores plus the literal gradient
    of the shared data term ||y - M (k̂0 * x̂0)||² / (2σ²), scaled by image_guidance / kernel_guidance."""

    def __init__(self, image: ScorePrior, kernel: ScorePrior, problem: BlurMask, settings: BlindSettings):
        self.image, self.kernel, self.problem, self.settings = image, kernel, problem, settings
        self.x_est: Tensor | None = None
        self.k_est: Tensor | None = None

    def __call__(self, step: Step, states: Sequence[State]) -> list[Update]:
        (x, v), (kp, kv), t, p = states[0], states[1], step.t, self.problem
        sigma = torch.as_tensor(p.noise_sigma).to(dtype=x.dtype, device=x.device).flatten()
        with torch.enable_grad():
            v_req = v.detach().requires_grad_(True)
            kv_req = kv.detach().requires_grad_(True)
            s = self.image.score(x, v_req, t)
            sk = self.kernel.score(kp, kv_req, t)
            x0 = self.image.cld.x0_hat(x, v_req, s, t)
            k0 = resample_kernel(soft_kernel(self.kernel.cld.x0_hat(kp, kv_req, sk, t)), p.kernel_size)
            r2 = (p.mask * (p.y - blur(x0, k0))).flatten(1).pow(2).sum(dim=1)
            g_v, g_kv = torch.autograd.grad((r2 / (2.0 * sigma**2)).sum(), (v_req, kv_req))
        self.x_est, self.k_est = x0.detach(), k0.detach()
        cfg = self.settings
        return [
            Update(score=s.detach() - cfg.image_guidance * g_v),
            Update(score=sk.detach() - cfg.kernel_guidance * g_kv),
        ]

    def final(self) -> Tensor:
        assert self.k_est is not None
        return from_prior(to_prior(self.k_est))
