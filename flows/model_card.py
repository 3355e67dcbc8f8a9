"""Model-card measurements of the CLD priors (tables and figures in docs/models.md).

Commands (`python -m flows.model_card <command> [--prior-dir DIR]`; by default the shipped
checkpoints in restoration/checkpoints are measured, `--prior-dir runs/prior_image` measures a
run in progress):

    denoise        image prior: one-step x0_hat vs the best Gaussian-filter denoiser on 64
                   held-out renders at t in {0.05, 0.1, 0.2, 0.4}
    kernel-stats   kernel prior: unconditional samples (projected by from_prior) vs the
                   generator's kernels: mass concentration and extent; sample grid PNG
    image-samples  image prior: grid of unconditional samples (whatever they look like)
    loss-plot      loss-curve PNGs from runs/<prior>/loss.csv
    cards          network and training tables from the checkpoints' JSON metadata
    all            all of the above; tables are written into docs/models.md between
                   `<!-- name:start -->` / `<!-- name:end -->` markers (single commands do
                   so with --write)
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from restoration.cvsa import restore
from restoration.kernels import from_prior, kernel_extent, mass_concentration, sample_kernels
from restoration.metrics import psnr
from restoration.priors import Prior, load_prior, load_shipped
from restoration.synthetic import HELDOUT_SEED_START, render_batch

DENOISE_TS = (0.05, 0.1, 0.2, 0.4)
SIGMA_GRID = (0.0, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8, 4.0, 5.6, 8.0, 11.0, 16.0, 24.0, 32.0)
FONT_GLOB = "/usr/share/fonts/truetype/dejavu/*.ttf"


def get_prior(name: str, prior_dir: Path | None) -> Prior:
    """The shipped prior, or the export inside a run directory."""
    if prior_dir is None:
        return load_shipped(name)
    return load_prior((prior_dir / f"{name}.safetensors").read_bytes(),
                      (prior_dir / f"{name}.json").read_bytes())


def heldout_renders(n: int, size: int) -> torch.Tensor:
    """n held-out renders (seeds >= HELDOUT_SEED_START, never trained on), [-1, 1]."""
    fonts = sorted(glob.glob(FONT_GLOB))
    return render_batch(list(range(HELDOUT_SEED_START, HELDOUT_SEED_START + n)), size, fonts)


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) / 2).float()


def gaussian_denoise_psnr(y: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """PSNR (B, S) of Gaussian-filtered y for every sigma in SIGMA_GRID (reflect borders)."""
    yn = y.double().numpy()
    out = torch.empty(y.shape[0], len(SIGMA_GRID))
    for j, s in enumerate(SIGMA_GRID):
        f = yn if s == 0 else gaussian_filter(yn, sigma=(0, 0, s, s), mode="reflect")
        out[:, j] = psnr(_to01(torch.from_numpy(f)), _to01(ref))
    return out


def wiener_spectrum(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and power spectrum (1, 3, size, size) of n training renders."""
    fonts = sorted(glob.glob(FONT_GLOB))
    x = render_batch(list(range(n)), size, fonts).double()
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
                  batch: int = 16) -> list[dict]:
    """Rows per t: PSNR of x0_hat (prior), x0_hat (Gaussian base only), best Gaussian filter."""
    cld = prior.cld
    x0 = heldout_renders(n, size)
    mean, power = wiener_spectrum(512, size)
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
        p_prior = psnr(_to01(torch.cat(est)), _to01(x0))
        p_base = psnr(_to01(torch.cat(base)), _to01(x0))
        p_wiener = psnr(_to01(wiener_x0(cld, p.x, p.v, t_val, mean, power)), _to01(x0))
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


def denoise_markdown(rows: Sequence[dict], prior: Prior, n: int, size: int) -> str:
    lines = [
        f"Image prior `{prior.version}` ({prior.meta.get('steps')} steps), {n} held-out renders "
        f"{size}x{size} (seeds {HELDOUT_SEED_START}..{HELDOUT_SEED_START + n - 1}); PSNR in dB "
        "on [0, 1], mean over images.",
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
        res = restore(None, None, prior.score, cld=prior.cld, shape=(b, *shape[1:]), steps=steps,
                      noise_sigma=0.0, generator=g)
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


def save_grid(tiles: np.ndarray, path: Path, cols: int, scale: int = 1) -> None:
    """Save (N, H, W, 3) float [0, 1] tiles as one PNG grid with 2-px gaps."""
    from PIL import Image

    n, h, w, _ = tiles.shape
    rows = math.ceil(n / cols)
    canvas = np.ones((rows * (h + 2) + 2, cols * (w + 2) + 2, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[2 + r * (h + 2): 2 + r * (h + 2) + h, 2 + c * (w + 2): 2 + c * (w + 2) + w] = tiles[i]
    img = Image.fromarray((canvas.clip(0, 1) * 255 + 0.5).astype(np.uint8))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def kernel_tiles(k: torch.Tensor) -> np.ndarray:
    """Kernels (N, 1, K, K) -> tiles normalised by each kernel's peak (white on black)."""
    a = k[:, 0] / k.amax(dim=(1, 2, 3))[:, None, None].clamp_min(1e-12)
    return np.repeat(a.numpy()[..., None], 3, axis=-1)


def replace_block(doc: Path, name: str, text: str) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> in doc."""
    src = doc.read_text()
    pat = re.compile(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)", re.S)
    if not pat.search(src):
        raise SystemExit(f"{doc} has no <!-- {name}:start/end --> block")
    doc.write_text(pat.sub(lambda m: m.group(1) + text.rstrip("\n") + "\n" + m.group(2), src))


def cmd_denoise(args: argparse.Namespace) -> str:
    prior = get_prior("image", args.prior_dir)
    t0 = time.monotonic()
    rows = denoise_table(prior, args.n, args.size)
    md = denoise_markdown(rows, prior, args.n, args.size)
    print(md)
    print(f"({time.monotonic() - t0:.0f} s)")
    _dump(args, "denoise", rows)
    return md


def cmd_kernel_stats(args: argparse.Namespace) -> str:
    prior = get_prior("kernel", args.prior_dir)
    kinds = prior.meta.get("data", {}).get("kinds", ["motion", "gaussian", "defocus", "mixture"])
    size = int(prior.meta.get("data", {}).get("size", 31))
    stats, samples, gen = kernel_stats(prior, args.n, args.steps, args.seed, kinds, size)
    md = kernel_markdown(stats, prior, args.steps)
    print(md)
    tiles = np.concatenate([kernel_tiles(samples[:32]), kernel_tiles(gen[:32])])
    save_grid(tiles, args.docs / "prior_kernel_samples.png", cols=8, scale=3)
    _dump(args, "kernel_stats", stats)
    return md


def cmd_image_samples(args: argparse.Namespace) -> str:
    prior = get_prior("image", args.prior_dir)
    x = unconditional(prior, (args.n_images, 3, args.size, args.size), args.steps, args.seed)
    tiles = _to01(x).permute(0, 2, 3, 1).numpy()
    save_grid(tiles, args.docs / "prior_image_samples.png", cols=8, scale=2)
    ref = heldout_renders(8, args.size)
    save_grid(_to01(ref).permute(0, 2, 3, 1).numpy(), args.docs / "prior_image_reference.png",
              cols=8, scale=2)
    md = (f"{args.n_images} unconditional samples, {args.size}x{args.size}, {args.steps} "
          f"Euler-Maruyama steps of the reverse SDE (final x̂0), seed {args.seed}: "
          "`docs/prior_image_samples.png`; held-out renders for comparison: "
          "`docs/prior_image_reference.png`.")
    print(md)
    return md


def cmd_loss_plot(args: argparse.Namespace) -> str:
    from flows.train_cli import plot_losses

    for name in ("image", "kernel"):
        csv = args.runs / f"prior_{name}" / "loss.csv"
        if not csv.exists():
            print(f"no {csv}; skipped")
            continue
        rows = [line.split(",") for line in csv.read_text().splitlines()[1:] if line]
        losses = [(int(r[0]), float(r[1])) for r in rows]
        wall = float(rows[-1][2]) if rows else 0.0
        plot_losses(losses, args.docs / f"prior_{name}_loss.png",
                    f"{name} prior: HSM loss ({losses[-1][0]} steps, {wall / 60:.0f} min CPU run)")
    return ""


def _dump(args: argparse.Namespace, name: str, obj: object) -> None:
    if args.json_dir:
        args.json_dir.mkdir(parents=True, exist_ok=True)
        (args.json_dir / f"{name}.json").write_text(json.dumps(obj, indent=2) + "\n")


def training_markdown(priors: Sequence[tuple[Prior, int]]) -> tuple[str, str]:
    """(network table, training table) from the checkpoints' JSON metadata and file sizes."""
    nets = ["| prior | U-Net (base, mults, res blocks) | preconditioning | parameters | "
            "checkpoint size |", "|---|---|---|---|---|"]
    runs = ["| prior | steps | batch | wall time | s/step | final loss (last 100 steps) | "
            "git commit | command |", "|---|---|---|---|---|---|---|---|"]
    for prior, size in priors:
        m, n, tr = prior.meta, prior.meta["net"], prior.meta["train"]
        nets.append(
            f"| {m['name']} | {n['base']}, {tuple(n['mults'])}, {n['num_res_blocks']} | "
            f"{n.get('preconditioning', 'none')} (σ_data {n.get('sigma_data', 0.5)}, "
            f"μ_data {n.get('mu_data', 0.0)}) | {m['params']:,} | {size / 2**20:.1f} MiB |"
        )
        runs.append(
            f"| {m['name']} | {m['steps']} | {tr['batch_size']} | "
            f"{m['wall_time_s'] / 60:.0f} min | {m['wall_time_s'] / max(m['steps'], 1):.2f} | "
            f"{m['final_loss']:.4f} | `{m['git_commit'][:10]}` | `{m['command']}` |"
        )
    return "\n".join(nets), "\n".join(runs)


def cmd_cards(args: argparse.Namespace) -> tuple[str, str]:
    from restoration.priors import shipped_bytes

    items = []
    for name in ("image", "kernel"):
        prior = get_prior(name, args.prior_dir)
        size = (len(shipped_bytes(name)[0]) if args.prior_dir is None
                else (args.prior_dir / f"{name}.safetensors").stat().st_size)
        items.append((prior, size))
    nets, runs = training_markdown(items)
    print(nets, runs, sep="\n\n")
    return nets, runs


def cmd_all(args: argparse.Namespace) -> str:
    doc = args.docs / "models.md"
    nets, runs = cmd_cards(args)
    replace_block(doc, "nets", nets)
    replace_block(doc, "training", runs + "\n\nTraining ran on a shared 2-core CPU (single "
                  "thread per run, two runs side by side, other jobs on the machine), so s/step "
                  "is a contended figure.")
    replace_block(doc, "denoise", cmd_denoise(args))
    replace_block(doc, "kernel-stats", cmd_kernel_stats(args))
    replace_block(doc, "image-samples", cmd_image_samples(args))
    cmd_loss_plot(args)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.model_card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command",
                        choices=["denoise", "kernel-stats", "image-samples", "loss-plot", "cards",
                                 "all"])
    parser.add_argument("--prior-dir", type=Path, default=None,
                        help="directory with <prior>.safetensors/.json (default: shipped)")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--json-dir", type=Path, default=None)
    parser.add_argument("--n", type=int, default=64, help="held-out renders / kernel samples")
    parser.add_argument("--n-images", type=int, default=32, help="unconditional image samples")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="reverse-SDE steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--write", action="store_true",
                        help="also write the command's table into docs/models.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"denoise": cmd_denoise, "kernel-stats": cmd_kernel_stats,
           "image-samples": cmd_image_samples, "loss-plot": cmd_loss_plot, "cards": cmd_cards,
           "all": cmd_all}[args.command](args)
    if args.write and args.command in ("denoise", "kernel-stats", "image-samples"):
        replace_block(args.docs / "models.md", args.command, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
