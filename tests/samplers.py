"""Test helpers: the samplers called with loose keyword arguments (scores, CLDs, an operator
function), built into the problem / prior / settings objects of restoration.cvsa.

``blind`` keeps the keyword defaults the tests were written against (kernel_guidance 1,
kernel_t_start 1); everything else defaults to restoration.settings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from restoration.cvsa import RestoreResult, ScorePrior, restore, restore_blind
from restoration.physics import BlurMask, LinearPhysics, Physics
from restoration.settings import BlindSettings, GuidedSettings, ProximalSettings

_PROXIMAL = {f.name for f in fields(ProximalSettings)}


@dataclass(frozen=True, eq=False)
class OperatorPhysics(Physics):
    """Any differentiable forward model given as a function (no adjoint)."""

    operator: Callable[[Tensor], Tensor] | None = None

    def forward(self, x: Tensor) -> Tensor:
        assert self.operator is not None
        return self.operator(x)


def operator_problem(y: Tensor, operator, noise_sigma: float, canvas, adjoint=None) -> Physics:
    if adjoint is not None:
        return LinearPhysics(y, canvas, noise_sigma, forward_fn=operator, adjoint_fn=adjoint)
    return OperatorPhysics(y, canvas, noise_sigma, operator=operator)


def guided(y, operator, score, *, cld, shape, noise_sigma, generator, **kw: Any) -> RestoreResult:
    """restore() for a score function and an operator function on a (B, C, H, W) canvas ``shape``;
    ``kw``: steps, dtype, guidance, guidance_scale, adjoint, grid_power."""
    adjoint, dtype = kw.pop("adjoint", None), kw.pop("dtype", None)
    problem = None if operator is None else operator_problem(y, operator, noise_sigma, shape[2:], adjoint)
    if dtype is None:
        dtype = y.dtype if y is not None else torch.float32
    names = {"guidance_scale": "scale"}
    settings = GuidedSettings(**{names.get(k, k): v for k, v in kw.items()})
    return restore(problem, ScorePrior(score, cld), settings, generator, like=torch.empty(shape, dtype=dtype))


def blind(
    y, mask, image_score, kernel_score, *, image_cld, kernel_cld, kernel_size, **kw: Any
) -> RestoreResult:
    """restore_blind() with the settings given as keywords (ProximalSettings' and BlindSettings', plus
    noise_sigma, generator, known_kernel, kernel_init, kernel_canvas, callback)."""
    noise_sigma, generator = kw.pop("noise_sigma"), kw.pop("generator")
    known_kernel, kernel_init = kw.pop("known_kernel", None), kw.pop("kernel_init", None)
    kernel_canvas, callback = kw.pop("kernel_canvas", None), kw.pop("callback", None)
    proximal = ProximalSettings(**{k: kw.pop(k) for k in list(kw) if k in _PROXIMAL})
    settings = BlindSettings(proximal=proximal, **{"kernel_guidance": 1.0, "kernel_t_start": 1.0, **kw})
    problem = BlurMask.for_frames(y, mask, kernel_size, noise_sigma, settings.canvas_multiple)
    kernel = None if kernel_score is None else ScorePrior(kernel_score, kernel_cld, kernel_canvas)
    image = ScorePrior(image_score, image_cld)
    return restore_blind(problem, image, kernel, settings, generator, known_kernel, kernel_init, callback)
