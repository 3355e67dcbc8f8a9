"""Hybrid score matching (HSM) training of CLD velocity-score priors.

HSM (CLD paper, Sec. 3.2, with v0 marginalised): draw t ~ U[t_min, 1], perturb
u_t = (x_t, v_t) ~ p(u_t | x0) = N(D_t (x0, 0), Sigma_t), and regress the network on the
velocity noise: loss = || eps_theta(x_t, v_t, t) - eps_v ||^2, averaged over (C, H, W) per sample
and then over the batch. The velocity score is then -eps_theta / L22(t) (docs/design.md §6).

This module is pure tensor code: it takes a data iterator and callbacks and never touches
files. Checkpoint bytes are produced here (`training_state_bytes`) and written by the caller
(flows/cli/train.py).
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from restoration.cld import CLD

LOSS_WEIGHTINGS = ("eps", "x0")


class TrainError(ValueError):
    """Raised for invalid training configurations, data or states."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (numbers only)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    amp: bool = True
    seed: int = 0
    checkpoint_every: int = 500
    log_every: int = 10
    loss_weighting: str = "eps"
    weight_floor: float = 0.005
    decay_steps: int = 0
    lr_min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise TrainError(
                f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {self.loss_weighting!r}"
            )
        if not 0 <= self.decay_steps <= self.steps or not 0 < self.lr_min_ratio <= 1:
            raise TrainError(
                f"need 0 <= decay_steps <= steps and 0 < lr_min_ratio <= 1: {self}"
            )
        if self.weight_floor <= 0:
            raise TrainError(f"weight_floor must be > 0, got {self.weight_floor}")
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0 or self.warmup_steps < 0:
            raise TrainError(f"invalid TrainConfig: {self}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise TrainError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.grad_clip <= 0 or self.checkpoint_every < 1 or self.log_every < 1:
            raise TrainError(f"invalid TrainConfig: {self}")


class EMA:
    """Exponential moving average of parameters, decay warmed up as min(d, (1+n)/(10+n))."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.num_updates += 1
        d = min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))
        for pe, pm in zip(self.model.parameters(), model.parameters(), strict=True):
            pe.lerp_(pm.detach(), 1.0 - d)
        for be, bm in zip(self.model.buffers(), model.buffers(), strict=True):
            be.copy_(bm)


@dataclass
class TrainState:
    """Everything needed to resume a run: model, EMA, optimiser, step, RNG states, loss log."""

    model: nn.Module
    ema: EMA
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    data_generator: torch.Generator
    step: int = 0
    wall_time_s: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)


def _autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU and CUDA (bf16 needs no loss scaling)."""
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def hsm_loss(
    net: nn.Module,
    cld: CLD,
    x0: torch.Tensor,
    generator: torch.Generator,
    amp: bool = False,
    weighting: str = "eps",
    weight_floor: float = 0.005,
) -> torch.Tensor:
    """Per-sample HSM loss lambda(t) ||eps_theta - eps_v||^2 (mean over C, H, W), shape (B,).

    t ~ U[t_min, 1] from `generator`. weighting "eps": lambda = 1 (CLD paper's choice with
    l_t = L22). "x0": lambda = 1 / (k_t^2 + floor) with k_t^2 = net.x0_loss_weight(t), the
    eps-loss weight of a unit x0-space error (score_net.CLDEpsNet): x0 errors then weigh
    k^2 / (k^2 + floor) ~ 1 for t <~ 0.3, 1/2 near t = 0.4, -> 0 as t -> 1, instead of
    falling like k^2 (0.005 at t = 0.4, 4e-4 at t = 0.6) while small t dominates.
    """
    if x0.ndim != 4:
        raise TrainError(f"x0 must be (B, C, H, W), got {tuple(x0.shape)}")
    b = x0.shape[0]
    u = torch.rand(b, generator=generator, device=x0.device, dtype=torch.float64)
    t = cld.t_min + (1.0 - cld.t_min) * u
    p = cld.perturb(x0, t, generator)
    with _autocast(x0.device, amp):
        pred = net(p.x, p.v, t.float())
    loss = ((pred.float() - p.eps_v) ** 2).mean(dim=(1, 2, 3))
    if weighting == "x0":
        loss = loss / (net.x0_loss_weight(t).float() + weight_floor)
    return loss


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, constant, then a cosine decay to lr_min_ratio * lr over the
    last `decay_steps` steps (so a run extended before its decay starts is still one schedule).
    """
    lr = cfg.lr
    if cfg.warmup_steps:
        lr *= min(1.0, (step + 1) / cfg.warmup_steps)
    start = cfg.steps - cfg.decay_steps
    if cfg.decay_steps and step >= start:
        frac = (step - start) / cfg.decay_steps
        lr *= cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    return lr


def new_state(model: nn.Module, cfg: TrainConfig, device: torch.device | str = "cpu") -> TrainState:
    """Fresh training state: AdamW, EMA copy and two seeded generators (noise, data)."""
    device = torch.device(device)
    model = model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    data_gen = torch.Generator().manual_seed(cfg.seed + 1)
    return TrainState(model, EMA(model, cfg.ema_decay), opt, gen, data_gen)


def training_state_bytes(state: TrainState) -> bytes:
    """Serialise a resumable state (tensors and plain containers only: loadable weights_only)."""
    buf = io.BytesIO()
    torch.save(
        {
            "model": state.model.state_dict(),
            "ema": state.ema.model.state_dict(),
            "ema_updates": state.ema.num_updates,
            "optimizer": state.optimizer.state_dict(),
            "generator": state.generator.get_state(),
            "data_generator": state.data_generator.get_state(),
            "step": state.step,
            "wall_time_s": state.wall_time_s,
            "losses": [[s, v] for s, v in state.losses],
        },
        buf,
    )
    return buf.getvalue()


def load_training_state(state: TrainState, data: bytes) -> TrainState:
    """Restore `state` in place from `training_state_bytes` output (never unpickles objects)."""
    try:
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise TrainError(f"cannot read training state: {exc}") from exc
    state.model.load_state_dict(d["model"])
    state.ema.model.load_state_dict(d["ema"])
    state.ema.num_updates = int(d["ema_updates"])
    state.optimizer.load_state_dict(d["optimizer"])
    state.generator.set_state(d["generator"])
    state.data_generator.set_state(d["data_generator"])
    state.step = int(d["step"])
    state.wall_time_s = float(d["wall_time_s"])
    state.losses = [(int(s), float(v)) for s, v in d["losses"]]
    return state


@dataclass(frozen=True)
class Callbacks:
    """Hooks called by `train`: on_log(step, mean_loss) and on_checkpoint(state, final)."""

    on_log: Callable[[int, float], None] | None = None
    on_checkpoint: Callable[[TrainState, bool], None] | None = None


def train(
    state: TrainState,
    cld: CLD,
    batches: Iterator[torch.Tensor],
    cfg: TrainConfig,
    callbacks: Callbacks = Callbacks(),
    progress: bool = True,
) -> TrainState:
    """Run HSM training from `state.step` up to `cfg.steps`, calling back on logs/checkpoints.

    `batches` yields (B, C, H, W) float32 tensors in the prior's [-1, 1] space. A checkpoint
    callback runs every `cfg.checkpoint_every` steps and once at exit (also on Ctrl-C/error).
    """
    model, opt = state.model, state.optimizer
    device = next(model.parameters()).device
    model.train()
    bar = tqdm(
        total=cfg.steps, initial=state.step, disable=not progress, dynamic_ncols=True, unit="step"
    )
    window: list[float] = []
    t_start = time.monotonic()
    wall0 = state.wall_time_s
    try:
        while state.step < cfg.steps:
            x0 = next(batches).to(device)
            for g in opt.param_groups:
                g["lr"] = lr_at(state.step, cfg)
            loss = hsm_loss(
                model, cld, x0, state.generator, amp=cfg.amp,
                weighting=cfg.loss_weighting, weight_floor=cfg.weight_floor,
            ).mean()
            if not math.isfinite(loss.item()):
                raise TrainError(f"non-finite loss at step {state.step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            state.ema.update(model)
            state.step += 1
            state.wall_time_s = wall0 + time.monotonic() - t_start
            window.append(loss.item())
            bar.update(1)
            if state.step % cfg.log_every == 0 or state.step == cfg.steps:
                mean = sum(window) / len(window)
                state.losses.append((state.step, mean))
                window.clear()
                bar.set_postfix(loss=f"{mean:.4f}")
                if callbacks.on_log:
                    callbacks.on_log(state.step, mean)
            if state.step % cfg.checkpoint_every == 0 and callbacks.on_checkpoint:
                callbacks.on_checkpoint(state, False)
    finally:
        bar.close()
        if callbacks.on_checkpoint:
            callbacks.on_checkpoint(state, True)
    return state


# -- data iterators ------------------------------------------------------------------------------


def crop_batches(
    images: torch.Tensor | Sequence[torch.Tensor],
    batch_size: int,
    crop: int,
    generator: torch.Generator,
    transpose: bool = False,
    weights: Sequence[float] | None = None,
) -> Iterator[torch.Tensor]:
    """Endless random crops + horizontal/vertical flips of a (N, C, H, W) bank.

    `images` may be uint8 (mapped to [-1, 1]) or float already in [-1, 1]; it may also be a
    sequence of (C, H_i, W_i) images of different sizes (native-resolution renders), drawn
    with probability proportional to `weights` (uniform without). With `transpose` (square
    crops only) a random transpose completes the 8 dihedral symmetries (kernel banks).
    """
    ragged = not isinstance(images, torch.Tensor)
    n, probs = _check_bank(images, crop, weights)
    while True:
        if probs is not None:
            idx = torch.multinomial(probs, batch_size, replacement=True, generator=generator)
        else:
            idx = torch.randint(0, n, (batch_size,), generator=generator)
        offsets = _offsets(images, idx, crop, generator, ragged)
        flips = torch.rand(batch_size, 3, generator=generator) < 0.5
        out = []
        for i, (y, x) in enumerate(offsets):
            patch = images[idx[i]][:, y : y + crop, x : x + crop]
            out.append(_flip(patch, flips[i], transpose))
        batch = torch.stack(out)
        if batch.dtype == torch.uint8:
            batch = batch.float() / 127.5 - 1.0
        yield batch.float()


def _check_bank(
    images: torch.Tensor | Sequence[torch.Tensor], crop: int, weights: Sequence[float] | None
) -> tuple[int, torch.Tensor | None]:
    """(bank size, draw probabilities or None for uniform) of a valid bank."""
    if isinstance(images, torch.Tensor):
        if images.ndim != 4 or min(images.shape[-2:]) < crop:
            raise TrainError(f"image bank {tuple(images.shape)} too small for {crop}px crops")
        return images.shape[0], None
    if not images or any(im.ndim != 3 or min(im.shape[-2:]) < crop for im in images):
        raise TrainError(f"every image of a ragged bank must be (C, H, W) with H, W >= {crop}")
    if weights is None:
        return len(images), None
    if len(weights) != len(images) or min(weights) < 0 or sum(weights) <= 0:
        raise TrainError("weights must be one non-negative number per image")
    return len(images), torch.as_tensor(weights, dtype=torch.float64)


def _offsets(
    images: torch.Tensor | Sequence[torch.Tensor], idx: torch.Tensor, crop: int, generator: torch.Generator,
    ragged: bool,
) -> list[tuple[int, int]]:
    """Top-left corners of the crops: uniform over each image's own valid range (ragged banks)."""
    b = idx.shape[0]
    if ragged:
        u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
        sizes = [images[int(i)].shape[-2:] for i in idx]
        return [
            (int(u[i, 0] * (h - crop + 1)), int(u[i, 1] * (w - crop + 1)))
            for i, (h, w) in enumerate(sizes)
        ]
    h, w = images.shape[-2:]
    oy = torch.randint(0, h - crop + 1, (b,), generator=generator)
    ox = torch.randint(0, w - crop + 1, (b,), generator=generator)
    return [(int(oy[i]), int(ox[i])) for i in range(b)]


def _flip(patch: torch.Tensor, flips: torch.Tensor, transpose: bool) -> torch.Tensor:
    """Horizontal / vertical flips and (square crops) a transpose: the dihedral augmentations."""
    if flips[0]:
        patch = patch.flip(-1)
    if flips[1]:
        patch = patch.flip(-2)
    if transpose and flips[2]:
        patch = patch.transpose(-1, -2)
    return patch


def kernel_batches(
    batch_size: int,
    size: int,
    generator: torch.Generator,
    sampler: Callable[[int, int, torch.Generator], torch.Tensor],
    to_prior: Callable[[torch.Tensor], torch.Tensor],
) -> Iterator[torch.Tensor]:
    """Endless batches of freshly sampled kernels mapped to the prior representation."""
    while True:
        yield to_prior(sampler(batch_size, size, generator)).float()
