"""Which blur kernel to restore a frame with: candidates and a no-reference choice among them.

A preprocessing step that makes a frame worse is worse than none, so the kernel is *chosen*, per
frame, among candidates that include "no blur" (the identity: the sampler then only denoises):

- ``identity``: the delta kernel;
- ``parametric``: the best anisotropic Gaussian, linear motion or disc (2-3 parameters) under the
  score below, searched on a fixed grid (:func:`parametric_bank`);
- ``classical``: the coarse-to-fine L0 estimate (Pan et al. 2014, :func:`restoration.classical.
  blind_kernel`).

The score is the negative log **marginal likelihood** of the observation's gradient field under a
Gaussian image model, in Whittle's frequency-domain form (Whittle 1953; the Gaussian-prior
marginal likelihood that Levin et al. 2009/2011 show identifies the kernel where joint MAP of image
and kernel prefers "no blur"). The gradients of natural images have a roughly flat power spectrum
(image spectra fall as 1/f², the scale-invariance of natural scenes), so the gradient field
g = ∇y of a frame blurred by k with white noise of variance v has the spectrum

    S(ω) = c |K(ω)|² + n L(ω),     L(ω) = |Dx(ω)|² + |Dy(ω)|² = 4 sin²(π fx) + 4 sin²(π fy),

with c the image's gradient energy and n the noise variance, both fitted per candidate (maximum
likelihood; n is not taken from the settings, so a wrong noise guess cannot turn noise into blur).
For the periodogram P(ω) of the tapered, masked gradient field the Whittle negative
log-likelihood per frequency is

    nll(k) = mean_ω [ log S(ω) + P(ω) / S(ω) ]

— P/S is the data fit (observed energy relative to what kernel + noise predict), log S the
Occam term that a too-wide kernel cannot escape (it must explain the fine detail as noise). Lower
is better; a difference Δ in nll is a log-likelihood ratio of Δ × (number of frequencies).
It depends on |K| only: a kernel and its mirror image or translate score alike (centring is
fixed separately, by the centre of mass). Nothing here looks at the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from restoration import kernels as kern
from restoration.classical import sparse_energy
from restoration.classical_kernel import blind_kernel
from restoration.kernel_ops import delta_kernel, erode, luma
from restoration.kernels import moment_matched_gaussian
from restoration.physics import grad_masks, grad_xy

__all__ = [
    "CANDIDATES",
    "KERNEL_STRATEGIES",
    "USES_KERNEL_PRIOR",
    "KernelChoice",
    "KernelPlan",
    "candidate_kernels",
    "choose_kernel",
    "delta_kernel",
    "gradient_spectrum",
    "kernel_nll",
    "parametric_bank",
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


@lru_cache(maxsize=8)
def parametric_bank(size: int) -> tuple[tuple[str, ...], Tensor]:
    """Labels and kernels (N, 1, K, K) float64 of the parametric family on a fixed grid.

    Anisotropic Gaussians (major sigma geometric from 0.3 px to (K-1)/6, axis ratios 1, 0.7, 0.45,
    0.25, 8 orientations), linear motion (length geometric from 1.5 px to K-3, 12 orientations) and
    discs (radius 0.75 px to (K-1)/2). Every member has its centre of mass on the centre pixel.
    """
    labels: list[str] = []
    ks: list[Tensor] = []
    smax = max(0.35, (size - 1) / 6)
    for sigma in torch.logspace(math.log10(0.3), math.log10(smax), 14, dtype=torch.float64).tolist():
        for ratio in (1.0, 0.7, 0.45, 0.25):
            angles = (0.0,) if ratio == 1.0 else tuple(math.pi * i / 8 for i in range(8))
            for a in angles:
                s2 = max(0.2, sigma * ratio)
                labels.append(f"gaussian s={sigma:.2f}x{s2:.2f} a={math.degrees(a):.0f}")
                ks.append(kern._gaussian64(size, sigma, s2, a))
    lmax = 2 * ((size - 1) / 2 - 1)
    if lmax >= 1.5:
        for length in torch.logspace(math.log10(1.5), math.log10(lmax), 12, dtype=torch.float64).tolist():
            for i in range(12):
                a = math.pi * i / 12
                labels.append(f"motion L={length:.1f} a={math.degrees(a):.0f}")
                ks.append(kern.line_kernel(size, length, a))
    rmax = (size - 1) / 2
    for radius in torch.linspace(0.75, rmax, max(2, int(rmax * 2)), dtype=torch.float64).tolist():
        labels.append(f"disc r={radius:.2f}")
        ks.append(kern._defocus64(size, radius))
    return tuple(labels), torch.stack(ks)[:, None]


@lru_cache(maxsize=8)
def _bank_power(size: int, shape: tuple[int, int], nb: int) -> Tensor:
    """signal_power of the whole bank on one canvas (cached: the bank's FFTs dominate otherwise)."""
    spec = GradientSpectrum(torch.empty(0), torch.empty(0), torch.empty(0), shape, nb)
    return signal_power(parametric_bank(size)[1], spec)


# ----------------------------------------------------------------------------- candidates


@dataclass(frozen=True)
class Candidate:
    """One candidate kernel per frame (B, 1, K, K) and a per-frame label."""

    kernel: Tensor
    labels: list[str]


CandidateFn = Callable[[Tensor, Tensor | None, int, GradientSpectrum], Candidate]


def identity_candidate(y: Tensor, mask: Tensor | None, size: int, spec: GradientSpectrum) -> Candidate:
    """No blur: the restoration only denoises (and fills occlusions)."""
    return Candidate(delta_kernel(size, y.shape[0]), ["identity"] * y.shape[0])


def parametric_candidate(
    y: Tensor, mask: Tensor | None, size: int, spec: GradientSpectrum
) -> Candidate:
    """Best member of :func:`parametric_bank` by the Whittle score, per frame."""
    labels, bank = parametric_bank(size)
    kp = _bank_power(size, spec.shape, spec.bin)
    out, names = [], []
    for i in range(y.shape[0]):
        nll, _, _ = whittle_nll(spec.power[i], spec.laplace, spec.weight, kp, basis=spec.angular)
        j = int(nll.argmin())
        out.append(bank[j])
        names.append(labels[j])
    return Candidate(torch.stack(out), names)


def classical_candidate(y: Tensor, mask: Tensor | None, size: int, spec: GradientSpectrum) -> Candidate:
    """The coarse-to-fine L0 estimate (Pan et al. 2014), sub-pixel centred."""
    return Candidate(blind_kernel(y.double(), None if mask is None else mask.double(), size),
                     ["classical"] * y.shape[0])


#: name -> function producing one candidate kernel per frame. The whole registry.
CANDIDATES: dict[str, CandidateFn] = {
    "identity": identity_candidate,
    "parametric": parametric_candidate,
    "classical": classical_candidate,
}


@dataclass(frozen=True)
class KernelChoice:
    """The chosen kernel per frame (B, 1, K, K) float64, the winning candidate's name per frame,
    every candidate's score per frame (nll, lower is better) and the candidates' descriptions."""

    kernel: Tensor
    name: list[str]
    scores: list[dict[str, float]]
    labels: list[dict[str, str]] = field(default_factory=list)
    #: per frame: the MAP energy of the blur candidates compared in stage 2 (empty if none were)
    energies: list[dict[str, float]] = field(default_factory=list)

    def score(self, i: int) -> float:
        return self.scores[i][self.name[i]]


def candidate_kernels(
    y: Tensor, mask: Tensor | None, size: int, names: tuple[str, ...], spec: GradientSpectrum | None = None
) -> dict[str, Candidate]:
    """The named candidates (keys of :data:`CANDIDATES`) for frames y (B, C, H, W) on [-1, 1]."""
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        raise ValueError(f"unknown kernel candidates {unknown}; choose from {sorted(CANDIDATES)}")
    spec = spec or gradient_spectrum(y, mask, min_size=size)
    return {n: CANDIDATES[n](y, mask, size, spec) for n in names}


def choose_kernel(
    y: Tensor,
    mask: Tensor | None,
    size: int,
    candidates: tuple[str, ...] = ("identity", "parametric", "classical"),
    extra: dict[str, Tensor] | None = None,
    noise_sigma: float | Tensor = 0.04,
) -> KernelChoice:
    """Choose one candidate kernel per frame, without the truth, in two stages.

    1. *Blur or not* — the Whittle score (module docstring), a Gaussian marginal likelihood: if
       "identity" scores at least as well as every other candidate, the frame is left unblurred.
    2. *Which blur* — the parametric fit (a few parameters: little room to overfit) unless a
       free-form candidate (classical, refined) scores at least as well under Whittle **and** its
       shape earns its keep: the hyper-Laplacian MAP restoration with it has no higher energy
       (:func:`restoration.classical.sparse_energy`) than with the Gaussian of the same centre
       and covariance (:func:`restoration.kernels.moment_matched_gaussian`). The Whittle score
       sees |K| only and ranks a free-form kernel with the right spread but a wrong shape (an
       estimate that leaves streaks) above the parametric one; the sparse prior sees the streaks.
       The MAP energy is biased towards less blur (Levin et al. 2009), so it is only ever used
       to compare two kernels of the same spread.

    y (B, C, H, W) on [-1, 1]; mask (B, 1, H, W) 1 = observed (None: all); size: odd K;
    noise_sigma (float or (B,)) on the [-1, 1] scale sets the MAP step's prior weight. ``extra``
    adds ready-made candidates (name -> (B, 1, K, K)), e.g. a jointly refined kernel.
    """
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    b = y.shape[0]
    sig = torch.as_tensor(noise_sigma, dtype=torch.float64).expand(b)
    spec = gradient_spectrum(y, mask, min_size=size)
    cands = {n: (c.kernel, c.labels) for n, c in candidate_kernels(y, mask, size, candidates, spec).items()}
    for n, k in (extra or {}).items():
        cands[n] = (k.double(), [n] * b)
    keys = list(cands)
    kernels, names, scores, labels, energies = [], [], [], [], []
    for i in range(b):
        stack = torch.stack([k[i] for k, _ in cands.values()])
        nll = whittle_nll(spec.power[i], spec.laplace, spec.weight, signal_power(stack, spec),
                          basis=spec.angular)[0]
        w = {k: float(v) for k, v in zip(keys, nll, strict=True)}
        blurs = [k for k in keys if k != "identity"]
        energy: dict[str, float] = {}
        if not blurs or ("identity" in w and all(w["identity"] <= w[k] for k in blurs)):
            pick = "identity" if "identity" in w else keys[0]
        else:
            base = "parametric" if "parametric" in w else min(blurs, key=lambda k: w[k])
            pick = base
            free = [k for k in blurs if k != base and w[k] <= w[base]]
            yi = y[i : i + 1].double()
            mi = None if mask is None else mask[i : i + 1].double()
            for k in sorted(free, key=lambda k: w[k]):
                kk = stack[keys.index(k)][None]
                e_k = float(sparse_energy(yi, kk, mi, float(sig[i]))[1][0])
                e_ref = float(sparse_energy(yi, moment_matched_gaussian(kk), mi, float(sig[i]))[1][0])
                energy[k], energy[f"{k}~gaussian"] = e_k, e_ref
                if e_k <= e_ref:
                    pick = k
                    break
        kernels.append(stack[keys.index(pick)])
        names.append(pick)
        scores.append(w)
        energies.append(energy)
        labels.append({k: lab[i] for k, (_, lab) in cands.items()})
    return KernelChoice(torch.stack(kernels), names, scores, labels, energies)


# ----------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class KernelPlan:
    """How restore_blind gets its kernel: a fixed kernel (``known_kernel``: the image is sampled
    non-blind), an anchor of the kernel process (``kernel_init``: the kernel prior is evaluated),
    or neither (the kernel prior samples from noise). ``choice`` says which candidate and why."""

    choice: KernelChoice
    known_kernel: Tensor | None = None
    kernel_init: Tensor | None = None


StrategyFn = Callable[[Tensor, Tensor | None, int, "float | Tensor"], KernelPlan]
"""(y (B, C, H, W) on [-1, 1], mask (B, 1, H, W) or None, odd kernel size, noise sigma on [-1, 1]
(a float or one per frame)) -> KernelPlan."""


def _single(name: str) -> StrategyFn:
    def plan(y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor = 0.04) -> KernelPlan:
        choice = choose_kernel(y, mask, size, candidates=(name,), noise_sigma=noise_sigma)
        return KernelPlan(choice, known_kernel=choice.kernel)

    plan.__doc__ = f"The {name!r} candidate as a fixed kernel (no choice)."
    return plan


def select_strategy(
    y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor = 0.04
) -> KernelPlan:
    """The production default: the no-reference choice among identity / parametric / classical
    (:func:`choose_kernel`), used as a fixed kernel."""
    choice = choose_kernel(y, mask, size, noise_sigma=noise_sigma)
    return KernelPlan(choice, known_kernel=choice.kernel)


def classical_prior_strategy(
    y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor = 0.04
) -> KernelPlan:
    """The kernel process anchored on the classical estimate (the kernel prior is evaluated)."""
    choice = choose_kernel(y, mask, size, candidates=("classical",), noise_sigma=noise_sigma)
    return KernelPlan(choice, kernel_init=choice.kernel)


def prior_strategy(
    y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor = 0.04
) -> KernelPlan:
    """The kernel prior samples the kernel from noise, refined by least squares (CVSA Alg. 2
    spirit); the choice records "prior" with a delta placeholder."""
    b = y.shape[0]
    k = delta_kernel(size, b)
    return KernelPlan(KernelChoice(k, ["prior"] * b, [{"prior": math.nan}] * b, [{"prior": "prior"}] * b))


#: name -> strategy. The whole registry (flows.config.KernelStrategy lists the same names).
KERNEL_STRATEGIES: dict[str, StrategyFn] = {
    "select": select_strategy,
    "identity": _single("identity"),
    "parametric": _single("parametric"),
    "classical": _single("classical"),
    "classical-prior": classical_prior_strategy,
    "prior": prior_strategy,
}
#: strategies whose restoration evaluates the kernel prior (it is loaded only for these)
USES_KERNEL_PRIOR: frozenset[str] = frozenset({"classical-prior", "prior"})
