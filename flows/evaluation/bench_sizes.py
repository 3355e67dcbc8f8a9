"""`checkout-restore bench-pipeline --sizes 320x320,640x480,1920x1080`: seconds per frame and peak
memory of one frame restored at its own resolution, per frame size.

Each size runs in a fresh Python process (so its peak resident set size is its own): the actor's
unit of work, :class:`restoration.service.FrameRestorer` with the chosen config's restoration settings
(noise estimate, kernel estimation and whatever kernel candidates the config runs, the tiled CVSA
sampler), on one synthetic checkout frame of that size (a held-out render, blurred by a 21-px
motion kernel with valid convolution, noise std 0.01, 8-bit). Reported: the restore call's wall
time, the process's peak RSS (ru_maxrss: priors, torch and the frame's buffers), and the load
average next to it, because on a shared CPU the wall time says as much about the neighbours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any


class SizeBenchError(ValueError):
    """A --sizes value that is not WxH with positive integers."""


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """'320x320,640x480' -> [(320, 320), (640, 480)] as (width, height)."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            w, h = (int(v) for v in part.lower().split("x"))
        except ValueError as exc:
            raise SizeBenchError(f"--sizes wants WxH items like 640x480, got {part!r}") from exc
        if w < 16 or h < 16:
            raise SizeBenchError(f"frame sizes must be at least 16x16, got {part!r}")
        out.append((w, h))
    if not out:
        raise SizeBenchError("--sizes is empty")
    return out


def size_frame(width: int, height: int, seed: int = 0) -> Any:
    """A blurred synthetic checkout frame (H, W, 3) uint8 of the given size (deterministic)."""

    from restoration import kernels as kern
    from restoration.rng import generator_for
    from restoration.synthetic import HELDOUT_SEED_START, render_canvas
    from restoration.synthetic.degrade import observe

    g = generator_for(f"bench-sizes/{width}x{height}/{seed}")
    ksize = 21
    k = kern.sample_kernels(1, ksize, g, ("motion",)).double()
    canvas = render_canvas(HELDOUT_SEED_START + 900_000 + seed, height + ksize - 1, width + ksize - 1)
    return observe(canvas, k / k.sum(), 0.01, g)[0]


def measure_one(width: int, height: int, config: str, threads: int, device: str,
                steps: int | None = None) -> dict[str, Any]:
    """Restore one frame of this size in this process; timings and peak RSS."""
    import torch

    from flows.config import load_config
    from restoration.service import FrameInput, FrameRestorer

    torch.set_num_threads(threads)
    settings = load_config(config).restoration
    if steps:
        settings = settings.model_copy(update={"steps": steps})
    image = size_frame(width, height)
    t0 = time.perf_counter()
    restorer = FrameRestorer(settings, device=device)
    t1 = time.perf_counter()
    with torch.no_grad():
        out = restorer([FrameInput(key="f", image=image, mask=None, seed_key="bench-sizes")])[0]
    t2 = time.perf_counter()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    return {"size": f"{width}x{height}", "device": device, "threads": threads, "steps": settings.steps,
            "load_s": t1 - t0, "restore_s": t2 - t1, "peak_rss_gib": peak, "gpu_peak_gib": gpu_peak,
            "noise_sigma": out.noise_sigma, "shape_ok": out.restored.shape == image.shape,
            "loadavg": os.getloadavg()[0]}


def bench_sizes(sizes: list[tuple[int, int]], config: str, threads: int, device: str,
                steps: int | None = None) -> list[dict[str, Any]]:
    """measure_one per size, each in a fresh interpreter (peak RSS per size)."""
    rows = []
    for w, h in sizes:
        cmd = [sys.executable, "-m", "flows.evaluation.bench_sizes", "--one", f"{w}x{h}", "--config", config,
               "--threads", str(threads), "--device", device]
        if steps:
            cmd += ["--steps", str(steps)]
        started = os.getloadavg()[0]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"bench-pipeline --sizes {w}x{h} failed: {tail[0]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["loadavg_start"] = started
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], config: str) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [f"bench-pipeline --sizes: config {config}, {os.cpu_count()} CPUs ({cpu}), one frame per size, "
             "priors loaded before timing",
             "",
             "| size | device | threads | steps | restore s/frame | peak RSS GiB | GPU peak GiB | load avg "
             "(start / end) |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        gpu = "–" if r["gpu_peak_gib"] != r["gpu_peak_gib"] else f"{r['gpu_peak_gib']:.2f}"
        lines.append(f"| {r['size']} | {r['device']} | {r['threads']} | {r['steps']} | {r['restore_s']:.1f} "
                     f"| {r['peak_rss_gib']:.2f} | {gpu} | {r['loadavg_start']:.1f} / {r['loadavg']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Internal entry for one size (``--one WxH``), printing one JSON line."""
    p = argparse.ArgumentParser(prog="python -m flows.evaluation.bench_sizes")
    p.add_argument("--one", required=True)
    p.add_argument("--config", default="default")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int)
    args = p.parse_args(argv)
    (w, h), = parse_sizes(args.one)
    print(json.dumps(measure_one(w, h, args.config, args.threads, args.device, args.steps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
