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

Kernel prior representation (docs/design.md §6, "Kernel prior representation matters"): the prior
works on ``p = 2 * sqrt(k / max k) - 1`` in [-1, 1] (gamma companding, gamma = 2). The inverse
squares ``(p + 1) / 2`` after clamping to [0, 1], so a background error e in p becomes only
(e/2)^2 relative to the peak: e = 0.05 leaves 6e-4 instead of 2.5e-2 with a linear map. The
projection then removes what is left: entries below ``tau * max`` (tau = 0.02 in the squared
domain, i.e. p below -0.72) are zeroed, connected components (8-neighbourhood) holding less than
``min_component`` of the largest component's mass are dropped, the result is renormalised to sum
1 and shifted by the integer offset that brings its centre of mass nearest to the centre
(zero-filled shift, never a wrap-around roll). Dim parts of real kernels survive better than with
a linear map because sqrt lifts them in the prior's space (a pixel at 4% of the peak sits at
p = -0.6, far above the background at -1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

KINDS: tuple[str, ...] = ("motion", "gaussian", "defocus", "mixture")

#: Bumped whenever a generator's distribution or random-number order changes: put it in cache
#: keys and checkpoint metadata so a kernel bank is never reused across generator versions.
#: (1: first draft, Gaussian sigma <= (K-1)/6, defocus radius <= (K-1)/2 - 1, mixtures drawn one
#: by one; 2: sigma <= (K-1)/8, radius <= (K-1)/4, mixtures batched.)
GENERATOR_VERSION: int = 2

#: Relative threshold of :func:`from_prior`, in the kernel (squared) domain.
PRIOR_TAU: float = 0.02
#: Components lighter than this fraction of the heaviest one are dropped by :func:`from_prior`.
PRIOR_MIN_COMPONENT: float = 0.1

_MOTION_STEPS = 64
_SPLATS_PER_STEP = 8


class KernelError(ValueError):
    """Raised for an invalid kernel size, parameter or tensor shape."""


def _check_size(size: int, minimum: int = 3) -> None:
    if not isinstance(size, int) or size < minimum or size % 2 == 0:
        raise KernelError(f"kernel size must be an odd int >= {minimum}, got {size!r}")


def _check_batch(k: torch.Tensor) -> None:
    if k.dim() != 4 or k.shape[1] != 1 or k.shape[2] != k.shape[3] or k.shape[2] % 2 == 0:
        raise KernelError(f"expected kernels of shape (B, 1, K, K) with odd K, got {tuple(k.shape)}")


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
    _check_size(size, 7)
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
    _check_size(size)
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
    _check_size(size)
    if not 0 < radius <= (size - 1) / 2:
        raise KernelError(f"radius must lie in (0, {(size - 1) / 2}], got {radius}")
    return _defocus64(size, float(radius)).float()


def line_kernel(size: int, length: float, angle: float) -> torch.Tensor:
    """Linear (constant-velocity) motion blur (K, K) float64: a segment of ``length`` px at
    ``angle`` (radians, x towards y), centred on the centre pixel, bilinearly splatted and lightly
    smoothed like :func:`motion_kernel` (3x3 Gaussian, sigma 0.5: sub-pixel rasterisation)."""
    _check_size(size)
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
    _check_batch(k)
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
    return _recentre_subpixel(k)


def _recentre_subpixel(k: torch.Tensor) -> torch.Tensor:
    """Shift (n,1,K,K) kernels so the centre of mass is at the centre (bilinear resampling)."""
    size = k.shape[-1]
    com = centre_of_mass(k.double()).to(k.dtype)  # (n, 2) as (row, col)
    c = (size - 1) / 2
    shift = com - c
    # grid_sample with align_corners=True: pixel i <-> -1 + 2 i / (K - 1)
    lin = torch.linspace(-1, 1, size, dtype=k.dtype)
    gy, gx = torch.meshgrid(lin, lin, indexing="ij")
    scale = 2.0 / (size - 1)
    grid = torch.stack(
        [gx[None] + shift[:, 1, None, None] * scale, gy[None] + shift[:, 0, None, None] * scale],
        dim=-1,
    )
    out = F.grid_sample(k, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    out = out.clamp_min(0)
    return out / out.sum(dim=(2, 3), keepdim=True)


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
    _check_size(size, 7 if ({"motion", "mixture"} & set(kinds)) else 3)
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
def centre_of_mass(k: torch.Tensor) -> torch.Tensor:
    """Centre of mass (B, 2) as (row, col) in pixel indices of kernels (B, 1, K, K)."""
    _check_batch(k)
    size = k.shape[-1]
    r = torch.arange(size, dtype=k.dtype)
    total = k.sum(dim=(1, 2, 3)).clamp_min(torch.finfo(k.dtype).tiny)
    row = (k.sum(dim=(1, 3)) * r).sum(dim=1) / total
    col = (k.sum(dim=(1, 2)) * r).sum(dim=1) / total
    return torch.stack([row, col], dim=1)


def mass_concentration(k: torch.Tensor, n: int = 96) -> torch.Tensor:
    """Fraction of the mass held by the n largest pixels, (B,) (docs/design.md §6: 96 px, ~98%)."""
    _check_batch(k)
    flat = k.flatten(1).clamp_min(0)
    top = flat.topk(min(n, flat.shape[1]), dim=1).values.sum(dim=1)
    return top / flat.sum(dim=1).clamp_min(torch.finfo(k.dtype).tiny)


def kernel_extent(k: torch.Tensor, mass: float = 0.9) -> torch.Tensor:
    """Radius (px) around the centre of mass that contains ``mass`` of the kernel, (B,).

    Pixels are sorted by distance from the centre of mass; the radius is the distance of the
    pixel at which the cumulative mass first reaches ``mass`` (0 for a delta).
    """
    _check_batch(k)
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
    _check_batch(k)
    w = k.flatten(1).clamp_min(0)
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)
    cum = w.sort(dim=1, descending=True).values.cumsum(dim=1)
    return (cum < mass - 1e-6).sum(dim=1) + 1


# --------------------------------------------------------------------------- prior representation
def to_prior(k: torch.Tensor) -> torch.Tensor:
    """Kernel (B, 1, K, K) -> prior representation p = 2 sqrt(k / max k) - 1 in [-1, 1]."""
    _check_batch(k)
    a = k.clamp_min(0)
    peak = a.amax(dim=(1, 2, 3), keepdim=True).clamp_min(torch.finfo(k.dtype).tiny)
    return 2.0 * (a / peak).sqrt() - 1.0


def _max3(x: torch.Tensor) -> torch.Tensor:
    """3x3 max filter with zero padding (separable; faster than max_pool2d on the CPU)."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 0, 0))
    r = torch.maximum(torch.maximum(p[..., :w], p[..., 1: w + 1]), p[..., 2: w + 2])
    p = F.pad(r, (0, 0, 1, 1))
    return torch.maximum(torch.maximum(p[..., :h, :], p[..., 1: h + 1, :]), p[..., 2: h + 2, :])


def _components(mask: torch.Tensor) -> torch.Tensor:
    """8-connected component labels (B, 1, K, K) int64, -1 on background (max-label flooding)."""
    b, _, h, w = mask.shape
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, 1, h, w).expand(b, 1, h, w)
    m = mask.float()
    lab = ids * m
    for _ in range(h * w):
        grown = _max3(_max3(lab) * m) * m  # two steps per convergence check
        if torch.equal(grown, lab):
            break
        lab = grown
    return lab.long() - 1


def _shift_zero(k: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Integer shift per sample (content moves by +dy, +dx) with zero fill, (B, 1, K, K)."""
    out = torch.zeros_like(k)
    size = k.shape[-1]
    for i in range(k.shape[0]):
        sy, sx = int(dy[i]), int(dx[i])
        src_y = slice(max(0, -sy), min(size, size - sy))
        dst_y = slice(max(0, sy), min(size, size + sy))
        src_x = slice(max(0, -sx), min(size, size - sx))
        dst_x = slice(max(0, sx), min(size, size + sx))
        out[i, :, dst_y, dst_x] = k[i, :, src_y, src_x]
    return out


def from_prior(
    p: torch.Tensor, tau: float = PRIOR_TAU, min_component: float = PRIOR_MIN_COMPONENT
) -> torch.Tensor:
    """Prior representation (B, 1, K, K) -> kernel: non-negative, sum 1, centred (projection).

    a = clamp((p + 1) / 2, 0, 1)^2; zero a < tau * max a; drop 8-connected components lighter
    than ``min_component`` x the heaviest; renormalise; integer zero-filled shift of the centre
    of mass to the centre pixel. An all-background input (max a = 0) maps to a delta.
    """
    _check_batch(p)
    a = ((p.float() + 1.0) / 2.0).clamp(0.0, 1.0) ** 2
    peak = a.amax(dim=(1, 2, 3), keepdim=True)
    keep = (a >= tau * peak) & (peak > 0)
    a = a * keep
    lab = _components(keep)
    b, _, h, w = a.shape
    flat_lab = lab.flatten(1)
    idx = flat_lab.clamp_min(0)
    mass = torch.zeros(b, h * w, dtype=a.dtype).scatter_add_(1, idx, a.flatten(1) * (flat_lab >= 0))
    heavy = mass >= min_component * mass.amax(dim=1, keepdim=True)
    keep_px = heavy.gather(1, idx) & (flat_lab >= 0)
    a = a * keep_px.view_as(a)
    size = a.shape[-1]
    c = (size - 1) // 2
    empty = a.sum(dim=(1, 2, 3)) <= 0
    if empty.any():
        a[empty, 0, c, c] = 1.0
    a = a / a.sum(dim=(1, 2, 3), keepdim=True)
    com = centre_of_mass(a)
    shift = (c - com).round().long()
    a = _shift_zero(a, shift[:, 0], shift[:, 1])
    return a / a.sum(dim=(1, 2, 3), keepdim=True)


def project(k: torch.Tensor) -> torch.Tensor:
    """The projection ``from_prior(to_prior(k))``: the kernel the prior can represent."""
    return from_prior(to_prior(k))


# --------------------------------------------------------------------------- canvas resampling
def resample_matrix(n_in: int, n_out: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(n_out, n_in) area-resampling matrix between centred pixel grids of n_in and n_out.

    The whole input canvas maps onto the whole output canvas (scale r = n_in / n_out input
    pixels per output pixel, centre on centre); entry (j, i) is the length of input pixel i
    that falls inside output pixel j, in input-pixel units. Every column sums to 1, so a
    kernel's mass is conserved exactly, and a symmetric kernel stays centred.
    """
    _check_size(n_in, 1)
    _check_size(n_out, 1)
    r = n_in / n_out
    i = torch.arange(n_in, dtype=torch.float64) - (n_in - 1) / 2
    j = torch.arange(n_out, dtype=torch.float64) - (n_out - 1) / 2
    lo = torch.maximum((j[:, None] - 0.5) * r, i[None, :] - 0.5)
    hi = torch.minimum((j[:, None] + 0.5) * r, i[None, :] + 0.5)
    return (hi - lo).clamp_min(0).to(dtype)


def resample_kernel(k: torch.Tensor, size: int) -> torch.Tensor:
    """Kernels (B, 1, K, K) area-resampled to (B, 1, size, size): A k A^T (`resample_matrix`).

    Used to run the kernel prior (trained on its canvas, e.g. 31 px) for larger product kernels
    (up to 63 px): resample the 63-px kernel to the prior's canvas and the prior's kernel back
    (docs/models.md, "Kernel sizes"). Mass is conserved (sum 1 stays sum 1); a round trip
    63 -> 31 -> 63 loses detail finer than ~2 px. Linear, so autograd passes through it.
    """
    _check_batch(k)
    n = k.shape[-1]
    if size == n:
        return k
    a = resample_matrix(n, size, k.dtype).to(k.device)
    return a @ k @ a.T
