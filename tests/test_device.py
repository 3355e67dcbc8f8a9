"""GPU readiness, checked on CPU: device choice, bf16 choice, transfers, memory-bounded batches.

The CUDA branches are plain functions of numbers here; the one piece that needs a GPU
(:func:`restoration.device.probe_memory`) has not run in this project (docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_frames import write_frames

from flows.config import load_config
from flows.pipeline.actors import RestoreWorker, RunContext
from restoration.device import (
    DeviceError,
    MemoryModel,
    choose_device,
    split_by_pixels,
    to_device,
    use_bf16,
)
from storage.images import decode_frame
from storage.keys import restored_key
from storage.sidecars import discover
from storage.stores import open_store


def test_choose_device() -> None:
    assert choose_device("cpu", cuda_available=True, cuda_devices=4) == torch.device("cpu")
    # Ray narrows CUDA_VISIBLE_DEVICES to the actor's GPUs: its GPU is the first it sees.
    assert choose_device("cuda", cuda_available=True, cuda_devices=1) == torch.device("cuda", 0)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        choose_device("cuda", cuda_available=False, cuda_devices=0)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        choose_device("cuda", cuda_available=True, cuda_devices=0)
    with pytest.raises(DeviceError, match="unknown device"):
        choose_device("mps", cuda_available=False, cuda_devices=0)


def test_use_bf16() -> None:
    assert use_bf16(True, "cpu", cuda_bf16_supported=False)
    assert use_bf16(True, "cuda", cuda_bf16_supported=True)
    assert not use_bf16(True, "cuda", cuda_bf16_supported=False)  # pre-Ampere: float32
    assert not use_bf16(False, "cuda", cuda_bf16_supported=True)
    assert not use_bf16(False, "cpu", cuda_bf16_supported=False)


def test_to_device_on_cpu_is_a_plain_copy_free_move() -> None:
    t = torch.arange(6.0).reshape(2, 3)
    out = to_device(t, torch.device("cpu"))
    assert out.device.type == "cpu" and torch.equal(out, t) and not out.is_pinned()


def test_memory_model_recovers_fixed_and_per_pixel_cost() -> None:
    fixed, per_pixel, pixels = 300e6, 9000.0, 128 * 128
    model = MemoryModel.from_probes(fixed + per_pixel * pixels, fixed + 2 * per_pixel * pixels, pixels)
    assert model.fixed == pytest.approx(fixed) and model.per_pixel == pytest.approx(per_pixel)
    free = 40e9
    budget = model.pixel_budget(free, headroom=0.8)
    assert fixed + per_pixel * budget <= 0.8 * free < fixed + per_pixel * (budget + 1)
    assert budget // pixels == int((0.8 * free - fixed) / (per_pixel * pixels))  # 128² frames per call
    assert model.pixel_budget(1.0) == 1  # never zero: one frame always runs
    # Noisy probes (peak 2 below peak 1) stay positive rather than dividing by zero.
    assert MemoryModel.from_probes(5.0, 4.0, 10).per_pixel > 0


def test_split_by_pixels_keeps_order_and_fits_the_budget() -> None:
    assert split_by_pixels([], 10) == []
    assert split_by_pixels([4, 4, 4], None) == [[0, 1, 2]]
    assert split_by_pixels([4, 4, 4], 8) == [[0, 1], [2]]
    assert split_by_pixels([4, 20, 4], 8) == [[0], [1], [2]]  # too big alone: its own call
    rng = np.random.default_rng(0)
    for _ in range(50):
        pixels = [int(p) for p in rng.integers(1, 50, rng.integers(1, 20))]
        budget = int(rng.integers(1, 120))
        groups = split_by_pixels(pixels, budget)
        assert [i for g in groups for i in g] == list(range(len(pixels)))
        assert all(len(g) == 1 or sum(pixels[i] for i in g) <= budget for g in groups)


class Counting:
    """Wraps a restorer and records how many frames each call got."""

    def __init__(self, inner: object) -> None:
        self.inner, self.calls = inner, []
        self.model_version = inner.model_version  # type: ignore[attr-defined]

    def __call__(self, frames: list) -> list:
        self.calls.append(len(frames))
        return self.inner(frames)  # type: ignore[operator]


def _worker(tmp_path: Path, name: str, device: str = "cpu") -> RestoreWorker:
    settings = load_config("smoke").restoration.model_copy(update={"steps": 2})
    ctx = RunContext(run_id="r", source_uri=open_store(tmp_path / "inbox").uri,
                     dest_uri=open_store(tmp_path / name, create=True).uri, config_hash="h")
    return RestoreWorker(settings.model_dump(), ctx, device=device)


def test_gpu_actor_without_cuda_fails_clearly(tmp_path: Path) -> None:
    write_frames(open_store(tmp_path / "inbox", create=True), ["a"])
    with pytest.raises(DeviceError, match=r"cluster\.num_gpus"):
        _worker(tmp_path, "out", device="cuda")


def test_memory_bounded_calls_restore_what_one_call_restores(tmp_path: Path) -> None:
    """Splitting a batch into calls that fit the memory budget changes no output (per-frame
    generators), which is what makes the GPU's memory-bounded batches safe."""
    inbox = open_store(tmp_path / "inbox", create=True)
    names = ["a", "b", "c"]
    write_frames(inbox, names, truth=False)
    refs = [replace(r, etag=inbox.head(r.key).etag) for r in discover(inbox)]
    whole = _worker(tmp_path, "whole")
    assert whole.ready()["device"] == "cpu" and whole.ready()["pixel_budget"] is None
    split = _worker(tmp_path, "split")
    split._restorer = counting = Counting(split._restorer)
    split._pixel_budget = 2 * 32 * 40  # two of the 32×40 test frames per call
    rows_whole, rows_split = whole.restore(refs), split.restore(refs)
    assert counting.calls == [2, 1]
    assert [r["status"] for r in rows_whole] == [r["status"] for r in rows_split] == ["restored"] * 3
    for name in names:
        a = decode_frame(open_store(tmp_path / "whole").get(restored_key(name)))
        b = decode_frame(open_store(tmp_path / "split").get(restored_key(name)))
        assert np.array_equal(a, b), name
