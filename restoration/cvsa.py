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

from restoration.cld import CLD, ScoreFn
from restoration.kernel_ops import from_prior, resample_kernel, soft_kernel, soft_project, to_prior
from restoration.operators import blur, crop_from_canvas, pad_to_canvas
from restoration.physics import BlurMask, Operator, conjugate_gradient
from restoration.rng import Generators, randn

StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class RestoreResult:
    """Output of every sampler: the restored batch, what it cost (network evaluations), and what
    the sampler knows besides: the last x0 estimate, the kernel (blind samplers: (B, 1, K, K),
    sum 1) and per-sample diagnostics."""

    x: Tensor
    nfe: int
    x0_hat: Tensor | None = None
    kernel: Tensor | None = None
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
#: Guidance computed in closed form (no backpropagation through the network); needs H^T.
CLOSED_FORM_GUIDANCE = ("dmps",)


def time_grid(cld: CLD, steps: int, dtype: torch.dtype = torch.float64, power: float = 1.0) -> Tensor:
    """Grid t_0 = 1 > t_1 > ... > t_steps = t_min.

    power = 1 is CVSA Alg. 1's uniform grid (dt = (1 - t_min)/steps). power > 1 spends more steps at
    small t, where CLD resolves image detail: x_t's noise std relative to D11 x0 is still 0.24 at
    t = 0.05 (β = 4), so a uniform 30-step grid leaves only ~2 steps for all of the detail.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype) ** power
    return cld.t_min + (1.0 - cld.t_min) * u


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


def dmps_velocity_score(
    x: Tensor,
    v: Tensor,
    t: Tensor,
    y: Tensor,
    operator: Operator,
    adjoint: Operator,
    cld: CLD,
    *,
    noise_sigma: float,
    cg_iters: int = 20,
) -> Tensor:
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
    inv_xv, _, d_t = cld.x0_hat_coefficients(t)
    cov = cld.covariance(t)
    det = cov[..., 0, 0] * cov[..., 1, 1] - cov[..., 0, 1] ** 2
    inv_xx = cov[..., 1, 1] / det
    dm = cld.mean_matrix(t)
    dxx, dvx = dm[..., 0, 0], dm[..., 1, 0]
    cx = inv_xx * dxx + inv_xv * dvx  # (Sigma^-1 d)_x
    a_t = cx * dxx + d_t * dvx  # d^T Sigma^-1 d
    m = (_col(cx / a_t, x) * x + _col(d_t / a_t, x) * v).to(x.dtype)
    tau2 = _col(1.0 / a_t, y).to(y.dtype)
    r = y - operator(m)

    def cov_y(z: Tensor) -> Tensor:
        return noise_sigma**2 * z + tau2 * operator(adjoint(z))

    z = conjugate_gradient(cov_y, r, r / (noise_sigma**2 + tau2), cg_iters)
    return _col(d_t / a_t, x).to(x.dtype) * adjoint(z)


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
    adjoint: Operator | None = None,
    grid_power: float = 1.0,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """Implements Algorithm 1 ("CVSA for image restoration") of the CVSA paper.

    y: observations (B, ...); operator: H with H(x) shaped like y, or None to sample the prior
    (y is then ignored). `guidance_scale=1.0` with `guidance="literal"` is the paper's weight
    1/(2 sigma^2); "dps" uses zeta * ||y - H(x0_hat)||; "dmps" adds `guidance_scale` times
    :func:`dmps_velocity_score` (needs `adjoint`, no backpropagation through the network).
    `generator` may be one generator or one per sample (then a frame restored alone equals it
    restored in a batch). `grid_power` = 1 is Alg. 1's uniform time grid (`time_grid`).
    """
    if guidance not in GUIDANCE and guidance not in CLOSED_FORM_GUIDANCE:
        raise ValueError(
            f"unknown guidance {guidance!r}; choose from {sorted((*GUIDANCE, *CLOSED_FORM_GUIDANCE))}"
        )
    if operator is not None and y is None:
        raise ValueError("an operator needs observations y")
    if guidance == "dmps" and operator is not None and adjoint is None:
        raise ValueError("dmps guidance needs the operator's adjoint (linear H)")
    if dtype is None:
        dtype = y.dtype if y is not None else torch.float32
    if device is None and y is not None:
        device = y.device
    batch = shape[0]
    x, v = randn(shape, generator, device, dtype), randn(shape, generator, device, dtype)
    v = v * cld.mass**0.5  # u_T ~ N(0, I) x N(0, M I)
    grid = time_grid(cld, steps, power=grid_power)
    x0 = x
    r2 = None
    for i in range(steps):
        t = torch.full((batch,), float(grid[i]), dtype=torch.float64)
        dtau = float(grid[i] - grid[i + 1])
        if operator is None or guidance == "dmps":
            with torch.no_grad():
                s = score_fn(x, v, t)
                x0 = cld.x0_hat(x, v, s, t)
                if operator is not None:
                    assert adjoint is not None
                    s = s + guidance_scale * dmps_velocity_score(
                        x, v, t, y, operator, adjoint, cld, noise_sigma=noise_sigma
                    )
                    r2 = misfit(y, operator, x0)
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


def restore_proximal(
    prox: Callable[[Tensor, Tensor], Tensor],
    score_fn: ScoreFn,
    *,
    cld: CLD,
    shape: tuple[int, ...],
    steps: int,
    noise_sigma: float,
    generator: Generators,
    prox_strength: float = 1.0,
    renoise: float = 1.0,
    grid_power: float = 3.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """Proximal CVSA for a known forward model (the non-blind half of `restore_blind`'s "proximal").

    Per step: x0_hat from the prior (CVSA Alg. 1 step 2), replaced by the data-consistent
    prox(x0_hat, rho_t) = argmin ||y - H x||^2 + rho_t ||x - x0_hat||^2 (+ the task's regulariser),
    rho_t = `proximal_rho`; then the CLD state moves to the next time by `renoise_step` around the
    corrected estimate. Power-`grid_power` time grid (`time_grid`). No backpropagation.
    """
    batch = shape[0]
    x, v = randn(shape, generator, device, dtype), randn(shape, generator, device, dtype)
    v = v * cld.mass**0.5
    grid = time_grid(cld, steps, power=grid_power)
    x_new = x
    for i in range(steps):
        t = torch.full((batch,), float(grid[i]), dtype=torch.float64)
        with torch.no_grad():
            s = score_fn(x, v, t)
            x0 = cld.x0_hat(x, v, s, t)
            rho = proximal_rho(cld, t, noise_sigma, prox_strength).to(dtype).reshape(-1, 1, 1, 1)
            x_new = prox(x0, rho)
            if i < steps - 1:
                t_next = torch.full((batch,), float(grid[i + 1]), dtype=torch.float64)
                zx, zv = randn(shape, generator, device, dtype), randn(shape, generator, device, dtype)
                x, v = renoise_step(cld, x, v, x_new, t, t_next, renoise, zx, zv)
        if callback is not None:
            callback(i + 1, steps)
    return RestoreResult(x=x_new.detach(), x0_hat=x_new.detach(), nfe=steps)


# ---------------------------------------------------------------------------------------------
# Blind restoration (CVSA Algorithm 2) and its proximal extension
# ---------------------------------------------------------------------------------------------


def proximal_rho(
    cld: CLD, t: Tensor, noise_sigma: Tensor | float, strength: float, data_var: float = 0.25
) -> Tensor:
    """rho_t = lambda sigma^2 / Var(x0 | u_t), Var ~ (1/s^2 + (D11/L11)^2)^-1 (docs/design.md §6, amended).

    The prototype's rho_t = lambda sigma^2 / (L11/D11)^2 trusts the data without limit at large t, where
    L11/D11 explodes: the proximal solution is then an unregularised deconvolution (noise amplified
    ~6 dB below the blurred input with a 31-px kernel) and drags the trajectory along. Capping the
    x0 uncertainty at the data variance s^2 (Gaussian posterior of x0 given x_t) fixes it.
    """
    ell = cld.cholesky(t)[..., 0, 0]
    d11 = cld.mean_matrix(t)[..., 0, 0]
    return strength * noise_sigma**2 * (1.0 / data_var + (d11 / ell) ** 2)


def _blind_paper_scores(
    x, v, kp, kv, t, y, mask, image_score, kernel_score, image_cld, kernel_cld, noise_sigma, wi, wk,
    kernel_size=None,
):
    """CVSA Alg. 2 steps 2-5: both velocity scores plus the gradient of the shared data term."""
    with torch.enable_grad():
        v_req = v.detach().requires_grad_(True)
        kv_req = kv.detach().requires_grad_(True)
        s = image_score(x, v_req, t)
        sk = kernel_score(kp, kv_req, t)
        x0 = image_cld.x0_hat(x, v_req, s, t)
        k0 = resample_kernel(soft_kernel(kernel_cld.x0_hat(kp, kv_req, sk, t)), kernel_size or kp.shape[-1])
        r2 = (mask * (y - blur(x0, k0))).flatten(1).pow(2).sum(dim=1)
        nll = r2 / (2.0 * noise_sigma.flatten() ** 2)
        g_v, g_kv = torch.autograd.grad(nll.sum(), (v_req, kv_req))
    return s.detach() - wi * g_v, sk.detach() - wk * g_kv, x0.detach(), k0.detach()


def _proximal_kernel_step(
    kp, kv, t, physics, x0, k_est, p_ls, kernel_score, kernel_cld, *, update, blend, reg, cg_iters, threshold
):  # k_est is on the data's K x K canvas, kp / p_ls on the kernel process's canvas
    """Kernel half of a proximal step: least-squares kernel from x0_hat's gradients (an explicit
    M-step, as in Fast Diffusion EM), blended into the kernel process's x0 estimate; the kernel
    velocity score is shifted so that its x0_hat becomes the blend. Returns (score, kernel, p_ls)."""
    sk = kernel_score(kp, kv, t)
    p0 = kernel_cld.x0_hat(kp, kv, sk, t)
    if update:
        k_ls = soft_project(physics.update_kernel(x0, k_est, reg, cg_iters))
        p_ls = to_prior(resample_kernel(k_ls, kp.shape[-1]))
    p_new = p0 + blend * (p_ls - p0)
    _, _, dk = kernel_cld.x0_hat_coefficients(t)
    sk = sk + dk.to(p0.dtype).reshape(-1, 1, 1, 1) * (p_new - p0)
    k_new = resample_kernel(soft_kernel(p_new, threshold=threshold), k_est.shape[-1])
    return sk, k_new, p_ls, p_new


def renoise_step(
    cld: CLD, x: Tensor, v: Tensor, x0: Tensor, t: Tensor, t_next: Tensor, zeta: float, zx: Tensor, zv: Tensor
) -> tuple[Tensor, Tensor]:
    """Move u_t to t_next given a corrected x0 estimate: a DiffPIR step (Zhu et al. 2023, Alg. 1,
    step 7) transplanted to CLD. The noise implied by u_t around D_t (x0, 0) is
    eps_hat = L_t^-1 (u_t - D_t (x0, 0)); the new state is D_{t'} (x0, 0) + L_{t'} eps with
    eps = sqrt(1 - zeta) eps_hat + sqrt(zeta) z. zeta = 1 re-draws u_{t'} ~ p(u_{t'} | x0).

    Unlike a velocity-score shift, the correction lands in the state at once: with a prior whose
    x0_hat barely depends on u_t at large t, a score shift is undone by the prior's next score.
    """
    d, ell = cld.mean_matrix(t), cld.cholesky(t)
    dn, elln = cld.mean_matrix(t_next), cld.cholesky(t_next)

    def c(a: Tensor) -> Tensor:
        return _col(a, x)

    ex = (x - c(d[:, 0, 0]) * x0) / c(ell[:, 0, 0])
    ev = (v - c(d[:, 1, 0]) * x0 - c(ell[:, 1, 0]) * ex) / c(ell[:, 1, 1])
    a, b = (1.0 - zeta) ** 0.5, zeta**0.5
    ex, ev = a * ex + b * zx, a * ev + b * zv
    x_new = c(dn[:, 0, 0]) * x0 + c(elln[:, 0, 0]) * ex
    v_new = c(dn[:, 1, 0]) * x0 + c(elln[:, 1, 0]) * ex + c(elln[:, 1, 1]) * ev
    return x_new, v_new


def _col(a: Tensor, like: Tensor) -> Tensor:
    return a.to(dtype=like.dtype, device=like.device).reshape((-1,) + (1,) * (like.dim() - 1))


def restore_blind(
    y: Tensor,
    mask: Tensor | None,
    image_score: ScoreFn,
    kernel_score: ScoreFn | None,
    *,
    image_cld: CLD,
    kernel_cld: CLD | None,
    kernel_size: int,
    steps: int,
    noise_sigma: float | Tensor,
    generator: Generators,
    method: str = "proximal",
    known_kernel: Tensor | None = None,
    kernel_init: Tensor | None = None,
    image_guidance: float = 1.0,
    kernel_guidance: float = 1.0,
    prox_strength: float = 1.0,
    kernel_reg: float = 1e-3,
    cg_iters: int = 12,
    kernel_every: int = 1,
    kernel_threshold: float = 0.02,
    renoise: float | None = 1.0,
    grid_power: float = 3.0,
    grad_reg: float = 20.0,
    kernel_t_start: float = 1.0,
    canvas_multiple: int = 8,
    kernel_canvas: int | None = None,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """Blind CVSA: Algorithm 2 of the CVSA paper ("paper") or its proximal extension ("proximal").

    y (B, C, h, w) in [-1, 1] with noise std `noise_sigma` (a float or one per sample) on that
    scale; mask (B, 1, h, w), 1 = observed (None: all observed). With `known_kernel` (B, 1, K, K)
    the kernel process is skipped (non-blind proximal CVSA: the oracle-kernel ceiling). With
    `kernel_init` (B, 1, K, K) (e.g. a classical coarse-to-fine estimate) the kernel process is
    pulled towards it from the first step (weight kernel_guidance) and refined by least squares
    on x0_hat once t <= kernel_t_start.
    The image lives on a canvas padded by K - 1 (valid convolution,
    restoration/operators.py) and rounded up to `canvas_multiple`; the kernel process lives in the
    kernel prior's representation (restoration/kernels.py: to_prior/from_prior). With
    `kernel_canvas` smaller than `kernel_size` (a kernel prior trained on a 31-px canvas, kernels
    up to 63 px) the kernel process runs on the prior's canvas and its kernel is area-resampled
    to `kernel_size` for the data term, least-squares kernels back (kernels.resample_kernel;
    docs/models.md, "Kernel sizes").

    "paper": both processes take the literal gradient of -||y - M (k0_hat * x0_hat)||^2/(2 sigma^2)
    w.r.t. their velocities, scaled by image_guidance / kernel_guidance (Alg. 2 steps 4-5).
    "proximal": per step, an explicit least-squares kernel update on gradients of x0_hat, blended
    into the kernel process's x0 estimate with weight kernel_guidance in [0, 1], then the image
    x0_hat is replaced by the proximal data-consistent solution with rho_t = prox_strength sigma^2 /
    (L11/D11)^2; scores are shifted so that x0_hat equals the new estimates (s += d_t (x0' - x0_hat)).
    """
    if method not in ("paper", "proximal"):
        raise ValueError(f"unknown blind method {method!r}; choose 'paper' or 'proximal'")
    if known_kernel is not None and method != "proximal":
        raise ValueError("known_kernel (non-blind) needs method='proximal'")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    kc = kernel_size if kernel_canvas is None else int(kernel_canvas)
    if kc % 2 != 1 or kc > kernel_size:
        raise ValueError(f"kernel_canvas must be odd and <= kernel_size, got {kernel_canvas}")
    if (kernel_score is None or kernel_cld is None) and known_kernel is None:
        raise ValueError("blind restoration needs the kernel prior (kernel_score and kernel_cld)")
    batch, channels, h, w = y.shape
    if mask is None:
        mask = torch.ones(batch, 1, h, w, dtype=y.dtype, device=y.device)
    y_p, m_p, offsets = pad_to_canvas(y, mask, kernel_size, multiple=canvas_multiple)
    canvas = (batch, channels, offsets.canvas_height, offsets.canvas_width)
    kshape = (batch, 1, kc, kc)  # the kernel process's canvas
    dtype, device = y.dtype, y.device
    sigma = torch.as_tensor(noise_sigma, dtype=torch.float64).expand(batch)
    sigma_b = sigma.to(dtype=dtype, device=device).reshape(-1, 1, 1, 1)
    physics = BlurMask(y_p, (offsets.canvas_height, offsets.canvas_width), sigma, mask=m_p)

    x, v = randn(canvas, generator, device, dtype), randn(canvas, generator, device, dtype)
    kp, kv = randn(kshape, generator, device, dtype), randn(kshape, generator, device, dtype)
    v = v * image_cld.mass**0.5
    if kernel_cld is not None:
        kv = kv * kernel_cld.mass**0.5
    grid = time_grid(image_cld, steps, power=grid_power if method == "proximal" else 1.0)
    x_est, k_est = x, resample_kernel(soft_kernel(kp, threshold=kernel_threshold), kernel_size)
    if kernel_init is not None:
        k_est = kernel_init.to(dtype)
    p_ls = to_prior(resample_kernel(k_est, kc))
    anchored = kernel_init is not None
    for i in range(steps):
        t = torch.full((batch,), float(grid[i]), dtype=torch.float64)
        dtau = float(grid[i] - grid[i + 1])
        last = i == steps - 1
        if method == "paper":
            s, sk, x_est, k_soft = _blind_paper_scores(
                x, v, kp, kv, t, y_p, m_p, image_score, kernel_score, image_cld, kernel_cld,
                sigma_b, image_guidance, kernel_guidance, kernel_size,
            )  # fmt: skip
            k_est = k_soft
        else:
            with torch.no_grad():
                s = image_score(x, v, t)
                x0 = image_cld.x0_hat(x, v, s, t)
                if known_kernel is None:
                    sk, k_est, p_ls, p_new = _proximal_kernel_step(
                        kp, kv, t, physics, x0, k_est, p_ls, kernel_score, kernel_cld,
                        update=(i % kernel_every == 0 or last) and float(grid[i]) <= kernel_t_start,
                        blend=kernel_guidance if anchored or float(grid[i]) <= kernel_t_start else 0.0,
                        reg=kernel_reg,
                        cg_iters=cg_iters, threshold=kernel_threshold,
                    )  # fmt: skip
                else:
                    sk, k_est, p_new = torch.zeros_like(kp), known_kernel, kp
                rho = proximal_rho(image_cld, t, sigma, prox_strength).to(dtype).reshape(-1, 1, 1, 1)
                x_new = physics.with_kernel(k_est).data_consistency(x0, rho, grad_reg, cg_iters)
                _, _, dx = image_cld.x0_hat_coefficients(t)
                s = s + image_guidance * dx.to(dtype).reshape(-1, 1, 1, 1) * (x_new - x0)
                x_est = x0 + image_guidance * (x_new - x0)
        noise = None if last else randn(canvas, generator, device, dtype)
        knoise = None if last else randn(kshape, generator, device, dtype)
        if method == "proximal" and renoise is not None:
            if not last:
                t_next = torch.full((batch,), float(grid[i + 1]), dtype=torch.float64)
                x, v = renoise_step(
                    image_cld, x, v, x_est, t, t_next, renoise, noise, randn(canvas, generator, device, dtype)
                )
                kz = randn(kshape, generator, device, dtype)  # drawn either way: same image noise
                if known_kernel is None:  # a fixed kernel leaves the kernel process idle
                    kp, kv = renoise_step(kernel_cld, kp, kv, p_new, t, t_next, renoise, knoise, kz)
        else:
            x, v = reverse_step(image_cld, x, v, s, dtau, noise)
            kp, kv = reverse_step(kernel_cld, kp, kv, sk, dtau, knoise)
        if callback is not None:
            callback(i + 1, steps)
    kernel = from_prior(to_prior(k_est)) if known_kernel is None else known_kernel
    x_out = crop_from_canvas(x_est, offsets, h, w).clamp(-1.0, 1.0)
    with torch.no_grad():
        residual = physics.with_kernel(kernel).residual_ratio(x_est)
    nfe = steps if known_kernel is not None else 2 * steps  # the kernel network is not run then
    return RestoreResult(x=x_out, kernel=kernel, nfe=nfe, diagnostics={"residual_ratio": residual})
