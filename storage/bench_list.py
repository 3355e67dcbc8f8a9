"""Memory of listing many keys: streaming ``store.list()`` versus materialising it.

    python -m storage.bench_list                  # 10,000 keys, local and S3 (moto server)
    python -m storage.bench_list --keys 1000,10000,30000 --backend s3
    python -m storage.bench_list --uri s3://bucket/prefix   # an existing store, no fill

Peak Python allocations are measured with :mod:`tracemalloc` while iterating (after one
warm-up call, so botocore's one-time service-model load is not counted). The S3 backend needs
moto (a dev dependency); keys are put straight into moto's in-process backend, because the
point is to measure the listing, which still goes over HTTP through boto3's paginator.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from storage.base import ObjectStore
from storage.stores import open_store

_BENCH_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class ListingMeasure:
    backend: str
    mode: str  # "streaming" (iterate) or "materialised" (list(...))
    keys: int
    peak_bytes: int
    seconds: float


def measure_listing(
    store: ObjectStore, prefix: str = "", *, materialise: bool = False
) -> tuple[int, int, float]:
    """``(keys, peak traced bytes, seconds)`` of one listing of ``prefix``."""
    next(iter(store.list(prefix)), None)  # warm-up: client/paginator set-up is one-time
    gc.collect()
    tracemalloc.start()
    try:
        t0 = time.perf_counter()
        if materialise:
            keys = list(store.list(prefix))
            count = len(keys)
        else:
            count = 0
            for _ in store.list(prefix):
                count += 1
        seconds = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return count, peak, seconds


def fill_local(root: Path, n: int, folder: str = "frames") -> None:
    """``n`` empty ``.png`` files in one folder (the worst case for the local store)."""
    target = root / folder
    target.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (target / f"cam1-{i:07d}.png").touch()


_MOTO_SCRIPT = """
import logging, sys
import boto3
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends
from moto.server import ThreadedMotoServer
port, n, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
logging.getLogger("werkzeug").setLevel(logging.ERROR)
server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
server.start()
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket="bench-list")
backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
for i in range(n):
    backend.put_object("bench-list", f"{folder}/cam1-{i:07d}.png", b"")
print("ready", flush=True)
sys.stdin.read()
server.stop()
"""


@contextmanager
def moto_bucket(n: int, page_size: int, folder: str = "frames") -> Iterator[ObjectStore]:
    """A moto S3 server holding ``n`` keys, in a child process (so that tracemalloc here
    sees only the client); yields an S3 store on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **_BENCH_ENV, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}")
    child = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SCRIPT, str(port), str(n), folder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert child.stdout is not None
        if child.stdout.readline().strip() != "ready":
            raise RuntimeError("moto server did not start (is moto[server] installed?)")
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield open_store("s3://bench-list", page_size=page_size, read_only=True)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=30)


def run(backends: list[str], counts: list[int], page_size: int) -> list[ListingMeasure]:
    rows: list[ListingMeasure] = []
    for n in counts:
        rows.extend(_run_one(backends, n, page_size))
    return rows


def _run_one(backends: list[str], n: int, page_size: int) -> list[ListingMeasure]:
    rows: list[ListingMeasure] = []

    def both(name: str, store: ObjectStore) -> None:
        for materialise in (False, True):
            count, peak, secs = measure_listing(store, "frames/", materialise=materialise)
            mode = "materialised" if materialise else "streaming"
            rows.append(ListingMeasure(name, mode, count, peak, secs))

    if "local" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            fill_local(Path(tmp), n)
            both("local", open_store(tmp, read_only=True))
    if "s3" in backends:
        with moto_bucket(n, page_size) as store:
            both(f"s3 (moto, page {page_size})", store)
    return rows


def format_table(rows: list[ListingMeasure]) -> str:
    lines = [
        f"{'backend':<24} {'mode':<13} {'keys':>8} {'peak KiB':>10} {'B/key':>7} {'s':>6}",
        "-" * 73,
    ]
    for r in rows:
        lines.append(
            f"{r.backend:<24} {r.mode:<13} {r.keys:>8} {r.peak_bytes / 1024:>10.0f} "
            f"{r.peak_bytes / max(r.keys, 1):>7.0f} {r.seconds:>6.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keys", default="10000", help="key counts, comma-separated (e.g. 1000,10000,30000)"
    )
    parser.add_argument("--backend", choices=["local", "s3", "both"], default="both")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--uri", help="measure an existing store instead (no fill)")
    parser.add_argument("--prefix", default="", help="with --uri: the prefix to list")
    args = parser.parse_args(argv)
    if args.uri:
        store = open_store(args.uri, read_only=True)
        rows = []
        for materialise in (False, True):
            count, peak, secs = measure_listing(store, args.prefix, materialise=materialise)
            mode = "materialised" if materialise else "streaming"
            rows.append(ListingMeasure(store.uri, mode, count, peak, secs))
    else:
        backends = ["local", "s3"] if args.backend == "both" else [args.backend]
        counts = [int(c) for c in args.keys.split(",")]
        rows = run(backends, counts, args.page_size)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
