"""Listing memory is bounded: S3 holds one page at a time, the local store one folder.

Measured with tracemalloc through storage.bench_list (the S3 server runs in a child process
so that only the client's allocations are counted). The full 10,000-key table is
``python -m storage.bench_list`` (docs/storage.md)."""

from __future__ import annotations

from pathlib import Path

from storage.bench_list import fill_local, measure_listing, moto_bucket
from storage.stores import open_store


def test_s3_listing_peak_does_not_grow_with_key_count() -> None:
    peaks = {}
    for n in (400, 2000):
        with moto_bucket(n, page_size=100) as store:
            runs = [measure_listing(store, "frames/") for _ in range(2)]
            assert all(count == n for count, _, _ in runs)
            peak = min(p for _, p, _ in runs)  # best of two: first-use caches excluded
            keys, peak_all, _ = measure_listing(store, "frames/", materialise=True)
            assert keys == n
            peaks[n] = (peak, peak_all)
    streaming_small, _ = peaks[400]
    streaming_big, materialised_big = peaks[2000]
    # 5x the keys: the streaming peak stays within 30% (one 100-key page at a time; measured
    # +7%, from per-page variation) ...
    assert streaming_big < 1.3 * streaming_small, peaks
    # ... while holding all keys costs clearly more.
    assert materialised_big > streaming_big + 50_000, peaks


def test_local_listing_peak_is_bounded_by_folder_size(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    for i in range(2):
        fill_local(small, 200, folder=f"frames/day{i:02d}")
    for i in range(20):
        fill_local(big, 200, folder=f"frames/day{i:02d}")
    count_small, peak_small, _ = measure_listing(open_store(small, read_only=True), "frames/")
    count_big, peak_big, _ = measure_listing(open_store(big, read_only=True), "frames/")
    assert (count_small, count_big) == (400, 4000)
    _, peak_all, _ = measure_listing(open_store(big, read_only=True), "frames/", materialise=True)
    # 10x the keys in 10x the folders of the same size: the peak stays within 25%.
    assert peak_big < 1.25 * peak_small, (peak_small, peak_big)
    assert peak_all > 2 * peak_big, (peak_big, peak_all)
