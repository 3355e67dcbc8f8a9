"""Per-frame noise level: a robust estimate from the finest diagonal wavelet band.

Real frames differ in noise (sensor gain, exposure, JPEG), and the sampler's data weight scales
with 1/sigma^2, so an assumed constant is wrong for most frames. For white Gaussian noise of std
sigma, the orthonormal Haar diagonal detail of every 2x2 block,

    d = (a - b - c + e) / 2      (a b / c e the block's pixels),

is N(0, sigma^2) plus the image's own diagonal detail, which is sparse: blurred frames have
little of it and straight horizontal or vertical edges (barcode bars, text baselines) cancel
exactly. The median absolute value is therefore a robust noise estimate (Donoho & Johnstone
1994, "Ideal spatial adaptation by wavelet shrinkage", Sec. 3.3):

    sigma_hat = median(|d|) / 0.6745,

taken over the blocks whose four pixels are all observed (occluders excluded) and over all
colour channels (the noise is assumed the same in each).
"""

from __future__ import annotations

import torch
from torch import Tensor

MAD_TO_STD = 0.6744897501960817  # Phi^-1(3/4): median |N(0, 1)|
#: 8-bit quantisation noise on the [-1, 1] scale (2/255/sqrt(12)): no frame is cleaner than this.
QUANTISATION_SIGMA = 2.0 / 255.0 / 12**0.5


def estimate_noise_sigma(y: Tensor, mask: Tensor | None = None, floor: float = 0.0) -> Tensor:
    """Noise std per sample of y (B, C, H, W), in y's units; mask (B, 1, H, W), 1 = observed.

    Returns (B,) float64, at least `floor`. A frame with fewer than 16 fully observed 2x2 blocks
    gets `floor` (no evidence)."""
    if y.dim() != 4 or y.shape[-1] < 2 or y.shape[-2] < 2:
        raise ValueError(f"y must be (B, C, H, W) with H, W >= 2, got {tuple(y.shape)}")
    d, ok = haar_diagonal(y, mask)
    out = torch.full((y.shape[0],), float(floor), dtype=torch.float64)
    for i in range(y.shape[0]):
        vals = d[i][ok[i].expand_as(d[i])]
        if vals.numel() >= 16:
            out[i] = max(float(floor), grouped_median(vals.abs()) / MAD_TO_STD)
    return out


def haar_diagonal(y: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """The orthonormal Haar diagonal detail d (B, C, H/2, W/2) of y (module docstring) and where
    all four pixels of its 2x2 block are observed, (B, 1, H/2, W/2) bool (odd edges dropped)."""
    h, w = (y.shape[-2] // 2) * 2, (y.shape[-1] // 2) * 2
    y = y[..., :h, :w].double()
    d = (y[..., 0::2, 0::2] - y[..., 0::2, 1::2] - y[..., 1::2, 0::2] + y[..., 1::2, 1::2]) / 2.0
    if mask is None:
        return d, torch.ones_like(d[:, :1], dtype=torch.bool)
    m = mask[..., :h, :w] > 0.5
    return d, m[..., 0::2, 0::2] & m[..., 0::2, 1::2] & m[..., 1::2, 0::2] & m[..., 1::2, 1::2]


def grouped_median(values: Tensor) -> float:
    """Median of 1-D `values`, interpolated inside its bin when they sit on a lattice (8-bit
    frames give |d| in steps of half a grey level): the plain median would snap to a lattice
    point, a bias of up to half a step (16 % at sigma = 0.005). Each distinct value is taken as
    spread uniformly over a bin of the lattice step around it; for continuous values (no ties)
    this is the ordinary median."""
    v = values.flatten().double().sort().values
    n = v.numel()
    m = v[(n - 1) // 2]
    tol = 1e-9 * float(v.abs().max().clamp_min(1e-300))  # lattice values differ by rounding only
    below = int((v < m - tol).sum())
    ties = int(((v - m).abs() <= tol).sum())
    if ties <= 1:
        return float(v.median())
    gaps = v.diff()
    gaps = gaps[gaps > tol]
    step = float(gaps.min()) if gaps.numel() else 0.0
    return float(m) - step / 2 + step * (n / 2 - below) / ties


def noise_floor(y: Tensor, mask: Tensor | None = None, block: int = 8, quantile: float = 0.1,
                floor: float = 0.0) -> Tensor:
    """A texture-proof noise level per sample of y (B, C, H, W): the `quantile` of the RMS of the
    Haar diagonal band d over `block` x `block` groups of 2x2 blocks (16 px squares), fully
    observed groups only, or :func:`estimate_noise_sigma` with fewer than 8 groups.

    The frame-wide median of |d| counts fine texture (grass, fabric, print screens) as noise; the
    flattest squares hold noise alone. For white noise each square's RMS has a relative spread of
    about 1/sqrt(2 n) (n = 4 C block² samples: 5 % for RGB), so the 10th percentile reads ~6 %
    low; texture only pushes it up. Used where an *under*-estimate is the safe side (the guard's
    residual test: an output whose re-blur misses its input by several noise floors is wrong).
    """
    d, observed = haar_diagonal(y, mask)
    ok = observed.double()
    gh, gw = d.shape[-2] // block, d.shape[-1] // block
    out = estimate_noise_sigma(y, mask, floor)
    if gh * gw < 8:
        return out
    d2 = d[..., : gh * block, : gw * block].pow(2).mean(1, keepdim=True)
    ms = torch.nn.functional.avg_pool2d(d2, block).flatten(1)
    full = torch.nn.functional.avg_pool2d(ok[..., : gh * block, : gw * block], block).flatten(1) > 0.999
    for i in range(y.shape[0]):
        vals = ms[i][full[i]]
        if vals.numel() >= 8:
            out[i] = max(float(floor), float(vals.quantile(quantile).sqrt()))
    return out
