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
from torch import Tensor

from restoration import kernels as kern
from restoration.classical import sparse_energy
from restoration.classical_kernel import blind_kernel
from restoration.kernel_ops import delta_kernel
from restoration.kernels import moment_matched_gaussian
from restoration.whittle import GradientSpectrum, gradient_spectrum, kernel_nll, signal_power, whittle_nll

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
    "signal_power",
    "whittle_nll",
]

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
    noise_sigma: float | Tensor,
    candidates: tuple[str, ...] = ("identity", "parametric", "classical"),
    extra: dict[str, Tensor] | None = None,
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
    def plan(y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor) -> KernelPlan:
        choice = choose_kernel(y, mask, size, candidates=(name,), noise_sigma=noise_sigma)
        return KernelPlan(choice, known_kernel=choice.kernel)

    plan.__doc__ = f"The {name!r} candidate as a fixed kernel (no choice)."
    return plan


def select_strategy(
    y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor
) -> KernelPlan:
    """The production default: the no-reference choice among identity / parametric / classical
    (:func:`choose_kernel`), used as a fixed kernel."""
    choice = choose_kernel(y, mask, size, noise_sigma=noise_sigma)
    return KernelPlan(choice, known_kernel=choice.kernel)


def classical_prior_strategy(
    y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor
) -> KernelPlan:
    """The kernel process anchored on the classical estimate (the kernel prior is evaluated)."""
    choice = choose_kernel(y, mask, size, candidates=("classical",), noise_sigma=noise_sigma)
    return KernelPlan(choice, kernel_init=choice.kernel)


def prior_strategy(
    y: Tensor, mask: Tensor | None, size: int, noise_sigma: float | Tensor
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
