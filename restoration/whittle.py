"""The no-reference kernel score: the Whittle negative log marginal likelihood of a frame's gradient
field under a Gaussian image model (restoration/kernel_choice.py's module docstring explains the
model; docs/math.md "Which kernel" what each modelling choice did).

The gradient field's spectrum is S(ω) = |K(ω)|² ρ(|ω|) a(θ) + n L(ω); :func:`gradient_spectrum`
makes the tapered, masked periodograms, :func:`whittle_nll` fits the image scale and the noise per
candidate and returns the score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from restoration.kernel_ops import erode, luma
from restoration.physics import grad_masks, grad_xy

__all__ = [
    "GRADIENT_PROFILE",
    "GradientSpectrum",
    "gradient_spectrum",
    "image_profile",
    "kernel_nll",
    "kernel_power",
    "signal_power",
    "training_gradient_profile",
    "whittle_nll",
]


@dataclass(frozen=True)
class GradientSpectrum:
    """Periodograms of tapered, masked gradient fields (one per frame) on an rfft2 canvas.

    power: (B, Hb, Wb) |FFT(w ∂x y)|² + |FFT(w ∂y y)|² divided by Σ w², averaged over ``bin`` ×
    ``bin`` blocks of frequencies (a smoothed periodogram: less variance, fewer terms);
    laplace: (Hb, Wb) L(ω) averaged likewise; weight: (Hb, Wb) number of frequencies per block
    (interior rfft columns stand for two, DC gets 0); shape: the FFT canvas (H, W).
    """

    power: Tensor
    laplace: Tensor
    weight: Tensor
    shape: tuple[int, int]
    bin: int
    angular: Tensor | None = None

    def pool(self, a: Tensor) -> Tensor:
        """Average a (..., H, W//2+1) frequency array over the blocks (as power was)."""
        lead = a.shape[:-2]
        a2 = a.reshape(-1, 1, *a.shape[-2:])
        if self.bin > 1:
            a2 = F.avg_pool2d(a2, self.bin, ceil_mode=True)
        return a2.reshape(*lead, *a2.shape[-2:])


def _tukey(n: int, ramp: int, dtype: torch.dtype) -> Tensor:
    """1-D Tukey window: raised-cosine ramps of ``ramp`` px at both ends, 1 in between."""
    w = torch.ones(n, dtype=dtype)
    ramp = min(ramp, n // 2)
    if ramp > 0:
        r = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(ramp, dtype=dtype) + 0.5) / ramp)
        w[:ramp] = r
        w[n - ramp :] = r.flip(0)
    return w


def gradient_spectrum(
    y: Tensor,
    mask: Tensor | None,
    min_size: int = 1,
    taper: int = 8,
    freq_bins: int = 64,
    anisotropic: bool = True,
) -> GradientSpectrum:
    """Whittle periodograms of frames y (B, C, H, W) on [-1, 1] (luma), mask (B, 1, H, W) 1 = observed.

    The window is a Tukey taper (``taper`` px ramps: the frame border is not periodic) times the
    observed region eroded and smoothed by ``taper // 2`` px (a hand's outline must not count as
    an image edge, and a hard cut would leak energy across frequencies). The FFT canvas is at least
    ``min_size`` px (the kernels' size) on each side; zero padding keeps Σ w² and the expectation.
    Frequencies are averaged in square blocks so that about ``freq_bins`` remain along the
    shorter side (cost independent of the frame size).
    """
    y = y.double()
    b, _, h, w = y.shape
    m = torch.ones(b, 1, h, w, dtype=y.dtype, device=y.device) if mask is None else (mask > 0.5).double()
    gx, gy = grad_xy(luma(y))
    mx, my = grad_masks(m)
    r = max(1, taper // 2)
    win = (_tukey(h, taper, y.dtype)[:, None] * _tukey(w, taper, y.dtype)[None, :]).to(y.device)

    def soft(mm: Tensor) -> Tensor:
        if mask is None:
            return mm
        e = erode(mm, r)
        return F.avg_pool2d(F.pad(e, (r, r, r, r)), 2 * r + 1, stride=1) * e

    wx, wy = soft(mx) * win, soft(my) * win
    hh, ww = max(h, min_size), max(w, min_size)
    pad = (0, ww - w, 0, hh - h)
    fx = torch.fft.rfft2(F.pad(wx * gx, pad))
    fy = torch.fft.rfft2(F.pad(wy * gy, pad))
    norm = 0.5 * ((wx**2).flatten(1).sum(1) + (wy**2).flatten(1).sum(1)).clamp_min(1e-12)
    power = (fx.abs() ** 2 + fy.abs() ** 2)[:, 0] / norm.view(-1, 1, 1)
    lap = _laplace((hh, ww)).to(y.device)
    weight = torch.full_like(lap, 2.0)
    weight[:, 0] = 1.0
    if ww % 2 == 0:
        weight[:, -1] = 1.0
    weight[0, 0] = 0.0  # DC: a gradient field has none
    nb = max(1, min(hh, ww) // freq_bins)
    spec = GradientSpectrum(power=power, laplace=lap, weight=weight, shape=(hh, ww), bin=nb)
    # weighted block means: pool(w * a) / pool(w)
    wp = spec.pool(weight)
    theta = _angle((hh, ww)).to(y.device)
    basis = torch.stack([1 + torch.cos(2 * theta), 1 - torch.cos(2 * theta), 1 + torch.sin(2 * theta),
                         1 - torch.sin(2 * theta), 1 + torch.cos(4 * theta), 1 - torch.cos(4 * theta)])
    return GradientSpectrum(
        power=(spec.pool(weight * power) / wp.clamp_min(1e-12)).float(),
        laplace=(spec.pool(weight * lap) / wp.clamp_min(1e-12)).float(),
        weight=(wp * nb * nb).float(),
        shape=(hh, ww),
        bin=nb,
        angular=(spec.pool(weight * basis) / wp.clamp_min(1e-12)).float() if anisotropic else None,
    )


def _angle(shape: tuple[int, int]) -> Tensor:
    """Orientation atan2(fy, fx) of the rfft2 frequencies of ``shape``."""
    fy = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    return torch.atan2(fy.expand(-1, fx.shape[1]), fx.expand(fy.shape[0], -1))


def _laplace(shape: tuple[int, int]) -> Tensor:
    fyq = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    fxq = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    return 4 * torch.sin(math.pi * fxq) ** 2 + 4 * torch.sin(math.pi * fyq) ** 2


#: Radial profile of the image model's gradient spectrum, ρ(|f|) at |f| = 0, 1/32, ..., 23/32
#: cycles/px (then constant): the mean tapered gradient periodogram of sharp training renders
#: (seeds below HELDOUT_SEED_START, the image prior's training distribution; normalised to mean
#: 1 over the frequencies of a 128 px frame). Flat would be the scale-invariant 1/f² law; the
#: renders fall off at high frequencies (anti-aliased rendering, like a camera's optics), and a
#: flat model reads that softness as blur — on sharp frames it chose a 0.7 px Gaussian and the
#: deconvolution lost 2 dB. Made by :func:`training_gradient_profile` (64 renders, 128 px).
GRADIENT_PROFILE: tuple[float, ...] = (
    9.4894, 4.7480, 3.1102, 2.3934, 2.2455, 2.1558, 1.9792, 1.9095, 1.5826, 1.3189, 1.1797, 1.0255,
    0.8532, 0.6923, 0.6317, 0.5968, 0.5207, 0.3967, 0.3453, 0.3034, 0.2652, 0.2300, 0.2262, 0.2429,
)  # fmt: skip
_PROFILE_STEP = 1 / 32


def training_gradient_profile(renders: int = 64, size: int = 128) -> tuple[float, ...]:
    """Recompute :data:`GRADIENT_PROFILE` from ``renders`` training renders of ``size`` px."""
    import glob

    from restoration.synthetic import render_canvas

    fonts = sorted(glob.glob("/usr/share/fonts/truetype/dejavu/*.ttf"))
    total = None
    for seed in range(renders):
        c = render_canvas(seed, size, size, fonts)
        y = torch.from_numpy(c).permute(2, 0, 1)[None].double() / 127.5 - 1
        spec = gradient_spectrum(y, None, freq_bins=size)  # no binning: exact frequencies
        p = spec.power[0].double()
        p = p / ((p * spec.weight).sum() / spec.weight.sum())
        total = p if total is None else total + p
    assert total is not None
    f = _radius(spec.shape, 1)
    out = []
    for i in range(24):
        sel = (f - i * _PROFILE_STEP).abs() <= _PROFILE_STEP / 2
        sel &= spec.weight > 0
        out.append(float(total[sel].mean() / renders))
    return tuple(out)


def _radius(shape: tuple[int, int], nb: int) -> Tensor:
    """|f| (cycles/px) of the rfft2 grid of ``shape``, block-averaged over nb x nb."""
    fy = torch.fft.fftfreq(shape[0], dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(shape[1], dtype=torch.float64)[None, :]
    f = (fx**2 + fy**2).sqrt()
    return F.avg_pool2d(f[None, None], nb, ceil_mode=True)[0, 0] if nb > 1 else f


def image_profile(spec: GradientSpectrum) -> Tensor:
    """ρ on the spectrum's (block) frequencies, linear interpolation of :data:`GRADIENT_PROFILE`
    (ones when it is empty: the flat 1/f² model)."""
    f = _radius(spec.shape, spec.bin)
    if not GRADIENT_PROFILE:
        return torch.ones_like(f).float()
    table = torch.tensor(GRADIENT_PROFILE, dtype=torch.float64)
    pos = (f / _PROFILE_STEP).clamp(max=len(table) - 1)
    lo = pos.floor().long().clamp(max=len(table) - 2)
    frac = pos - lo
    return (table[lo] * (1 - frac) + table[lo + 1] * frac).float()


def kernel_power(k: Tensor, spec: GradientSpectrum) -> Tensor:
    """|K(ω)|² of kernels (N, 1, K, K) on the spectrum's canvas, block-averaged like its power
    (weighted by the frequency counts), (N, Hb, Wb) float32."""
    size = k.shape[-1]
    hh, ww = spec.shape
    placed = F.pad(k.double(), (0, ww - size, 0, hh - size))
    a = (torch.fft.rfft2(placed).abs() ** 2)[:, 0]
    wfull = torch.full((hh, ww // 2 + 1), 2.0, dtype=torch.float64)
    wfull[:, 0] = 1.0
    if ww % 2 == 0:
        wfull[:, -1] = 1.0
    wfull[0, 0] = 0.0
    return (spec.pool(wfull * a) / spec.pool(wfull).clamp_min(1e-12)).float()


def signal_power(k: Tensor, spec: GradientSpectrum) -> Tensor:
    """The blurred image's gradient spectrum up to its scale c: |K(ω)|² ρ(|ω|), (N, Hb, Wb)."""
    return kernel_power(k, spec) * image_profile(spec)


def whittle_nll(
    power: Tensor,
    laplace: Tensor,
    weight: Tensor,
    kpow: Tensor,
    iters: int = 40,
    noise_var: float | None = None,
    basis: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Fit S = A Σ_j c_j b_j + n L by maximum Whittle likelihood, for one periodogram and N
    signal powers A (kernel power times the image profile).

    power, laplace, weight (Hb, Wb); kpow (N, Hb, Wb); basis (J, Hb, Wb) non-negative angular
    functions of the image spectrum (None: one constant, the isotropic model); noise_var fixes n.
    Multiplicative fixed-point updates c_j <- c_j Σ w A b_j P / S² / Σ w A b_j / S (likewise n):
    the stationarity conditions of the likelihood, from a moment-matching start; they keep every
    component non-negative. Returns (nll (N,), Σ_j c_j (N,), n (N,)), nll the weighted mean of
    log S + P / S over frequencies.
    """
    keep = weight.flatten() > 0
    p = power.flatten()[keep][None, None]
    lap = laplace.flatten()[keep][None]
    wt = weight.flatten()[keep][None]
    bas = torch.ones(1, int(keep.sum())) if basis is None else basis.flatten(1)[:, keep].to(p.dtype)
    comp = kpow.flatten(1)[:, keep][:, None, :] * bas[None]  # (N, J, F)
    wsum = wt.sum()
    mean_p = float((wt * p[0]).sum() / wsum)
    c = torch.full((kpow.shape[0], bas.shape[0], 1), mean_p / bas.shape[0], dtype=p.dtype)
    n = torch.full((kpow.shape[0], 1), mean_p / 4.0 if noise_var is None else noise_var, dtype=p.dtype)
    tiny = 1e-20
    for _ in range(iters):
        s = ((c * comp).sum(1) + n * lap).clamp_min(tiny)  # (N, F)
        ws = wt / s
        wps = ws * p[0] / s
        num = (wps[:, None] * comp).sum(2, keepdim=True)
        c = c * num / (ws[:, None] * comp).sum(2, keepdim=True).clamp_min(tiny)
        if noise_var is None:
            n = n * (wps * lap).sum(1, keepdim=True) / (ws * lap).sum(1, keepdim=True).clamp_min(tiny)
        c, n = c.clamp_min(tiny), n.clamp_min(tiny)
    s = ((c * comp).sum(1) + n * lap).clamp_min(tiny)
    nll = (wt * (torch.log(s) + p[0] / s)).sum(1) / wsum
    return nll, c.sum(dim=(1, 2)), n[:, 0]


def kernel_nll(spec: GradientSpectrum, kernels: Tensor, frame: int = 0) -> Tensor:
    """Score (N,) of kernels (N, 1, K, K) for frame ``frame`` of ``spec``: lower is better."""
    return whittle_nll(spec.power[frame], spec.laplace, spec.weight, signal_power(kernels, spec),
                       basis=spec.angular)[0]
