"""Where a restore actor computes and how many frames it restores in one vectorised call.

GPU actors (``cluster.num_gpus >= 1``) restore on the GPU Ray assigned them: Ray sets
``CUDA_VISIBLE_DEVICES`` to the actor's GPUs, so its device is ``cuda:0`` of what it sees. Host
tensors go to the GPU from pinned memory without blocking; the score networks run under bfloat16
autocast where the GPU supports it (Ampere and newer), float32 otherwise. How many frames go into
one call is set by memory, measured: two one-step probe restores (1 and 2 frames at the working
size) give the fixed and the per-pixel peak, and a batch is split so that each call fits in a share
of the free GPU memory. On CPU nothing is measured (host memory is not the limit at these sizes) and
batches run as they come.

The choices are plain functions of numbers (unit-tested on CPU); only :func:`probe_memory` needs a
GPU, and it has not run on one in this project yet (docs/scaling.md: GPU figures pending).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

MEMORY_HEADROOM = 0.8  # share of the free GPU memory a restore call may plan to use


class DeviceError(RuntimeError):
    """The actor cannot use the device it was configured for (a deployment problem, not a frame's)."""


def choose_device(requested: str, cuda_available: bool, cuda_devices: int) -> torch.device:
    """``cpu``, or ``cuda:0`` for an actor given a GPU; a GPU actor that sees none is an error
    (a CPU fallback would silently run a GPU-sized night on one core)."""
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "cuda":
        raise DeviceError(f"unknown device {requested!r}: 'cpu' or 'cuda'")
    if not cuda_available or cuda_devices < 1:
        raise DeviceError("actor was given a GPU (cluster.num_gpus > 0) but CUDA is not available here: "
                          "is the node's image the CUDA build and the NVIDIA driver present?")
    return torch.device("cuda", 0)


def use_bf16(requested: bool, device_type: str, cuda_bf16_supported: bool) -> bool:
    """bfloat16 autocast for the score networks: on CPU when asked, on CUDA only where the GPU
    supports bfloat16 (pre-Ampere GPUs would emulate it slowly)."""
    return requested and (device_type != "cuda" or cuda_bf16_supported)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host -> ``device``; to CUDA from pinned (page-locked) memory, asynchronously."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


@dataclass(frozen=True)
class MemoryModel:
    """Peak device memory of one restore call: ``fixed + per_pixel * pixels`` (bytes)."""

    fixed: float
    per_pixel: float

    @classmethod
    def from_probes(cls, peak_one: float, peak_two: float, pixels: int) -> MemoryModel:
        """From the peaks of a 1-frame and a 2-frame call of ``pixels`` pixels per frame."""
        per_frame = max(peak_two - peak_one, 1.0)
        return cls(fixed=max(peak_one - per_frame, 0.0), per_pixel=per_frame / pixels)

    def pixel_budget(self, free_bytes: float, headroom: float = MEMORY_HEADROOM) -> int:
        """Working-size pixels one call may hold in ``headroom`` of the free memory (>= 1)."""
        return max(1, math.floor((free_bytes * headroom - self.fixed) / self.per_pixel))


def split_by_pixels(pixels: Sequence[int], budget: int | None) -> list[list[int]]:
    """Indices of consecutive frames grouped so each group's pixels fit ``budget`` (None: one
    group). A frame larger than the budget alone is its own group (it runs; it may not fit)."""
    if budget is None:
        return [list(range(len(pixels)))] if pixels else []
    groups: list[list[int]] = []
    used = 0
    for i, p in enumerate(pixels):
        if groups and used + p <= budget:
            groups[-1].append(i)
            used += p
        else:
            groups.append([i])
            used = p
    return groups


def probe_memory(restore_call: Callable[[int], None], pixels: int, device: torch.device) -> MemoryModel:
    """Measure :class:`MemoryModel` on a CUDA device: ``restore_call(n)`` restores ``n`` frames of
    ``pixels`` pixels with one step; peaks are read from the CUDA caching allocator."""
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        restore_call(n)
        torch.cuda.synchronize(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    return MemoryModel.from_probes(peaks[0], peaks[1], pixels)
