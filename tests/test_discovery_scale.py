"""Discovery at scale on moto's S3 server (issue 23, docs/scaling.md): the pending frames are
decided from the listing's ETags and the ledger index, not a HEAD and a ledger GET per frame.
Counts every S3 request of ``find_frames`` for N frames (10⁴ by default, ``CKR_DISCOVERY_FRAMES``):
all pending on a fresh destination, all up to date, all pending again after a settings change,
and the frame-by-frame path for comparison (an incomplete index)."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import pytest

from flows.pipeline.tasks import find_frames, plan_run
from storage import ledger_index
from storage.stores import open_store

pytestmark = pytest.mark.slow

N = int(os.environ.get("CKR_DISCOVERY_FRAMES", "10000"))


def _counted(uri: str, read_only: bool = False) -> tuple[object, list[str]]:
    store = open_store(uri, read_only=read_only)
    seen: list[str] = []
    store.client.meta.events.register("before-send.s3", lambda request, **_: seen.append(request.method))
    return store, seen


def _measure(src: str, dst: str) -> tuple[object, int, float]:
    source, a = _counted(src, read_only=True)
    dest, b = _counted(dst)
    t0 = time.perf_counter()
    found = find_frames(source, dest)
    return found, len(a) + len(b), time.perf_counter() - t0


@pytest.mark.timeout(900)
def test_discovery_of_many_frames_costs_at_most_3_requests_per_100(s3_env: object, s3_bucket: str) -> None:
    client = boto3.client("s3")
    names = [f"cam{i % 10}/f{i:06d}.png" for i in range(N)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda k: client.put_object(Bucket=s3_bucket, Key=f"in/{k}", Body=k.encode()), names))
    src, dst = f"s3://{s3_bucket}/in", f"s3://{s3_bucket}/out"
    figures = []

    found, requests, seconds = _measure(src, dst)  # fresh destination: every frame is new
    assert len(found.candidates) == N and found.indexed
    assert len(plan_run(found, "cfg1", "model1", None).pending) == N
    figures.append(("all pending (fresh destination)", requests, seconds))

    dest = open_store(dst)
    index = {c.ref.id: ledger_index.ref_facts(c.ref, "cfg1", "model1", None) for c in found.candidates}
    ledger_index.save(dest, index)  # what the run saves after restoring them
    found, requests, seconds = _measure(src, dst)
    assert len(plan_run(found, "cfg1", "model1", None).pending) == 0  # all up to date
    figures.append(("all up to date", requests, seconds))
    assert len(plan_run(found, "cfg2", "model1", None).pending) == N  # a settings change: all pending
    figures.append(("all pending after a settings change", requests, seconds))

    for label, req, sec in figures:
        print(f"\nFIGURES discovery {N} frames, {label}: {req} requests "
              f"({100 * req / N:.2f} per 100 frames), {sec:.1f} s")
        assert req <= 3 * N / 100, (label, req)

    ledger_index.mark_incomplete(dest)  # frame by frame, for comparison (a run died mid-way)
    sample = f"s3://{s3_bucket}/in/cam0"
    found, requests, seconds = _measure(sample, dst)
    print(f"\nFIGURES discovery {len(found.candidates)} frames frame by frame (incomplete index): {requests} "
          f"requests ({100 * requests / len(found.candidates):.0f} per 100 frames), {seconds:.1f} s")
    assert requests >= 2 * len(found.candidates)
