"""`checkout-restore bench`: a deterministic benchmark set, every method on the same frames, a table.

    checkout-restore bench                                   # default set, all methods
    checkout-restore bench --methods blurred,classical-blind,oracle-wiener --out runs/bench/cls
    checkout-restore bench --data s3://bucket/calibration --limit 20 --methods blind-cvsa
    python -m flows.evaluation.bench --generate-only --set runs/bench/set

Benchmark set (generated under ``--set`` unless ``--data`` is given; same bytes on every run):
held-out product renders (seeds from ``HELDOUT_SEED_START + 100_000``, never trained on), each a
canvas of (size + K - 1)² blurred by the *valid* true convolution of :mod:`restoration.operators`
(so the frame's borders drew on pixels outside it, as in a camera), plus Gaussian noise of std
0.02 on [0, 1], 8-bit quantised. K is drawn among the odd sizes 15..31. Suites:

- ``motion``: random camera/hand motion-trajectory kernels;
- ``gaussian``: anisotropic Gaussian kernels;
- ``motion+occlusion``: motion kernels plus a hand-like occluder (a skin-coloured forearm, palm,
  fingers and thumb entering from a frame edge, 10-25 % of the frame): the frame shows the hand,
  the mask sidecar is 0 there, and the sharp truth is the product behind it.

Frames are written in the sidecar layout of docs/design.md §4 (``<suite>/fNNN.png``, ``.mask.png``,
``.sharp.png``, ``.kernel.npy``), with ``bench.json`` (the generation spec) at the root, so any
folder in that layout can be benchmarked with ``--data``.

Methods (a literal table, :data:`METHODS`): ``blurred`` (the input), ``classical-blind``
(Pan et al. 2014 L0 blind deconvolution, :mod:`restoration.classical`), ``oracle-wiener``
(Wiener with the true kernel: a reference, not a rival), ``oracle-cvsa`` (non-blind proximal
CVSA with the true kernel and the shipped image prior: the ceiling for blind CVSA),
``blind-cvsa`` (the product: :class:`restoration.service.FrameRestorer` with the pipeline config's
restoration settings and both shipped priors). Every method returns 8-bit images (what a user
saves), scored against the truth: PSNR / SSIM on [0, 1] RGB (scikit-image conventions), PSNR
inside / outside the occlusion mask, kernel-MSE and kernel NCC as docs/design.md §7 defines them on a
common canvas of max(kernel_size setting, true K) px, seconds per frame, network evaluations.
``fixed-kernel`` rows hold the best *fixed* kernel guess per suite: the single Gaussian sigma or
disc radius that minimises the suite's mean kernel-MSE, chosen with hindsight.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from flows.config import load_config
from flows.evaluation.frames import BenchError, BenchFrame, load_frames
from flows.evaluation.methods import METHOD_NAMES, METHODS, BenchContext
from flows.evaluation.scoring import (
    COLUMNS,
    code_columns,
    fixed_kernel_rows,
    guard_columns,
    nan,
    quantise,
    score,
)
from flows.evaluation.suites import ALIASES, SUITES, BenchSpec, generate_set
from flows.evaluation.tables import markdown, results_header, summary_table, write_results
from flows.fonts import DEFAULT_FONT_GLOB, find_fonts
from storage.base import ObjectStore
from storage.stores import open_store


def run_method(
    name: str, frames: list[BenchFrame], ctx: BenchContext, progress: bool = True
) -> list[dict[str, Any]]:
    """One row per frame for method ``name`` (frames restored one at a time, timed)."""
    from tqdm import tqdm

    if name not in METHODS:
        raise BenchError(f"unknown method {name!r}; choose from {list(METHODS)}")
    fn = METHODS[name]
    rows = []
    for frame in tqdm(frames, desc=name, disable=not progress, leave=True):
        started = time.perf_counter()
        out = fn([frame], ctx)
        seconds = time.perf_counter() - started
        x = quantise(out.x)
        if x.shape[-2:] != frame.y.shape[-2:]:
            raise BenchError(f"{name} returned {tuple(x.shape[-2:])} for {frame.id}, "
                             f"not the input size {tuple(frame.y.shape[-2:])}")
        row = {"method": name, "frame": frame.id, "suite": frame.suite}
        row.update(score(frame, x, out.kernel, ctx.settings.kernel_size))
        choice, choice_score = out.choices[0] if out.choices else ("", nan())
        row.update(
            seconds=seconds,
            nfe=int(out.nfe),
            kernel_size_true=nan() if frame.kernel is None else frame.kernel.shape[-1],
            kernel_size_est=nan() if out.kernel is None else out.kernel.shape[-1],
            note="",
            kernel_choice=choice,
            kernel_score=choice_score,
        )
        row.update(code_columns(frame, x))
        row.update(guard_columns(frame, row, out.fallbacks[0] if out.fallbacks else "",
                                 out.rejected[0] if out.rejected else None, ctx.settings.kernel_size))
        rows.append(row)
    return rows


def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `checkout-restore bench` (flows/cli/bench.py) and `python -m flows.evaluation.bench`."""
    p.add_argument("--data", help="benchmark this folder/URI (sidecar layout) instead of the set")
    p.add_argument("--set", dest="set_dir", default="runs/bench/set",
                   help="where the default set is generated (reused if its spec matches)")
    p.add_argument("--methods", default=",".join(METHOD_NAMES),
                   help=f"comma-separated, from {','.join(METHOD_NAMES)}")
    p.add_argument("--limit", type=int, help="only the first N frames sorted by name")
    p.add_argument("--out", default="runs/bench/results", help="folder/URI for results.*")
    p.add_argument("--config", default="default", help="pipeline config (restoration settings)")
    p.add_argument("--steps", type=int, help="override the CVSA sampler steps")
    p.add_argument("--frames-per-suite", type=int, default=BenchSpec.frames_per_suite,
                   help="frames per suite")
    p.add_argument("--size", type=int, default=BenchSpec.size, help="side of the square frames")
    p.add_argument("--suites", default=",".join(SUITES),
                   help="comma-separated suites (motion, gaussian, motion+occlusion, native = native-motion,"
                   "native-gaussian: flows/evaluation/bench_native.py), real = real-motion,real-gaussian,"
                   "real-near-sharp, real-all, real-native (need --photos: "
                   "flows/evaluation/bench_photos.py), denoise (with --photos: the image prior's "
                   "yardstick, flows/evaluation/denoise.py), or table1 / table1:TASK,... "
                   "(flows/evaluation/table1.py)")
    p.add_argument("--fonts", default=DEFAULT_FONT_GLOB, help="glob of TrueType fonts")
    p.add_argument("--photos", help="folder of real photographs for the real-* suites "
                   "(validation photographs only, never training ones), or of the denoise suite's images")
    p.add_argument("--sigma", default="15,25,50",
                   help="denoise suite: noise std(s) on the 0-255 scale (flows/evaluation/denoise.py)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--generate-only", action="store_true", help="write the set and stop")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _spec_from_args(args: argparse.Namespace) -> BenchSpec:

    fonts = tuple(find_fonts(args.fonts))
    names = (s.strip() for s in args.suites.split(",") if s.strip())
    suites = tuple(dict.fromkeys(x for n in names for x in ALIASES.get(n, (n,))))
    return BenchSpec(suites=suites, frames_per_suite=args.frames_per_suite, size=args.size,
                     fonts=fonts, photos=args.photos or "")


def _other_suite(args: argparse.Namespace) -> int | None:
    """Run the suites with a runner of their own (table1, denoise); None for the blind suites."""
    from flows.evaluation.table1 import parse_tasks, run_table1  # the non-blind suite (its own module)

    if (tasks := parse_tasks(args.suites)) is not None:
        return run_table1(args, tasks)
    if args.suites.strip() == "denoise":  # the image prior's public yardstick
        from flows.evaluation.denoise import run_denoise

        return run_denoise(args)
    return None


def bench_main(args: argparse.Namespace) -> int:
    """Generate (or take) the frames, run the methods, write results.parquet / results.md."""
    if not hasattr(args, "argv"):  # called through flows.cli: record the command as typed
        args.argv = sys.argv[1:]
    if (code := _other_suite(args)) is not None:
        return code
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise BenchError(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if args.limit is not None and args.limit < 1:
        raise BenchError("--limit must be >= 1")
    progress = not args.no_progress
    store, data_uri = _data_store(args, progress)
    if args.generate_only and not args.data:
        print(f"benchmark set in {store.uri}")
        return 0
    settings = load_config(args.config).restoration
    if args.steps:
        settings = settings.model_copy(update={"steps": args.steps})
    frames = load_frames(store, args.limit, None if args.data else _spec_from_args(args).suites)
    if not frames:
        raise BenchError(f"no frames under {data_uri}")
    ctx = BenchContext(settings=settings, device=args.device)
    rows: list[dict[str, Any]] = []
    for name in methods:
        rows.extend(run_method(name, frames, ctx, progress=progress))
    rows.extend(fixed_kernel_rows(frames, settings.kernel_size))
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    wall = time.perf_counter() - started
    text = markdown(summary_table(df), results_header(args, data_uri, len(frames), wall))
    _write_results(args.out, df, text, wall)
    return 0


def _data_store(args: argparse.Namespace, progress: bool) -> tuple[ObjectStore, str]:
    """The frames to benchmark: ``--data`` read-only, or the generated set (written if its spec
    changed, else reused); with the URI the header names."""
    if args.data:
        return open_store(args.data, read_only=True), args.data
    if "://" not in args.set_dir:
        Path(args.set_dir).mkdir(parents=True, exist_ok=True)
    store = open_store(args.set_dir)
    generate_set(store, _spec_from_args(args), progress=progress)
    return store, args.set_dir


def _write_results(out_uri: str, df: pd.DataFrame, text: str, wall: float) -> None:
    if "://" not in out_uri:
        Path(out_uri).mkdir(parents=True, exist_ok=True)
    write_results(open_store(out_uri), df, text, wall)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m flows.evaluation.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = ["bench", *argv]
    try:
        return bench_main(args)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
