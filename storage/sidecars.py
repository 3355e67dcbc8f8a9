"""Frame discovery with sidecars (docs/design.md §4) and kernel ``.npy`` helpers.

Under a source prefix::

    <id>.png | .jpg | .jpeg | .webp   the frame to restore
    <id>.mask.png                      optional: 8-bit, 255 = observed, 0 = occluded
    <id>.sharp.png                     optional ground truth
    <id>.kernel.npy                    optional ground-truth kernel, float 2-D, sums to 1

Suffixes match case-insensitively (``F001.JPG`` is a frame). A key ending in a sidecar suffix
is never a frame. Discovery streams: all keys of one id share the prefix ``<id>.``, so they are
contiguous in the sorted listing and a frame is yielded as soon as the listing passes them.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from storage.base import ObjectStore
from storage.errors import InvalidKeyError, KernelFileError
from storage.keys import ledger_key, output_keys, validate_key

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
SIDECAR_SUFFIXES = {"mask": ".mask.png", "sharp": ".sharp.png", "kernel": ".kernel.npy"}
MAX_KERNEL_SIDE = 255
KERNEL_SUM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class FrameRef:
    """One frame and its optional sidecars; all keys are relative to the source store.

    ``id`` is the key without the image extension (sub-folders kept). ``duplicates`` lists
    other frames with the same id (``x.png`` and ``x.jpg``): they would write the same
    outputs, so only ``key`` (the first in key order) is restored. ``etag`` and
    ``sidecar_etags`` (``(sidecar key, ETag)`` pairs, sorted) are filled in by
    :func:`storage.ledger.current_etags` with the ETags seen before processing.
    """

    key: str
    id: str
    mask_key: str | None = None
    sharp_key: str | None = None
    kernel_key: str | None = None
    duplicates: tuple[str, ...] = ()
    etag: str | None = field(default=None, compare=False)
    sidecar_etags: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    @property
    def sidecar_keys(self) -> tuple[str, ...]:
        return tuple(k for k in (self.mask_key, self.sharp_key, self.kernel_key) if k is not None)


def classify(key: str) -> tuple[str, str] | None:
    """``(kind, id)`` with kind ``frame``/``mask``/``sharp``/``kernel``; None if neither."""
    lower = key.lower()
    for kind, suffix in SIDECAR_SUFFIXES.items():
        if lower.endswith(suffix):
            frame_id = key[: -len(suffix)]
            return (kind, frame_id) if frame_id and not frame_id.endswith("/") else None
    for ext in IMAGE_EXTENSIONS:
        if lower.endswith(ext):
            frame_id = key[: -len(ext)]
            return ("frame", frame_id) if frame_id and not frame_id.endswith("/") else None
    return None


class _Group:
    __slots__ = ("frames", "kernel", "mask", "sharp")

    def __init__(self) -> None:
        self.frames: list[str] = []
        self.mask: str | None = None
        self.sharp: str | None = None
        self.kernel: str | None = None


def _warn_invalid(key: str, problem: str) -> None:
    log.warning("skipping source key %r: %s", key if len(key) <= 200 else key[:197] + "...", problem)


def discover(
    store: ObjectStore,
    prefix: str = "",
    *,
    on_invalid: Callable[[str, str], None] | None = None,
    on_other: Callable[[str], None] | None = None,
) -> Iterator[FrameRef]:
    """Yield a :class:`FrameRef` per frame under ``prefix``, pairing its sidecars.

    Memory is bounded (one listing page, plus the groups whose ``<id>.`` prefix contains the
    current key). Keys breaking the key rules (possible on S3) go to ``on_invalid(key,
    problem)`` (default: a logged warning); keys that are neither a frame nor a sidecar
    (``.bmp``, ``.tiff``, ``notes.txt``) go to ``on_other(key)``; orphan sidecars are ignored.
    Order: frames come out as the listing passes their last key, sorted by id among those
    closed together — deterministic for a given listing.
    """
    keys = store.list(prefix)  # validates the prefix now, not at the first next()
    return _discover(keys, on_invalid or _warn_invalid, on_other)


def discover_keys(keys: Iterator[str], *, on_invalid: Callable[[str, str], None] | None = None,
                  on_other: Callable[[str], None] | None = None) -> Iterator[FrameRef]:
    """:func:`discover` over keys already listed (in listing order), e.g. with their ETags."""
    return _discover(keys, on_invalid or _warn_invalid, on_other)


def _discover(keys: Iterator[str], report: Callable[[str, str], None],
              other: Callable[[str], None] | None = None) -> Iterator[FrameRef]:
    open_groups: dict[str, _Group] = {}
    for key in keys:
        try:
            validate_key(key)
        except InvalidKeyError as exc:
            report(key, exc.problem)
            continue
        done = [gid for gid in open_groups if not key.startswith(gid + ".")]
        yield from _emit(open_groups, sorted(done))
        found = classify(key)
        if found is None:
            if other is not None:
                other(key)
            continue
        kind, frame_id = found
        if kind == "frame":
            problem = _id_problem(frame_id)
            if problem is not None:
                report(key, problem)
                continue
        group = open_groups.setdefault(frame_id, _Group())
        if kind == "frame":
            group.frames.append(key)
            continue
        if getattr(group, kind) is not None:
            log.warning("ignoring second %s sidecar %r for id %r", kind, key, frame_id)
            continue
        setattr(group, kind, key)
    yield from _emit(open_groups, sorted(open_groups))


def _id_problem(frame_id: str) -> str | None:
    """Why a frame id cannot name outputs (``...png`` has the id ``..``; a key near the length
    limit gives output keys over it), or None."""
    try:
        output_keys(frame_id)
        ledger_key(frame_id)
    except InvalidKeyError as exc:
        return f"its id {frame_id[:80]!r} cannot name outputs: {exc.problem}"
    return None


def _emit(open_groups: dict[str, _Group], ids: list[str]) -> Iterator[FrameRef]:
    for frame_id in ids:
        group = open_groups.pop(frame_id)
        if not group.frames:
            continue  # sidecars without a frame
        first, *others = sorted(group.frames)
        if others:
            log.warning("frames %r share the id %r: restoring only %r", group.frames, frame_id, first)
        yield FrameRef(
            key=first,
            id=frame_id,
            mask_key=group.mask,
            sharp_key=group.sharp,
            kernel_key=group.kernel,
            duplicates=tuple(others),
        )


def load_kernel(data: bytes, *, max_side: int = MAX_KERNEL_SIDE) -> np.ndarray:
    """Load a ``.npy`` kernel (``allow_pickle=False``) as float32 2-D summing to 1.

    The header is checked before any array is allocated: a floating dtype, 2-D, sides in
    1..``max_side``, and exactly the bytes the header promises. Values must be finite and
    non-negative with a sum within 1e-3 of 1; the result is renormalised to sum exactly 1.
    Anything else: :class:`KernelFileError` (reason ``bad_kernel``).
    """
    buf = io.BytesIO(bytes(data))
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        else:
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(buf)
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise KernelFileError(f"kernel file is not a valid .npy: {exc}") from None
    if dtype.kind != "f" or dtype.hasobject:
        raise KernelFileError(f"kernel dtype must be floating point, got {dtype}")
    if len(shape) != 2 or not all(1 <= s <= max_side for s in shape):
        raise KernelFileError(f"kernel must be 2-D with sides 1..{max_side}, got {shape}")
    expected = shape[0] * shape[1] * dtype.itemsize
    remaining = len(data) - buf.tell()
    if remaining != expected:
        raise KernelFileError(f"kernel data is {remaining} bytes, header says {expected}")
    buf.seek(0)
    k = np.load(buf, allow_pickle=False).astype(np.float64)
    if not np.all(np.isfinite(k)):
        raise KernelFileError("kernel has non-finite values")
    if k.min() < 0:
        raise KernelFileError(f"kernel has negative values (min {k.min():.3g})")
    total = float(k.sum())
    if abs(total - 1.0) > KERNEL_SUM_TOLERANCE:
        raise KernelFileError(f"kernel sums to {total:.6g}, not 1")
    return np.ascontiguousarray(k / total, dtype=np.float32)


def save_kernel(kernel: np.ndarray) -> bytes:
    """``.npy`` bytes of a finite 2-D kernel as float32 (the ``kernels/<id>.npy`` format)."""
    k = np.asarray(kernel)
    if k.ndim != 2 or k.size == 0 or not np.all(np.isfinite(k)):
        raise KernelFileError(f"kernel must be a finite non-empty 2-D array, got {k.shape}")
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(k, dtype=np.float32), allow_pickle=False)
    return buf.getvalue()
