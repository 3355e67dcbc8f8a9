"""Coarse-to-fine L0 blind kernel estimation (Pan, Hu, Su & Yang, "Deblurring Text Images via
L0-Regularized Intensity and Gradient Prior", CVPR 2014) on the periodic canvas of
:mod:`restoration.periodic`, grayscale (luma) pyramid, float64.

- x-step (their Eq. 6-11): min_x ||k * x - y||² + λ (w_px ||x||_0 + ||∇x||_0) by half-quadratic
  splitting; the auxiliaries are hard thresholds and the x update is a closed form in Fourier
  space; the splitting weight doubles from 2λ to ``beta_max``.
- k-step (their Eq. 12): min_k ||∇x * k - ∇y||² + γ ||k||² restricted to observed pixels (the
  interior, outside the hand): :func:`restoration.physics.kernel_least_squares` on the canvas.
- projection (:func:`restoration.kernel_ops.project_kernel`): negative values and entries below
  ``kernel_threshold`` of the peak zeroed (Pan et al. use 5%; our σ = 0.02 noise needs 15%),
  8-connected components lighter than ``min_component`` of the mass removed, renormalised,
  re-centred on the centre of mass; λ decays by ``lambda_decay`` per iteration; the kernel is
  upsampled between scales.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from restoration.kernel_ops import erode, luma, odd_size, project_kernel, recentre_subpixel, resample_kernel
from restoration.periodic import (
    Canvas,
    CircularKernelMap,
    canvas_pad,
    circ_blur,
    diff_otfs,
    gaussian_otf,
    make_canvas,
    otf,
)
from restoration.physics import grad_xy, grad_xy_adjoint, kernel_least_squares
from restoration.settings import BlindConfig

__all__ = ["ClassicalInputError", "blind_kernel", "estimate_kernel"]


class ClassicalInputError(ValueError):
    """Raised for inputs of the wrong shape or invalid parameters."""


def check_inputs(y: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(y, torch.Tensor) or y.ndim != 4:
        raise ClassicalInputError(f"y must be a (B, C, H, W) tensor, got {getattr(y, 'shape', y)}")
    b, _, h, w = y.shape
    if mask is None:
        return y.double(), torch.ones(b, 1, h, w, dtype=torch.float64, device=y.device)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != (h, w):
        raise ClassicalInputError(f"mask must be (B, 1, {h}, {w}), got {tuple(mask.shape)}")
    if mask.shape[0] not in (1, b):
        raise ClassicalInputError(f"mask batch {mask.shape[0]} does not match y batch {b}")
    return y.double(), (mask > 0.5).double().expand(b, 1, h, w)


def result_dtype(y: torch.Tensor) -> torch.dtype:
    return y.dtype if isinstance(y, torch.Tensor) and y.is_floating_point() else torch.float32




def _l0_restore(
    canvas: Canvas,
    yt: torch.Tensor,
    otf_k: torch.Tensor,
    lam: tuple[float, float],
    beta_max: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pan et al. 2014 x-step (Eq. 6-11) by half-quadratic splitting, λ = (gradient, pixel);
    returns (x, refilled ỹ)."""
    lam_grad, lam_pixel = lam
    shape = canvas.shape
    dx, dy = diff_otfs(shape, yt.device)
    k2 = otf_k.abs() ** 2
    d2 = dx.abs() ** 2 + dy.abs() ** 2
    x = yt
    beta = 2 * max(lam_grad, lam_pixel, 1e-8)
    while beta < beta_max:
        gx, gy = grad_xy(x, circular=True)
        keep = (gx**2 + gy**2) >= lam_grad / beta
        gx, gy = gx * keep, gy * keep
        g_t = grad_xy_adjoint(gx, gy, circular=True)
        num = otf_k.conj() * torch.fft.rfft2(yt) + beta * torch.fft.rfft2(g_t)
        den = k2 + beta * d2
        if lam_pixel > 0:
            u = x * (x**2 >= lam_pixel / beta)
            num = num + beta * torch.fft.rfft2(u)
            den = den + beta
        x = torch.fft.irfft2(num / den, s=shape)
        yt = canvas.observed * canvas.y + (1 - canvas.observed) * circ_blur(x, otf_k)
        beta *= 2.0
    return x, yt


def _kernel_step(
    x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, k0: torch.Tensor, cfg: BlindConfig
) -> torch.Tensor:
    """Pan et al. Eq. 12 restricted to observed pixels: min_k Σ_w |∇x * k - ∇y|² + γ ||k||², by
    ``kernel_cg_iters`` CG steps from ``k0``; γ = ``kernel_reg`` × the diagonal of AᵀA (scale
    free). With ``kernel_prefilter`` > 0 both x and y are first smoothed by the same Gaussian G
    (std in px): G * (k * x) = k * (G * x), so the kernel is unchanged while the noise of ∇y above
    the Gaussian's band is removed.
    """
    shape = x.shape[-2], x.shape[-1]
    if cfg.kernel_prefilter > 0:
        g_otf = gaussian_otf(shape, cfg.kernel_prefilter, x.device)
        x, y = circ_blur(x, g_otf), circ_blur(y, g_otf)
    gxs = tuple(torch.fft.rfft2(g) for g in grad_xy(x, circular=True))
    diag = sum((weight * torch.fft.irfft2(g, s=shape) ** 2).sum(dim=(1, 2, 3)) for g in gxs)
    gamma = (cfg.kernel_reg * diag).view(-1, 1, 1, 1).clamp_min(1e-12)
    op = CircularKernelMap(gxs, shape, k0.shape[-1])
    targets = grad_xy(y, circular=True)
    return kernel_least_squares(
        op, targets, (weight, weight), k0.clone(), gamma, cfg.kernel_cg_iters, floor=1e-30
    )


def _pyramid_sizes(h: int, w: int, kernel_size: int, cfg: BlindConfig) -> list[tuple[float, int]]:
    """(scale, kernel size) from coarse to fine; the finest is (1, kernel_size)."""
    levels = [(1.0, kernel_size)]
    s = 1.0
    while True:
        s *= cfg.scale_factor
        ks = odd_size(kernel_size * s)
        if ks <= cfg.coarsest_kernel - 2 or min(h, w) * s < 2 * ks + 8:
            break
        levels.append((s, ks))
        if ks <= cfg.coarsest_kernel:
            break
    return levels[::-1]


def _scaled(gray: torch.Tensor, mask: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The frame and its mask at pyramid ``scale`` (a pixel is observed only if fully observed)."""
    if scale >= 1.0:
        return gray, mask
    h, w = gray.shape[-2:]
    hs, ws = max(8, round(h * scale)), max(8, round(w * scale))
    ys = F.interpolate(gray, size=(hs, ws), mode="bilinear", antialias=True, align_corners=False)
    ms = F.interpolate(mask, size=(hs, ws), mode="bilinear", antialias=True, align_corners=False)
    return ys, (ms > 0.99).to(gray.dtype)


def estimate_kernel(
    gray: torch.Tensor,
    mask: torch.Tensor,
    kernel_size: int,
    config: BlindConfig | None = None,
) -> torch.Tensor:
    """Coarse-to-fine L0 kernel estimation (Pan et al. 2014) on grayscale frames in [0, 1].

    Args:
        gray: (B, 1, h, w) observation on [0, 1].
        mask: (B, 1, h, w), 1 = observed.
        kernel_size: odd K of the estimate.
        config: hyper-parameters.

    Returns:
        (B, 1, K, K) kernels: non-negative, sum 1, centre of mass on the centre pixel (integer).
    """
    cfg = config or BlindConfig()
    out_dtype = result_dtype(gray)
    gray, mask = check_inputs(gray, mask)
    b, _, h, w = gray.shape
    levels = _pyramid_sizes(h, w, kernel_size, cfg)
    k = torch.zeros(b, 1, levels[0][1], levels[0][1], device=gray.device, dtype=gray.dtype)
    k[:, :, levels[0][1] // 2, levels[0][1] // 2] = 1.0
    lam_grad, lam_pixel = cfg.lambda_grad, cfg.lambda_pixel
    for scale, ks in levels:
        k = resample_kernel(k, ks, mode="bilinear")
        canvas = make_canvas(*_scaled(gray, mask, scale), canvas_pad(ks))
        # k-step weights: pixels whose gradient uses two observed values, away from the padding.
        weight = erode(canvas.observed, 1 + math.ceil(2 * cfg.kernel_prefilter))
        yt = canvas.y
        for _ in range(cfg.iters_per_scale):
            x, yt = _l0_restore(canvas, yt, otf(k, canvas.shape), (lam_grad, lam_pixel), cfg.beta_max)
            k = _kernel_step(x, canvas.y, weight, k, cfg)
            k = project_kernel(k, cfg.kernel_threshold, cfg.min_component)
            lam_grad = max(lam_grad / cfg.lambda_decay, cfg.lambda_min)
            lam_pixel = max(lam_pixel / cfg.lambda_decay, cfg.lambda_min) if lam_pixel else 0.0
    return k.to(out_dtype)


def blind_kernel(
    y: torch.Tensor, mask: torch.Tensor | None, kernel_size: int, config: BlindConfig | None = None
) -> torch.Tensor:
    """The kernel of :func:`restoration.classical.classical_blind`: coarse-to-fine L0 estimate on the
    luma of y (B, C, h, w) on [-1, 1], sub-pixel re-centred. (B, 1, K, K) float64, non-negative,
    sum 1."""
    y, mask = check_inputs(y, mask)
    gray = luma(((y + 1) / 2).clamp(0, 1))
    return recentre_subpixel(estimate_kernel(gray, mask, kernel_size, config or BlindConfig()))
