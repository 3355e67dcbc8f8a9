"""The forward-model objects and the one set of solvers (restoration/physics.py, periodic.py):
every operator is the adjoint of its partner to 1e-10 (float64), and CG / the kernel least-squares
solve agree with a dense direct solve on small problems."""

from __future__ import annotations

import pytest
import torch

from restoration.operators import adjointness_gap
from restoration.periodic import CircularKernelMap
from restoration.physics import (
    BlurMask,
    ValidKernelMap,
    conjugate_gradient,
    grad_xy,
    grad_xy_adjoint,
    kernel_least_squares,
)

D = torch.float64


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


def blur_mask(k: int = 5, h: int = 9, w: int = 8, batch: int = 2) -> BlurMask:
    mask = (torch.rand(batch, 1, h, w, generator=torch.Generator().manual_seed(3)) > 0.3).to(D)
    kernel = rand(batch, 1, k, k, seed=4).abs()
    return BlurMask(rand(batch, 3, h, w, seed=5), (h + k - 1, w + k - 1), 0.05, mask=mask, kernel=kernel)


def dense(op, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map on one sample of ``shape`` (columns = images of basis vectors)."""
    n = int(torch.tensor(shape).prod())
    cols = [op(torch.eye(n, dtype=D)[i].reshape(shape)).flatten() for i in range(n)]
    return torch.stack(cols, dim=1)


def test_blur_mask_forward_and_adjoint_are_adjoint() -> None:
    p = blur_mask()
    x, r = rand(2, 3, *p.canvas, seed=1), rand(*p.y.shape, seed=2)
    assert p.linear
    assert adjointness_gap(p.forward, p.adjoint, x, r) < 1e-10


@pytest.mark.parametrize("circular", [False, True])
def test_gradient_pair_is_adjoint(circular: bool) -> None:
    x, gx, gy = rand(2, 3, 7, 6, seed=1), rand(2, 3, 7, 6, seed=2), rand(2, 3, 7, 6, seed=3)
    lhs = sum((a * b).sum() for a, b in zip(grad_xy(x, circular), (gx, gy), strict=True))
    rhs = (x * grad_xy_adjoint(gx, gy, circular)).sum()
    assert abs(float(lhs - rhs)) < 1e-10 * float(x.norm() * (gx.norm() + gy.norm()))


def _kernel_map_gap(op, k: torch.Tensor, rs: list[torch.Tensor]) -> float:
    lhs = sum((a * b).sum() for a, b in zip(op.forward(k), rs, strict=True))
    rhs = (k * op.adjoint(rs)).sum()
    scale = sum(a.norm() for a in op.forward(k)) * sum(r.norm() for r in rs)
    return float((lhs - rhs).abs() / scale)


def test_valid_kernel_map_is_adjoint() -> None:
    xs = (rand(2, 1, 12, 11, seed=1), rand(2, 1, 12, 11, seed=2))
    op = ValidKernelMap(xs, 5)
    rs = [rand(2, 1, 8, 7, seed=3), rand(2, 1, 8, 7, seed=4)]
    assert _kernel_map_gap(op, rand(2, 1, 5, 5, seed=5), rs) < 1e-10


def test_circular_kernel_map_is_adjoint() -> None:
    shape = (10, 9)
    spectra = tuple(torch.fft.rfft2(rand(2, 1, *shape, seed=s)) for s in (1, 2))
    op = CircularKernelMap(spectra, shape, 5)
    rs = [rand(2, 1, *shape, seed=3), rand(2, 1, *shape, seed=4)]
    assert _kernel_map_gap(op, rand(2, 1, 5, 5, seed=5), rs) < 1e-10


def test_conjugate_gradient_matches_a_direct_solve() -> None:
    a = rand(12, 12, seed=1)
    spd = a @ a.T + 0.5 * torch.eye(12, dtype=D)
    b = rand(2, 12, seed=2)
    x = conjugate_gradient(lambda v: v @ spd, b, torch.zeros_like(b), 40)
    torch.testing.assert_close(x, torch.linalg.solve(spd, b.T).T, rtol=1e-9, atol=1e-9)


def test_data_consistency_matches_a_direct_solve() -> None:
    """argmin ||y - M(k*x)||² + rho||x - a||² + mu||∇x||², per sample, against the dense normal
    equations (a frame's solve never sees its batch mates)."""
    p = blur_mask(k=3, h=5, w=4)
    anchor = rand(2, 3, *p.canvas, seed=7)
    rho = torch.tensor([0.3, 0.7], dtype=D).reshape(-1, 1, 1, 1)
    x = p.data_consistency(anchor, rho, grad_reg=8.0, cg_iters=400)
    mu = 8.0 * 0.05**2
    for i in range(2):
        pi = blur_mask(k=3, h=5, w=4)
        pi = BlurMask(pi.y[i : i + 1], pi.canvas, 0.05, mask=pi.mask[i : i + 1], kernel=pi.kernel[i : i + 1])
        shape = (1, 3, *p.canvas)
        a = dense(pi.forward, shape)
        g = torch.cat([dense(lambda v: grad_xy(v)[0], shape), dense(lambda v: grad_xy(v)[1], shape)])
        n = a.shape[1]
        lhs = a.T @ a + float(rho[i]) * torch.eye(n, dtype=D) + mu * g.T @ g
        rhs = a.T @ pi.y.flatten() + float(rho[i]) * anchor[i].flatten()
        torch.testing.assert_close(x[i].flatten(), torch.linalg.solve(lhs, rhs), rtol=1e-8, atol=1e-8)


def test_kernel_least_squares_matches_a_direct_solve() -> None:
    xs = (rand(1, 1, 9, 9, seed=1), rand(1, 1, 9, 9, seed=2))
    op = ValidKernelMap(xs, 3)
    weights = [(rand(1, 1, 7, 7, seed=s) > 0).to(D) for s in (3, 4)]
    targets = [rand(1, 1, 7, 7, seed=s) for s in (5, 6)]
    k0 = torch.zeros(1, 1, 3, 3, dtype=D)
    k = kernel_least_squares(op, targets, weights, k0, 0.1, 200, torch.tensor(0.5))
    a = torch.cat([dense(lambda v, j=j: weights[j] * op.forward(v)[j], (1, 1, 3, 3)) for j in range(2)])
    b = torch.cat([(w * t).flatten() for w, t in zip(weights, targets, strict=True)])
    direct = torch.linalg.solve(0.5 * a.T @ a + 0.1 * torch.eye(9, dtype=D), 0.5 * a.T @ b)
    torch.testing.assert_close(k.flatten(), direct, rtol=1e-8, atol=1e-8)


def test_update_kernel_recovers_the_kernel_of_noise_free_data() -> None:
    truth = rand(1, 1, 5, 5, seed=9).abs()
    truth = truth / truth.sum()
    x = rand(1, 3, 20, 20, seed=10)
    mask = torch.ones(1, 1, 16, 16, dtype=D)
    mask[..., :5, :5] = 0
    p = BlurMask(torch.zeros(1, 3, 16, 16, dtype=D), (20, 20), 0.05, mask=mask, kernel=truth)
    p = BlurMask(p.forward(x), (20, 20), 0.05, mask=mask)
    k = p.update_kernel(x, torch.zeros_like(truth), reg=0.0, iters=200)
    torch.testing.assert_close(k, truth, rtol=1e-7, atol=1e-7)
