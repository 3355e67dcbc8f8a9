"""Blur-kernel generators, the kernel prior's representation, and kernel statistics.

Conventions (docs/design.md §3): a kernel is a float32 tensor of odd side K, non-negative, summing to 1;
batches are (B, 1, K, K). The centre pixel is index c = (K - 1) / 2 and every generator returns
kernels whose centre of mass is at (c, c) (sub-pixel exact for motion, Gaussian and defocus
kernels; within a fraction of a pixel for mixtures). Randomness always comes from an explicit
``torch.Generator``; nothing here touches the global RNG.

Kinds:
- ``motion``: a random camera/hand trajectory (:func:`motion_trajectory`) sampled uniformly in
  time, so slow parts of the path collect more light; sub-pixel rasterised by bilinear splatting,
  smoothed by a 3x3 Gaussian (sigma 0.5) and centred by shifting the trajectory so its time-mean
  (= the splatted centre of mass) sits on the centre pixel.
- ``gaussian``: anisotropic Gaussian (sigma_x, sigma_y, rotation angle).
- ``defocus``: anti-aliased uniform disc (pixel coverage by 8x8 supersampling).
- ``mixture``: a motion kernel convolved with a small Gaussian or a small defocus disc.

The projection, the kernel prior's representation, shifts and resampling live in
:mod:`restoration.kernel_ops` (the one kernel module); this module generates kernels and measures
them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from restoration.kernel_ops import KernelError, centre_of_mass, check_batch, check_size, recentre_subpixel

KINDS: tuple[str, ...] = ("motion", "gaussian", "defocus", "mixture")

#: Bumped whenever a generator's distribution or random-number order changes: put it in cache
#: keys and checkpoint metadata so a kernel bank is never reused across generator versions.
#: (1: first draft, Gaussian sigma <= (K-1)/6, defocus radius <= (K-1)/2 - 1, mixtures drawn one
#: by one; 2: sigma <= (K-1)/8, radius <= (K-1)/4, mixtures batched.)
GENERATOR_VERSION: int = 2

_MOTION_STEPS = 64
_SPLATS_PER_STEP = 8


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------- trajectories
def _trajectories(
    intensity: torch.Tensor, generator: torch.Generator, n_steps: int = _MOTION_STEPS
) -> torch.Tensor:
    """Batched random trajectories, (n, n_steps, 2) float64 (x, y), unit mean step.

    Heading theta_t = theta_0 + sum of an angular velocity omega_t that follows an AR(1) process
    plus a per-path turning bias (arcs, loops) and rare impulsive jerks; every turning term is
    scaled by the intensity, so intensity 0 gives an exactly straight line. Step lengths vary
    smoothly (log-normal AR(1)), which makes the exposure non-uniform along the path.
    """
    n = intensity.shape[0]
    g = generator
    inten = intensity.to(torch.float64)[:, None]
    theta0 = 2 * math.pi * torch.rand(n, 1, generator=g, dtype=torch.float64)
    xi = torch.randn(n, n_steps, generator=g, dtype=torch.float64)
    bias = 0.12 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    jerk_on = torch.rand(n, n_steps, generator=g, dtype=torch.float64) < 0.04
    jerk = (
        torch.sign(torch.randn(n, n_steps, generator=g, dtype=torch.float64))
        * _uniform(n * n_steps, 0.5, 1.6, g).view(n, n_steps)
        * jerk_on
    )
    speed_xi = torch.randn(n, n_steps, generator=g, dtype=torch.float64)
    omega = torch.zeros(n, n_steps, dtype=torch.float64)
    log_speed = torch.zeros(n, n_steps, dtype=torch.float64)
    w = torch.zeros(n, dtype=torch.float64)
    s = torch.zeros(n, dtype=torch.float64)
    for t in range(n_steps):
        w = 0.85 * w + 0.10 * xi[:, t]
        s = 0.9 * s + 0.12 * speed_xi[:, t]
        omega[:, t] = w
        log_speed[:, t] = s
    turn = inten * (omega + bias + jerk)
    turn[:, 0] = 0.0
    theta = theta0 + torch.cumsum(turn, dim=1)
    speed = torch.exp(log_speed)
    speed = speed / speed.mean(dim=1, keepdim=True)
    steps = speed[..., None] * torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    start = torch.zeros(n, 1, 2, dtype=torch.float64)
    return torch.cat([start, torch.cumsum(steps, dim=1)], dim=1)[:, :n_steps]


def motion_trajectory(
    intensity: float, generator: torch.Generator, n_steps: int = _MOTION_STEPS
) -> torch.Tensor:
    """One random camera/hand trajectory, (n_steps, 2) float64 (x, y) in arbitrary units.

    intensity in [0, 1]: 0 is a straight line; larger values add smooth turning, arcs, loops
    and jerks (self-crossing paths near 1). See :func:`path_curvature` for a measure.
    """
    if not 0.0 <= float(intensity) <= 1.0:
        raise KernelError(f"intensity must lie in [0, 1], got {intensity!r}")
    if n_steps < 2:
        raise KernelError(f"n_steps must be >= 2, got {n_steps}")
    inten = torch.tensor([float(intensity)], dtype=torch.float64)
    return _trajectories(inten, generator, n_steps)[0]


def path_curvature(path: torch.Tensor) -> torch.Tensor:
    """1 - end-to-end distance / path length, (..., T, 2) -> (...): 0 straight, ~1 looping."""
    seg = (path[..., 1:, :] - path[..., :-1, :]).norm(dim=-1).sum(dim=-1)
    chord = (path[..., -1, :] - path[..., 0, :]).norm(dim=-1)
    return 1.0 - chord / seg.clamp_min(1e-12)


def _dense(path: torch.Tensor, per_step: int = _SPLATS_PER_STEP) -> torch.Tensor:
    """Piecewise-linear resampling uniform in time: (n, T, 2) -> (n, (T-1)*per_step + 1, 2)."""
    a, b = path[:, :-1, None, :], path[:, 1:, None, :]
    f = torch.arange(per_step, dtype=path.dtype)[None, None, :, None] / per_step
    pts = (a + f * (b - a)).reshape(path.shape[0], -1, 2)
    return torch.cat([pts, path[:, -1:, :]], dim=1)


def _splat(points: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear splatting of equal-weight points (n, P, 2) (x, y pixel coords) -> (n, 1, K, K).

    Bilinear weights preserve the first moment, so the splatted centre of mass equals the mean
    point exactly. Points must lie in [0, K - 1].
    """
    n, p, _ = points.shape
    x, y = points[..., 0], points[..., 1]
    x0 = x.floor().clamp(0, size - 2)
    y0 = y.floor().clamp(0, size - 2)
    fx, fy = x - x0, y - y0
    out = torch.zeros(n, size * size, dtype=points.dtype)
    base = (y0 * size + x0).long()
    for dy, dx, wgt in (
        (0, 0, (1 - fx) * (1 - fy)),
        (0, 1, fx * (1 - fy)),
        (1, 0, (1 - fx) * fy),
        (1, 1, fx * fy),
    ):
        out.scatter_add_(1, base + dy * size + dx, wgt / p)
    return out.view(n, 1, size, size)


def _gauss3(k: torch.Tensor, sigma: float = 0.5) -> torch.Tensor:
    """Light 3x3 Gaussian smoothing (symmetric: keeps the centre of mass away from borders)."""
    r = torch.arange(-1, 2, dtype=k.dtype)
    w = torch.exp(-(r**2) / (2 * sigma**2))
    w2 = (w[:, None] * w[None, :]) / w.sum() ** 2
    return F.conv2d(k, w2[None, None], padding=1)


def _motion_batch(
    n: int,
    size: int,
    generator: torch.Generator,
    intensity: torch.Tensor | None = None,
    margin: torch.Tensor | float = 0.0,
) -> torch.Tensor:
    """n motion kernels (n, 1, K, K) float64. ``margin`` (px, per kernel or shared) keeps extra
    room for a later blur."""
    g = generator
    if intensity is None:
        intensity = torch.rand(n, generator=g, dtype=torch.float64)
    path = _trajectories(intensity, g, _MOTION_STEPS)
    c = (size - 1) / 2
    # splat footprint + 3x3 smoothing stay inside the canvas
    limit = c - 1.0 - torch.as_tensor(margin, dtype=torch.float64).expand(n)
    hi = (2 * limit).clamp(max=size - 4.0).clamp(min=3.0)
    extent = 3.0 + (hi - 3.0) * torch.rand(n, generator=g, dtype=torch.float64)
    bbox = (path.amax(dim=1) - path.amin(dim=1)).amax(dim=1).clamp_min(1e-9)
    path = path * (extent / bbox)[:, None, None]
    pts = _dense(path)
    pts = pts - pts.mean(dim=1, keepdim=True)  # time-mean == splatted centre of mass
    reach = pts.abs().amax(dim=(1, 2)).clamp_min(1e-9)
    pts = pts * torch.clamp(limit.clamp(min=0.5) / reach, max=1.0)[:, None, None]
    k = _gauss3(_splat(pts + c, size))
    return k / k.sum(dim=(2, 3), keepdim=True)


# --------------------------------------------------------------------------- single kernels
def motion_kernel(size: int, intensity: float, generator: torch.Generator) -> torch.Tensor:
    """Random motion kernel (K, K) float32: trajectory of the given intensity, extent 3..K-4 px."""
    check_size(size, 7)
    if not 0.0 <= float(intensity) <= 1.0:
        raise KernelError(f"intensity must lie in [0, 1], got {intensity!r}")
    inten = torch.tensor([float(intensity)], dtype=torch.float64)
    return _motion_batch(1, size, generator, inten)[0, 0].float()


def _grid(size: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=dtype) - (size - 1) / 2
    return r[None, :].expand(size, size), r[:, None].expand(size, size)  # x, y


def _gaussian64(size: int, sx: float, sy: float, angle: float) -> torch.Tensor:
    x, y = _grid(size)
    ca, sa = math.cos(angle), math.sin(angle)
    u, v = ca * x + sa * y, -sa * x + ca * y
    k = torch.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return k / k.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float, angle: float = 0.0) -> torch.Tensor:
    """Anisotropic Gaussian (K, K) float32; sigma_x along the direction ``angle`` (radians)."""
    check_size(size)
    if sigma_x <= 0 or sigma_y <= 0:
        raise KernelError(f"sigmas must be > 0, got {sigma_x}, {sigma_y}")
    return _gaussian64(size, float(sigma_x), float(sigma_y), float(angle)).float()


def _defocus64(size: int, radius: float, supersample: int = 8) -> torch.Tensor:
    x, y = _grid(size)
    off = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    xs = x[..., None, None] + off[None, None, None, :]
    ys = y[..., None, None] + off[None, None, :, None]
    k = ((xs**2 + ys**2) <= radius**2).double().mean(dim=(-1, -2))
    return k / k.sum()


def defocus_kernel(size: int, radius: float) -> torch.Tensor:
    """Anti-aliased uniform disc (K, K) float32 (pixel coverage, 8x8 supersampling)."""
    check_size(size)
    if not 0 < radius <= (size - 1) / 2:
        raise KernelError(f"radius must lie in (0, {(size - 1) / 2}], got {radius}")
    return _defocus64(size, float(radius)).float()


def line_kernel(size: int, length: float, angle: float) -> torch.Tensor:
    """Linear (constant-velocity) motion blur (K, K) float64: a segment of ``length`` px at
    ``angle`` (radians, x towards y), centred on the centre pixel, bilinearly splatted and lightly
    smoothed like :func:`motion_kernel` (3x3 Gaussian, sigma 0.5: sub-pixel rasterisation)."""
    check_size(size)
    c = (size - 1) / 2
    if not 0 <= length <= 2 * (c - 1) + 1e-6:
        raise KernelError(f"length must lie in [0, {2 * (c - 1)}], got {length}")
    n = max(2, math.ceil(length * 4) + 1)
    s = torch.linspace(-length / 2, length / 2, n, dtype=torch.float64)
    pts = torch.stack([c + s * math.cos(angle), c + s * math.sin(angle)], dim=-1)[None]
    k = _gauss3(_splat(pts, size))
    return (k / k.sum())[0, 0]


def moment_matched_gaussian(k: torch.Tensor) -> torch.Tensor:
    """The Gaussians (B, 1, K, K) float64 with the same centre and covariance as kernels k: the
    same blur *amount and direction* without the shape (a reference to test the shape against).
    Standard deviations are floored at 0.2 px."""
    check_batch(k)
    size = k.shape[-1]
    out = []
    for i in range(k.shape[0]):
        a = k[i, 0].double().clamp_min(0)
        a = a / a.sum()
        x, y = _grid(size)
        mx, my = (a * x).sum(), (a * y).sum()
        cxx = (a * (x - mx) ** 2).sum()
        cyy = (a * (y - my) ** 2).sum()
        cxy = (a * (x - mx) * (y - my)).sum()
        evals, evecs = torch.linalg.eigh(torch.stack([torch.stack([cxx, cxy]), torch.stack([cxy, cyy])]))
        major = evecs[:, 1]
        angle = math.atan2(float(major[1]), float(major[0]))
        s1, s2 = (float(v) ** 0.5 if v > 0 else 0.0 for v in (evals[1], evals[0]))
        out.append(_gaussian64(size, max(s1, 0.2), max(s2, 0.2), angle))
    return torch.stack(out)[:, None]


def _random_gaussian(size: int, g: torch.Generator) -> torch.Tensor:
    smax = max(0.5, (size - 1) / 8)
    sx = float(_uniform(1, 0.4, smax, g))
    sy = sx * float(_uniform(1, 0.25, 1.0, g))
    angle = float(_uniform(1, 0.0, math.pi, g))
    return _gaussian64(size, sx, sy, angle)


def _random_defocus(size: int, g: torch.Generator) -> torch.Tensor:
    rmax = max(1.0, (size - 1) / 4)
    return _defocus64(size, float(_uniform(1, 0.8, rmax, g)))


def _conv_same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """True 2-D convolution of a (n, 1, K, K) with one small odd kernel b (s, s), 'same' size."""
    return F.conv2d(a, b.flip(0, 1)[None, None], padding=b.shape[-1] // 2)


def _random_mixtures(n: int, size: int, g: torch.Generator) -> torch.Tensor:
    """n motion kernels, each convolved with its own small Gaussian or defocus disc."""
    smalls: list[torch.Tensor] = []
    for _ in range(n):
        if float(torch.rand(1, generator=g)) < 0.5:
            sigma = float(_uniform(1, 0.5, 1.5, g))
            half = math.ceil(3 * sigma)
            smalls.append(_gaussian64(2 * half + 1, sigma,
                                      sigma * float(_uniform(1, 0.6, 1.0, g)),
                                      float(_uniform(1, 0.0, math.pi, g))))
        else:
            radius = float(_uniform(1, 1.0, 2.5, g))
            smalls.append(_defocus64(2 * math.ceil(radius) + 1, radius))
    cap = max(0.0, (size - 1) / 2 - 2.5)
    margin = torch.tensor([min(float(sk.shape[-1] // 2), cap) for sk in smalls],
                          dtype=torch.float64)
    motion = _motion_batch(n, size, g, margin=margin)
    k = torch.cat([_conv_same(motion[i: i + 1], sk) for i, sk in enumerate(smalls)])
    k = k / k.sum(dim=(2, 3), keepdim=True)
    return recentre_subpixel(k)


def random_kernel(
    size: int, generator: torch.Generator, kinds: Sequence[str] = KINDS
) -> torch.Tensor:
    """One random kernel (K, K) float32 of a kind drawn uniformly from ``kinds``.

    Repeat a kind in ``kinds`` to draw it more often.
    """
    return sample_kernels(1, size, generator, kinds)[0, 0]


def sample_kernels(
    n: int, size: int, generator: torch.Generator, kinds: Sequence[str] = KINDS
) -> torch.Tensor:
    """n random kernels (n, 1, K, K) float32; each kind drawn uniformly from ``kinds``."""
    kinds = tuple(kinds)
    if not kinds or any(kd not in KINDS for kd in kinds):
        raise KernelError(f"kinds must be a non-empty subset of {KINDS}, got {kinds!r}")
    check_size(size, 7 if ({"motion", "mixture"} & set(kinds)) else 3)
    if n < 0:
        raise KernelError(f"n must be >= 0, got {n}")
    g = generator
    choice = torch.randint(len(kinds), (n,), generator=g)
    out = torch.zeros(n, 1, size, size, dtype=torch.float64)
    names = [kinds[int(c)] for c in choice]
    motion_idx = [i for i, kd in enumerate(names) if kd == "motion"]
    if motion_idx:
        out[motion_idx] = _motion_batch(len(motion_idx), size, g)
    mix_idx = [i for i, kd in enumerate(names) if kd == "mixture"]
    if mix_idx:
        out[mix_idx] = _random_mixtures(len(mix_idx), size, g)
    for i, kind in enumerate(names):
        if kind == "gaussian":
            out[i, 0] = _random_gaussian(size, g)
        elif kind == "defocus":
            out[i, 0] = _random_defocus(size, g)
    return out.float()


# --------------------------------------------------------------------------- statistics
def mass_concentration(k: torch.Tensor, n: int = 96) -> torch.Tensor:
    """Fraction of the mass held by the n largest pixels, (B,) (docs/design.md §6: 96 px, ~98%)."""
    check_batch(k)
    flat = k.flatten(1).clamp_min(0)
    top = flat.topk(min(n, flat.shape[1]), dim=1).values.sum(dim=1)
    return top / flat.sum(dim=1).clamp_min(torch.finfo(k.dtype).tiny)


def kernel_extent(k: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Radius (px) around the centre of mass that contains ``mass`` of the kernel, (B,).

    Pixels are sorted by distance from the centre of mass; the radius is the distance of the
    pixel at which the cumulative mass first reaches ``mass`` (0 for a delta).
    """
    check_batch(k)
    size = k.shape[-1]
    com = centre_of_mass(k)
    rr = torch.arange(size, dtype=k.dtype)
    dy = rr[None, :, None] - com[:, 0, None, None]
    dx = rr[None, None, :] - com[:, 1, None, None]
    dist = (dx**2 + dy**2).sqrt().flatten(1)
    w = k[:, 0].clamp_min(0).flatten(1)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)
    order = dist.argsort(dim=1)
    cum = w.gather(1, order).cumsum(dim=1)
    idx = (cum < mass - 1e-6).sum(dim=1).clamp(max=dist.shape[1] - 1)
    return dist.gather(1, order).gather(1, idx[:, None])[:, 0]


def support_size(k: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Number of pixels holding ``mass`` of the kernel (largest pixels first), (B,) int64."""
    check_batch(k)
    w = k.flatten(1).clamp_min(0)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)
    cum = w.sort(dim=1, descending=True).values.cumsum(dim=1)
    return (cum < mass - 1e-6).sum(dim=1) + 1
