"""`checkout-restore train`: HSM training of the image / kernel CLD priors (file I/O edge).

All file handling for training lives here: the YAML config, the cached training bank
(`.cache/`), the resumable state (`state.pt`, loaded with weights_only=True), the exported prior
(`<prior>.safetensors` + `<prior>.json`), the loss log (`loss.csv`) and loss curve (`loss.png`).
The training loop itself is pure tensor code in restoration/train.py.

Usage (also `python -m flows.cli.train ...`):
    checkout-restore train --prior kernel --config configs/prior_kernel.yaml --out runs/prior_kernel
    checkout-restore train --prior image --config configs/prior_image.yaml --out runs/prior_image \
        --export-dir restoration/checkpoints
A run resumes from `<out>/state.pt` when it exists (pass --fresh to start over); `--steps N`
overrides the config's step count (to extend a finished run, raise it and rerun).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from flows.fonts import DEFAULT_FONT_GLOB, find_fonts
from flows.reports.plots import plot_losses
from restoration.cld import CLD
from restoration.priors import export_prior
from restoration.score_net import build_eps_net, param_count
from restoration.train import (
    Callbacks,
    TrainConfig,
    TrainState,
    crop_batches,
    load_training_state,
    new_state,
    train,
    training_state_bytes,
)

PRIORS = ("image", "kernel")
DEFAULT_FONT_GLOBS = (DEFAULT_FONT_GLOB,)


class TrainCLIError(RuntimeError):
    """Raised for unusable configs or inputs of the train command."""


@dataclass(frozen=True)
class RunConfig:
    """The parsed YAML config of a training run."""

    prior: str
    net: dict[str, Any]
    cld: dict[str, Any]
    data: dict[str, Any]
    train: TrainConfig


def load_config(path: Path, steps: int | None = None) -> RunConfig:
    """Read a prior training YAML into a RunConfig (optionally overriding train.steps)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TrainCLIError(f"cannot read config {path}: {exc}") from exc
    for key in ("prior", "net", "cld", "data", "train"):
        if not isinstance(raw, dict) or key not in raw:
            raise TrainCLIError(f"config {path} lacks '{key}'")
    if raw["prior"] not in PRIORS:
        raise TrainCLIError(f"config prior must be one of {PRIORS}, got {raw['prior']!r}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(raw["train"]) - known
    if unknown:
        raise TrainCLIError(f"unknown train keys in {path}: {sorted(unknown)}")
    tcfg = dict(raw["train"])
    if steps is not None:
        tcfg["steps"] = steps
    CLD(**raw["cld"])  # validate early
    return RunConfig(raw["prior"], dict(raw["net"]), dict(raw["cld"]), dict(raw["data"]),
                     TrainConfig(**tcfg))


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def git_commit() -> str:
    """HEAD of the checkout this runs from, or "unknown"."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def training_fonts(globs: str | list[str] | tuple[str, ...]) -> list[str]:
    """Font files matching the config's globs (:func:`flows.fonts.find_fonts`); none is an error."""
    fonts = find_fonts(globs)
    if not fonts:
        raise TrainCLIError(f"no fonts match {globs!r}; set data.fonts in the config")
    return fonts


def _cache_path(cache_dir: Path, kind: str, spec: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir / f"{kind}-{key}.npy"


def image_bank(data: dict[str, Any], cache_dir: Path, progress: bool = True) -> torch.Tensor:
    """(N, 3, S, S) uint8 bank of training renders (train seeds only), cached as .npy."""
    from restoration import synthetic

    n, size, seed0 = int(data["n_products"]), int(data["render_size"]), int(data.get("seed", 0))
    if seed0 < 0 or seed0 + n > synthetic.TRAIN_SEEDS_END:
        raise TrainCLIError(
            f"train seeds [{seed0}, {seed0 + n}) leave [0, {synthetic.TRAIN_SEEDS_END})"
        )
    fonts = training_fonts(data.get("fonts", DEFAULT_FONT_GLOBS))
    spec = {"n": n, "size": size, "seed": seed0, "fonts": [Path(f).name for f in fonts]}
    path = _cache_path(cache_dir, "image", spec)
    if path.exists():
        return torch.from_numpy(np.load(path))
    from tqdm.auto import tqdm

    chunks = []
    for start in tqdm(range(0, n, 64), disable=not progress, desc="rendering", unit="x64"):
        seeds = list(range(seed0 + start, seed0 + min(n, start + 64)))
        imgs = synthetic.render_batch(seeds, size, fonts)
        chunks.append(((imgs.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
    bank = torch.cat(chunks).numpy()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, bank)
    os.replace(tmp, path)
    return torch.from_numpy(bank)


def native_bank(spec: dict[str, Any], fonts: list[str], cache_dir: Path,
                progress: bool = True) -> list[torch.Tensor]:
    """Native-resolution renders (3, S_i, S_i) uint8, S_i in [256, 512], cached as one .npz.

    `spec`: n_renders, seed (train seeds only), optional size (one side for all).
    """
    from tqdm.auto import tqdm

    from restoration import synthetic
    from restoration.synthetic.native import NATIVE_VERSION, render_native

    n, seed0 = int(spec["n_renders"]), int(spec.get("seed", 0))
    size = int(spec["size"]) if spec.get("size") else None
    if seed0 < 0 or seed0 + n > synthetic.TRAIN_SEEDS_END:
        raise TrainCLIError(
            f"train seeds [{seed0}, {seed0 + n}) leave [0, {synthetic.TRAIN_SEEDS_END})"
        )
    key = {"n": n, "seed": seed0, "size": size, "fonts": [Path(f).name for f in fonts],
           "native_version": NATIVE_VERSION, "renderer_version": synthetic.RENDERER_VERSION}
    path = _cache_path(cache_dir, "native", key).with_suffix(".npz")
    if not path.exists():
        imgs = [render_native(s, size, fonts).transpose(2, 0, 1)
                for s in tqdm(range(seed0, seed0 + n), disable=not progress,
                              desc="rendering native", unit="img")]
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, *imgs)
        os.replace(tmp, path)
    with np.load(path) as z:
        return [torch.from_numpy(z[f"arr_{i}"]) for i in range(len(z.files))]


PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# Real-photo folders the benches validate on (public-photos/README): refused as training data.
VALIDATION_PHOTO_SETS = frozenset({"LIVE1", "BSD68"})


def _jitter(img: np.ndarray, g: np.random.Generator) -> np.ndarray:
    """Colour jitter of an (H, W, 3) uint8 photo: per-channel gain 0.85-1.15, a tone curve
    gamma 0.8-1.25 and a saturation change 0.7-1.3 (what other cameras and lights give)."""
    x = img.astype(np.float64) / 255.0
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * g.uniform(0.7, 1.3)
    x = np.clip(x * g.uniform(0.85, 1.15, size=3), 0.0, 1.0) ** g.uniform(0.8, 1.25)
    return (x * 255.0 + 0.5).astype(np.uint8)


def photo_bank(spec: dict[str, Any], photos_dir: Path | None, crop: int) -> list[torch.Tensor]:
    """Real photographs as (3, H, W) uint8: every image of the `folders` under `photos_dir`
    (grey replicated to three channels) at each of `scales` (antialiased), each scale once
    as is and `jitter` more times colour-jittered (seeded by `seed`). Scaled copies smaller
    than `crop` are left out. The folder is given on the command line (`--photos`)."""
    from PIL import Image

    if photos_dir is None:
        raise TrainCLIError("a 'photos' data source needs --photos DIR")
    held_out = set(spec["folders"]) & VALIDATION_PHOTO_SETS
    if held_out:
        raise TrainCLIError(f"{sorted(held_out)} are validation sets: never trained on")
    g = np.random.default_rng(int(spec.get("seed", 0)))
    out: list[torch.Tensor] = []
    for folder in spec["folders"]:
        files = sorted(f for f in (photos_dir / folder).iterdir() if f.suffix.lower() in PHOTO_SUFFIXES)
        if not files:
            raise TrainCLIError(f"no photographs in {photos_dir / folder}")
        for f in files:
            with Image.open(f) as im:
                rgb = im.convert("RGB")
            for scale in spec.get("scales", [1.0]):
                size = (round(rgb.width * scale), round(rgb.height * scale))
                if min(size) < crop:
                    continue
                base = np.asarray(rgb.resize(size, Image.Resampling.LANCZOS) if scale != 1 else rgb)
                versions = [base] + [_jitter(base, g) for _ in range(int(spec.get("jitter", 1)))]
                out += [torch.from_numpy(v.transpose(2, 0, 1).copy()) for v in versions]
    return out


def image_sources(data: dict[str, Any], cache_dir: Path, progress: bool = True,
                  photos_dir: Path | None = None) -> tuple[list[torch.Tensor], list[float]]:
    """The images of `data.sources` and per-image sampling weights (each source's `weight`
    split evenly over its images). Kinds: `scene` (render_canvas at render_size, as
    `image_bank`), `native` (`native_bank`) and `photos` (`photo_bank`, real photographs
    from `photos_dir`)."""
    fonts = training_fonts(data.get("fonts", DEFAULT_FONT_GLOBS))
    images: list[torch.Tensor] = []
    weights: list[float] = []
    for src in data["sources"]:
        kind = src.get("kind")
        if kind == "scene":
            part = list(image_bank(src | {"fonts": data.get("fonts", DEFAULT_FONT_GLOBS)},
                                   cache_dir, progress))
        elif kind == "native":
            part = native_bank(src, fonts, cache_dir, progress)
        elif kind == "photos":
            part = photo_bank(src, photos_dir, int(data["crop"]))
        else:
            raise TrainCLIError(
                f"data source kind must be 'scene', 'native' or 'photos', got {kind!r}")
        w = float(src.get("weight", 1.0))
        images += part
        weights += [w / len(part)] * len(part)
    return images, weights


def kernel_bank(data: dict[str, Any], cache_dir: Path, progress: bool = True) -> torch.Tensor:
    """(N, 1, K, K) float32 bank of generated kernels in the prior representation, cached."""
    from tqdm.auto import tqdm

    from restoration.kernel_ops import to_prior
    from restoration.kernels import sample_kernels

    n, size, seed = int(data["bank"]), int(data["size"]), int(data.get("seed", 0))
    kinds = tuple(data.get("kinds", ("motion", "gaussian", "defocus", "mixture")))
    path = _cache_path(cache_dir, "kernel", {"n": n, "size": size, "seed": seed,
                                             "kinds": list(kinds)})
    if path.exists():
        return torch.from_numpy(np.load(path))
    g = torch.Generator().manual_seed(seed)
    chunks = []
    for start in tqdm(range(0, n, 256), disable=not progress, desc="kernels", unit="x256"):
        chunks.append(to_prior(sample_kernels(min(256, n - start), size, g, kinds)))
    bank = torch.cat(chunks).float().numpy()
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, bank)
    os.replace(tmp, path)
    return torch.from_numpy(bank)


def _final_loss(losses: list[tuple[int, float]], window: int = 10) -> float | None:
    if not losses:
        return None
    tail = [v for _, v in losses[-window:]]
    return float(sum(tail) / len(tail))


def _data_source(data: dict[str, Any]) -> str:
    photos = [f for src in data.get("sources", []) if src.get("kind") == "photos"
              for f in src["folders"]]
    if photos:
        return ("project renders (restoration.synthetic) and real photographs: "
                + ", ".join(photos) + " (public test sets; never LIVE1 or BSD68)")
    return ("project-generated only (restoration.synthetic renders / "
            "restoration.kernels generators); no external data")


def prior_metadata(cfg: RunConfig, state: TrainState, command: str) -> dict[str, Any]:
    """JSON metadata stored beside the exported weights."""
    return {
        "name": cfg.prior,
        "net": cfg.net,
        "cld": cfg.cld,
        "data": {k: v for k, v in cfg.data.items() if k != "fonts"}
        | {"source": _data_source(cfg.data)},
        "train": asdict(cfg.train),
        "steps": state.step,
        "wall_time_s": round(state.wall_time_s, 1),
        "final_loss": _final_loss(state.losses),
        "params": param_count(state.model),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "command": command,
    }


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the `train` subcommand on a CLI's subparsers."""
    p = subparsers.add_parser("train", help="train a CLD prior (HSM) on project-generated data")
    _add_args(p)
    p.set_defaults(func=train_main)
    return p


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prior", choices=PRIORS, required=True, help="which prior to train")
    p.add_argument("--config", type=Path, required=True, help="YAML, e.g. configs/prior_image.yaml")
    p.add_argument("--out", type=Path, required=True, help="run directory (state, logs, export)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--export-dir", type=Path, default=None,
                   help="also write <prior>.safetensors/.json here at every checkpoint")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="generated training data cache")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state.pt")
    p.add_argument("--init-from", default=None,
                   help="warm start a fresh run from these weights: 'shipped' or a "
                        "<prior>.safetensors path (its .json beside it); ignored on resume")
    p.add_argument("--photos", type=Path, default=None,
                   help="folder holding the photo folders a 'photos' data source names")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="torch device (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def warm_start(state: TrainState, prior: str, source: str) -> dict[str, Any]:
    """Load exported weights into a fresh state's model and EMA; returns their provenance
    (version, steps, and the parent's own `init_from` chain)."""
    from restoration.priors import PriorError, load_prior, shipped_bytes

    try:
        if source == "shipped":
            st_bytes, js_bytes = shipped_bytes(prior)
        else:
            path = Path(source)
            st_bytes, js_bytes = path.read_bytes(), path.with_suffix(".json").read_bytes()
        parent = load_prior(st_bytes, js_bytes)
    except (OSError, PriorError) as exc:
        raise TrainCLIError(f"cannot warm start from {source}: {exc}") from exc
    if parent.name != prior:
        raise TrainCLIError(f"--init-from {source} is a {parent.name!r} prior, not {prior!r}")
    try:
        state.model.load_state_dict(parent.net.state_dict())
    except RuntimeError as exc:
        raise TrainCLIError(f"--init-from {source}: network differs from the config: {exc}") from exc
    state.ema.model.load_state_dict(parent.net.state_dict())
    return {"version": parent.version, "steps": int(parent.meta.get("steps", 0)),
            "wall_time_s": float(parent.meta.get("wall_time_s", 0.0)),
            "parent": parent.meta.get("init_from")}


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _resume(state: TrainState, cfg: RunConfig, args: argparse.Namespace, out: Path) -> dict[str, Any] | None:
    """Resume from ``out/state.pt`` (unless --fresh) or warm-start from --init-from; returns the
    warm start's record for the exported metadata (None without one)."""
    state_path = out / "state.pt"
    if state_path.exists() and not args.fresh:
        load_training_state(state, state_path.read_bytes())
        print(f"resumed {state_path} at step {state.step}", file=sys.stderr)
        prev = out / f"{cfg.prior}.json"
        return json.loads(prev.read_text()).get("init_from") if prev.exists() else None
    if args.init_from:
        init_from = warm_start(state, cfg.prior, args.init_from)
        print(f"warm start from {init_from['version']} ({init_from['steps']} steps)",
              file=sys.stderr)
        return init_from
    return None


def _batches(
    cfg: RunConfig, args: argparse.Namespace, state: TrainState, progress: bool
) -> Iterator[torch.Tensor]:
    """The training crops: rendered banks or (image prior) weighted sources, drawn with the
    state's data generator."""
    if cfg.prior == "image" and "sources" in cfg.data:
        images, weights = image_sources(cfg.data, args.cache_dir, progress, args.photos)
        return crop_batches(images, cfg.train.batch_size, int(cfg.data["crop"]),
                            state.data_generator, weights=weights)
    if cfg.prior == "image":
        bank = image_bank(cfg.data, args.cache_dir, progress)
        return crop_batches(bank, cfg.train.batch_size, int(cfg.data["crop"]), state.data_generator)
    bank = kernel_bank(cfg.data, args.cache_dir, progress)
    return crop_batches(bank, cfg.train.batch_size, int(cfg.data["size"]),
                        state.data_generator, transpose=True)


def train_main(args: argparse.Namespace) -> int:
    """Run (or resume) one training run; returns a process exit code."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM (e.g. `kill PID`) ends the run like Ctrl-C: the loop's finally saves a checkpoint.
        signal.signal(signal.SIGTERM, _raise_interrupt)
    cfg = load_config(args.config, args.steps)
    if cfg.prior != args.prior:
        raise TrainCLIError(f"--prior {args.prior} but {args.config} is for {cfg.prior!r}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    device = torch.device(args.device)

    net = build_eps_net(cfg.net, cfg.cld, init_seed=cfg.train.seed)
    state = new_state(net, cfg.train, device)
    state_path = out / "state.pt"
    init_from = _resume(state, cfg, args, out)
    # Data order after a resume continues from the saved data generator state.
    batches = _batches(cfg, args, state, progress)
    command = (f"checkout-restore train --prior {args.prior} --config {args.config} "
               f"--out {args.out}" + (f" --steps {args.steps}" if args.steps else "")
               + (f" --init-from {args.init_from}" if args.init_from else "")
               + (f" --photos {args.photos.name}" if args.photos else ""))

    def on_log(step: int, loss: float) -> None:
        with (out / "loss.csv").open("a") as f:
            f.write(f"{step},{loss:.6f},{state.wall_time_s:.1f}\n")

    def on_checkpoint(st: TrainState, final: bool) -> None:
        _atomic_write(state_path, training_state_bytes(st))
        weights, meta = export_prior(st.ema.model, prior_metadata(cfg, st, command) | (
            {"init_from": init_from} if init_from else {}))
        dirs = [out] + ([args.export_dir] if args.export_dir else [])
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
            _atomic_write(d / f"{cfg.prior}.safetensors", weights)
            _atomic_write(d / f"{cfg.prior}.json", meta)
        plot_losses(st.losses, out / "loss.png",
                    f"{cfg.prior} prior: HSM loss ({st.step} steps, {st.wall_time_s / 60:.0f} min)")

    if not (out / "loss.csv").exists() or args.fresh:
        (out / "loss.csv").write_text("step,loss,wall_time_s\n")
    print(f"{cfg.prior} prior: {param_count(state.model):,} parameters, "
          f"steps {state.step} -> {cfg.train.steps}", file=sys.stderr)
    train(state, CLD(**cfg.cld), batches, cfg.train,
          Callbacks(on_log=on_log, on_checkpoint=on_checkpoint), progress=progress)
    print(f"done: step {state.step}, wall {state.wall_time_s:.0f} s, "
          f"final loss {_final_loss(state.losses)}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.cli.train", description=__doc__)
    _add_args(parser)
    return train_main(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
