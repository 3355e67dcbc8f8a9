"""`checkout-restore restore`: one observation in, one restored image out, for a known task.

    checkout-restore restore --task deblur-motion --input frame.png --kernel k.npy --out sharp.png
    checkout-restore restore --task inpaint-random --input frame.png --mask frame.mask.png --out x.png
    checkout-restore restore --task sr4 --input small.png --out big.png          # 4x the input size
    checkout-restore restore --task phase-retrieval --input magnitude.npy --out x.png

The input is the observation the task's forward model produced (restoration/tasks.py): a blurred
frame (any size; valid-convolution model, --kernel a .npy summing to 1), a frame with missing
pixels (--mask, 255 = observed; inpaint-box defaults to the centred box), a low-resolution frame
(sr4), or for phase retrieval a float .npy of Fourier magnitudes (C, P, P) or (P, P), P = 3N/2.
Methods and their fixed settings are those of the Table-1 bench (flows/evaluation/table1.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from flows.evaluation.table1 import METHODS, MethodContext, NotApplicable, Observation
from restoration.tasks import TASK_NAMES, TASKS, TaskError, TaskParams
from storage.errors import FrameError, StorageError
from storage.images import decode_frame, decode_mask, encode_png
from storage.sidecars import load_kernel

DEFAULT_METHOD = "cvsa-prox"


class RestoreInputError(ValueError):
    """Input files that cannot be used (one clear line, no traceback)."""


def add_restore_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("restore", help="restore one image for a known task (sr4, ...)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=TASK_NAMES, help="forward model (restoration/tasks.py)")
    p.add_argument("--input", required=True, help="observation: PNG/JPEG (phase retrieval: .npy)")
    p.add_argument("--out", required=True, help="restored PNG")
    p.add_argument("--kernel", help="blur kernel .npy (deblur tasks)")
    p.add_argument("--mask", help="mask PNG, 255 = observed (inpainting)")
    p.add_argument("--method", default=DEFAULT_METHOD, choices=list(METHODS),
                   help=f"restoration method (default {DEFAULT_METHOD})")
    p.add_argument("--seed", default="restore", help="string seeding the sampler's generator")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu", help="torch device")
    p.set_defaults(func=restore_main)
    return p


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RestoreInputError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _magnitudes(path: str) -> torch.Tensor:
    """Phase retrieval's observation: a float .npy of Fourier magnitudes, (1, 3, P, P)."""
    try:
        mag = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RestoreInputError(f"phase-retrieval needs a float .npy of magnitudes: {exc}") from exc
    if mag.ndim == 2:
        mag = mag[None]
    if mag.ndim != 3 or mag.dtype.kind != "f" or not np.all(np.isfinite(mag)):
        raise RestoreInputError(f"magnitudes must be a finite float (C, P, P) array, got {mag.shape}")
    y = torch.from_numpy(np.ascontiguousarray(mag, dtype=np.float32))[None]
    return y.expand(1, 3, *y.shape[-2:]).clone() if y.shape[1] == 1 else y


def _kernel(args: argparse.Namespace) -> torch.Tensor:
    if not args.kernel:
        raise RestoreInputError(f"{args.task} needs --kernel (a .npy blur kernel)")
    k = load_kernel(_read(args.kernel))
    if k.shape[0] != k.shape[1] or k.shape[0] % 2 == 0:
        raise RestoreInputError(f"the kernel must be square with an odd side, got {k.shape}")
    return torch.from_numpy(k)[None, None]


def load_observation(args: argparse.Namespace) -> Observation:
    """The observation and the task's parameters from the command line's files."""
    spec = TASKS[args.task]
    if args.task == "phase-retrieval":
        y = _magnitudes(args.input)
    else:
        image = decode_frame(_read(args.input))
        y = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1.0
    kernel = _kernel(args) if spec.needs == "kernel" else None
    mask = None
    if args.mask:
        if not spec.needs.startswith("mask"):
            raise RestoreInputError(f"{args.task} takes no --mask")
        m = decode_mask(_read(args.mask), shape=tuple(y.shape[-2:]))
        mask = torch.from_numpy(m.astype(np.float32))[None, None]
    elif spec.needs == "mask":
        raise RestoreInputError(f"{args.task} needs --mask (255 = observed)")
    return Observation(args.task, y, TaskParams(kernel=kernel, mask=mask), [args.seed])


def restore_main(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    try:
        obs = load_observation(args)
        out = METHODS[args.method](obs, MethodContext(device=args.device))
    except (RestoreInputError, TaskError, StorageError, FrameError, NotApplicable) as exc:
        print(f"restore: {exc}", file=sys.stderr)
        return 2
    img = ((out.x[0].permute(1, 2, 0).float().clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    target = Path(args.out)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(encode_png(np.ascontiguousarray(img)))
    os.replace(tmp, target)  # atomic: a reader never sees a half-written file
    print(f"{args.task} / {args.method}: wrote {target} ({img.shape[1]}x{img.shape[0]}, {out.nfe} NFE)")
    return 0
