"""The image prior's public yardstick: Gaussian denoising of a folder of photographs.

``checkout-restore bench --suites denoise --photos DIR --sigma 15,25,50`` adds white Gaussian
noise of std σ (0–255 scale) to every image of DIR (grey, or RGB turned grey, cropped to
multiples of 8; a seeded generator per image and σ) and restores it with

- ``cvsa-prox``: proximal CVSA on the ``denoise`` task (H = identity, restoration/tasks.py) with
  the shipped image prior and the Table-1 sampler settings (flows/evaluation/table1.py), the grey
  image replicated to three channels and the output averaged back;
- ``bm3d``: the ``bm3d`` package (a CPU reference implementation of BM3D), when installed;
- ``noisy``: the input itself.

PSNR on the 0–255 grey scale of the clipped output, the field's convention (BSD68: the README's
public-photos table gives published BM3D / DnCNN / DRUNet figures). Seconds per image and µs per
pixel are reported beside every figure.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from flows.evaluation.frames import BenchError
from flows.evaluation.tables import results_header, write_results
from restoration.rng import generator_for

DENOISE_METHODS: tuple[str, ...] = ("noisy", "bm3d", "cvsa-prox")
SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def load_grey(folder: str, limit: int | None) -> list[tuple[str, np.ndarray]]:
    """(name, grey image on [0, 1]) of the folder's images sorted by name, cropped to multiples of 8."""
    from PIL import Image

    root = Path(folder)
    if not root.is_dir():
        raise BenchError(f"--photos {folder}: not a folder")
    paths = sorted(p for p in root.iterdir() if p.suffix.lower() in SUFFIXES)[:limit]
    if not paths:
        raise BenchError(f"--photos {folder}: no images in it")
    out = []
    for p in paths:
        with Image.open(p) as im:
            a = np.asarray(im.convert("L"), dtype=np.float64) / 255.0
        out.append((p.name, a[: a.shape[0] // 8 * 8, : a.shape[1] // 8 * 8]))
    return out


def _cvsa_prox() -> Callable[[np.ndarray, float], np.ndarray]:
    from flows.evaluation.table1 import Table1Settings
    from restoration.cvsa import ScorePrior, restore_proximal
    from restoration.priors import load_shipped
    from restoration.service import autocast_score
    from restoration.settings import ProximalSettings
    from restoration.tasks import DENOISE, TaskParams, problem

    prior = load_shipped("image")
    s = Table1Settings()
    settings = ProximalSettings(s.prox_steps, s.prox_strength, s.renoise, s.grid_power, s.grad_reg,
                                s.cg_iters)
    score = ScorePrior(autocast_score(prior, True, channels_last=True), prior.cld)

    def run(noisy: np.ndarray, sigma: float) -> np.ndarray:
        y = torch.from_numpy(noisy * 2 - 1).float()[None, None].expand(1, 3, *noisy.shape).contiguous()
        prob = problem(DENOISE, y, TaskParams(noise_sigma=2 * sigma))
        with torch.no_grad():
            res = restore_proximal(prob, score, settings, [generator_for(f"denoise/{noisy.shape}")])
        return ((prob.crop(res.x)[0].mean(0).double().numpy() + 1) / 2).clip(0, 1)

    return run


def _bm3d() -> Callable[[np.ndarray, float], np.ndarray]:
    try:
        import bm3d
    except ImportError as exc:
        raise BenchError("method bm3d needs the bm3d package (pip install bm3d)") from exc
    return lambda noisy, sigma: np.clip(bm3d.bm3d(noisy, sigma), 0, 1)


#: method -> factory of a denoiser (noisy grey image on [0, 1], σ on [0, 1]) -> estimate
FACTORIES: dict[str, Callable[[], Callable[[np.ndarray, float], np.ndarray]]] = {
    "noisy": lambda: lambda noisy, sigma: np.clip(noisy, 0, 1),
    "bm3d": _bm3d,
    "cvsa-prox": _cvsa_prox,
}


def psnr255(x: np.ndarray, ref: np.ndarray) -> float:
    mse = float(np.mean((np.round(x * 255) - np.round(ref * 255)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def denoise_rows(images: list[tuple[str, np.ndarray]], methods: list[str], sigmas: list[float]
                 ) -> list[dict[str, object]]:
    """One row per (method, σ, image): PSNR, seconds, µs per pixel."""
    rows = []
    for method in methods:
        fn = FACTORIES[method]()
        for s255 in sigmas:
            for name, x in images:
                g = generator_for(f"denoise/{name}/{s255}")
                noise = torch.randn(x.shape, generator=g, dtype=torch.float64).numpy()
                noisy = x + (s255 / 255.0) * noise
                t0 = time.perf_counter()
                est = fn(noisy, s255 / 255.0)
                sec = time.perf_counter() - t0
                rows.append({"method": method, "sigma": s255, "image": name, "psnr": psnr255(est, x),
                             "seconds": sec, "us_per_px": 1e6 * sec / x.size})
    return rows


def markdown_table(df: pd.DataFrame, header: str) -> str:
    lines = [header, "", "| method | σ | images | PSNR (dB) | s/image | µs/px |",
             "|---|---:|---:|---:|---:|---:|"]
    for (method, sigma), g in df.groupby(["method", "sigma"], sort=False):
        lines.append(f"| {method} | {sigma:g} | {len(g)} | {g['psnr'].mean():.2f} | "
                     f"{g['seconds'].mean():.2f} | {g['us_per_px'].mean():.2f} |")
    return "\n".join(lines) + "\n"


def run_denoise(args: argparse.Namespace) -> int:
    """`checkout-restore bench --suites denoise --photos DIR [--sigma 15,25,50] [--methods ...]`."""
    from storage.stores import open_store

    if not args.photos:
        raise BenchError("--suites denoise needs --photos DIR (a folder of images, e.g. BSD68)")
    if args.threads:
        torch.set_num_threads(args.threads)
    asked = [m.strip() for m in args.methods.split(",") if m.strip()]
    methods = [m for m in asked if m in DENOISE_METHODS] or list(DENOISE_METHODS)
    try:
        sigmas = [float(v) for v in args.sigma.split(",") if v.strip()]
    except ValueError as exc:
        raise BenchError(f"--sigma takes numbers on the 0-255 scale, got {args.sigma!r}") from exc
    started = time.perf_counter()
    images = load_grey(args.photos, args.limit)
    df = pd.DataFrame(denoise_rows(images, methods, sigmas))
    wall = time.perf_counter() - started
    if "://" not in args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    text = markdown_table(df, results_header(args, args.photos, len(images), wall))
    write_results(open_store(args.out), df, text, wall)
    return 0
