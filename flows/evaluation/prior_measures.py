"""The model card's measurements of the CLD priors: one-step denoising against the best Gaussian
filter and a Wiener reference, unconditional kernel statistics and kernel sizes (tables of
docs/models.md; the commands that write them are flows/evaluation/model_card.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from flows.fonts import find_fonts
from restoration.cvsa import restore
from restoration.kernel_ops import from_prior
from restoration.kernels import kernel_extent, mass_concentration, sample_kernels
from restoration.metrics import psnr
from restoration.priors import Prior, load_prior, load_shipped
from restoration.settings import GuidedSettings
from restoration.synthetic import HELDOUT_SEED_START, render_batch

DENOISE_TS = (0.05, 0.1, 0.2, 0.4)
SIGMA_GRID = (0.0, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, 24.0, 32.0)


def get_prior(name: str, prior_dir: Path | None) -> Prior:
    """The shipped prior, or the export inside a run directory."""
    if prior_dir is None:
        return load_shipped(name)
    return load_prior((prior_dir / f"{name}.safetensors").read_bytes(),
                      (prior_dir / f"{name}.json").read_bytes())


def heldout_renders(n: int, size: int) -> torch.Tensor:
    """n held-out renders (seeds >= HELDOUT_SEED_START, never trained on), [-1, 1]."""
    fonts = find_fonts()
    return render_batch(list(range(HELDOUT_SEED_START, HELDOUT_SEED_START + n)), size, fonts)


#: Held-out native-resolution frames: seeds from here on (inside the held-out range, disjoint
#: from the scene renders the scene table uses).
NATIVE_HELDOUT_START = HELDOUT_SEED_START + 1_000_000
#: Training native frames for the Wiener reference spectrum (train range, disjoint from the
#: seeds configs/prior_image_v2.yaml trains on).
NATIVE_REFERENCE_START = 900_000


def native_crops(seeds: Sequence[int], crop: int, cache_dir: Path | None = None) -> torch.Tensor:
    """One crop x crop window per native frame (position drawn from the seed), [-1, 1].

    Cached as uint8 under cache_dir (native frames take ~1 s each to render).
    """
    from restoration.synthetic.native import NATIVE_VERSION, render_native

    seeds = list(seeds)
    path = None
    if cache_dir is not None:
        path = cache_dir / f"native-crops-v{NATIVE_VERSION}-{seeds[0]}-{len(seeds)}-{crop}.npy"
        if path.exists():
            return torch.from_numpy(np.load(path)).float() / 127.5 - 1.0
    fonts = find_fonts()
    out = []
    for s in seeds:
        img = render_native(int(s), None, fonts)
        rng = np.random.default_rng([int(s), 7])
        y, x = (int(rng.integers(0, img.shape[i] - crop + 1)) for i in (0, 1))
        out.append(img[y : y + crop, x : x + crop].transpose(2, 0, 1))
    arr = np.stack(out)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, arr)
    return torch.from_numpy(arr).float() / 127.5 - 1.0


def to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) / 2).float()


def gaussian_denoise_psnr(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR (B, S) of Gaussian-filtered y for every sigma in SIGMA_GRID (reflect borders)."""
    yn = y.double().numpy()
    out = torch.empty(y.shape[0], len(SIGMA_GRID))
    for j, s in enumerate(SIGMA_GRID):
        f = yn if s == 0 else gaussian_filter(yn, sigma=(0, 0, s, s), mode="reflect")
        out[:, j] = psnr(to01(torch.from_numpy(f)), to01(ref))
    return out


def wiener_spectrum(n: int, size: int, x: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and power spectrum (1, 3, size, size) of n training renders (or of
    the given training images x)."""
    if x is None:
        fonts = find_fonts()
        x = render_batch(list(range(n)), size, fonts)
    x = x.double()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    return mean, (torch.fft.fft2(x - mean).abs() ** 2).mean(0, keepdim=True)


def wiener_x0(cld_: object, x: torch.Tensor, v: torch.Tensor, t_val: float,
              mean: torch.Tensor, power: torch.Tensor) -> torch.Tensor:
    """Linear MMSE (Wiener) estimate of x0 from (x_t, v_t): a stationary-Gaussian reference.

    x~ = a . u = x0 + sigma_eff n is the sufficient statistic of u for x0 (score_net.CLDEpsNet
    "x0" preconditioning); the Wiener filter P / (P + N sigma_eff^2) is applied in Fourier space.
    """
    t = torch.tensor(t_val, dtype=torch.float64)
    sig, d1 = cld_.covariance(t), cld_.mean_matrix(t)[:, 0]
    w = torch.linalg.solve(sig, d1)
    s2 = 1.0 / float(d1 @ w)
    xt = (float(w[0]) * x.double() + float(w[1]) * v.double()) * s2
    noise = s2 * x.shape[-1] * x.shape[-2]
    est = torch.fft.ifft2(torch.fft.fft2(xt - mean) * power / (power + noise)).real + mean
    return est.float()


@torch.no_grad()
def denoise_table(prior: Prior, n: int = 64, size: int = 64, seed: int = 0,
                  batch: int = 16, x0: torch.Tensor | None = None,
                  spectrum: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[dict]:
    """Rows per t: PSNR of x0_hat (prior), x0_hat (Gaussian base only), best Gaussian filter.

    Default set: n held-out scene renders at size; or the given clean images x0 with the
    Wiener reference `spectrum` (mean, power) of matching training images.
    """
    cld = prior.cld
    if x0 is None:
        x0 = heldout_renders(n, size)
    n = x0.shape[0]
    mean, power = spectrum if spectrum is not None else wiener_spectrum(512, x0.shape[-1])
    rows = []
    for t_val in DENOISE_TS:
        g = torch.Generator().manual_seed(seed + int(t_val * 1000))
        t = torch.full((n,), t_val, dtype=torch.float64)
        p = cld.perturb(x0, t, g)
        est, base = [], []
        for i in range(0, n, batch):
            sl = slice(i, i + batch)
            xs, vs, ts = p.x[sl], p.v[sl], t[sl]
            est.append(cld.x0_hat(xs, vs, prior.score(xs, vs, ts), ts))
            s_base = cld.score_from_eps(prior.net.gaussian_eps(xs, vs, ts.float()), ts)
            base.append(cld.x0_hat(xs, vs, s_base, ts))
        p_prior = psnr(to01(torch.cat(est)), to01(x0))
        p_base = psnr(to01(torch.cat(base)), to01(x0))
        p_wiener = psnr(to01(wiener_x0(cld, p.x, p.v, t_val, mean, power)), to01(x0))
        dxx = float(cld.mean_matrix(torch.tensor(t_val, dtype=torch.float64))[0, 0])
        y = p.x / dxx
        table = gaussian_denoise_psnr(y, x0)
        best_set = int(table.mean(0).argmax())
        oracle = table.max(dim=1).values  # per-image best sigma: the strongest baseline
        sxx = float(cld.covariance(torch.tensor(t_val, dtype=torch.float64))[0, 0])
        rows.append({
            "t": t_val,
            "noise_sigma": math.sqrt(sxx) / dxx,
            "psnr_prior": float(p_prior.mean()),
            "psnr_gauss_base": float(p_base.mean()),
            "psnr_wiener_xv": float(p_wiener.mean()),
            "psnr_filter_oracle": float(oracle.mean()),
            "psnr_filter_best_set": float(table[:, best_set].mean()),
            "best_set_sigma": SIGMA_GRID[best_set],
            "gain_db": float(p_prior.mean() - oracle.mean()),
            "min_gain_db_per_image": float((p_prior - oracle).min()),
        })
    return rows


def prior_label(prior: Prior) -> str:
    init = prior.meta.get("init_from")
    tail = f", warm-started from `{init['version']}` ({init['steps']} steps)" if init else ""
    return f"Image prior `{prior.version}` ({prior.meta.get('steps')} steps{tail})"


def denoise_markdown(rows: Sequence[dict], prior: Prior, n: int, size: int,
                     what: str | None = None) -> str:
    what = what or (f"{n} held-out renders {size}x{size} (seeds {HELDOUT_SEED_START}.."
                    f"{HELDOUT_SEED_START + n - 1})")
    lines = [
        f"{prior_label(prior)}, {what}; PSNR in dB on [0, 1], mean over images.",
        "",
        "| t | noise σ of x_t/D_xx ([-1,1]) | prior x̂0 | Gaussian-base x̂0 (untrained net) "
        "| linear Wiener on (x_t, v_t) | best Gaussian filter (per-image σ) "
        "| best Gaussian filter (one σ) | gain vs per-image filter | gain vs one-σ filter "
        "| worst per-image gain |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['t']:.2f} | {r['noise_sigma']:.2f} | **{r['psnr_prior']:.2f}** | "
            f"{r['psnr_gauss_base']:.2f} | {r['psnr_wiener_xv']:.2f} | "
            f"{r['psnr_filter_oracle']:.2f} | "
            f"{r['psnr_filter_best_set']:.2f} (σ={r['best_set_sigma']:g}) | "
            f"**{r['gain_db']:+.2f}** | {r['psnr_prior'] - r['psnr_filter_best_set']:+.2f} | "
            f"{r['min_gain_db_per_image']:+.2f} |"
        )
    return "\n".join(lines)


@torch.no_grad()
def unconditional(prior: Prior, shape: tuple[int, ...], steps: int, seed: int,
                  batch: int = 64) -> torch.Tensor:
    """Unconditional samples (the x0_hat of the last reverse-SDE Euler-Maruyama step)."""
    outs = []
    for i in range(0, shape[0], batch):
        b = min(batch, shape[0] - i)
        g = torch.Generator().manual_seed(seed + i)
        res = restore(None, prior, GuidedSettings(steps=steps), g, like=torch.empty(b, *shape[1:]))
        outs.append(res.x0_hat)
    return torch.cat(outs)


def _quantiles(v: torch.Tensor) -> list[float]:
    q = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    return [float(x) for x in torch.quantile(v.double(), q)]


def kernel_stats(prior: Prior, n: int, steps: int, seed: int, kinds: Sequence[str],
                 size: int) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Stats of projected unconditional kernel samples vs generator kernels (held-out seed)."""
    p = unconditional(prior, (n, 1, size, size), steps, seed)
    samples = from_prior(p.clamp(-1, 1))
    gen = sample_kernels(max(n, 256), size, torch.Generator().manual_seed(10_000_000 + seed),
                         kinds)
    stats = {}
    for name, k in (("samples", samples), ("generator", gen)):
        conc, ext = mass_concentration(k.double()), kernel_extent(k.double())
        stats[name] = {
            "n": k.shape[0],
            "concentration_q05_q50_q95": _quantiles(conc),
            "concentration_min_max": [float(conc.min()), float(conc.max())],
            "extent_q05_q50_q95": _quantiles(ext),
            "extent_min_max": [float(ext.min()), float(ext.max())],
        }
    gconc, gext = mass_concentration(gen.double()), kernel_extent(gen.double())
    sconc, sext = mass_concentration(samples.double()), kernel_extent(samples.double())
    inside = ((sconc >= gconc.min()) & (sconc <= gconc.max()) & (sext >= gext.min())
              & (sext <= gext.max()))
    stats["fraction_of_samples_inside_generator_range"] = float(inside.double().mean())
    stats["fraction_of_samples_with_concentration_ge_0.9"] = float((sconc >= 0.9).double().mean())
    stats["fraction_of_generator_with_concentration_ge_0.9"] = float(
        (gconc >= 0.9).double().mean())
    return stats, samples, gen


def kernel_markdown(stats: dict, prior: Prior, steps: int) -> str:
    s, g = stats["samples"], stats["generator"]

    def q(v: list[float]) -> str:
        return " / ".join(f"{x:.3g}" for x in v)

    return "\n".join([
        f"Kernel prior `{prior.version}` ({prior.meta.get('steps')} steps): {s['n']} unconditional "
        f"samples ({steps} Euler-Maruyama steps, final x̂0, projected by `from_prior`) vs "
        f"{g['n']} generator kernels (held-out seed, same kinds as training).",
        "",
        "| set | mass in 96 largest px: q05 / median / q95 | min / max | 90%-mass radius (px): "
        "q05 / median / q95 | min / max |",
        "|---|---|---|---|---|",
        f"| prior samples | {q(s['concentration_q05_q50_q95'])} | "
        f"{q(s['concentration_min_max'])} | {q(s['extent_q05_q50_q95'])} | "
        f"{q(s['extent_min_max'])} |",
        f"| generator | {q(g['concentration_q05_q50_q95'])} | {q(g['concentration_min_max'])} | "
        f"{q(g['extent_q05_q50_q95'])} | {q(g['extent_min_max'])} |",
        "",
        f"Samples inside the generator's (min, max) range on both statistics: "
        f"{100 * stats['fraction_of_samples_inside_generator_range']:.0f}%. Concentration "
        f">= 0.9: {100 * stats['fraction_of_samples_with_concentration_ge_0.9']:.0f}% of samples, "
        f"{100 * stats['fraction_of_generator_with_concentration_ge_0.9']:.0f}% of generator "
        "kernels.",
    ])


KERNEL_SIZE_TS = (0.05, 0.1, 0.2, 0.4)


@torch.no_grad()
def kernel_size_rows(prior: Prior, n: int, seed: int, kinds: Sequence[str], canvas: int,
                     big: int = 63) -> list[dict]:
    """One-step kernel denoising on generator kernels (held-out seed): the prior on its own
    canvas, on `big`-px kernels run directly (the conv net on a larger canvas), and on `big`-px
    kernels via the prior's canvas (kernels.resample_kernel down, x0_hat, from_prior, back up).
    Kernel NCC / MSE (restoration.metrics) against the true kernel on its canvas."""
    from restoration.kernel_ops import resample_kernel, to_prior
    from restoration.metrics import kernel_mse, kernel_ncc

    g = torch.Generator().manual_seed(20_000_000 + seed)
    small, large = sample_kernels(n, canvas, g, kinds), sample_kernels(n, big, g, kinds)
    cld = prior.cld

    def denoise(k: torch.Tensor, t_val: float) -> torch.Tensor:
        p0 = to_prior(k)
        if t_val == 0:
            return from_prior(p0)
        t = torch.full((k.shape[0],), t_val, dtype=torch.float64)
        u = cld.perturb(p0, t, torch.Generator().manual_seed(seed + int(t_val * 1000)))
        x0 = torch.cat([cld.x0_hat(u.x[i:i + 64], u.v[i:i + 64],
                                   prior.score(u.x[i:i + 64], u.v[i:i + 64], t[i:i + 64]),
                                   t[i:i + 64]) for i in range(0, k.shape[0], 64)])
        return from_prior(x0.clamp(-1, 1))

    rows = []
    for t_val in (0.0, *KERNEL_SIZE_TS):
        cases = {
            f"{canvas} px kernels, prior canvas": (denoise(small, t_val), small),
            f"{big} px kernels, net run at {big} px": (denoise(large, t_val), large),
            f"{big} px kernels via the {canvas}-px canvas":
                (resample_kernel(denoise(resample_kernel(large, canvas), t_val).double(), big),
                 large),
        }
        for name, (est, truth) in cases.items():
            rows.append({"t": t_val, "case": name,
                         "ncc": float(kernel_ncc(est.double(), truth.double()).mean()),
                         "mse_1e4": float(kernel_mse(est.double(), truth.double()).mean()) * 1e4})
    return rows
