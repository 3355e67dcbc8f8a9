"""CVSA samplers: reverse CLD guided by the conditional velocity score.

Implements Algorithm 1 ("CVSA for image restoration") of the CVSA paper, with the reverse-SDE sign
derived in `CLD.reverse_drift` (the paper's "-2 Gamma beta s_t" is a typo). Everything is per sample:
the data term, its gradient and the noise of sample i depend on sample i alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from restoration.cld import CLD
from restoration.rng import Generators, randn

ScoreFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""Velocity score s(x_t, v_t, t) with t a (B,) tensor."""
Operator = Callable[[Tensor], Tensor]
"""Differentiable forward model H (linear or not)."""
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RestoreResult:
    """Output of a sampler: the restored batch and what it cost."""

    x: Tensor
    x0_hat: Tensor
    nfe: int
    diagnostics: dict[str, Tensor] = field(default_factory=dict)


def misfit(y: Tensor, operator: Operator, x: Tensor) -> Tensor:
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


def time_grid(cld: CLD, steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Uniform grid t_0 = 1 > t_1 > ... > t_steps = t_min (CVSA Alg. 1 loop, dt = (1 - t_min)/steps)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return torch.linspace(1.0, cld.t_min, steps + 1, dtype=dtype)


def conditional_score(
    x: Tensor,
    v: Tensor,
    t: Tensor,
    y: Tensor,
    operator: Operator,
    score_fn: ScoreFn,
    cld: CLD,
    *,
    noise_sigma: float,
    guidance: str = "literal",
    guidance_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """CVSA Alg. 1 steps 2-3 (Eqs. 5, 12, 13): s = s_theta + grad_{v_t} log p(y | x0_hat(u_t)).

    Gradients are enabled locally: x0_hat depends on v_t directly and through the network.
    Returns (conditional score, x0_hat, per-sample misfit), all detached.
    """
    log_likelihood = GUIDANCE[guidance]
    with torch.enable_grad():
        v_req = v.detach().requires_grad_(True)
        s = score_fn(x, v_req, t)
        x0 = cld.x0_hat(x, v_req, s, t)
        r2 = misfit(y, operator, x0)
        (grad_v,) = torch.autograd.grad(log_likelihood(r2, noise_sigma, guidance_scale).sum(), v_req)
    return s.detach() + grad_v, x0.detach(), r2.detach()


def reverse_step(
    cld: CLD, x: Tensor, v: Tensor, score: Tensor, dtau: float, noise: Tensor | None
) -> tuple[Tensor, Tensor]:
    """CVSA Alg. 1 steps 4-5: one Euler-Maruyama step of the reverse CLD SDE (sign derived, not printed).

    `noise` is None on the last step (no Wiener noise there).
    """
    dx, dv = cld.reverse_drift(x, v, score)
    x_new = x + dx * dtau
    v_new = v + dv * dtau
    if noise is not None:
        v_new = v_new + (cld.diffusion_sq() * dtau) ** 0.5 * noise
    return x_new, v_new


def restore(
    y: Tensor | None,
    operator: Operator | None,
    score_fn: ScoreFn,
    *,
    cld: CLD,
    shape: tuple[int, ...],
    steps: int,
    noise_sigma: float,
    generator: Generators,
    guidance_scale: float = 1.0,
    guidance: str = "literal",
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """Implements Algorithm 1 ("CVSA for image restoration") of the CVSA paper.

    y: observations (B, ...); operator: H with H(x) shaped like y, or None to sample the prior
    (y is then ignored). `guidance_scale=1.0` with `guidance="literal"` is the paper's weight
    1/(2 sigma^2); "dps" uses zeta * ||y - H(x0_hat)||. `generator` may be one generator or one per
    sample (then a frame restored alone equals it restored in a batch).
    """
    if guidance not in GUIDANCE:
        raise ValueError(f"unknown guidance {guidance!r}; choose from {sorted(GUIDANCE)}")
    if operator is not None and y is None:
        raise ValueError("an operator needs observations y")
    if dtype is None:
        dtype = y.dtype if y is not None else torch.float32
    if device is None and y is not None:
        device = y.device
    batch = shape[0]
    x, v = randn(shape, generator, device, dtype), randn(shape, generator, device, dtype)
    v = v * cld.mass**0.5  # u_T ~ N(0, I) x N(0, M I)
    grid = time_grid(cld, steps)
    x0 = x
    r2 = None
    for i in range(steps):
        t = torch.full((batch,), float(grid[i]), dtype=torch.float64)
        dtau = float(grid[i] - grid[i + 1])
        if operator is None:
            with torch.no_grad():
                s = score_fn(x, v, t)
                x0 = cld.x0_hat(x, v, s, t)
        else:
            s, x0, r2 = conditional_score(
                x, v, t, y, operator, score_fn, cld,
                noise_sigma=noise_sigma, guidance=guidance, guidance_scale=guidance_scale,
            )  # fmt: skip
        last = i == steps - 1
        noise = None if last else randn(shape, generator, device, dtype)
        x, v = reverse_step(cld, x, v, s, dtau, noise)
        if callback is not None:
            callback(i + 1, steps)
    diagnostics: dict[str, Tensor] = {}
    if operator is not None:
        with torch.no_grad():
            n_obs = y[0].numel()
            diagnostics["residual_rms"] = torch.sqrt(misfit(y, operator, x) / n_obs)
            diagnostics["x0_hat_residual_rms"] = torch.sqrt(r2 / n_obs)
    return RestoreResult(x=x.detach(), x0_hat=x0.detach(), nfe=steps, diagnostics=diagnostics)
