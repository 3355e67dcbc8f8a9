"""Forward models H for restoration: blur, occlusion mask, downsampling, phase retrieval.

All operators act on (B, C, H, W) tensors (float32 in [-1, 1] in production, any real float
dtype works) and are stateless: per-sample parameters (kernels, masks) are function arguments.
Every linear operator ``A`` has an exact adjoint ``A^T`` with <A x, y> = <x, A^T y>; the tests
check this with :func:`adjointness_gap`.

Boundary convention (used by the data generator and by restoration alike)
--------------------------------------------------------------------------
**Valid true convolution.** The unknown sharp image ``x`` lives on a canvas of size
``(h + K - 1, w + K - 1)``; the blurred observation is the valid part of the *true*
(flipped-kernel) convolution::

    y[i, j] = sum_{a, b} k[a, b] * x[i + K - 1 - a, j + K - 1 - b],   0 <= i < h, 0 <= j < w

i.e. ``y = blur(x, k)`` has shape ``(h, w) = (H - K + 1, W - K + 1)``. No circular wrap and no
padding are involved, so real frame borders (whose blur drew on pixels outside the frame) are
modelled exactly. The pixel of ``x`` "under" ``y[i, j]`` (the kernel centre) is
``x[i + (K - 1) // 2, j + (K - 1) // 2]``: a centred delta kernel makes ``blur`` the centre crop.

A canvas larger than ``h + K - 1`` is allowed (e.g. rounded up for a U-Net): the blur output is
then larger than ``y``; the caller pads ``y`` and sets the mask to 0 on the padding. See
:func:`pad_to_canvas` / :func:`crop_from_canvas`.

Kernels are ``(B, 1, K, K)`` with odd ``K`` (a batch of 1 is broadcast over the image batch);
masks are ``(B, 1, H, W)`` in [0, 1] (1 = observed), broadcast over channels.

Implementation paths for the blur (``method=``): ``"direct"`` is a grouped ``F.conv2d``
(one group per (sample, channel), flipped kernel); ``"fft"`` multiplies ``rfft2`` spectra on
the canvas with the kernel zero-padded at the top-left corner and keeps the window
``[K-1:, K-1:]`` — the circular wrap only touches the first ``K - 1`` rows/columns, which are
discarded. Both agree to ~1e-6 in float32 and ~1e-14 in float64. ``fft`` is faster for large
kernels; ``direct`` for small ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "CanvasOffsets",
    "OperatorShapeError",
    "adjointness_gap",
    "apply_mask",
    "blur",
    "blur_adjoint",
    "crop_from_canvas",
    "downsample",
    "downsample_adjoint",
    "kernel_adjoint",
    "masked_blur",
    "masked_blur_adjoint",
    "pad_to_canvas",
    "phase_retrieval",
]

Method = Literal["fft", "direct"]


class OperatorShapeError(ValueError):
    """An operator received a tensor of the wrong rank, shape, or an invalid parameter."""


# ----------------------------------------------------------------------------- validation


def _check_image(x: torch.Tensor, name: str = "x") -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise OperatorShapeError(f"{name} must be a (B, C, H, W) tensor, got {shape}")
    if x.is_complex() or not x.is_floating_point():
        raise OperatorShapeError(f"{name} must be a real floating tensor, got {x.dtype}")


def _check_kernel(k: torch.Tensor, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Validate a (B or 1, 1, K, K) odd kernel; return it expanded to ``batch`` in ``dtype``."""
    if not isinstance(k, torch.Tensor) or k.dim() != 4 or k.shape[1] != 1:
        shape = tuple(k.shape) if isinstance(k, torch.Tensor) else type(k).__name__
        raise OperatorShapeError(f"kernel must be (B, 1, K, K), got {shape}")
    size = k.shape[-1]
    if k.shape[-2] != size or size % 2 == 0:
        raise OperatorShapeError(f"kernel must be square with odd size, got {tuple(k.shape)}")
    if k.shape[0] not in (1, batch):
        raise OperatorShapeError(f"kernel batch {k.shape[0]} does not match image batch {batch}")
    return k.to(dtype).expand(batch, 1, size, size)


def _check_method(method: str) -> None:
    if method not in ("fft", "direct"):
        raise OperatorShapeError(f"method must be 'fft' or 'direct', got {method!r}")


def _check_mask(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(m, torch.Tensor) or m.dim() != 4 or m.shape[1] != 1:
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise OperatorShapeError(f"mask must be (B, 1, H, W), got {shape}")
    if m.shape[-2:] != x.shape[-2:] or m.shape[0] not in (1, x.shape[0]):
        raise OperatorShapeError(f"mask {tuple(m.shape)} does not match tensor {tuple(x.shape)}")
    return m.to(x.dtype)


# ----------------------------------------------------------------------------- blur


def blur(x: torch.Tensor, k: torch.Tensor, method: Method = "fft") -> torch.Tensor:
    """Valid true convolution ``k * x`` per sample (the forward model of motion blur).

    Args:
        x: canvas ``(B, C, H, W)``.
        k: kernels ``(B, 1, K, K)`` (or ``(1, 1, K, K)``), odd ``K <= min(H, W)``.
        method: ``"fft"`` or ``"direct"`` (see module docstring); results agree.

    Returns:
        ``(B, C, H - K + 1, W - K + 1)``: ``y[i,j] = sum_ab k[a,b] x[i+K-1-a, j+K-1-b]``.
    """
    _check_image(x)
    _check_method(method)
    b, c, h, w = x.shape
    k = _check_kernel(k, b, x.dtype)
    size = k.shape[-1]
    if size > h or size > w:
        raise OperatorShapeError(f"kernel size {size} exceeds canvas {h}x{w}")
    if method == "direct":
        # conv2d is a correlation: flipping the kernel makes it a true convolution.
        weight = k.flip(-2, -1).repeat_interleave(c, dim=0)  # (B*C, 1, K, K)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, groups=b * c)
        return out.reshape(b, c, h - size + 1, w - size + 1)
    spec = torch.fft.rfft2(x) * torch.fft.rfft2(k, s=(h, w))
    full = torch.fft.irfft2(spec, s=(h, w))
    # Circular convolution equals the linear one for rows/cols >= K-1: the valid window.
    return full[..., size - 1 :, size - 1 :]


def blur_adjoint(y: torch.Tensor, k: torch.Tensor, method: Method = "fft") -> torch.Tensor:
    """Exact adjoint of :func:`blur` in ``x``: full correlation of ``y`` with ``k``.

    Args:
        y: ``(B, C, h, w)`` (same shape as a blur output).
        k: kernels ``(B, 1, K, K)`` (or batch 1), odd ``K``.

    Returns:
        ``(B, C, h + K - 1, w + K - 1)``: ``x[m,n] = sum_ij y[i,j] k[i+K-1-m, j+K-1-n]``.
    """
    _check_image(y, "y")
    _check_method(method)
    b, c, h, w = y.shape
    k = _check_kernel(k, b, y.dtype)
    size = k.shape[-1]
    big_h, big_w = h + size - 1, w + size - 1
    if method == "direct":
        # Full correlation = valid correlation of y zero-padded by K-1 with the unflipped k.
        pad = size - 1
        padded = F.pad(y, (pad, pad, pad, pad)).reshape(1, b * c, h + 2 * pad, w + 2 * pad)
        out = F.conv2d(padded, k.repeat_interleave(c, dim=0), groups=b * c)
        return out.reshape(b, c, big_h, big_w)
    # Place y where blur's valid window sits; correlation = product with the conjugate spectrum.
    # The wrap-around reads only rows/cols < K-1 of the placed y, which are zero.
    placed = F.pad(y, (size - 1, 0, size - 1, 0))
    spec = torch.fft.rfft2(placed) * torch.fft.rfft2(k, s=(big_h, big_w)).conj()
    return torch.fft.irfft2(spec, s=(big_h, big_w))


def kernel_adjoint(
    y: torch.Tensor, x: torch.Tensor, kernel_size: int, method: Method = "fft"
) -> torch.Tensor:
    """Adjoint of the linear map ``k -> blur(x, k)`` (x fixed), summed over channels.

    This is the gradient of ``<blur(x, k), y>`` w.r.t. ``k``; with ``y`` a residual it gives
    kernel gradients and the normal equations of least-squares kernel updates.

    Args:
        y: ``(B, C, h, w)`` with ``h = H - K + 1``, ``w = W - K + 1``.
        x: canvas ``(B, C, H, W)``.
        kernel_size: odd ``K``.

    Returns:
        ``(B, 1, K, K)``: ``g[a,b] = sum_{c,i,j} x[c, i+K-1-a, j+K-1-b] y[c, i, j]``.
    """
    _check_image(y, "y")
    _check_image(x)
    _check_method(method)
    size = int(kernel_size)
    if size < 1 or size % 2 == 0:
        raise OperatorShapeError(f"kernel_size must be odd and positive, got {kernel_size}")
    b, c, big_h, big_w = x.shape
    h, w = big_h - size + 1, big_w - size + 1
    if y.shape != (b, c, h, w):
        raise OperatorShapeError(
            f"y {tuple(y.shape)} must be {(b, c, h, w)} for canvas {tuple(x.shape)}, K={size}"
        )
    y = y.to(x.dtype)
    if method == "direct":
        # corr[p, q] = sum_ij x[i+p, j+q] y[i, j]: y used as a (h, w) grouped filter.
        corr = F.conv2d(x.reshape(1, b * c, big_h, big_w), y.reshape(b * c, 1, h, w), groups=b * c)
        corr = corr.reshape(b, c, size, size)
    else:
        # Circular cross-correlation; for lags p < K the index i+p <= H-1 never wraps.
        spec = torch.fft.rfft2(x) * torch.fft.rfft2(y, s=(big_h, big_w)).conj()
        corr = torch.fft.irfft2(spec, s=(big_h, big_w))[..., :size, :size]
    # Lag p corresponds to kernel index a = K-1-p.
    return corr.sum(dim=1, keepdim=True).flip(-2, -1)


# ----------------------------------------------------------------------------- mask


def apply_mask(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Occlusion mask ``m ⊙ x`` (m: ``(B, 1, H, W)`` in [0, 1], 1 = observed). Self-adjoint."""
    _check_image(x)
    return x * _check_mask(m, x)


def masked_blur(x: torch.Tensor, k: torch.Tensor, m: torch.Tensor, method: Method = "fft") -> torch.Tensor:
    """``M ⊙ (k * x)``: the blind-CVSA data model (mask on the observation grid ``(h, w)``)."""
    return apply_mask(blur(x, k, method), m)


def masked_blur_adjoint(
    y: torch.Tensor, k: torch.Tensor, m: torch.Tensor, method: Method = "fft"
) -> torch.Tensor:
    """Adjoint of :func:`masked_blur`: ``blur_adjoint(m ⊙ y, k)``."""
    return blur_adjoint(apply_mask(y, m), k, method)


# ----------------------------------------------------------------------------- downsampling


def _check_factor(x: torch.Tensor, factor: int, need_divisible: bool) -> int:
    if not isinstance(factor, int) or isinstance(factor, bool) or factor < 1:
        raise OperatorShapeError(f"factor must be a positive int, got {factor!r}")
    if need_divisible and (x.shape[-2] % factor or x.shape[-1] % factor):
        raise OperatorShapeError(
            f"height and width {tuple(x.shape[-2:])} must be multiples of factor {factor}"
        )
    return factor


def downsample(x: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Area (box-average) downsampling by ``factor``: each output is the mean of an f×f block.

    ``H`` and ``W`` must be multiples of ``factor``. Output ``(B, C, H/f, W/f)``.
    """
    _check_image(x)
    f = _check_factor(x, factor, need_divisible=True)
    return F.avg_pool2d(x, kernel_size=f, stride=f)


def downsample_adjoint(y: torch.Tensor, factor: int = 4) -> torch.Tensor:
    """Adjoint of :func:`downsample`: replicate each value over its f×f block, divided by f²."""
    _check_image(y, "y")
    f = _check_factor(y, factor, need_divisible=False)
    return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1) / (f * f)


# ----------------------------------------------------------------------------- phase retrieval


def phase_retrieval(x: torch.Tensor) -> torch.Tensor:
    """Fourier magnitude ``|FFT2(x)|`` with the orthonormal FFT, per channel.

    Nonlinear, so it has no adjoint; it is differentiable (autograd), which is all gradient
    guidance needs. The gradient is 0 where a Fourier coefficient is exactly 0.
    """
    _check_image(x)
    return torch.fft.fft2(x, norm="ortho").abs()


# ----------------------------------------------------------------------------- canvas helpers


@dataclass(frozen=True)
class CanvasOffsets:
    """Where an observation sits relative to its restoration canvas (see :func:`pad_to_canvas`).

    Attributes:
        top, left: canvas pixel under ``y[0, 0]``, i.e. ``(K-1)//2 + pad_top``, ``(K-1)//2 +
            pad_left``.
        pad_top, pad_bottom, pad_left, pad_right: padding added to ``y`` (and its mask) so that
            it matches ``blur(canvas)``.
        canvas_height, canvas_width: canvas size.
        kernel_size: ``K``.
    """

    top: int
    left: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    canvas_height: int
    canvas_width: int
    kernel_size: int


def pad_to_canvas(
    y: torch.Tensor,
    mask: torch.Tensor | None,
    kernel_size: int,
    multiple: int = 1,
    fill: Literal["replicate", "zeros"] = "replicate",
) -> tuple[torch.Tensor, torch.Tensor, CanvasOffsets]:
    """Pad an observation so it can be restored on a canvas under the valid-blur convention.

    The canvas is ``(h + K - 1, w + K - 1)`` rounded up to ``multiple``; ``blur(canvas)`` then
    has shape ``(Hc - K + 1, Wc - K + 1) >= (h, w)``. ``y`` is centred in that blur output (the
    extra rows split top/bottom, the odd one at the bottom) and the mask is 0 on the padding, so
    ``masked_blur(canvas, k, mask_padded)`` compares only real pixels with ``y_padded``.

    Args:
        y: observation ``(B, C, h, w)``.
        mask: ``(B, 1, h, w)`` in [0, 1] or ``None`` (all observed).
        kernel_size: odd ``K`` the restoration will use.
        multiple: round the canvas height/width up to a multiple of this (e.g. 8 for a U-Net).
        fill: padding values of ``y_padded`` ("replicate" edges, a useful initial guess, or
            "zeros"); they carry no weight because the mask is 0 there.

    Returns:
        ``(y_padded, mask_padded, offsets)``; ``y_padded`` is ``(B, C, Hc-K+1, Wc-K+1)``,
        ``mask_padded`` ``(B, 1, Hc-K+1, Wc-K+1)``.
    """
    _check_image(y, "y")
    size = int(kernel_size)
    if size < 1 or size % 2 == 0:
        raise OperatorShapeError(f"kernel_size must be odd and positive, got {kernel_size}")
    if not isinstance(multiple, int) or multiple < 1:
        raise OperatorShapeError(f"multiple must be a positive int, got {multiple!r}")
    if fill not in ("replicate", "zeros"):
        raise OperatorShapeError(f"fill must be 'replicate' or 'zeros', got {fill!r}")
    b, _, h, w = y.shape
    if mask is None:
        mask = torch.ones(b, 1, h, w, dtype=y.dtype, device=y.device)
    mask = _check_mask(mask, y)
    canvas_h = -(-(h + size - 1) // multiple) * multiple
    canvas_w = -(-(w + size - 1) // multiple) * multiple
    extra_h, extra_w = canvas_h - size + 1 - h, canvas_w - size + 1 - w
    pad_top, pad_left = extra_h // 2, extra_w // 2
    pad_bottom, pad_right = extra_h - pad_top, extra_w - pad_left
    pads = (pad_left, pad_right, pad_top, pad_bottom)
    y_padded = F.pad(y, pads, mode="replicate") if fill == "replicate" else F.pad(y, pads)
    mask_padded = F.pad(mask, pads)  # zeros: padding is unobserved
    offsets = CanvasOffsets(
        top=(size - 1) // 2 + pad_top,
        left=(size - 1) // 2 + pad_left,
        pad_top=pad_top,
        pad_bottom=pad_bottom,
        pad_left=pad_left,
        pad_right=pad_right,
        canvas_height=canvas_h,
        canvas_width=canvas_w,
        kernel_size=size,
    )
    return y_padded, mask_padded, offsets


def crop_from_canvas(
    x_canvas: torch.Tensor, offsets: CanvasOffsets | tuple[int, int], h: int, w: int
) -> torch.Tensor:
    """The ``(h, w)`` region of a canvas lying under the observation's pixels.

    ``result[..., i, j] = x_canvas[..., i + top, j + left]`` with ``top = (K-1)//2 + pad_top``
    (kernel-centre alignment). ``offsets`` is a :class:`CanvasOffsets` or a ``(top, left)``
    pair.
    """
    _check_image(x_canvas, "x_canvas")
    top, left = (offsets.top, offsets.left) if isinstance(offsets, CanvasOffsets) else offsets
    if top < 0 or left < 0 or top + h > x_canvas.shape[-2] or left + w > x_canvas.shape[-1]:
        raise OperatorShapeError(
            f"crop ({top}, {left}) + ({h}, {w}) outside canvas {tuple(x_canvas.shape[-2:])}"
        )
    return x_canvas[..., top : top + h, left : left + w]


# ----------------------------------------------------------------------------- testing aid


def adjointness_gap(
    forward: Callable[[torch.Tensor], torch.Tensor],
    adjoint: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    """Relative adjointness error ``|<A x, y> - <x, A^T y>| / (||A x|| ||y|| + ||x|| ||A^T y||)``.

    The scale bounds both inner products (Cauchy–Schwarz), so the gap is ~machine epsilon for a
    correct adjoint even when the inner products happen to be near 0.
    """
    ax = forward(x)
    aty = adjoint(y)
    if ax.shape != y.shape or aty.shape != x.shape:
        raise OperatorShapeError(
            f"shapes do not pair: A x {tuple(ax.shape)} vs y {tuple(y.shape)}, "
            f"A^T y {tuple(aty.shape)} vs x {tuple(x.shape)}"
        )
    lhs = (ax * y).sum()
    rhs = (x * aty).sum()
    scale = ax.norm() * y.norm() + x.norm() * aty.norm()
    return float((lhs - rhs).abs() / scale.clamp_min(torch.finfo(scale.dtype).tiny))
