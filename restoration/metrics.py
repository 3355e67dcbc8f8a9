"""Per-sample quality measures (docs/design.md §7).

Every function reduces over (C, H, W) only and returns a (B,) float64 tensor, so a frame scored
alone gets exactly the number it gets inside a batch. Inputs may be torch tensors or numpy arrays
of shape (B, C, H, W) (images) or (B, 1, K, K) / (B, K, K) / (K, K) (kernels).

With ground truth:
- ``psnr`` / ``ssim``: [0, 1] RGB, scikit-image conventions (data_range = 1, per-channel SSIM with
  a 7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, averaged over channels and the
  valid window positions).
- ``kernel_mse`` / ``kernel_ncc``: kernels normalised to sum 1, centred on a common odd canvas
  (the smaller one zero-padded), the estimate aligned by the integer shift within +-max_shift px
  that is best for the measure. Blind deconvolution cannot tell a shifted kernel from a shifted
  image, so the shift is free.

No-reference proxies (production frames have no truth; reports must say these are proxies):
- ``residual_ratio``: RMS data-fit residual over observed pixels relative to the noise level.
- ``sharpness_gain``: gradient energy of the restoration over that of the input.
- ``kernel_extent``: re-exported from ``restoration.kernels``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from restoration.kernels import kernel_extent
from restoration.operators import blur

__all__ = [
    "kernel_extent",
    "kernel_mse",
    "kernel_ncc",
    "psnr",
    "psnr_masked",
    "registration_shift",
    "residual_ratio",
    "sharpness_gain",
    "ssim",
]

ArrayLike = torch.Tensor | np.ndarray


class MetricInputError(ValueError):
    """Raised when metric inputs have incompatible or unsupported shapes."""


def _as_tensor(a: ArrayLike) -> torch.Tensor:
    t = torch.as_tensor(a) if isinstance(a, np.ndarray) else a
    if not isinstance(t, torch.Tensor):
        raise MetricInputError(f"expected a torch tensor or numpy array, got {type(a).__name__}")
    return t.detach().to(device="cpu", dtype=torch.float64)


def _images(x: ArrayLike, ref: ArrayLike) -> tuple[torch.Tensor, torch.Tensor]:
    xt, rt = _as_tensor(x), _as_tensor(ref)
    if xt.ndim == 3:
        xt, rt = xt.unsqueeze(0), rt.unsqueeze(0)
    if xt.ndim != 4 or xt.shape != rt.shape:
        raise MetricInputError(
            f"images must be (B, C, H, W) of equal shape, got {tuple(xt.shape)} and {tuple(rt.shape)}"
        )
    return xt, rt


def psnr(x: ArrayLike, ref: ArrayLike, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per sample: 10 log10(R^2 / MSE), MSE over (C, H, W).

    Same as ``skimage.metrics.peak_signal_noise_ratio(ref, x, data_range=R)``; identical images
    give +inf.
    """
    xt, rt = _images(x, ref)
    mse = (xt - rt).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def ssim(
    x: ArrayLike,
    ref: ArrayLike,
    data_range: float = 1.0,
    win_size: int = 7,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity per sample (Wang et al. 2004, Eq. 13), scikit-image defaults.

    Matches ``skimage.metrics.structural_similarity(ref, x, data_range=1, channel_axis=...)``:
    uniform ``win_size`` window, sample covariance (N / (N - 1)), per-channel SSIM map averaged
    over the positions where the window fits entirely (skimage crops (win_size - 1) / 2 px at
    every border) and then over channels.
    """
    xt, rt = _images(x, ref)
    if win_size % 2 == 0 or win_size < 3:
        raise MetricInputError(f"win_size must be odd and >= 3, got {win_size}")
    if min(xt.shape[-2:]) < win_size:
        raise MetricInputError(f"images smaller than the {win_size}x{win_size} SSIM window")
    b, c, h, w = xt.shape
    xs = xt.reshape(b * c, 1, h, w)
    rs = rt.reshape(b * c, 1, h, w)

    def mean(a: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(a, win_size, stride=1)

    n = win_size * win_size
    cov_norm = n / (n - 1.0)
    ux, uy = mean(xs), mean(rs)
    vx = cov_norm * (mean(xs * xs) - ux * ux)
    vy = cov_norm * (mean(rs * rs) - uy * uy)
    vxy = cov_norm * (mean(xs * rs) - ux * uy)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return s.reshape(b, c, -1).mean(dim=2).mean(dim=1)


def _kernels(k: ArrayLike) -> torch.Tensor:
    """Any kernel layout -> (B, K, K) float64, each normalised to sum 1."""
    t = _as_tensor(k)
    if t.ndim == 2:
        t = t.unsqueeze(0)
    elif t.ndim == 4:
        if t.shape[1] != 1:
            raise MetricInputError(f"kernels must have one channel, got shape {tuple(t.shape)}")
        t = t[:, 0]
    if t.ndim != 3 or t.shape[-1] != t.shape[-2] or t.shape[-1] % 2 == 0:
        raise MetricInputError(f"kernels must be square with odd size, got {tuple(t.shape)}")
    s = t.sum(dim=(1, 2), keepdim=True)
    if bool((s.abs() < 1e-12).any()):
        raise MetricInputError("a kernel sums to zero and cannot be normalised")
    return t / s


def _aligned_stack(
    k_est: ArrayLike, k_true: ArrayLike, max_shift: int, canvas: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Common canvas plus a zero border of ``max_shift`` px, and every shifted estimate.

    Returns (true (B, P, P), shifted estimates (B, S, P, P), canvas size K), where S =
    (2 max_shift + 1)^2. The border keeps mass that a shift moves off the common canvas, so a
    shifted copy of the truth aligns exactly.
    """
    if max_shift < 0:
        raise MetricInputError(f"max_shift must be >= 0, got {max_shift}")
    e, t = _kernels(k_est), _kernels(k_true)
    if e.shape[0] != t.shape[0]:
        if e.shape[0] == 1:
            e = e.expand(t.shape[0], -1, -1)
        elif t.shape[0] == 1:
            t = t.expand(e.shape[0], -1, -1)
        else:
            raise MetricInputError(f"batch sizes differ: {e.shape[0]} vs {t.shape[0]}")
    size = max(e.shape[-1], t.shape[-1], canvas or 0)
    if size % 2 == 0:
        raise MetricInputError(f"canvas must be odd, got {canvas}")

    def place(a: torch.Tensor) -> torch.Tensor:
        p = (size - a.shape[-1]) // 2 + max_shift
        return F.pad(a, (p, p, p, p))

    e, t = place(e), place(t)
    shifts = range(-max_shift, max_shift + 1)
    shifted = torch.stack(
        [torch.roll(e, (dy, dx), dims=(1, 2)) for dy in shifts for dx in shifts], dim=1
    )
    return t, shifted, size


def kernel_mse(
    k_est: ArrayLike, k_true: ArrayLike, max_shift: int = 3, canvas: int | None = None
) -> torch.Tensor:
    """Kernel-MSE of docs/design.md §7, per sample.

    Both kernels are normalised to sum 1 and centred on a common odd K x K canvas (the smaller
    zero-padded; K = max(both sizes, ``canvas``) — pass a fixed ``canvas`` to compare estimates
    of different sizes on the same footing, since the MSE is a mean over K²); the estimate is
    shifted by the integer (dy, dx) within +-max_shift that minimises the MSE. The squared error
    is summed over the canvas plus the shift border (mass a shift pushes past the canvas still
    counts) and divided by K^2, the common canvas area.
    """
    t, shifted, size = _aligned_stack(k_est, k_true, max_shift, canvas)
    sse = (shifted - t.unsqueeze(1)).pow(2).flatten(2).sum(dim=2)
    return sse.min(dim=1).values / (size * size)


def kernel_ncc(
    k_est: ArrayLike, k_true: ArrayLike, max_shift: int = 3, canvas: int | None = None
) -> torch.Tensor:
    """Kernel normalised cross-correlation, max over integer shifts within +-max_shift.

    NCC = <k_true, shift(k_est)> / (||k_true|| ||k_est||) (the kernel similarity of Hu & Yang,
    "Good regions to deblur", ECCV 2012), on the same canvas as ``kernel_mse``. It is a shape
    measure in [0, 1] for non-negative kernels: 1 iff the estimate is a shifted copy of the truth.
    Zero padding does not change it, so ``canvas`` only matters for mass shifted past the edge.
    """
    t, shifted, _ = _aligned_stack(k_est, k_true, max_shift, canvas)
    dots = (shifted * t.unsqueeze(1)).flatten(2).sum(dim=2)
    norms = t.flatten(1).norm(dim=1) * shifted[:, 0].flatten(1).norm(dim=1)
    return dots.max(dim=1).values / norms


def residual_ratio(
    y: torch.Tensor,
    x_hat: torch.Tensor,
    k_hat: torch.Tensor,
    mask: torch.Tensor | None,
    sigma: float,
) -> torch.Tensor:
    """No-reference proxy: RMS of y - M ⊙ (k̂ ∗ x̂) over observed pixels, divided by sigma.

    ``x_hat`` is either the restored frame (same size as y) or the restored canvas (size of y plus
    K - 1). The valid convolution k̂ ∗ x̂ is compared with the centre crop of y (and of the mask) of
    the same size: for a same-size restoration that is the interior where the forward model is
    fully determined. y, x̂ and sigma must be on the same intensity scale. A value near 1 means the
    restoration explains the frame down to the noise; >> 1 means it does not fit.
    """
    if sigma <= 0:
        raise MetricInputError(f"sigma must be positive, got {sigma}")
    pred = blur(x_hat, k_hat)
    dh = y.shape[-2] - pred.shape[-2]
    dw = y.shape[-1] - pred.shape[-1]
    if dh < 0 or dw < 0 or dh % 2 or dw % 2:
        raise MetricInputError(
            f"k̂ ∗ x̂ has size {tuple(pred.shape[-2:])}, cannot centre it in y {tuple(y.shape[-2:])}"
        )

    def crop(a: torch.Tensor) -> torch.Tensor:
        return a[..., dh // 2 : a.shape[-2] - dh // 2, dw // 2 : a.shape[-1] - dw // 2]

    r = (crop(y) - pred).to(torch.float64)
    m = torch.ones_like(r[:, :1]) if mask is None else (crop(mask) > 0.5).to(torch.float64)
    m = m.expand_as(r)
    count = m.flatten(1).sum(dim=1).clamp_min(1.0)
    rms = ((r * m).pow(2).flatten(1).sum(dim=1) / count).sqrt()
    return rms / sigma


def _gradient_energy(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    x = x.to(torch.float64)
    gx = x[..., :, 1:] - x[..., :, :-1]
    gy = x[..., 1:, :] - x[..., :-1, :]
    if mask is None:
        return 0.5 * (gx.pow(2).flatten(1).mean(dim=1) + gy.pow(2).flatten(1).mean(dim=1))
    m = (mask > 0.5).to(torch.float64)
    mx = (m[..., :, 1:] * m[..., :, :-1]).expand_as(gx)
    my = (m[..., 1:, :] * m[..., :-1, :]).expand_as(gy)
    num = (gx.pow(2) * mx).flatten(1).sum(dim=1) + (gy.pow(2) * my).flatten(1).sum(dim=1)
    return num / (mx.flatten(1).sum(dim=1) + my.flatten(1).sum(dim=1)).clamp_min(1.0)


def sharpness_gain(
    x_hat: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """No-reference proxy: gradient energy of x̂ over that of y (> 1: the restoration is sharper).

    Gradient energy = mean squared forward difference (horizontal and vertical averaged) over
    (C, H, W); with a mask only differences between two observed pixels count. Scale-free (both
    images on the same scale). Noise amplification also raises it, so read it beside
    ``residual_ratio``.
    """
    if x_hat.shape != y.shape:
        raise MetricInputError(
            f"x_hat and y must have equal shape, got {tuple(x_hat.shape)} and {tuple(y.shape)}"
        )
    e_y = _gradient_energy(y, mask)
    return _gradient_energy(x_hat, mask) / e_y.clamp_min(1e-20)


def psnr_masked(
    x: ArrayLike, ref: ArrayLike, mask: ArrayLike, data_range: float = 1.0
) -> torch.Tensor:
    """PSNR over the pixels where ``mask`` (B, 1, H, W) is > 0.5 (all channels); NaN if none."""
    xt, rt = _images(x, ref)
    m = (_as_tensor(mask) > 0.5).to(torch.float64)
    if m.ndim == 3:
        m = m.unsqueeze(0)
    m = m.expand_as(xt)
    count = m.flatten(1).sum(dim=1)
    mse = ((xt - rt).pow(2) * m).flatten(1).sum(dim=1) / count
    out = 10.0 * torch.log10(data_range**2 / mse)
    return torch.where(count > 0, out, torch.full_like(out, math.nan))


def registration_shift(x: ArrayLike, ref: ArrayLike, max_shift: int = 3) -> torch.Tensor:
    """Translation (B, 2) as (rows, cols) in px of x relative to ref: x[i, j] ~ ref[i - dy, j - dx].

    Normalised cross-correlation of the zero-mean luma over the interior (``max_shift`` px from
    the border dropped), maximised over integer shifts within ±max_shift, then refined to sub-pixel
    by a parabola through the peak and its two neighbours along each axis (kept within ±0.5 px).
    Registration matters downstream: boxes found on the raw frame must still fit the restored one.
    """
    xt, rt = _images(x, ref)
    r = int(max_shift)
    h, w = xt.shape[-2:]
    if h <= 2 * r + 2 or w <= 2 * r + 2:
        raise MetricInputError(f"images of {h}x{w} are too small for max_shift {r}")
    lx, lr = xt.mean(dim=1), rt.mean(dim=1)
    core = lx[:, r : h - r, r : w - r]
    core = core - core.mean(dim=(1, 2), keepdim=True)
    ncc = torch.empty(xt.shape[0], 2 * r + 1, 2 * r + 1, dtype=torch.float64)
    for a, dy in enumerate(range(-r, r + 1)):
        for b, dx in enumerate(range(-r, r + 1)):
            win = lr[:, r - dy : h - r - dy, r - dx : w - r - dx]
            win = win - win.mean(dim=(1, 2), keepdim=True)
            num = (core * win).sum(dim=(1, 2))
            den = (core.pow(2).sum(dim=(1, 2)) * win.pow(2).sum(dim=(1, 2))).sqrt().clamp_min(1e-20)
            ncc[:, a, b] = num / den
    out = torch.zeros(xt.shape[0], 2, dtype=torch.float64)
    for i in range(xt.shape[0]):
        a, b = divmod(int(ncc[i].argmax()), 2 * r + 1)
        sub = []
        for idx, line in ((a, ncc[i, :, b]), (b, ncc[i, a, :])):
            off = 0.0
            if 0 < idx < 2 * r:
                lo, mid, hi = float(line[idx - 1]), float(line[idx]), float(line[idx + 1])
                curv = lo - 2 * mid + hi
                if curv < 0:
                    off = max(-0.5, min(0.5, 0.5 * (lo - hi) / curv))
            sub.append(idx - r + off)
        out[i] = torch.tensor(sub, dtype=torch.float64)
    return out
