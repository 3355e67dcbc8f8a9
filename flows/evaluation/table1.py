"""The CVSA paper's Table 1/2 on our data: `checkout-restore bench --suites table1 --size 64`.

Every task of :mod:`restoration.tasks` (sr4, inpaint-box, inpaint-random, deblur-gauss,
deblur-motion, phase-retrieval) x every method of :data:`METHODS`, all on the shipped image prior:

- ``cvsa``: CVSA Alg. 1 with the literal guidance (``restoration.cvsa.restore``);
- ``cvsa-prox``: proximal CVSA (``restore_proximal``: data-consistency solve + CLD renoise step);
  for phase retrieval the solve is the damped magnitude projection (``physics.magnitude_prox``);
- ``dps``: ``restore(..., guidance="dps")``, ζ ||y - H(x0_hat)|| on the same CLD prior;
- ``dmps``: DMPS's closed-form uninformative-prior likelihood (``cvsa.dmps_velocity_score``);
  linear tasks only ("n/a" on phase retrieval);
- ``classical``: bicubic (sr4), biharmonic + TV (inpainting), Wiener (deblurring), HIO (phase
  retrieval) from :mod:`restoration.baselines` / :mod:`restoration.classical`.

Renders: held-out product renders, seeds ``TABLE1_SEED_START + i`` (the same scenes for every
task), disjoint from the training seeds, from the blind bench set (``BENCH_SEED_START`` + suite
x 10 000) and from the tuning renders (``TUNE_SEED_START + i``) on which :class:`Table1Settings`
was chosen (docs/math.md). Outputs are scored as saved (8-bit) against the render: PSNR / SSIM on
[0, 1] RGB; phase retrieval after ``tasks.align_phase_ambiguities`` (sign, point reflection,
small translations; per channel; the same for every method).

Each task's rows are written to ``<out>/parts/<task>-<spec hash>.parquet`` as soon as it is done
and reused by a rerun with the same settings (an interrupted run resumes); ``results.parquet``
(the bench's columns plus ``task``) and ``results.md`` (a table like the paper's) are written at
the end. Full size on a GPU: ``checkout-restore bench --suites table1 --size 256 --device cuda``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from flows.evaluation.frames import BenchError
from flows.evaluation.methods import METHOD_NAMES as BLIND_METHODS
from flows.evaluation.scoring import COLUMNS
from flows.evaluation.tables import write_results
from flows.fonts import find_fonts
from restoration.baselines import bicubic_upsample, hio_phase_retrieval, inpaint_classical
from restoration.classical import wiener_deconv
from restoration.cvsa import ScorePrior, restore, restore_proximal
from restoration.metrics import psnr, ssim
from restoration.rng import generator_for
from restoration.settings import GuidedSettings, ProximalSettings
from restoration.synthetic import HELDOUT_SEED_START, render_canvas
from restoration.tasks import (
    NOISE_SIGMA,
    SR_FACTOR,
    TASK_NAMES,
    TaskParams,
    align_phase_ambiguities,
    degrade,
    problem,
    task_params,
    truth_canvas_size,
)

METHOD_NAMES: tuple[str, ...] = ("classical", "dps", "dmps", "cvsa", "cvsa-prox")
TABLE1_SEED_START = HELDOUT_SEED_START + 500_000
TUNE_SEED_START = HELDOUT_SEED_START + 600_000


class NotApplicable(Exception):
    """A method that does not apply to a task (the cell says n/a and why)."""


@dataclass(frozen=True)
class Table1Settings:
    """Fixed method settings (chosen on the tuning renders, docs/math.md; one place for defaults).

    Steps are network evaluations. ``*_scale``: cvsa's multiplier on the literal 1/(2σ²) weight
    (1 = Alg. 1), DPS's ζ, DMPS's λ. cvsa-prox: ρ_t strength, gradient penalty μ = grad_reg σ²,
    CG iterations, renoise ζ, grid power (restoration.cvsa.restore_proximal).
    """

    cvsa_steps: int = 25
    cvsa_scale: float = 0.01
    dps_steps: int = 25
    dps_scale: float = 100.0
    dmps_steps: int = 25
    dmps_scale: float = 1.0
    guided_grid_power: float = 2.0
    prox_steps: int = 25
    prox_strength: float = 1.0
    grad_reg: float = 20.0
    cg_iters: int = 12
    renoise: float = 1.0
    grid_power: float = 3.0
    bf16: bool = True
    inpaint_tv_weight: float = 0.03
    hio_iters: int = 600
    hio_er_iters: int = 100
    hio_restarts: int = 4


@dataclass(frozen=True, eq=False)
class Observation:
    """A batch of degraded renders of one task (what a method sees) and the seed keys."""

    task: str
    y: torch.Tensor
    params: TaskParams
    keys: list[str]

    @property
    def size(self) -> int:
        if self.task == "sr4":
            return self.y.shape[-1] * SR_FACTOR
        if self.task == "phase-retrieval":
            return 2 * self.y.shape[-1] // 3
        return self.y.shape[-1]


@dataclass
class MethodContext:
    """Settings, device and the image prior (loaded on first use)."""

    settings: Table1Settings = field(default_factory=Table1Settings)
    device: str = "cpu"
    _prior: Any = field(default=None, repr=False)

    def prior(self) -> Any:
        if self._prior is None:
            from restoration.priors import load_shipped

            self._prior = load_shipped("image", self.device)
        return self._prior

    def score(self) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        from restoration.service import autocast_score

        return autocast_score(self.prior(), self.settings.bf16)


@dataclass(frozen=True, eq=False)
class MethodOutput:
    x: torch.Tensor  # (B, C, N, N) on [-1, 1]
    nfe: int


def _gens(obs: Observation, method: str) -> list[torch.Generator]:
    return [generator_for(f"table1/{method}/{k}") for k in obs.keys]


def _guided(
    obs: Observation, ctx: MethodContext, method: str, guidance: str, steps: int, scale: float
) -> MethodOutput:
    prob = problem(obs.task, obs.y.to(ctx.device), obs.params)
    settings = GuidedSettings(steps, guidance, scale, ctx.settings.guided_grid_power)
    res = restore(prob, ScorePrior(ctx.score(), ctx.prior().cld), settings, _gens(obs, method))
    return MethodOutput(prob.crop(res.x).clamp(-1, 1).cpu(), res.nfe)


def method_cvsa(obs: Observation, ctx: MethodContext) -> MethodOutput:
    """CVSA Alg. 1, literal guidance -||y - H(x0_hat)||^2 / (2σ^2) (times cvsa_scale)."""
    s = ctx.settings
    return _guided(obs, ctx, "cvsa", "literal", s.cvsa_steps, s.cvsa_scale)


def method_dps(obs: Observation, ctx: MethodContext) -> MethodOutput:
    """DPS weighting ζ ||y - H(x0_hat)|| on the same CLD prior and sampler."""
    s = ctx.settings
    return _guided(obs, ctx, "dps", "dps", s.dps_steps, s.dps_scale)


def method_dmps(obs: Observation, ctx: MethodContext) -> MethodOutput:
    """DMPS closed-form likelihood score (linear tasks only)."""
    if obs.task == "phase-retrieval":
        raise NotApplicable("n/a: DMPS's closed form needs a linear H")
    s = ctx.settings
    return _guided(obs, ctx, "dmps", "dmps", s.dmps_steps, s.dmps_scale)


def method_cvsa_prox(obs: Observation, ctx: MethodContext) -> MethodOutput:
    """Proximal CVSA: data-consistency solve per step + CLD renoise (restore_proximal)."""
    s = ctx.settings
    prob = problem(obs.task, obs.y.to(ctx.device), obs.params)
    settings = ProximalSettings(
        s.prox_steps, s.prox_strength, s.renoise, s.grid_power, s.grad_reg, s.cg_iters
    )
    prior = ScorePrior(ctx.score(), ctx.prior().cld)
    res = restore_proximal(prob, prior, settings, _gens(obs, "cvsa-prox"))
    return MethodOutput(prob.crop(res.x).clamp(-1, 1).cpu(), res.nfe)


def method_classical(obs: Observation, ctx: MethodContext) -> MethodOutput:
    """The task's classical reference (no learned prior)."""
    s, y = ctx.settings, obs.y
    if obs.task == "sr4":
        x = bicubic_upsample(y, SR_FACTOR)
    elif obs.task.startswith("inpaint"):
        prob = problem(obs.task, y, obs.params)  # fills in the default box mask
        mask = obs.params.mask if obs.params.mask is not None else (prob.forward(torch.ones_like(y))[:, :1])
        x = inpaint_classical(prob.y, mask, s.inpaint_tv_weight)
    elif obs.task.startswith("deblur"):
        assert obs.params.kernel is not None
        x = wiener_deconv(y, obs.params.kernel, None, NOISE_SIGMA)
    else:
        n = obs.size
        x = hio_phase_retrieval(
            y.float(), n, n // 4, _gens(obs, "classical"), iters=s.hio_iters,
            er_iters=s.hio_er_iters, restarts=s.hio_restarts,
        )  # fmt: skip
    return MethodOutput(x.clamp(-1, 1), 0)


#: name -> function(observation, context) -> MethodOutput. The whole registry.
METHODS: dict[str, Callable[[Observation, MethodContext], MethodOutput]] = {
    "classical": method_classical,
    "dps": method_dps,
    "dmps": method_dmps,
    "cvsa": method_cvsa,
    "cvsa-prox": method_cvsa_prox,
}


# ----------------------------------------------------------------------------- renders


def observe(
    task: str, size: int, seeds: list[int], fonts: tuple[str, ...]
) -> tuple[Observation, torch.Tensor]:
    """Degraded observations of the renders ``seeds`` under ``task`` and the sharp truth (B, 3, N, N)."""
    side = truth_canvas_size(task, size)
    x = torch.stack(
        [torch.from_numpy(render_canvas(s, side, side, list(fonts))).permute(2, 0, 1) for s in seeds]
    ).float() / 127.5 - 1.0
    keys = [f"{task}/{s}" for s in seeds]
    params = task_params(task, size, [generator_for(f"table1/{k}/params") for k in keys])
    y, truth = degrade(task, x, params, [generator_for(f"table1/{k}/noise") for k in keys])
    return Observation(task, y, params, keys), truth


def _quantise(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> 8-bit [0, 1], as a user would save it."""
    return (((x.float() + 1) / 2).clamp(0, 1) * 255).round() / 255


def run_task(
    task: str, methods: list[str], size: int, seeds: list[int], ctx: MethodContext,
    fonts: tuple[str, ...] = (), progress: bool = True,
) -> list[dict[str, Any]]:  # fmt: skip
    """Rows (one per render and method) for ``task``; renders of a method run as one batch."""
    obs, truth = observe(task, size, seeds, fonts)
    ref = _quantise(truth)
    rows: list[dict[str, Any]] = []
    for name in methods:
        started = time.perf_counter()
        note = ""
        try:
            out = METHODS[name](obs, ctx)
            x = out.x
            if task == "phase-retrieval":
                x = align_phase_ambiguities(x.double(), truth.double()).float()
            xq = _quantise(x)
            p, s_ = psnr(xq, ref).tolist(), ssim(xq, ref).tolist()
            nfe = out.nfe
        except NotApplicable as exc:
            p = s_ = [math.nan] * len(seeds)
            nfe, note = 0, str(exc)
        seconds = (time.perf_counter() - started) / len(seeds)
        if progress:
            print(f"  {task:16s} {name:10s} PSNR {np.nanmean(p) if note == '' else math.nan:6.2f} "
                  f"({seconds:.1f} s/render)", file=sys.stderr, flush=True)  # fmt: skip
        for key, pi, si in zip(obs.keys, p, s_, strict=True):
            row = dict.fromkeys(COLUMNS, math.nan)
            row.update(method=name, frame=f"table1/{key}", suite="table1", psnr=pi, ssim=si,
                       seconds=seconds, nfe=nfe, note=note, task=task)  # fmt: skip
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------- tables


def paper_table(df: pd.DataFrame) -> str:
    """Methods x tasks, 'PSNR / SSIM' per cell (means over renders), like the paper's Table 1/2."""
    tasks = [t for t in TASK_NAMES if t in set(df["task"])]
    methods = [m for m in METHOD_NAMES if m in set(df["method"])]
    lines = ["| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    best = {t: df[df.task == t].groupby("method")["psnr"].mean().idxmax() for t in tasks}
    for m in methods:
        cells = []
        for t in tasks:
            sub = df[(df.task == t) & (df.method == m)]
            if sub.empty:
                cells.append("")
            elif sub["psnr"].isna().all():
                cells.append("n/a")
            else:
                mp = sub["psnr"].mean()
                cell = f"{mp:.2f} / {sub['ssim'].mean():.3f}"
                cells.append(f"**{cell}**" if m == best[t] else cell)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", "Seconds per render (wall; a cell's renders run as one batch) and network evaluations:",
              "", "| method | " + " | ".join(tasks) + " |", "|---|" + "---:|" * len(tasks)]
    for m in methods:
        cells = []
        for t in tasks:
            sub = df[(df.task == t) & (df.method == m)]
            if sub.empty or sub["psnr"].isna().all():
                cells.append("" if sub.empty else "n/a")
            else:
                cells.append(f"{sub['seconds'].mean():.2f} s, {int(sub['nfe'].max())} NFE")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI hook


def parse_tasks(suites: str) -> list[str] | None:
    """Tasks named by ``--suites`` ('table1' = all, 'table1:sr4,table1:dps'); None if not table1."""
    names = [s.strip() for s in suites.split(",") if s.strip()]
    picked = [n for n in names if n == "table1" or n.startswith("table1:")]
    if not picked:
        return None
    if len(picked) != len(names):
        raise BenchError("--suites table1 cannot be mixed with the blind suites")
    if "table1" in picked:
        return list(TASK_NAMES)
    tasks = [n.split(":", 1)[1] for n in picked]
    bad = [t for t in tasks if t not in TASK_NAMES]
    if bad:
        raise BenchError(f"unknown table1 tasks {bad}; choose from {list(TASK_NAMES)}")
    return tasks


def run_table1(args: argparse.Namespace, tasks: list[str]) -> int:
    """`checkout-restore bench --suites table1 ...`: run, write results.parquet / results.md."""
    from pathlib import Path

    from storage.stores import open_store

    started, cpu0 = time.perf_counter(), time.process_time()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.methods == ",".join(BLIND_METHODS):  # the blind bench's default: all table1 methods
        methods = list(METHOD_NAMES)
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise BenchError(f"unknown table1 methods {bad}; choose from {list(METHODS)}")
    n = args.limit or args.frames_per_suite
    if n < 1 or args.size % 8 or args.size < 16:
        raise BenchError("table1 needs >= 1 render and --size a multiple of 8 (>= 16)")
    settings = Table1Settings()
    if args.steps:
        settings = Table1Settings(**{**asdict(settings), **{k: args.steps for k in
                                     ("cvsa_steps", "dps_steps", "dmps_steps", "prox_steps")}})  # fmt: skip
    fonts = tuple(find_fonts(args.fonts))
    seeds = [TABLE1_SEED_START + i for i in range(n)]
    ctx = MethodContext(settings=settings, device=args.device)
    if "://" not in args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    out = open_store(args.out)
    rows: list[dict[str, Any]] = []
    reused = 0
    for task in tasks:
        spec = {"task": task, "size": args.size, "seeds": seeds, "methods": methods,
                "settings": asdict(settings), "fonts": [Path(f).name for f in fonts]}  # fmt: skip
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
        part = f"parts/{task}-{digest}.parquet"
        if out.exists(part):
            rows.extend(pd.read_parquet(io.BytesIO(out.get(part))).to_dict("records"))
            print(f"  {task}: reusing {part}", file=sys.stderr)
            reused += 1
            continue
        task_rows = run_task(task, methods, args.size, seeds, ctx, fonts, not args.no_progress)
        buf = io.BytesIO()
        pd.DataFrame(task_rows, columns=[*COLUMNS, "task"]).to_parquet(buf, index=False)
        out.put(part, buf.getvalue())
        rows.extend(task_rows)
    df = pd.DataFrame(rows, columns=[*COLUMNS, "task"])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    header = "\n".join([
        "# Table 1/2 on checkout renders (non-blind tasks, shipped image prior)",
        "",
        f"- command: `checkout-restore {' '.join(getattr(args, 'argv', sys.argv[1:]))}`",
        f"- {n} renders per task at {args.size} px, seeds {seeds[0]}..{seeds[-1]}; noise σ = "
        f"{NOISE_SIGMA} on [-1, 1]; date {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- time in the methods (sum over all cells, {reused} of {len(tasks)} tasks reused from an "
        f"earlier invocation): {float(df['seconds'].sum()):.0f} s; this invocation: wall {wall:.0f} s, "
        f"process CPU {cpu:.0f} s, load average at the end {load}; {platform.machine()}, "
        f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, torch {torch.__version__}",
        f"- settings: {json.dumps(asdict(settings))}",
        "- cells: mean PSNR (dB) / SSIM of the 8-bit outputs on [0, 1] RGB; phase retrieval after"
        " resolving sign / point reflection / ±2 px shifts per channel (every method alike).",
        "",
        "",
    ])  # fmt: skip
    write_results(out, df, header + paper_table(df), wall)
    return 0


# ----------------------------------------------------------------------------- tuning


#: The candidates tried on the tuning renders (docs/math.md records what they measured).
TUNE_GRID: dict[str, tuple[tuple[str, Any], ...]] = {
    "cvsa": (("cvsa_scale", 1.0), ("cvsa_scale", 0.1), ("cvsa_scale", 0.01), ("cvsa_scale", 0.001)),
    "dps": (("dps_scale", 10.0), ("dps_scale", 100.0), ("dps_scale", 1000.0)),
    "dmps": (("dmps_scale", 1.0), ("dmps_scale", 0.5)),
    "cvsa-prox": (("prox_strength", 1.0),),
    "classical": (("inpaint_tv_weight", 0.0), ("inpaint_tv_weight", 0.03), ("inpaint_tv_weight", 0.08)),
}


def tune(tasks: list[str], methods: list[str], renders: int, size: int, steps: int) -> pd.DataFrame:
    """Mean PSNR of each TUNE_GRID candidate on ``renders`` tuning renders (TUNE_SEED_START + i)."""
    fonts = tuple(find_fonts())
    seeds = [TUNE_SEED_START + i for i in range(renders)]
    base = {**asdict(Table1Settings()), **{k: steps for k in
            ("cvsa_steps", "dps_steps", "dmps_steps", "prox_steps")}}  # fmt: skip
    records = []
    for task in tasks:
        obs, truth = observe(task, size, seeds, fonts)
        ref = _quantise(truth)
        for method in methods:
            for key, value in TUNE_GRID[method]:
                ctx = MethodContext(settings=Table1Settings(**{**base, key: value}))
                c0 = time.process_time()
                try:
                    x = METHODS[method](obs, ctx).x
                except NotApplicable:
                    continue
                if task == "phase-retrieval":
                    x = align_phase_ambiguities(x.double(), truth.double()).float()
                p = float(psnr(_quantise(x), ref).mean())
                rec = dict(task=task, method=method, key=key, value=value, psnr=p,
                           cpu_s=time.process_time() - c0)  # fmt: skip
                print(json.dumps(rec), flush=True)
                records.append(rec)
    return pd.DataFrame(records)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(prog="python -m flows.evaluation.table1", description="tune Table1Settings")
    ap.add_argument("--tasks", default=",".join(TASK_NAMES))
    ap.add_argument("--methods", default=",".join(METHOD_NAMES))
    ap.add_argument("--renders", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=Table1Settings.cvsa_steps)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    df = tune(a.tasks.split(","), a.methods.split(","), a.renders, a.size, a.steps)
    print(df.groupby(["task", "method", "key", "value"])["psnr"].mean().to_string())
