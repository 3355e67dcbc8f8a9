"""Tiny synthetic checkout frames for the pipeline tests (not a test module).

Each frame is a smooth colour field with a bright block, blurred by a horizontal motion kernel,
with optional ground truth sidecars (``.sharp.png``, ``.kernel.npy``) and an occlusion mask.
"""

from __future__ import annotations

import io

import numpy as np
from scipy.ndimage import convolve

from storage.base import ObjectStore
from storage.images import encode_png

SIZE = (32, 40)  # (H, W): tiny, so the smoke config restores a batch in well under a second


def motion_kernel(length: int = 5, size: int = 7) -> np.ndarray:
    k = np.zeros((size, size), np.float32)
    k[size // 2, (size - length) // 2:(size - length) // 2 + length] = 1.0
    return k / k.sum()


def make_frame(seed: int, size: tuple[int, int] = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(blurred uint8 frame, sharp uint8 truth, kernel) for one seed."""
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    sharp = np.stack([0.5 + 0.3 * np.sin(2 * np.pi * (rng.uniform(1, 2) * xx + rng.uniform(0, 1) * yy))
                      for _ in range(3)], axis=-1)
    y0, x0 = rng.integers(2, h // 2), rng.integers(2, w // 2)
    sharp[y0:y0 + h // 3, x0:x0 + w // 3] = rng.uniform(0.2, 1.0, 3)
    kernel = motion_kernel()
    blurred = np.stack([convolve(sharp[..., c], kernel[::-1, ::-1], mode="nearest") for c in range(3)], -1)
    blurred += rng.normal(0, 0.01, blurred.shape)
    to8 = lambda a: np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(blurred), to8(sharp), kernel


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def truncated_png(seed: int = 99) -> bytes:
    """A real PNG cut in half: decoding fails with a FrameError (truncated or corrupt)."""
    frame, _, _ = make_frame(seed)
    data = encode_png(frame)
    return data[: len(data) // 2]


def write_frames(store: ObjectStore, names: list[str], *, truth: bool = True, mask_first: bool = True,
                 seed: int = 0) -> None:
    """Put ``<name>.png`` frames (and sidecars) into ``store``."""
    for i, name in enumerate(names):
        frame, sharp, kernel = make_frame(seed + i)
        store.put(f"{name}.png", encode_png(frame))
        if truth:
            store.put(f"{name}.sharp.png", encode_png(sharp))
            store.put(f"{name}.kernel.npy", npy_bytes(kernel))
        if mask_first and i == 0:
            mask = np.ones(frame.shape[:2], bool)
            mask[-12:, -14:] = False  # a hand in the corner
            store.put(f"{name}.mask.png", encode_png(mask))


class CrashOnce:
    """Test fault hook: the first worker to call it (after a frame's outputs are written, before
    its ledger entry) creates ``marker`` and dies with ``os._exit``; later calls do nothing.

    The marker is created with O_EXCL, so with two actors exactly one crash happens.
    """

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, key: str) -> None:
        import os

        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, key.encode())
        os.close(fd)
        os._exit(1)


class CrashOn:
    """Test fault hook: kills the worker every time it finishes writing frame ``key`` (a frame
    that always brings its actor down)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, key: str) -> None:
        import os

        if key == self.key:
            os._exit(1)


class FailOn:
    """Fault hook: an unexpected exception for one frame (after its outputs, before its ledger)."""

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, key: str) -> None:
        if key == self.key:
            raise RuntimeError(f"injected failure for {key}")


class Hooks:
    def __init__(self, *hooks: object) -> None:
        self.hooks = hooks

    def __call__(self, key: str) -> None:
        for hook in self.hooks:
            hook(key)  # type: ignore[operator]


class MarkOnce:
    """Fault hook: the first call creates ``marker`` (the proxy starts the outage then)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __call__(self, key: str) -> None:
        import contextlib
        import os

        with contextlib.suppress(FileExistsError):
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))


class PidRestorer:
    """A stand-in for ``FrameRestorer`` (``restorer_factory``): identity "restoration" that takes
    ``delay_s`` per frame and reports the actor's pid as ``nfe``, so a test sees which actor
    restored which frame."""

    model_version = "pid-fake:1"
    delay_s = 0.0

    def __init__(self, settings: object, device: str) -> None:
        pass

    def __call__(self, frames: list) -> list:
        import os
        import time
        from types import SimpleNamespace

        time.sleep(self.delay_s * len(frames))
        kernel = np.zeros((3, 3), np.float32)
        kernel[1, 1] = 1
        return [SimpleNamespace(key=f.key, restored=f.image, kernel=kernel, residual=1.0, sharpness_gain=1.0,
                                kernel_extent=1.0, nfe=os.getpid(), seconds=self.delay_s) for f in frames]


class SlowPidRestorer(PidRestorer):
    delay_s = 0.3
