"""CVSA samplers: reverse CLD guided by the conditional velocity score — the public entry points.

Each takes the problem (a :class:`restoration.physics.Physics`), the prior(s), a frozen settings
object (:mod:`restoration.settings`) and the generator(s), and runs the one sampler loop of
:mod:`restoration.sampler` with a guidance plug-in of :mod:`restoration.guidance`:

- :func:`restore`: CVSA Algorithm 1 (literal guidance; the reverse-SDE sign derived in
  ``CLD.reverse_drift``, the paper's "-2 Gamma beta s_t" is a typo), DPS or DMPS guidance;
- :func:`restore_proximal`: proximal CVSA for a known forward model (data-consistency solve + CLD
  renoise step);
- :func:`restore_blind`: blind CVSA — Algorithm 2 (``paper``) or the production ``proximal``
  extension; with a known (chosen) kernel it is proximal CVSA with that kernel.

Everything is per sample: the data term, its gradient and the noise of sample i depend on sample i
alone (one generator per sample makes a frame restored alone equal it restored in a batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from restoration.guidance import (
    CLOSED_FORM_GUIDANCE,
    GUIDANCE,
    BlindPaper,
    BlindProximal,
    FixedKernel,
    GradientGuidance,
    PriorGuidance,
    PriorKernel,
    ProximalGuidance,
    ScorePrior,
    misfit,
)
from restoration.physics import BlurMask, Physics
from restoration.rng import Generators
from restoration.sampler import Process, StepCallback, run, time_grid
from restoration.settings import BlindSettings, GuidedSettings, ProximalSettings

__all__ = ["RestoreResult", "ScorePrior", "restore", "restore_blind", "restore_proximal"]


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


def restore(
    problem: Physics | None,
    prior: ScorePrior,
    settings: GuidedSettings,
    generator: Generators,
    like: Tensor | None = None,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """CVSA Algorithm 1 on ``problem``'s canvas: ``settings.guidance`` "literal" with scale 1 is the
    paper's weight 1/(2σ²); "dps" uses ζ ||y - H(x̂0)||; "dmps" adds ``scale`` times DMPS's
    closed-form score (linear H). ``problem`` None samples the prior. The samples take the shape,
    dtype and device of ``like`` (default: ``problem``'s canvas (B, C, *canvas) and y's dtype).
    Returns the final x_t, the last x̂0 and (guided) the residual RMS of both."""
    if settings.guidance not in GUIDANCE and settings.guidance not in CLOSED_FORM_GUIDANCE:
        choices = sorted((*GUIDANCE, *CLOSED_FORM_GUIDANCE))
        raise ValueError(f"unknown guidance {settings.guidance!r}; choose from {choices}")
    if problem is not None and settings.guidance == "dmps" and not problem.linear:
        raise ValueError("dmps guidance needs the operator's adjoint (linear H)")
    if like is None:
        if problem is None:
            raise ValueError("sampling the prior needs `like` (the samples' shape, dtype, device)")
        like = problem.y.new_empty((*problem.y.shape[:2], *problem.canvas))
    if problem is None or settings.guidance == "dmps":
        guidance = PriorGuidance(prior, problem, settings.scale, settings.dmps_cg_iters)
    else:
        guidance = GradientGuidance(prior, problem, settings.guidance, settings.scale)
    grid = time_grid(prior.cld, settings.steps, power=settings.grid_power)
    ((x, _),) = run([Process(prior.cld, tuple(like.shape))], guidance, grid, None, generator, like, callback)
    diagnostics: dict[str, Tensor] = {}
    if problem is not None:
        with torch.no_grad():
            n_obs = problem.y[0].numel()
            diagnostics["residual_rms"] = torch.sqrt(misfit(problem.y, problem.forward, x) / n_obs)
            diagnostics["x0_hat_residual_rms"] = torch.sqrt(guidance.r2 / n_obs)
    x0 = guidance.x0.detach()
    return RestoreResult(x=x.detach(), nfe=settings.steps, x0_hat=x0, diagnostics=diagnostics)


def restore_proximal(
    problem: Physics,
    prior: ScorePrior,
    settings: ProximalSettings,
    generator: Generators,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """Proximal CVSA for a known forward model (the non-blind half of :func:`restore_blind`).

    Per step: x̂0 from the prior (CVSA Alg. 1 step 2), replaced by the data-consistent
    prox(x̂0, ρ_t) = ``problem.data_consistency`` (argmin ||y - H x||² + ρ_t ||x - x̂0||² + the
    model's regulariser), ρ_t = ``proximal_rho``; then the CLD state moves to the next time by the
    renoise step around the corrected estimate. Power-``grid_power`` time grid. No backpropagation.
    """
    guidance = ProximalGuidance(prior, problem, settings)
    shape = (*problem.y.shape[:2], *problem.canvas)
    grid = time_grid(prior.cld, settings.steps, power=settings.grid_power)
    run([Process(prior.cld, shape)], guidance, grid, settings.renoise, generator, problem.y, callback)
    x = guidance.x0.detach()
    return RestoreResult(x=x, nfe=settings.steps, x0_hat=x)


def _blind_guidance(
    problem: BlurMask,
    priors: tuple[ScorePrior, ScorePrior | None],
    settings: BlindSettings,
    known_kernel: Tensor | None,
    kernel_init: Tensor | None,
) -> BlindProximal | BlindPaper:
    image_prior, kernel_prior = priors
    if settings.method == "paper":
        assert kernel_prior is not None
        return BlindPaper(image_prior, kernel_prior, problem, settings)
    image = ProximalGuidance(image_prior, problem, settings.proximal, blend=settings.image_guidance)
    if known_kernel is not None:
        return BlindProximal(image, FixedKernel(known_kernel))
    assert kernel_prior is not None
    return BlindProximal(image, PriorKernel(kernel_prior, problem, settings, kernel_init))


def _check_blind(
    problem: BlurMask, kernel_prior: ScorePrior | None, settings: BlindSettings, known_kernel: Tensor | None
) -> int:
    """Validate restore_blind's arguments; returns the kernel process's canvas."""
    if settings.method not in ("paper", "proximal"):
        raise ValueError(f"unknown blind method {settings.method!r}; choose 'paper' or 'proximal'")
    if known_kernel is not None and settings.method != "proximal":
        raise ValueError("known_kernel (non-blind) needs method='proximal'")
    if kernel_prior is None and known_kernel is None:
        raise ValueError("blind restoration needs the kernel prior")
    size = problem.kernel_size
    if size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {size}")
    canvas = size if kernel_prior is None or kernel_prior.canvas is None else int(kernel_prior.canvas)
    if canvas % 2 != 1 or canvas > size:
        raise ValueError(f"the kernel prior's canvas must be odd and <= kernel_size, got {canvas}")
    return canvas


def restore_blind(
    problem: BlurMask,
    image_prior: ScorePrior,
    kernel_prior: ScorePrior | None,
    settings: BlindSettings,
    generator: Generators,
    known_kernel: Tensor | None = None,
    kernel_init: Tensor | None = None,
    callback: StepCallback | None = None,
) -> RestoreResult:
    """Blind CVSA: Algorithm 2 of the CVSA paper ("paper") or its proximal extension ("proximal").

    ``problem``: :meth:`BlurMask.for_frames` of frames y (B, C, h, w) on [-1, 1], their mask and
    noise std (one per frame), K the kernel size; the image lives on its canvas. The kernel
    process lives in the kernel prior's representation (restoration/kernel_ops.py) on the prior's
    canvas (``kernel_prior.canvas``, kernels area-resampled to K for the data term).
    With ``known_kernel`` (B, 1, K, K) the kernel process stays idle (non-blind proximal CVSA: the
    production path with a chosen kernel, and the oracle-kernel ceiling). With ``kernel_init`` the
    kernel process is pulled towards it from the first step (weight ``kernel_guidance``) and
    refined by least squares on x̂0 once t <= ``kernel_t_start``.

    "paper": both processes take the literal gradient of -||y - M (k̂0 * x̂0)||²/(2σ²) w.r.t. their
    velocities, scaled by image_guidance / kernel_guidance (Alg. 2 steps 4-5), uniform grid.
    "proximal": per step, the kernel strategy, then x̂0 replaced by x̂0 + image_guidance (x' - x̂0),
    x' the data-consistency solve with that kernel; the state moves by the renoise step (or, with
    ``renoise`` None, by a reverse step with the score shifted so that x̂0 becomes the estimate).
    Returns the restored (B, C, h, w) in [-1, 1], the kernel (B, 1, K, K) and ``residual_ratio``.
    """
    kernel_canvas = _check_blind(problem, kernel_prior, settings, known_kernel)
    batch, channels = problem.y.shape[:2]
    processes = [
        Process(image_prior.cld, (batch, channels, *problem.canvas)),
        Process(None if kernel_prior is None else kernel_prior.cld, (batch, 1, kernel_canvas, kernel_canvas)),
    ]
    guidance = _blind_guidance(problem, (image_prior, kernel_prior), settings, known_kernel, kernel_init)
    cfg = settings.proximal
    power = cfg.grid_power if settings.method == "proximal" else 1.0  # the paper's uniform grid
    grid = time_grid(image_prior.cld, cfg.steps, power=power)
    renoise = cfg.renoise if settings.method == "proximal" else None
    run(processes, guidance, grid, renoise, generator, problem.y, callback)
    kernel = guidance.kernel.final() if isinstance(guidance, BlindProximal) else guidance.final()
    with torch.no_grad():
        residual = problem.with_kernel(kernel).residual_ratio(guidance.x_est)
    nfe = cfg.steps if known_kernel is not None else 2 * cfg.steps  # the kernel network is not run then
    x = problem.crop(guidance.x_est).clamp(-1.0, 1.0)
    return RestoreResult(x=x, nfe=nfe, kernel=kernel, diagnostics={"residual_ratio": residual})
