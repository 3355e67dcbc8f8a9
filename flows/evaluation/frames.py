"""The benchmark's frames: a sidecar-layout store (docs/design.md §4) read into frames with their
truth (sharp image, kernel, mask, code texts), and the error every bench step raises."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flows.evaluation.bench_native import CODES_SUFFIX
from restoration.codes import decode_codes
from storage.base import ObjectStore
from storage.frames import load_frame
from storage.images import encode_png
from storage.sidecars import discover, save_kernel


class BenchError(RuntimeError):
    """A benchmark could not run as asked (bad arguments, missing truth, missing method)."""


@dataclass(frozen=True, eq=False)
class BenchFrame:
    """A frame with its truth: tensors on [0, 1], batch dimension 1."""

    id: str
    suite: str
    image: np.ndarray  # (H, W, 3) uint8, the frame as stored
    y: torch.Tensor  # (1, 3, H, W) float32 on [0, 1]
    mask: torch.Tensor | None  # (1, 1, H, W) 1 = observed
    sharp: torch.Tensor | None  # (1, 3, H, W) on [0, 1]
    kernel: torch.Tensor | None  # (1, 1, K, K) float32, sums to 1
    codes: tuple[str, ...] | None = None  # true code texts (<id>.codes.json), None: not a code frame
    codes_sharp: tuple[str, ...] = ()  # those of them zxing-cpp reads in the sharp truth


def _suite_of(frame_id: str) -> str:
    return frame_id.rsplit("/", 1)[0] if "/" in frame_id else "all"


def to_unit(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0


def load_frames(
    store: ObjectStore, limit: int | None = None, suites: Sequence[str] | None = None
) -> list[BenchFrame]:
    """Frames of a sidecar-layout store sorted by id (the first ``limit`` of them), optionally only
    those of ``suites``."""
    refs = sorted(discover(store), key=lambda r: r.id)
    if suites is not None:
        refs = [r for r in refs if _suite_of(r.id) in suites]
    if limit is not None:
        refs = refs[:limit]
    frames = []
    for ref in refs:
        data = load_frame(store, ref)
        codes = _true_codes(store, ref.id)
        codes_sharp = () if codes is None or data.sharp is None else read_codes(data.sharp, codes)
        frames.append(
            BenchFrame(
                id=ref.id,
                suite=_suite_of(ref.id),
                image=data.image,
                y=to_unit(data.image),
                mask=None
                if data.mask is None
                else torch.from_numpy(data.mask.astype(np.float32))[None, None],
                sharp=None if data.sharp is None else to_unit(data.sharp),
                kernel=None
                if data.kernel is None
                else torch.from_numpy(np.asarray(data.kernel, np.float32))[None, None],
                codes=codes,
                codes_sharp=codes_sharp,
            )
        )
    return frames


def _true_codes(store: ObjectStore, frame_id: str) -> tuple[str, ...] | None:
    key = f"{frame_id}{CODES_SUFFIX}"
    if not store.exists(key):
        return None
    try:
        codes = json.loads(store.get(key))["codes"]
    except (ValueError, KeyError, TypeError) as exc:
        raise BenchError(f"{key} is not a codes sidecar ({{'codes': [texts]}}): {exc}") from exc
    return tuple(str(c) for c in codes)


def read_codes(image: np.ndarray, truth: tuple[str, ...]) -> tuple[str, ...]:
    """The true code texts zxing-cpp reads back from an 8-bit frame (a wrong text does not count)."""
    found = set(decode_codes(image))
    return tuple(c for c in truth if c in found)


def sidecar_files(fid: str, observed: np.ndarray, sharp: np.ndarray, kernel: torch.Tensor,
                  mask: np.ndarray | None) -> dict[str, bytes]:
    """A generated frame in the sidecar layout (docs/design.md §4): the observed frame, its sharp
    truth, its kernel (1, 1, K, K) and, under a hand, its mask, as encoded bytes."""
    files = {
        f"{fid}.png": encode_png(observed),
        f"{fid}.sharp.png": encode_png(np.ascontiguousarray(sharp)),
        f"{fid}.kernel.npy": save_kernel(kernel[0, 0].numpy()),
    }
    if mask is not None:
        files[f"{fid}.mask.png"] = encode_png(mask)
    return files
