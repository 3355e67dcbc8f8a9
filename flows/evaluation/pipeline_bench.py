"""`checkout-restore bench-pipeline`: frames/s of the Ray fan-out for several actor counts, on
synthetic blurred frames (a throughput measurement of the pipeline, not a quality benchmark)."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any


def bench_frames(n: int, size: int, seed: int = 0) -> list[bytes]:
    """``n`` synthetic blurred PNG frames (smooth colour fields with edges, 9-px horizontal motion
    blur, noise 0.02), observed like every synthetic frame (restoration/synthetic/degrade.py)."""
    import numpy as np
    import torch

    from restoration.rng import generator_for
    from restoration.synthetic.degrade import observe
    from storage.images import encode_png

    rng = np.random.default_rng(seed)
    g = generator_for(f"bench-pipeline/{seed}")
    side = size + 8  # the valid blur of a 9-px kernel
    yy, xx = np.mgrid[0:side, 0:side] / side
    kernel = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    kernel[0, 0, 4, :] = 1 / 9
    out = []
    for _ in range(n):
        img = np.stack([np.sin(2 * np.pi * (rng.uniform(1, 3) * xx + rng.uniform(0, 1) * yy + rng.uniform()))
                        for _ in range(3)], axis=-1) * 0.3 + 0.5
        x0, y0 = rng.integers(0, side // 2, 2)
        img[y0:y0 + side // 3, x0:x0 + side // 3] = rng.uniform(0, 1, 3)
        canvas = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        out.append(encode_png(observe(canvas, kernel, 0.02, g)[0]))
    return out


def bench_pipeline(frames: int, size: int, working_size: int, steps: int, batch_size: int,
                   actor_counts: list[int], config: str = "smoke") -> list[dict[str, Any]]:
    """Restore the same frames with each actor count (fresh destination each time) and measure
    actor start-up (priors loading) and restore throughput (decode + restore + write + ledger)."""
    import tempfile

    from flows.config import load_config
    from flows.pipeline.actors import RunContext
    from flows.pipeline.fanout import ActorPool, fan_out
    from flows.pipeline.ray_local import ensure_ray
    from storage.reports import new_run_id
    from storage.sidecars import discover
    from storage.stores import open_store

    base = load_config(config)
    restoration = base.restoration.model_copy(update={"working_size": working_size, "steps": steps,
                                                      "batch_size": batch_size})
    results = []
    with tempfile.TemporaryDirectory(prefix="ckr-bench-") as tmp:
        source = open_store(Path(tmp) / "inbox")
        for i, data in enumerate(bench_frames(frames, size)):
            source.put(f"bench/f{i:04d}.png", data)
        refs = [replace(r, etag=source.head(r.key).etag) for r in discover(source)]
        batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
        cluster_max = max(actor_counts)
        big = base.cluster.model_copy(update={"actors": cluster_max})
        with ensure_ray(big) as local:
            for n in actor_counts:
                cluster = base.cluster.model_copy(update={"actors": n, "max_in_flight": 2 * n})
                ctx = RunContext(run_id=new_run_id(), source_uri=source.uri,
                                 dest_uri=(Path(tmp) / f"out-{n}").as_uri(), config_hash=f"bench-{n}")
                t0 = time.perf_counter()
                pool = ActorPool(cluster, restoration, ctx, local=local)
                try:
                    pool.ready()
                    t1 = time.perf_counter()
                    rows, _ = fan_out(pool, batches, max_in_flight=cluster.max_in_flight)
                    t2 = time.perf_counter()
                finally:
                    pool.close()
                done = [r for r in rows if r["status"] == "restored"]
                results.append({"actors": n, "frames": len(done), "size": size, "working_size": working_size,
                                "steps": steps, "batch_size": batch_size, "startup_s": t1 - t0,
                                "restore_s": t2 - t1, "frames_per_s": len(done) / (t2 - t1),
                                # sampler time per frame inside an actor: grows when actors share cores
                                "actor_s_per_frame": sum(r["seconds"] for r in done) / max(1, len(done))})
    return results
