"""The scaling measurement behind docs/scaling.md: N synthetic frames through the real flow.

    python -m flows.evaluation.scale_run --frames 1000 --size 64 --config configs/scaling.yaml \
        --dir runs/scale

Writes ``N`` blurred ``size``×``size`` PNG frames into ``<dir>/inbox`` (the generator of
``bench-pipeline``), runs the ``restore-frames`` flow (Prefect, Ray actors, ledger, report — nothing
bypassed) into ``<dir>/out`` and prints wall time, frames/s and the peak resident memory of the
driver, of each Ray actor and of the rest of the process tree (Ray's GCS and raylet, the temporary
Prefect server). Memory is sampled from ``/proc`` once a second (the driver's own peak is exact,
``getrusage``), so a child's peak between two samples can be missed. Reruns skip what the ledger
says is done, so an interrupted measurement can be resumed; ``<dir>/scale.json`` gets the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, rss KiB, command line) for every readable process."""
    out: dict[int, tuple[int, int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) "
        out[int(entry)] = (int(fields[1]), int(fields[21]) * _PAGE_KB, cmd)
    return out


def _kind(cmd: str) -> str:
    if "RestoreWorker" in cmd:
        return "actor"
    if "prefect" in cmd or "uvicorn" in cmd:
        return "prefect"
    return "other"


@dataclass
class MemorySampler:
    """Peak RSS (MiB) of the descendants of ``root``, by kind, sampled every ``interval`` s."""

    root: int
    interval: float = 1.0
    peaks: dict[str, float] = field(default_factory=dict)  # kind -> max single-process RSS
    peak_actor_sum: float = 0.0
    peak_tree: float = 0.0
    actors_seen: set[int] = field(default_factory=set)

    def sample(self) -> None:
        table = _proc_table()
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        stack, tree = list(children.get(self.root, [])), []
        while stack:
            pid = stack.pop()
            tree.append(pid)
            stack.extend(children.get(pid, []))
        actor_sum = total = 0.0
        for pid in tree:
            _, rss_kb, cmd = table[pid]
            mib, kind = rss_kb / 1024, _kind(cmd)
            self.peaks[kind] = max(self.peaks.get(kind, 0.0), mib)
            total += mib
            if kind == "actor":
                self.actors_seen.add(pid)
                actor_sum += mib
        self.peak_actor_sum = max(self.peak_actor_sum, actor_sum)
        self.peak_tree = max(self.peak_tree, total)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self.sample()


def write_inbox(inbox: Path, frames: int, size: int) -> int:
    """``frames`` synthetic blurred frames (idempotent: existing keys are kept as they are)."""
    from flows.evaluation.pipeline_bench import bench_frames
    from storage.stores import open_store

    store = open_store(inbox, create=True)
    existing = set(store.list("scale/"))
    missing = [i for i in range(frames) if f"scale/f{i:05d}.png" not in existing]
    if missing:
        for i, data in enumerate(bench_frames(frames, size)):
            if i in missing:
                store.put(f"scale/f{i:05d}.png", data)
    return frames


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flows.evaluation.scale_run",
                                description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=1000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--config", default="configs/scaling.yaml")
    p.add_argument("--dir", type=Path, default=Path("runs/scale"))
    args = p.parse_args(argv)
    if args.frames < 1 or args.size < 16:
        raise SystemExit("--frames must be >= 1 and --size >= 16")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary Prefect server gets its own database next to the run, and time to start on a busy
    # machine (Prefect's default start-up timeout is short).
    os.environ.setdefault("PREFECT_HOME", str((args.dir / "prefect-home").resolve()))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    from flows.pipeline.flow import restore_frames

    inbox, out = (args.dir / "inbox").resolve(), (args.dir / "out").resolve()
    t0 = time.perf_counter()
    write_inbox(inbox, args.frames, args.size)
    print(f"inbox: {inbox} ({args.frames} frames {args.size}x{args.size}, {time.perf_counter() - t0:.1f} s)",
          flush=True)
    sampler, stop = MemorySampler(os.getpid()), threading.Event()
    thread = threading.Thread(target=sampler.run, args=(stop,), daemon=True)
    thread.start()
    load0 = os.getloadavg()
    t1 = time.perf_counter()
    try:
        summary = restore_frames(source=str(inbox), dest=str(out), config=args.config)
    finally:
        stop.set()
        thread.join()
    wall = time.perf_counter() - t1
    result = {
        "frames": args.frames, "size": args.size, "config": args.config, "wall_s": round(wall, 1),
        "counts": summary["counts"], "actors": summary["actors"],
        "restore_frames_per_s": summary["frames_per_s"],
        "end_to_end_frames_per_s": summary["counts"]["restored"] / wall,
        "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "actor_peak_rss_mib": sampler.peaks.get("actor"), "actors_sum_peak_rss_mib": sampler.peak_actor_sum,
        "prefect_server_peak_rss_mib": sampler.peaks.get("prefect"),
        "other_children_peak_rss_mib": sampler.peaks.get("other"), "tree_peak_rss_mib": sampler.peak_tree,
        "load_average_start": load0, "load_average_end": os.getloadavg(), "cpus": os.cpu_count(),
        "run_id": summary["run_id"], "report_uri": summary["report_uri"],
    }
    (args.dir / "scale.json").write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
