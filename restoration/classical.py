"""Classical (prior-free) restoration baselines: oracle Wiener and L0 blind deconvolution.

These are the rivals and references of the benchmark (issue 5): what a practitioner would use
without a learned prior. They follow the valid-convolution convention of
:mod:`restoration.operators`: an observation ``y`` (B, C, h, w) is the valid part of ``k * x``
with ``x`` on a canvas ``K - 1`` px larger, and the restored frame is the canvas region under
``y`` (same size as ``y``).

FFT methods need a periodic problem, so every solver here works on the padded canvas of
:mod:`restoration.periodic` (inpainted occlusions, smooth periodic extension, unobserved canvas
pixels refilled with the current ``k * x`` every iteration: a majorise-minimise step for the
masked data term ``||M ⊙ (k * x - y)||²``).

Blind method (:func:`classical_blind`): the coarse-to-fine L0 kernel estimate of Pan et al. 2014
(:mod:`restoration.classical_kernel`), then hyper-Laplacian non-blind deconvolution (Krishnan &
Fergus, NIPS 2009, ||k * x - y||² + τ Σ |∇x|^p, p = 0.8) in colour with the estimated kernel, by
half-quadratic splitting with the generalised shrinkage of Zuo et al. (ICCV 2013). Its settings
are :class:`restoration.settings.BlindConfig`.

Computation is in float64: the L0 hard thresholds would turn float32 rounding differences
(a batched FFT rounds differently from a single one) into visibly different kernels, and every
frame must get the same result alone as in a batch. All public functions take and return
images on the restoration scale [-1, 1] and kernels
(B, 1, K, K) summing to 1; noise levels ``sigma`` are on the scale of ``y`` ([-1, 1]: 0.04 is
σ = 0.02 on [0, 1]). The blind method works internally on [0, 1], where its λ values are tuned.
"""

from __future__ import annotations

import torch

from restoration import periodic
from restoration.classical_kernel import (
    ClassicalInputError,
    blind_kernel,
    check_inputs,
    estimate_kernel,
    result_dtype,
)
from restoration.physics import grad_xy, grad_xy_adjoint
from restoration.settings import BlindConfig

__all__ = [
    "BlindConfig",
    "ClassicalInputError",
    "blind_kernel",
    "classical_blind",
    "estimate_kernel",
    "sparse_deconv",
    "sparse_energy",
    "wiener_deconv",
]

def _check_kernel(k: torch.Tensor, batch: int) -> torch.Tensor:
    if k.ndim != 4 or k.shape[1] != 1 or k.shape[-1] != k.shape[-2] or k.shape[-1] % 2 == 0:
        raise ClassicalInputError(f"kernel must be (B, 1, K, K) with odd K, got {tuple(k.shape)}")
    if k.shape[0] not in (1, batch):
        raise ClassicalInputError(f"kernel batch {k.shape[0]} does not match y batch {batch}")
    return k.double().expand(batch, -1, -1, -1)


# ----------------------------------------------------------------------------- Wiener


def wiener_deconv(
    y: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    sigma: float,
    reg: float | None = None,
    mm_iters: int = 10,
) -> torch.Tensor:
    """Non-blind Wiener deconvolution with a gradient (Laplacian-spectrum) regulariser.

    x = F⁻¹[ conj(K) Ŷ / (|K|² + λ (|Dx|² + |Dy|²)) ] on the padded canvas (module docstring),
    repeated ``mm_iters`` times with the unobserved canvas pixels (border padding and mask-0
    pixels) replaced by the current ``k * x``. λ = ``reg`` or, by default, proportional to the
    noise variance (:func:`_wiener_lambda`, constant tuned with the true kernel on σ = 0.02
    renders).

    Args:
        y: observation (B, C, h, w) on [-1, 1] (any scale; ``sigma`` on the same scale).
        k: kernels (B, 1, K, K) (or batch 1), summing to 1.
        mask: (B, 1, h, w), 1 = observed; None = all observed.
        sigma: noise standard deviation on the scale of ``y``.
        reg: explicit λ (overrides the σ rule).
        mm_iters: majorise-minimise refills of the unobserved pixels (1 = plain Wiener on the
            inpainted, extended canvas).

    Returns:
        Restored frame (B, C, h, w), the canvas region under ``y``.
    """
    out_dtype = result_dtype(y)
    y, mask = check_inputs(y, mask)
    k = _check_kernel(k, y.shape[0]).to(y.device)
    if mm_iters < 1:
        raise ClassicalInputError(f"mm_iters must be >= 1, got {mm_iters}")
    lam = _wiener_lambda(sigma) if reg is None else float(reg)
    canvas = periodic.make_canvas(y, mask, periodic.canvas_pad(k.shape[-1]))
    otf = periodic.otf(k, canvas.shape)
    dx, dy = periodic.diff_otfs(canvas.shape, y.device)
    denom = otf.abs() ** 2 + lam * (dx.abs() ** 2 + dy.abs() ** 2)
    yt = canvas.y
    x = yt
    for _ in range(mm_iters):
        x = torch.fft.irfft2(otf.conj() * torch.fft.rfft2(yt) / denom, s=canvas.shape)
        yt = canvas.observed * canvas.y + (1 - canvas.observed) * periodic.circ_blur(x, otf)
    return canvas.crop(x).to(out_dtype)


def _wiener_lambda(sigma: float) -> float:
    """λ of :func:`wiener_deconv` for noise σ on the [-1, 1] scale (tuned: see module tests)."""
    if sigma <= 0:
        raise ClassicalInputError(f"sigma must be positive, got {sigma}")
    return 20.0 * sigma**2


# ----------------------------------------------------------------------------- hyper-Laplacian


def _gst(v: torch.Tensor, lam: float, p: float, iters: int = 3) -> torch.Tensor:
    """Generalised soft-thresholding: argmin_g ½(g - v)² + lam |g|^p (Zuo et al. 2013)."""
    if p >= 1.0:
        return torch.sign(v) * (v.abs() - lam).clamp_min(0)
    tau = (2 * lam * (1 - p)) ** (1 / (2 - p)) + lam * p * (2 * lam * (1 - p)) ** ((p - 1) / (2 - p))
    a = v.abs()
    g = a.clone()
    for _ in range(iters):
        g = a - lam * p * g.clamp_min(1e-12) ** (p - 1)
    return torch.where(a > tau, torch.sign(v) * g, torch.zeros_like(v))


def _sparse_deconv_canvas(
    canvas: periodic.Canvas, otf: torch.Tensor, tau: float, p: float, iters: int
) -> torch.Tensor:
    """min_x ||k * x - ỹ||² + τ Σ |∇x|^p on the canvas; ỹ refilled by MM every iteration."""
    shape = canvas.shape
    dx, dy = periodic.diff_otfs(shape, canvas.y.device)
    k2 = otf.abs() ** 2
    d2 = dx.abs() ** 2 + dy.abs() ** 2
    yt = canvas.y
    x = yt
    # splitting weight μ from τ·4 up to τ·4·256, geometric; the final ones repeat at the top.
    mus = [4 * tau * 2 ** min(i, 8) for i in range(iters)]
    for mu in mus:
        gx, gy = grad_xy(x, circular=True)
        gx, gy = _gst(gx, tau / (2 * mu), p), _gst(gy, tau / (2 * mu), p)
        num = otf.conj() * torch.fft.rfft2(yt) + mu * torch.fft.rfft2(grad_xy_adjoint(gx, gy, circular=True))
        x = torch.fft.irfft2(num / (k2 + mu * d2), s=shape)
        yt = canvas.observed * canvas.y + (1 - canvas.observed) * periodic.circ_blur(x, otf)
    return x


def sparse_deconv(
    y: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    sigma: float,
    tau: float | None = None,
    p: float = 0.8,
    iters: int = 20,
) -> torch.Tensor:
    """Non-blind hyper-Laplacian deconvolution (Krishnan & Fergus 2009) on the padded canvas.

    Minimises ||k * x - y||² + τ Σ |∇x|^p (y on [0, 1] internally) by half-quadratic splitting:
    the gradient auxiliaries by generalised shrinkage, x in closed form in Fourier space,
    unobserved pixels refilled with k * x every iteration. τ defaults to 5 σ² with σ on [0, 1]
    (tuned with the true kernel on σ = 0.02 renders; an estimated kernel wants more, see
    ``BlindConfig.final_tau``).

    Args and returns as :func:`wiener_deconv` (y on [-1, 1], ``sigma`` on the scale of y).
    """
    out_dtype = result_dtype(y)
    y, mask = check_inputs(y, mask)
    k = _check_kernel(k, y.shape[0]).to(y.device)
    if sigma <= 0:
        raise ClassicalInputError(f"sigma must be positive, got {sigma}")
    if tau is None:
        tau = 5.0 * (sigma / 2) ** 2
    canvas = periodic.make_canvas((y + 1) / 2, mask, periodic.canvas_pad(k.shape[-1]))
    x = _sparse_deconv_canvas(canvas, periodic.otf(k, canvas.shape), tau, p, iters)
    return (canvas.crop(x) * 2 - 1).to(out_dtype)


def sparse_energy(
    y: torch.Tensor,
    k: torch.Tensor,
    mask: torch.Tensor | None,
    sigma: float,
    config: BlindConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hyper-Laplacian MAP restoration with kernel k, its energy and its data fit, per sample.

    x̂ = the final deconvolution of :func:`classical_blind` (τ = final_tau σ², p = final_p, on
    [0, 1]) and E(k) = (||M ⊙ (k * x̂ - y)||² + τ Σ |∇x̂|^p) / (observed pixels), both over the
    frame (the canvas padding is extrapolation, not evidence). Among kernels with the same power
    spectrum the sparse prior prefers the one whose deconvolution has fewer artefacts (ringing,
    ghost edges): the phase information that spectrum-based scores cannot see.
    Returns (x̂ (B, C, h, w) on [-1, 1], E (B,), residual ratio (B,): the RMS of M ⊙ (k * x̂ - y)
    over observed pixels relative to sigma, ~1 when the kernel explains the frame to the noise).
    """
    cfg = config or BlindConfig()
    out_dtype = result_dtype(y)
    y, mask = check_inputs(y, mask)
    k = _check_kernel(k, y.shape[0]).to(y.device)
    y01 = ((y + 1) / 2).clamp(0, 1)
    tau = cfg.final_tau * (sigma / 2) ** 2
    canvas = periodic.make_canvas(y01, mask, periodic.canvas_pad(k.shape[-1]))
    otf = periodic.otf(k, canvas.shape)
    xc = _sparse_deconv_canvas(canvas, otf, tau, cfg.final_p, cfg.final_iters)
    fit = canvas.crop(canvas.observed * (periodic.circ_blur(xc, otf) - canvas.y) ** 2).sum(dim=(1, 2, 3))
    gx, gy = grad_xy(xc, circular=True)
    reg = canvas.crop(gx.abs() ** cfg.final_p + gy.abs() ** cfg.final_p)
    reg = reg[..., :-1, :-1].sum(dim=(1, 2, 3))
    n = (mask.sum(dim=(1, 2, 3)) * y.shape[1]).clamp_min(1.0)
    x = (canvas.crop(xc) * 2 - 1).clamp(-1, 1)
    ratio = (fit / n).sqrt() / (sigma / 2)
    return x.to(out_dtype), ((fit + tau * reg) / n).to(torch.float64), ratio.to(torch.float64)


def classical_blind(
    y: torch.Tensor,
    mask: torch.Tensor | None,
    kernel_size: int,
    sigma: float,
    config: BlindConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Classical blind deconvolution: L0 kernel estimation, then hyper-Laplacian deconvolution.

    The kernel is estimated on the luminance (Pan et al. 2014, :func:`estimate_kernel`); the
    image is restored in colour by :func:`sparse_deconv`-style hyper-Laplacian deconvolution with
    that kernel. Occluded pixels are missing data throughout (inpainted initial guess,
    majorise-minimise refill, excluded from the kernel fit).

    Args:
        y: observation (B, C, h, w) on [-1, 1].
        mask: (B, 1, h, w), 1 = observed; None = all observed.
        kernel_size: odd K of the estimated kernel (an upper bound of the blur's support).
        sigma: noise standard deviation on the [-1, 1] scale (sets the final prior weight).
        config: hyper-parameters (:class:`BlindConfig`).

    Returns:
        (x_hat (B, C, h, w) on [-1, 1], k_hat (B, 1, K, K) summing to 1).
    """
    cfg = config or BlindConfig()
    out_dtype = result_dtype(y)
    y, mask = check_inputs(y, mask)
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ClassicalInputError(f"kernel_size must be odd and >= 3, got {kernel_size}")
    if sigma <= 0:
        raise ClassicalInputError(f"sigma must be positive, got {sigma}")
    y01 = ((y + 1) / 2).clamp(0, 1)
    k = blind_kernel(y, mask, kernel_size, cfg)
    tau = cfg.final_tau * (sigma / 2) ** 2
    canvas = periodic.make_canvas(y01, mask, periodic.canvas_pad(kernel_size))
    x = _sparse_deconv_canvas(canvas, periodic.otf(k, canvas.shape), tau, cfg.final_p, cfg.final_iters)
    return (canvas.crop(x) * 2 - 1).clamp(-1, 1).to(out_dtype), k.to(out_dtype)
