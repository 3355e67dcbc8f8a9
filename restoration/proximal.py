"""Data-consistency solves used by the proximal variant of blind CVSA (docs/design.md §6).

Everything is per sample: conjugate gradients use per-sample inner products over (C, H, W), so a
frame solved alone equals it solved in a batch. The forward model is the exact one of
restoration.operators (valid true convolution, occlusion mask), not a circular approximation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from restoration.operators import blur, blur_adjoint, kernel_adjoint


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).flatten(1).sum(dim=1).reshape((-1,) + (1,) * (a.dim() - 1))


def conjugate_gradient(apply: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor, iters: int) -> Tensor:
    """Solve apply(x) = b (apply symmetric positive definite, batched per sample) by CG from x0."""
    x = x0
    r = b - apply(x)
    p = r
    rs = _dot(r, r)
    tiny = torch.finfo(b.dtype).tiny
    for _ in range(iters):
        ap = apply(p)
        alpha = rs / _dot(p, ap).clamp_min(tiny)
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = _dot(r, r)
        p = r + (rs_new / rs.clamp_min(tiny)) * p
        rs = rs_new
    return x


def linear_prox(
    y: Tensor,
    forward: Callable[[Tensor], Tensor],
    adjoint: Callable[[Tensor], Tensor],
    x_anchor: Tensor,
    rho: Tensor | float,
    iters: int = 12,
    grad_reg: Tensor | float = 0.0,
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
            gx, gy = _grad_xy(x)
            out = out + grad_reg * _grad_xy_adjoint(gx, gy)
        return out

    return conjugate_gradient(normal, adjoint(y) + rho * x_anchor, x_anchor, iters)


def image_prox(
    y: Tensor,
    mask: Tensor,
    kernel: Tensor,
    x_anchor: Tensor,
    rho: Tensor,
    iters: int = 12,
    grad_reg: Tensor | float = 0.0,
) -> Tensor:
    """:func:`linear_prox` for the masked valid-convolution model A x = M (k * x)."""
    return linear_prox(
        y,
        lambda x: mask * blur(x, kernel),
        lambda r: blur_adjoint(mask * r, kernel),
        x_anchor,
        rho,
        iters,
        grad_reg,
    )


def _grad_xy_adjoint(gx: Tensor, gy: Tensor) -> Tensor:
    """Adjoint of `_grad_xy` (negative divergence with the matching boundary)."""
    out = torch.zeros_like(gx)
    out[..., :, :-1] -= gx[..., :, :-1]
    out[..., :, 1:] += gx[..., :, :-1]
    out[..., :-1, :] -= gy[..., :-1, :]
    out[..., 1:, :] += gy[..., :-1, :]
    return out


def _grad_xy(x: Tensor) -> tuple[Tensor, Tensor]:
    """Forward differences, zero in the last row/column (so they commute with valid convolution)."""
    gx = torch.zeros_like(x)
    gy = torch.zeros_like(x)
    gx[..., :, :-1] = x[..., :, 1:] - x[..., :, :-1]
    gy[..., :-1, :] = x[..., 1:, :] - x[..., :-1, :]
    return gx, gy


def kernel_least_squares(
    y: Tensor, mask: Tensor, x: Tensor, k0: Tensor, reg: float = 1e-3, iters: int = 15
) -> Tensor:
    """Explicit kernel update: argmin_k sum_d ||M_d (d y - k * d x)||^2 + reg ||k||^2 on gradients.

    Gradient-domain least squares is the classical, well-conditioned kernel step (Cho & Lee 2009);
    M_d keeps pixels whose difference stencil is fully observed. The result is not projected.
    """
    size = k0.shape[-1]
    gxs, gys = _grad_xy(x)
    yx, yy = _grad_xy(y)
    mx = mask.clone()
    mx[..., :, :-1] = mask[..., :, :-1] * mask[..., :, 1:]
    mx[..., :, -1] = 0
    my = mask.clone()
    my[..., :-1, :] = mask[..., :-1, :] * mask[..., 1:, :]
    my[..., -1, :] = 0
    n_obs = (mx.flatten(1).sum(1) + my.flatten(1).sum(1)).clamp_min(1.0)
    scale = (1.0 / n_obs).reshape(-1, 1, 1, 1)

    def normal(k: Tensor) -> Tensor:
        out = kernel_adjoint(mx * blur(gxs, k), gxs, size) + kernel_adjoint(my * blur(gys, k), gys, size)
        return scale * out + reg * k

    rhs = scale * (kernel_adjoint(mx * yx, gxs, size) + kernel_adjoint(my * yy, gys, size))
    return conjugate_gradient(normal, rhs, k0, iters)
