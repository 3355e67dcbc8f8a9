"""The one CLD sampler loop: time grid, initial state, reverse and renoise transitions.

What a step does with the prior's score and the data is a plug-in (a *guidance*,
:mod:`restoration.guidance`): given the step and the current states it returns, per process, a
velocity score (for the reverse-SDE transition, CVSA Alg. 1 steps 4-5) and/or a corrected x0
estimate (for the renoise transition, a DiffPIR step transplanted to CLD). The loop owns the
randomness, so every sampler draws its noise in the same order: the initial (x, v) of each process
in turn, then per step (except the last) one draw per process for the reverse step — or two
rounds of one draw per process for the renoise step.

Everything is per sample: the noise of sample i comes from generator i (restoration/rng.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from restoration.cld import CLD
from restoration.rng import Generators, randn

State = tuple[Tensor, Tensor]
"""(x_t, v_t) of one CLD process."""
StepCallback = Callable[[int, int], None]


def time_grid(cld: CLD, steps: int, power: float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Grid t_0 = 1 > t_1 > ... > t_steps = t_min.

    power = 1 is CVSA Alg. 1's uniform grid (dt = (1 - t_min)/steps). power > 1 spends more steps at
    small t, where CLD resolves image detail: x_t's noise std relative to D11 x0 is still 0.24 at
    t = 0.05 (β = 4), so a uniform 30-step grid leaves only ~2 steps for all of the detail.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    u = torch.linspace(1.0, 0.0, steps + 1, dtype=dtype) ** power
    return cld.t_min + (1.0 - cld.t_min) * u


def col(a: Tensor, like: Tensor) -> Tensor:
    """A per-sample (B,) vector shaped to broadcast against ``like`` (its dtype and device)."""
    return a.to(dtype=like.dtype, device=like.device).reshape((-1,) + (1,) * (like.dim() - 1))


def proximal_rho(
    cld: CLD, t: Tensor, noise_sigma: Tensor | float, strength: float, data_var: float
) -> Tensor:
    """rho_t = lambda sigma^2 / Var(x0 | u_t), Var ~ (1/s^2 + (D11/L11)^2)^-1 (docs/design.md §6, amended).

    The prototype's rho_t = lambda sigma^2 / (L11/D11)^2 trusts the data without limit at large t, where
    L11/D11 explodes: the proximal solution is then an unregularised deconvolution (noise amplified
    ~6 dB below the blurred input with a 31-px kernel) and drags the trajectory along. Capping the
    x0 uncertainty at the data variance s^2 (Gaussian posterior of x0 given x_t) fixes it.
    """
    ell = cld.cholesky(t)[..., 0, 0]
    d11 = cld.mean_matrix(t)[..., 0, 0]
    return strength * noise_sigma**2 * (1.0 / data_var + (d11 / ell) ** 2)


def reverse_step(cld: CLD, state: State, score: Tensor, dtau: float, noise: Tensor | None) -> State:
    """CVSA Alg. 1 steps 4-5: one Euler-Maruyama step of the reverse CLD SDE (sign derived, not printed).

    `noise` is None on the last step (no Wiener noise there).
    """
    x, v = state
    dx, dv = cld.reverse_drift(x, v, score)
    x_new = x + dx * dtau
    v_new = v + dv * dtau
    if noise is not None:
        v_new = v_new + (cld.diffusion_sq() * dtau) ** 0.5 * noise
    return x_new, v_new


def renoise_step(
    cld: CLD, state: State, x0: Tensor, times: tuple[Tensor, Tensor], zeta: float, z: tuple[Tensor, Tensor]
) -> State:
    """Move u_t to t_next given a corrected x0 estimate: a DiffPIR step (Zhu et al. 2023, Alg. 1,
    step 7) transplanted to CLD. The noise implied by u_t around D_t (x0, 0) is
    eps_hat = L_t^-1 (u_t - D_t (x0, 0)); the new state is D_{t'} (x0, 0) + L_{t'} eps with
    eps = sqrt(1 - zeta) eps_hat + sqrt(zeta) z. zeta = 1 re-draws u_{t'} ~ p(u_{t'} | x0).

    Unlike a velocity-score shift, the correction lands in the state at once: with a prior whose
    x0_hat barely depends on u_t at large t, a score shift is undone by the prior's next score.
    """
    (x, v), (t, t_next), (zx, zv) = state, times, z
    d, ell = cld.mean_matrix(t), cld.cholesky(t)
    dn, elln = cld.mean_matrix(t_next), cld.cholesky(t_next)

    def c(a: Tensor) -> Tensor:
        return col(a, x)

    ex = (x - c(d[:, 0, 0]) * x0) / c(ell[:, 0, 0])
    ev = (v - c(d[:, 1, 0]) * x0 - c(ell[:, 1, 0]) * ex) / c(ell[:, 1, 1])
    a, b = (1.0 - zeta) ** 0.5, zeta**0.5
    ex, ev = a * ex + b * zx, a * ev + b * zv
    x_new = c(dn[:, 0, 0]) * x0 + c(elln[:, 0, 0]) * ex
    v_new = c(dn[:, 1, 0]) * x0 + c(elln[:, 1, 0]) * ex + c(elln[:, 1, 1]) * ev
    return x_new, v_new


@dataclass(frozen=True)
class Process:
    """One CLD process of a sampler: its diffusion (None: the process is idle, never moved) and the
    shape of its state, (B, C, H, W)."""

    cld: CLD | None
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Step:
    """Where the loop is: step i of ``steps``, time t (B,) float64 and the next time (None on the
    last step), the reverse-time increment dtau."""

    i: int
    steps: int
    t: Tensor
    t_next: Tensor | None
    dtau: float

    @property
    def last(self) -> bool:
        return self.i == self.steps - 1


@dataclass(frozen=True)
class Update:
    """A guidance's answer for one process: the velocity score for a reverse step, and/or the
    corrected x0 estimate for a renoise step (None: the process stays where it is)."""

    score: Tensor | None = None
    x0: Tensor | None = None


class Guidance(Protocol):
    """Per step: the updates of every process, from the step and the current states."""

    def __call__(self, step: Step, states: Sequence[State]) -> Sequence[Update]: ...


def initial_states(processes: Sequence[Process], generator: Generators, device, dtype) -> list[State]:
    """u_T ~ N(0, I) x N(0, M I) per process (x then v, process by process)."""
    states = []
    for p in processes:
        x, v = randn(p.shape, generator, device, dtype), randn(p.shape, generator, device, dtype)
        states.append((x, v * p.cld.mass**0.5 if p.cld is not None else v))
    return states


def run(
    processes: Sequence[Process],
    guidance: Guidance,
    grid: Tensor,
    renoise: float | None,
    generator: Generators,
    like: Tensor | None = None,
    callback: StepCallback | None = None,
) -> list[State]:
    """The sampler loop over ``grid`` (t_0 = 1 > ... > t_min): the guidance's updates move every
    process by the renoise step (``renoise`` = ζ) or, with ``renoise`` None, by the reverse-SDE
    step. ``like`` gives the states' dtype and device (default float32, CPU)."""
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else None
    states = initial_states(processes, generator, device, dtype)
    steps = len(grid) - 1
    batch = processes[0].shape[0]
    for i in range(steps):
        t = torch.full((batch,), float(grid[i]), dtype=torch.float64)
        t_next = None if i == steps - 1 else torch.full((batch,), float(grid[i + 1]), dtype=torch.float64)
        step = Step(i, steps, t, t_next, float(grid[i] - grid[i + 1]))
        updates = guidance(step, states)
        if renoise is not None:
            if t_next is not None:
                first = [randn(p.shape, generator, device, dtype) for p in processes]
                second = [randn(p.shape, generator, device, dtype) for p in processes]
                states = [
                    s
                    if p.cld is None or u.x0 is None
                    else renoise_step(p.cld, s, u.x0, (t, t_next), renoise, z)
                    for p, s, u, z in zip(
                        processes, states, updates, zip(first, second, strict=True), strict=True
                    )
                ]
        else:
            noises = [None if step.last else randn(p.shape, generator, device, dtype) for p in processes]
            states = [
                s if p.cld is None or u.score is None else reverse_step(p.cld, s, u.score, step.dtau, n)
                for p, s, u, n in zip(processes, states, updates, noises, strict=True)
            ]
        if callback is not None:
            callback(i + 1, steps)
    return states
