"""Model-card measurements of the CLD priors (tables and figures in docs/models.md).

Commands (`python -m flows.evaluation.model_card <command> [--prior-dir DIR]`; by default the shipped
checkpoints in restoration/checkpoints are measured, `--prior-dir runs/prior_image` measures a
run in progress):

    denoise        image prior: one-step x0_hat vs the best Gaussian-filter denoiser on 64
                   held-out renders at t in {0.05, 0.1, 0.2, 0.4} (`--set native`: 128-px
                   crops of held-out native-resolution frames, restoration.synthetic.native)
    x0-figure      image prior: x0_hat at t = 0.1 / 0.2 / 0.4 on held-out renders (PNG)
    gain-curve     image prior: gain over the best Gaussian filter vs training steps, all runs
                   (docs/prior_image_gain_history.csv, appended by `denoise --record RUN`)
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
import json
import math
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from flows.evaluation.prior_measures import (
    DENOISE_TS,
    KERNEL_SIZE_TS,
    NATIVE_HELDOUT_START,
    NATIVE_REFERENCE_START,
    denoise_markdown,
    denoise_table,
    get_prior,
    heldout_renders,
    kernel_markdown,
    kernel_size_rows,
    kernel_stats,
    native_crops,
    prior_label,
    to01,
    unconditional,
    wiener_spectrum,
)
from restoration.priors import Prior


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


def native_set(n: int, crop: int, cache_dir: Path | None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], str]:
    """(held-out native crops, Wiener spectrum of training native crops, description)."""
    x0 = native_crops(range(NATIVE_HELDOUT_START, NATIVE_HELDOUT_START + n), crop, cache_dir)
    ref = native_crops(range(NATIVE_REFERENCE_START, NATIVE_REFERENCE_START + 64), crop,
                       cache_dir)
    what = (f"{n} held-out native-resolution frames (restoration.synthetic.native, seeds "
            f"{NATIVE_HELDOUT_START}..{NATIVE_HELDOUT_START + n - 1}, 256-512 px, camera "
            f"augmentations), one {crop}x{crop} crop each; Wiener spectrum from 64 training "
            "native crops")
    return x0, wiener_spectrum(64, crop, ref), what


def cmd_denoise(args: argparse.Namespace) -> str:
    prior = get_prior("image", args.prior_dir)
    t0 = time.monotonic()
    if args.set == "native":
        x0, spectrum, what = native_set(args.n, args.crop, args.cache_dir)
        rows = denoise_table(prior, x0=x0, spectrum=spectrum)
        md = denoise_markdown(rows, prior, x0.shape[0], args.crop, what)
    else:
        rows = denoise_table(prior, args.n, args.size)
        md = denoise_markdown(rows, prior, args.n, args.size)
    print(md)
    print(f"({time.monotonic() - t0:.0f} s)")
    _dump(args, f"denoise_{args.set}", rows)
    if args.record:
        record_gains(args.docs / GAIN_HISTORY, args.record, prior, args.set, rows)
    return md


GAIN_HISTORY = "prior_image_gain_history.csv"


def record_gains(path: Path, run: str, prior: Prior, set_name: str, rows: Sequence[dict]) -> None:
    """Append (run, cumulative steps, set, t, gain) rows to the gain-history CSV."""
    init = prior.meta.get("init_from") or {}
    total = int(prior.meta.get("steps", 0)) + int(init.get("steps", 0))
    if not path.exists():
        path.write_text("run,version,cumulative_steps,set,t,gain_db\n")
    with path.open("a") as f:
        for r in rows:
            f.write(f"{run},{prior.version},{total},{set_name},{r['t']},{r['gain_db']:.2f}\n")


def cmd_gain_curve(args: argparse.Namespace) -> str:
    """Gain over the per-image best Gaussian filter vs cumulative training steps, per t."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r.split(",") for r in (args.docs / GAIN_HISTORY).read_text().splitlines()[1:] if r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=100, sharey=False)
    for ax, set_name in zip(axes, ("scene", "native"), strict=True):
        sub = [r for r in rows if r[3] == set_name]
        for t in DENOISE_TS:
            pts = sorted((int(r[2]), float(r[5]), r[0]) for r in sub if float(r[4]) == t)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"t={t}")
            for x, y, run in pts:
                if run != "v1":
                    ax.annotate(run, (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("cumulative training steps (warm starts add the parent's)")
        ax.set_ylabel("gain of x̂0 over best per-image Gaussian filter (dB)")
        ax.set_title(f"{set_name} held-out set", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.docs / "prior_image_gain_curve.png")
    plt.close(fig)
    md = f"gain curve of {len(rows)} measurements: `docs/prior_image_gain_curve.png`"
    print(md)
    return md


@torch.no_grad()
def cmd_x0_figure(args: argparse.Namespace) -> str:
    """Clean held-out render | x_t / D_xx | x0_hat at t = 0.1, 0.2, 0.4 (3 scene, 3 native)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prior = get_prior("image", args.prior_dir)
    cld = prior.cld
    sets = [heldout_renders(3, 64),
            native_crops(range(NATIVE_HELDOUT_START, NATIVE_HELDOUT_START + 3), args.crop,
                         args.cache_dir)]
    ts = (0.1, 0.2, 0.4)
    fig, axes = plt.subplots(6, 1 + 2 * len(ts), figsize=(2.0 * (1 + 2 * len(ts)), 12.4), dpi=90)
    row = 0
    for x0 in sets:
        cols = [("clean (held out)", x0)]
        for t_val in ts:
            g = torch.Generator().manual_seed(args.seed + int(t_val * 1000))
            t = torch.full((x0.shape[0],), t_val, dtype=torch.float64)
            p = cld.perturb(x0, t, g)
            dxx = float(cld.mean_matrix(torch.tensor(t_val, dtype=torch.float64))[0, 0])
            est = cld.x0_hat(p.x, p.v, prior.score(p.x, p.v, t), t)
            cols += [(f"x_t / D_xx, t={t_val}", p.x / dxx), (f"x̂0, t={t_val}", est)]
        for i in range(x0.shape[0]):
            for j, (title, imgs) in enumerate(cols):
                ax = axes[row + i, j]
                ax.imshow(to01(imgs[i]).permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if row + i == 0 or (row + i == 3 and j == 0):
                    ax.set_title(title if row + i == 0 else "clean (native crop)", fontsize=8)
        row += x0.shape[0]
    fig.suptitle(f"{prior_label(prior)}: one-step x̂0; rows 1-3 scene renders 64 px, "
                 f"rows 4-6 native crops {args.crop} px", fontsize=9)
    fig.tight_layout()
    out = args.docs / "prior_image_x0hat.png"
    fig.savefig(out)
    plt.close(fig)
    md = f"x̂0 figure: `{out}`"
    print(md)
    return md


def cmd_kernel_sizes(args: argparse.Namespace) -> str:
    prior = get_prior("kernel", args.prior_dir)
    kinds = prior.meta.get("data", {}).get("kinds", ["motion", "gaussian", "defocus", "mixture"])
    canvas = int(prior.meta.get("data", {}).get("size", 31))
    rows = kernel_size_rows(prior, args.n, args.seed, kinds, canvas)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    lines = [
        f"Kernel prior `{prior.version}`: one-step x̂0 (CVSA Prop. 4.2) of {args.n} held-out "
        "generator kernels per size, projected by `from_prior`; kernel NCC (higher is better) / "
        "kernel-MSE ×1e4 against the truth on its own canvas, mean over kernels. t = 0: the "
        "projection (and resampling) alone.",
        "",
        "| t | " + " | ".join(cases) + " |",
        "|---|" + "---|" * len(cases),
    ]
    for t_val in (0.0, *KERNEL_SIZE_TS):
        cells = [f"{r['ncc']:.3f} / {r['mse_1e4']:.3f}" for c in cases for r in rows
                 if r["t"] == t_val and r["case"] == c]
        lines.append(f"| {t_val:g} | " + " | ".join(cells) + " |")
    md = "\n".join(lines)
    print(md)
    _dump(args, "kernel_sizes", rows)
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
    tiles = to01(x).permute(0, 2, 3, 1).numpy()
    save_grid(tiles, args.docs / "prior_image_samples.png", cols=8, scale=2)
    ref = heldout_renders(8, args.size)
    save_grid(to01(ref).permute(0, 2, 3, 1).numpy(), args.docs / "prior_image_reference.png",
              cols=8, scale=2)
    md = (f"{args.n_images} unconditional samples, {args.size}x{args.size}, {args.steps} "
          f"Euler-Maruyama steps of the reverse SDE (final x̂0), seed {args.seed}: "
          "`docs/prior_image_samples.png`; held-out renders for comparison: "
          "`docs/prior_image_reference.png`.")
    print(md)
    return md


def cmd_loss_plot(args: argparse.Namespace) -> str:
    from flows.reports.plots import plot_losses

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
    parser = argparse.ArgumentParser(prog="python -m flows.evaluation.model_card", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command",
                        choices=["denoise", "kernel-stats", "image-samples", "loss-plot", "cards",
                                 "x0-figure", "gain-curve", "kernel-sizes", "all"])
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
    parser.add_argument("--set", choices=["scene", "native"], default="scene",
                        help="denoise: held-out scene renders (--size) or native crops (--crop)")
    parser.add_argument("--crop", type=int, default=128, help="native-set crop size")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"))
    parser.add_argument("--record", default=None,
                        help="denoise: append the gains to docs/prior_image_gain_history.csv "
                             "under this run name")
    parser.add_argument("--write", action="store_true",
                        help="also write the command's table into docs/models.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = {"denoise": cmd_denoise, "kernel-stats": cmd_kernel_stats,
           "image-samples": cmd_image_samples, "loss-plot": cmd_loss_plot, "cards": cmd_cards,
           "x0-figure": cmd_x0_figure, "gain-curve": cmd_gain_curve,
           "kernel-sizes": cmd_kernel_sizes, "all": cmd_all}[args.command](args)
    if args.write and args.command in ("denoise", "kernel-stats", "image-samples", "kernel-sizes"):
        block = "denoise-native" if args.command == "denoise" and args.set == "native" else (
            args.command)
        replace_block(args.docs / "models.md", block, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
