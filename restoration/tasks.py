"""Non-blind restoration tasks of the CVSA paper (Tables 1 and 2) as named forward models.

A task turns a sharp image into an observation (``degrade``) and an observation into a
:class:`Problem` — the forward model H bound to one batch, with its adjoint (linear tasks), the
restoration canvas and the crop back to the image — which every sampler in
:mod:`restoration.methods` consumes. :data:`TASKS` is the literal name -> task table.

Conventions (images on [-1, 1], (B, 3, N, N), N a multiple of 8; noise σ = 0.05 on that scale as
in the paper):

- ``sr4``: 4× area (box-average) downsampling, y is (N/4)².
- ``inpaint-box``: a centred box of side N/2 (25 % of the frame) missing on all channels.
- ``inpaint-random``: 70 % of the pixels missing on all channels (a per-render random mask).
- ``deblur-gauss`` / ``deblur-motion``: known kernel, *valid* true convolution (the frame's
  borders drew on pixels outside it, restoration/operators.py): the truth is the centre N² of a
  (N + K - 1)² canvas. Gaussian: K = 15, σ = 2 px at N = 64 (both scale with N); motion: a
  random trajectory kernel of intensity 0.5 (the paper's setting) on the same K.
- ``phase-retrieval``: y = |FFT2(pad(x))| (orthonormal FFT) with the image zero-padded by N/4 on
  every side (DPS's "oversampling 2.0" convention, 2.25× as many Fourier samples as pixels);
  the support (the centre N²) is known. Noise is added to the magnitudes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

from restoration.kernel_ops import odd_size
from restoration.kernels import gaussian_kernel, motion_kernel
from restoration.operators import (
    OperatorShapeError,
    apply_mask,
    blur,
    crop_from_canvas,
    downsample,
    downsample_adjoint,
    pad_to_canvas,
    phase_retrieval,
)
from restoration.physics import BlurMask, LinearPhysics, MagnitudePhysics, Physics
from restoration.rng import randn

TaskName = Literal[
    "sr4", "inpaint-box", "inpaint-random", "deblur-gauss", "deblur-motion", "phase-retrieval"
]
TASK_NAMES: tuple[str, ...] = get_args(TaskName)
"""The CVSA paper's Table-1/2 tasks (the ``table1`` bench suite)."""
DENOISE = "denoise"
"""H = identity at a noise level given per run (:attr:`TaskParams.noise_sigma`): the public
yardstick of the image prior (``checkout-restore bench --suites denoise --photos DIR``)."""
NOISE_SIGMA = 0.05
"""Measurement noise std on the [-1, 1] scale (the paper's σ = 0.05, all tasks)."""
CANVAS_MULTIPLE = 8  # the U-Net halves the resolution three times
RANDOM_MISSING = 0.70
SR_FACTOR = 4



class TaskError(ValueError):
    """A task got an observation or parameter it cannot use (one clear line for the CLI)."""


@dataclass(frozen=True)
class TaskParams:
    """Per-render parameters: a kernel (deblur) or a mask (inpainting), else None."""

    kernel: Tensor | None = None  # (B, 1, K, K), sums to 1
    mask: Tensor | None = None  # (B, 1, N, N), 1 = observed
    noise_sigma: float | None = None  # on [-1, 1]; None: the paper's NOISE_SIGMA (denoise: per run)


def _check_size(size: int) -> None:
    if size < 16 or size % CANVAS_MULTIPLE:
        raise TaskError(f"image size must be a multiple of {CANVAS_MULTIPLE} and >= 16, got {size}")


def kernel_size(size: int) -> int:
    """Kernel side of the deblurring tasks: 15 px at N = 64, scaled with N (odd)."""
    return odd_size(15 * size / 64)


def _pr_pad(size: int) -> int:
    return size // 4


# ----------------------------------------------------------------------------- parameters


def task_params(task: str, size: int, generators: list[torch.Generator]) -> TaskParams:
    """Random per-render parameters of ``task`` for images of side ``size`` (one generator each)."""
    check_task(task)
    _check_size(size)
    b = len(generators)
    if task == "inpaint-box":
        return TaskParams(mask=box_mask(size).expand(b, 1, size, size).clone())
    if task == "inpaint-random":
        masks = [(torch.rand(1, 1, size, size, generator=g) >= RANDOM_MISSING).float() for g in generators]
        return TaskParams(mask=torch.cat(masks))
    if task == "deblur-gauss":
        k = gaussian_kernel(kernel_size(size), 2.0 * size / 64, 2.0 * size / 64)
        return TaskParams(kernel=k[None, None].expand(b, 1, *k.shape).clone())
    if task == "deblur-motion":
        ks = [motion_kernel(kernel_size(size), 0.5, g) for g in generators]
        return TaskParams(kernel=torch.stack([k / k.sum() for k in ks])[:, None])
    return TaskParams()


def box_mask(size: int) -> Tensor:
    """(1, 1, N, N) mask, 0 on the centred N/2 x N/2 box (25 % of the frame)."""
    m = torch.ones(1, 1, size, size)
    a, b = size // 4, size // 4 + size // 2
    m[..., a:b, a:b] = 0
    return m


def truth_canvas_size(task: str, size: int) -> int:
    """Side of the sharp render a task observes: N + K - 1 for valid-convolution blur, else N."""
    return size + kernel_size(size) - 1 if task.startswith("deblur") else size


# ----------------------------------------------------------------------------- forward models


def degrade(
    task: str, x: Tensor, params: TaskParams, generator: list[torch.Generator] | torch.Generator
) -> tuple[Tensor, Tensor]:
    """(observation y, sharp truth (B, C, N, N)) from a sharp render x on [-1, 1].

    x is (B, C, S, S) with S = :func:`truth_canvas_size`; noise N(0, σ²) per sample from
    ``generator`` (one per sample keeps a render's observation independent of its batch).
    """
    check_task(task)
    if task.startswith("deblur"):
        if params.kernel is None:
            raise TaskError(f"{task} needs a kernel")
        clean = blur(x, params.kernel.to(x.dtype), method="direct")
        c = (params.kernel.shape[-1] - 1) // 2
        truth = x[..., c : c + clean.shape[-2], c : c + clean.shape[-1]]
    elif task == "sr4":
        clean, truth = downsample(x, SR_FACTOR), x
    elif task == "phase-retrieval":
        clean, truth = phase_retrieval(F.pad(x, (_pr_pad(x.shape[-1]),) * 4)), x
    elif task == DENOISE:
        clean, truth = x, x
    else:
        if params.mask is None:
            raise TaskError(f"{task} needs a mask")
        clean, truth = x, x
    sigma = NOISE_SIGMA if params.noise_sigma is None else params.noise_sigma
    y = clean + sigma * randn(clean.shape, generator, x.device, x.dtype)
    if params.mask is not None:
        y = apply_mask(y, params.mask.to(x.dtype))
    return y, truth


def problem(task: str, y: Tensor, params: TaskParams | None = None) -> Physics:
    """The forward model (:class:`restoration.physics.Physics`) of an observation ``y``
    (B, C, ...) on [-1, 1] under ``task``."""
    check_task(task)
    if not isinstance(y, Tensor) or y.dim() != 4:
        raise TaskError("observation must be a (B, C, H, W) tensor")
    return TASKS[task].build(task, y, params or TaskParams())


def _sr4_problem(task: str, y: Tensor, params: TaskParams) -> Physics:
    h, w = y.shape[-2:]
    if (SR_FACTOR * h) % CANVAS_MULTIPLE or (SR_FACTOR * w) % CANVAS_MULTIPLE:
        raise TaskError(f"sr4 needs an input whose sides are even, got {h}x{w}")
    canvas = (SR_FACTOR * h, SR_FACTOR * w)
    return LinearPhysics(
        y, canvas, NOISE_SIGMA, task=task, forward_fn=_downsample4, adjoint_fn=_downsample4_adjoint
    )


def _inpaint_problem(task: str, y: Tensor, params: TaskParams) -> Physics:
    h, w = y.shape[-2:]
    if h % CANVAS_MULTIPLE or w % CANVAS_MULTIPLE:
        raise TaskError(f"{task} needs sides that are multiples of {CANVAS_MULTIPLE}, got {h}x{w}")
    mask = params.mask
    if mask is None and task == "inpaint-box" and h == w:
        mask = box_mask(h)
    if mask is None:
        raise TaskError(f"{task} needs a mask (--mask, 255 = observed)")
    if mask.shape[-2:] != (h, w):
        raise TaskError(f"mask {tuple(mask.shape[-2:])} does not match the observation {h}x{w}")
    m = mask.to(y.dtype)

    def masked(x: Tensor) -> Tensor:
        return apply_mask(x, m)

    return LinearPhysics(y * m, (h, w), NOISE_SIGMA, task=task, forward_fn=masked, adjoint_fn=masked)


def _deblur_problem(task: str, y: Tensor, params: TaskParams) -> Physics:
    if params.kernel is None:
        raise TaskError(f"{task} needs the blur kernel (--kernel)")
    h, w = y.shape[-2:]
    k = params.kernel.to(y.dtype)
    try:
        y_p, m_p, offsets = pad_to_canvas(y, None, k.shape[-1], multiple=CANVAS_MULTIPLE)
    except OperatorShapeError as exc:
        raise TaskError(str(exc)) from exc

    def crop(x: Tensor) -> Tensor:
        return crop_from_canvas(x, offsets, h, w)

    canvas = (offsets.canvas_height, offsets.canvas_width)
    return BlurMask(y_p, canvas, NOISE_SIGMA, crop, task, mask=m_p, kernel=k)


def _denoise_problem(task: str, y: Tensor, params: TaskParams) -> Physics:
    h, w = y.shape[-2:]
    if h % CANVAS_MULTIPLE or w % CANVAS_MULTIPLE:
        raise TaskError(f"{task} needs sides that are multiples of {CANVAS_MULTIPLE}, got {h}x{w}")
    sigma = NOISE_SIGMA if params.noise_sigma is None else params.noise_sigma
    return LinearPhysics(y, (h, w), sigma, task=task)  # H = H* = identity


def _phase_problem(task: str, y: Tensor, params: TaskParams) -> Physics:
    """y is the magnitude of the (3N/2)^2 zero-padded spectrum of an N^2 image."""
    h, side = y.shape[-2:]
    if h != side or (2 * side) % 3 or (2 * side // 3) % CANVAS_MULTIPLE:
        raise TaskError(
            f"phase-retrieval needs a square (3N/2)^2 magnitude, N a multiple of 8; got {h}x{side}"
        )
    n = 2 * side // 3
    return MagnitudePhysics(y, (n, n), NOISE_SIGMA, task=task, pad=_pr_pad(n))


def _downsample4(x: Tensor) -> Tensor:
    return downsample(x, SR_FACTOR)


def _downsample4_adjoint(y: Tensor) -> Tensor:
    return downsample_adjoint(y, SR_FACTOR)


def align_phase_ambiguities(x: Tensor, ref: Tensor, max_shift: int = 2) -> Tensor:
    """x with phase retrieval's trivial ambiguities resolved against ``ref``, per channel.

    |F pad(x)| does not change under a global sign flip, the point reflection x(-n) (which, on
    the padded canvas, also moves the image by one pixel) or translations. Per channel, the
    candidate among {±x, ±reflect(x)} x circular shifts of up to ``max_shift`` px on the padded
    canvas with the smallest squared error to ``ref`` inside the support is returned. Every
    method of the table is scored through this same function.
    """
    n = x.shape[-1]
    pad = _pr_pad(n)
    xp = F.pad(x, (pad,) * 4)
    best = x.clone()
    best_err = (x - ref).pow(2).sum(dim=(-2, -1))
    for base in (xp, torch.roll(xp.flip(-2, -1), (1, 1), (-2, -1))):
        for dy in range(-max_shift, max_shift + 1):
            for dx in range(-max_shift, max_shift + 1):
                c = torch.roll(base, (dy, dx), (-2, -1))[..., pad : pad + n, pad : pad + n]
                for cand in (c, -c):
                    err = (cand - ref).pow(2).sum(dim=(-2, -1))
                    better = err < best_err
                    best = torch.where(better[..., None, None], cand, best)
                    best_err = torch.minimum(err, best_err)
    return best


# ----------------------------------------------------------------------------- table


@dataclass(frozen=True)
class TaskSpec:
    """A task: its observation -> Physics builder and what it needs from the user."""

    name: str
    build: Callable[[str, Tensor, TaskParams], Physics]
    needs: Literal["kernel", "mask", "mask-optional", "none"]
    description: str

    @property
    def linear(self) -> bool:
        return self.build is not _phase_problem


#: The literal name -> forward-model table.
TASKS: dict[str, TaskSpec] = {
    "sr4": TaskSpec("sr4", _sr4_problem, "none", "4x area downsampling"),
    "inpaint-box": TaskSpec("inpaint-box", _inpaint_problem, "mask-optional", "centred box, 25 % of frame"),
    "inpaint-random": TaskSpec("inpaint-random", _inpaint_problem, "mask", "70 % of the pixels missing"),
    "deblur-gauss": TaskSpec("deblur-gauss", _deblur_problem, "kernel", "Gaussian blur, valid convolution"),
    "deblur-motion": TaskSpec("deblur-motion", _deblur_problem, "kernel", "motion blur, valid convolution"),
    "phase-retrieval": TaskSpec("phase-retrieval", _phase_problem, "none", "Fourier magnitude, oversampled"),
    DENOISE: TaskSpec(DENOISE, _denoise_problem, "none", "identity: additive Gaussian noise, sigma per run"),
}


def check_task(task: str) -> None:
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
