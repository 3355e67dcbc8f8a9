"""Forward models as objects (in the manner of deepinv's physics classes) and the one set of
linear solvers they share.

A :class:`Physics` is a forward model H bound to one batch of observations ``y``: ``forward``,
``adjoint`` (``None`` for a nonlinear model), the restoration canvas and the crop back to the
image, the noise level, and the data-consistency solve of the proximal samplers
(``data_consistency``: argmin_x ||y - H x||² + ρ||x - anchor||² + μ||∇x||²). :class:`BlurMask` is
the product's problem y = M ⊙ (k ∗ x) + n under the valid-convolution convention of
:mod:`restoration.operators`; it also updates its kernel (gradient-domain least squares).
The non-blind tasks of :mod:`restoration.tasks` are instances of the same interface.

Solvers (each exists once): :func:`conjugate_gradient` (per-sample inner products, so a frame
solved alone equals it solved in a batch), :func:`linear_prox` and :func:`kernel_least_squares`
(the normal equations of a weighted least-squares kernel fit, for any kernel-to-data map: the
valid convolution here, the classical estimator's periodic canvas in
:mod:`restoration.periodic`). Finite differences and their adjoint: :func:`grad_xy`,
:func:`grad_xy_adjoint` (zero or circular boundary).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from restoration.operators import (
    CanvasOffsets,
    blur,
    blur_adjoint,
    crop_from_canvas,
    kernel_adjoint,
    pad_to_canvas,
    phase_retrieval,
)

Operator = Callable[[Tensor], Tensor]
"""A forward model H (or its adjoint) on (B, C, H, W) tensors."""
ProxFn = Callable[[Tensor, Tensor], Tensor]
"""prox(anchor, rho) -> argmin_x ||y - H x||^2 + rho ||x - anchor||^2 (+ the model's regulariser)."""


# ----------------------------------------------------------------------------- solvers


def batch_dot(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample inner product over all but the batch axis, shaped to broadcast against ``a``."""
    return (a * b).flatten(1).sum(dim=1).reshape((-1,) + (1,) * (a.dim() - 1))


def conjugate_gradient(
    apply: Operator, b: Tensor, x0: Tensor, iters: int, floor: float | None = None
) -> Tensor:
    """Solve apply(x) = b (apply symmetric positive definite, per sample) by ``iters`` CG steps
    from x0. ``floor`` bounds the denominators away from 0 (default: the dtype's tiny)."""
    tiny = torch.finfo(b.dtype).tiny if floor is None else floor
    x = x0
    r = b - apply(x)
    p = r
    rs = batch_dot(r, r)
    for _ in range(iters):
        ap = apply(p)
        alpha = rs / batch_dot(p, ap).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = batch_dot(r, r)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return x


def grad_xy(x: Tensor, circular: bool = False) -> tuple[Tensor, Tensor]:
    """Forward differences (∂x, ∂y). Zero boundary: 0 in the last column/row (so they commute with
    valid convolution); circular: the last one wraps to the first (periodic canvases)."""
    if circular:
        return torch.roll(x, -1, dims=-1) - x, torch.roll(x, -1, dims=-2) - x
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return gx, gy


def grad_xy_adjoint(gx: Tensor, gy: Tensor, circular: bool = False) -> Tensor:
    """Adjoint of :func:`grad_xy` with the same boundary (the negative divergence)."""
    if circular:
        return torch.roll(gx, 1, dims=-1) - gx + torch.roll(gy, 1, dims=-2) - gy
    out = torch.zeros_like(gx)
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    return out


def grad_masks(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Masks of the differences of :func:`grad_xy` (zero boundary) whose two pixels are observed."""
    mx = torch.zeros_like(mask)
    my = torch.zeros_like(mask)
    mx[..., :, :-1] = mask[..., :, :-1] * mask[..., :, 1:]
    my[..., :-1, :] = mask[..., :-1, :] * mask[..., 1:, :]
    return mx, my


def linear_prox(
    y: Tensor,
    forward: Operator,
    adjoint: Operator,
    x_anchor: Tensor,
    rho: Tensor | float,
    iters: int,
    grad_reg: Tensor | float,
) -> Tensor:
    """argmin_x ||y - A x||^2 + rho ||x - x_anchor||^2 + mu ||grad x||^2 for a linear A (per sample).

    The normal equations (A^T A + rho I + mu D^T D) x = A^T y + rho x_anchor are solved by CG from
    x_anchor. mu > 0 adds the Wiener-style gradient penalty that keeps deconvolution noise out of
    the estimate while the learned prior is still uncertain.
    """
    use_grad = not isinstance(grad_reg, float | int) or grad_reg > 0

    def normal(x: Tensor) -> Tensor:
        out = adjoint(forward(x)) + rho * x
        if use_grad:
            gx, gy = grad_xy(x)
            out = out + grad_reg * grad_xy_adjoint(gx, gy)
        return out

    return conjugate_gradient(normal, adjoint(y) + rho * x_anchor, x_anchor, iters)


class KernelMap(Protocol):
    """A linear map from a kernel (B, 1, K, K) to a list of data-shaped tensors, and its adjoint."""

    def forward(self, k: Tensor) -> list[Tensor]: ...

    def adjoint(self, rs: list[Tensor]) -> Tensor: ...


def kernel_least_squares(
    op: KernelMap,
    targets: Sequence[Tensor],
    weights: Sequence[Tensor],
    k0: Tensor,
    gamma: Tensor | float,
    iters: int,
    scale: Tensor | None = None,
    floor: float | None = None,
) -> Tensor:
    """argmin_k scale Σ_d ||W_d (A_d k - b_d)||² + gamma ||k||², W_d binary weights, by CG from k0.

    The one kernel least-squares solve: the product samplers fit k on image gradients of the
    valid-convolution model (:meth:`BlurMask.update_kernel`), the classical estimator on the
    gradients of its periodic canvas (Pan et al. 2014, Eq. 12). The result is not projected.
    """

    def weighted(rs: list[Tensor]) -> Tensor:
        out = op.adjoint([w * r for w, r in zip(weights, rs, strict=True)])
        return out if scale is None else scale * out

    def normal(k: Tensor) -> Tensor:
        return weighted(op.forward(k)) + gamma * k

    return conjugate_gradient(normal, weighted(list(targets)), k0, iters, floor)


@dataclass(frozen=True, eq=False)
class ValidKernelMap:
    """k -> [blur(x_d, k)] for fixed canvases x_d (valid convolution); adjoint sums channels."""

    xs: tuple[Tensor, ...]
    size: int

    def forward(self, k: Tensor) -> list[Tensor]:
        return [blur(x, k) for x in self.xs]

    def adjoint(self, rs: list[Tensor]) -> Tensor:
        terms = [kernel_adjoint(r, x, self.size) for r, x in zip(rs, self.xs, strict=True)]
        out = terms[0]
        for t in terms[1:]:
            out = out + t
        return out


# ----------------------------------------------------------------------------- physics


def _identity(x: Tensor) -> Tensor:
    return x


def _crop(x: Tensor, offsets: CanvasOffsets, h: int, w: int) -> Tensor:
    return crop_from_canvas(x, offsets, h, w)


@dataclass(frozen=True, eq=False)
class Physics(ABC):
    """A forward model bound to one batch of observations: everything a sampler needs.

    x lives on ``canvas`` (B, C, *canvas); ``forward(x)`` is shaped like ``y``; ``crop`` maps the
    canvas to the (B, C, h, w) image restored. ``adjoint`` is None for a nonlinear model.
    ``noise_sigma`` is on the [-1, 1] scale, a float or one per sample (B,).
    """

    y: Tensor
    canvas: tuple[int, int]
    noise_sigma: float | Tensor
    crop: Operator = _identity
    task: str = ""

    adjoint: Callable[[Tensor], Tensor] | None = dataclasses.field(default=None, init=False, repr=False)

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """H x: the noiseless observation of an image on the canvas."""

    @property
    def linear(self) -> bool:
        return self.adjoint is not None

    def data_consistency(self, anchor: Tensor, rho: Tensor, grad_reg: float, cg_iters: int) -> Tensor:
        """argmin_x ||y - H x||² + rho ||x - anchor||² (+ mu ||∇x||², mu = grad_reg σ², linear H).
        Models that only guide by gradients (no closed-form solve) do not override it."""
        raise TypeError(f"{type(self).__name__} has no data-consistency solve (a gradient-guided model)")

    def prox(self, grad_reg: float, cg_iters: int) -> ProxFn:
        """:meth:`data_consistency` as prox(anchor, rho), for the proximal sampler."""
        return lambda anchor, rho: self.data_consistency(anchor, rho, grad_reg, cg_iters)

    def _mu(self, grad_reg: float, dtype: torch.dtype) -> Tensor | float:
        if isinstance(self.noise_sigma, Tensor):
            return (grad_reg * self.noise_sigma**2).to(dtype).reshape(-1, 1, 1, 1)
        return grad_reg * self.noise_sigma**2


@dataclass(frozen=True, eq=False)
class LinearPhysics(Physics):
    """A linear forward model given as a pair of functions (masks, downsampling, ...)."""

    forward_fn: Operator = _identity
    adjoint_fn: Operator = _identity

    def __post_init__(self) -> None:
        object.__setattr__(self, "adjoint", self.adjoint_fn)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_fn(x)

    def data_consistency(self, anchor: Tensor, rho: Tensor, grad_reg: float, cg_iters: int) -> Tensor:
        return linear_prox(
            self.y, self.forward, self.adjoint_fn, anchor, rho, cg_iters, self._mu(grad_reg, anchor.dtype)
        )


@dataclass(frozen=True, eq=False)
class BlurMask(Physics):
    """y = M ⊙ (k ∗ x) + n, valid true convolution (restoration/operators.py): y and the mask
    (B, 1, h', w') live on the blur output of the canvas (padding has mask 0), k is (B or 1, 1, K, K)."""

    mask: Tensor | None = None
    kernel: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "adjoint", self._adjoint)

    def forward(self, x: Tensor) -> Tensor:
        return self.mask * blur(x, self.kernel)

    def _adjoint(self, r: Tensor) -> Tensor:
        return blur_adjoint(self.mask * r, self.kernel)

    @classmethod
    def for_frames(
        cls, y: Tensor, mask: Tensor | None, kernel_size: int, noise_sigma: float | Tensor, multiple: int
    ) -> BlurMask:
        """The problem of frames y (B, C, h, w) (mask (B, 1, h, w), 1 = observed; None: all) blurred
        by an unknown K x K kernel: y is padded to the blur output of a canvas rounded up to
        ``multiple`` (the padding unobserved) and ``crop`` returns the (h, w) frame under y;
        ``noise_sigma`` becomes one float64 std per frame."""
        batch, _, h, w = y.shape
        if mask is None:
            mask = torch.ones(batch, 1, h, w, dtype=y.dtype, device=y.device)
        y_p, m_p, offsets = pad_to_canvas(y, mask, kernel_size, multiple=multiple)
        sigma = torch.as_tensor(noise_sigma, dtype=torch.float64).expand(batch)
        canvas = (offsets.canvas_height, offsets.canvas_width)
        return cls(y_p, canvas, sigma, partial(_crop, offsets=offsets, h=h, w=w), mask=m_p)

    @property
    def kernel_size(self) -> int:
        """K: the canvas is K - 1 px larger than the (padded) observation."""
        return self.canvas[0] - self.y.shape[-2] + 1

    def with_kernel(self, kernel: Tensor) -> BlurMask:
        return dataclasses.replace(self, kernel=kernel)

    def data_consistency(self, anchor: Tensor, rho: Tensor, grad_reg: float, cg_iters: int) -> Tensor:
        return linear_prox(
            self.y, self.forward, self._adjoint, anchor, rho, cg_iters, self._mu(grad_reg, anchor.dtype)
        )

    def residual_ratio(self, x: Tensor) -> Tensor:
        """RMS of M ⊙ (y - k ∗ x) over observed pixels relative to the noise level, per sample."""
        r = self.mask * (self.y - blur(x, self.kernel))
        n_obs = (self.mask.flatten(1).sum(1) * x.shape[1]).clamp_min(1.0)
        sigma = torch.as_tensor(self.noise_sigma, dtype=torch.float64).expand(x.shape[0])
        return torch.sqrt(r.flatten(1).pow(2).sum(1) / n_obs) / sigma.to(x.dtype).to(x.device)

    def update_kernel(self, x: Tensor, k0: Tensor, reg: float, iters: int) -> Tensor:
        """Explicit kernel update: argmin_k Σ_d ||M_d (∂_d y - k ∗ ∂_d x)||² / n + reg ||k||² on the
        channel means (Cho & Lee 2009: gradient-domain least squares is well conditioned); M_d keeps
        differences whose two pixels are observed, n counts them. Not projected."""
        gray_y, gray_x = self.y.mean(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)
        size = k0.shape[-1]
        gxs, gys = grad_xy(gray_x)
        weights = grad_masks(self.mask)
        n_obs = (weights[0].flatten(1).sum(1) + weights[1].flatten(1).sum(1)).clamp_min(1.0)
        scale = (1.0 / n_obs).reshape(-1, 1, 1, 1)
        op = ValidKernelMap((gxs, gys), size)
        return kernel_least_squares(op, grad_xy(gray_y), weights, k0, reg, iters, scale)


@dataclass(frozen=True, eq=False)
class MagnitudePhysics(Physics):
    """Phase retrieval y = |F pad(x)| (orthonormal FFT, zero padding ``pad`` px per side): nonlinear
    (no adjoint); its data-consistency step is the damped magnitude projection."""

    pad: int = 0

    def forward(self, x: Tensor) -> Tensor:
        return phase_retrieval(F.pad(x, (self.pad,) * 4))

    def data_consistency(self, anchor: Tensor, rho: Tensor, grad_reg: float, cg_iters: int) -> Tensor:
        return magnitude_prox(self.y, anchor, rho, self.pad)


def magnitude_prox(y: Tensor, anchor: Tensor, rho: Tensor, pad: int) -> Tensor:
    """Approximate prox of ||y - |F z||^2 + rho ||z - pad(anchor)||^2, cropped to the support.

    F is orthonormal, so over complex z the problem separates per Fourier coefficient: keep the
    anchor's phase and set the magnitude to (y + rho |Z_a|) / (1 + rho) (the damped
    Gerchberg-Saxton projection). Taking the real part and cropping to the known support are the
    projections onto real, supported images.
    """
    z = torch.fft.fft2(F.pad(anchor, (pad,) * 4), norm="ortho")
    mag = z.abs()
    rho = rho.to(mag.dtype)
    new_mag = (y.clamp_min(0) + rho * mag) / (1 + rho)
    phase = torch.where(mag > 0, z / mag.clamp_min(1e-12), torch.ones_like(z))
    x = torch.fft.ifft2(phase * new_mag, norm="ortho").real
    n = anchor.shape[-1]
    return x[..., pad : pad + n, pad : pad + n]
