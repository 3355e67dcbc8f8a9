"""Restoration settings: the typed numbers the restoring service (restoration/service.py) hands to
the samplers, with their defaults (the one place they live).

Pure values: this module reads no file, URI or environment variable (docs/design.md §2). The
pipeline's YAML is validated into these models at the edge by flows/config.py, which nests
:class:`RestorationSettings` in its ``PipelineConfig``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from restoration.guard import GuardSettings

Method = Literal["proximal", "paper"]
#: names of restoration.kernel_choice.KERNEL_STRATEGIES (a test keeps the two in step)
KernelStrategy = Literal["select", "identity", "parametric", "classical", "classical-prior", "prior"]


def model_noise_sigma(noise_sigma: float) -> float:
    """The one conversion of a noise std from the settings' [0, 1] intensity scale to the [-1, 1]
    scale the priors and samplers work on (x_model = 2 x - 1, so the std doubles)."""
    return 2.0 * noise_sigma


# ------------------------------------------------------------------- samplers' and estimators' settings

#: Bumped by every change of the code that changes restored pixels (or kernels) for the same
#: inputs, settings and priors; part of the idempotency key, so such a change makes every frame
#: pending. History: 1 — the consolidated restoration core (issue 19); 2 — the no-reference guard
#: ships the input where it rejects a restoration (issue 20).
ALGORITHM_VERSION: int = 2


@dataclass(frozen=True)
class BlindConfig:
    """Hyper-parameters of :func:`classical_blind` (defaults tuned on σ = 0.02, 128² renders).

    Attributes:
        scale_factor: pyramid ratio between successive scales.
        coarsest_kernel: kernel size at the coarsest scale (odd).
        iters_per_scale: alternations of x-step and k-step per scale.
        lambda_grad: L0 weight of the gradient term (on [0, 1] intensities), decayed per iteration.
        lambda_pixel: L0 weight of the intensity term (Pan et al.; 0 disables it).
        lambda_decay: divisor of both λ after every iteration.
        lambda_min: floor of the decayed λ.
        beta_max: last half-quadratic splitting weight of the x-step (starts at 2λ, doubles).
        kernel_reg: Tikhonov weight γ of the k-step, relative to the mean diagonal of ∇xᵀ∇x.
        kernel_cg_iters: conjugate-gradient iterations per k-step.
        kernel_prefilter: std (px) of the Gaussian applied to both sides of the k-step
            (noise suppression; 0 disables it).
        kernel_threshold: entries below this fraction of the peak are zeroed.
        min_component: 8-connected components lighter than this fraction of the mass are removed.
        final_tau: weight of the hyper-Laplacian prior of the final deconvolution, per unit
            noise variance: τ = final_tau · σ² (σ on [0, 1]).
        final_p: exponent of the hyper-Laplacian prior.
        final_iters: half-quadratic splitting iterations of the final deconvolution.
    """

    scale_factor: float = 2**-0.5
    coarsest_kernel: int = 5
    iters_per_scale: int = 5
    lambda_grad: float = 1e-2
    lambda_pixel: float = 0.0
    lambda_decay: float = 1.1
    lambda_min: float = 1e-4
    beta_max: float = 1e5
    kernel_reg: float = 0.3
    kernel_cg_iters: int = 25
    kernel_prefilter: float = 0.7
    kernel_threshold: float = 0.15
    min_component: float = 0.1
    final_tau: float = 20.0
    final_p: float = 0.8
    final_iters: int = 20


@dataclass(frozen=True)
class ProximalSettings:
    """Proximal CVSA (``restore_proximal``; the image step of ``restore_blind``).

    Attributes:
        steps: reverse-diffusion steps (network evaluations of the image prior).
        prox_strength: λ in ρ_t = λ σ² / Var(x0 | u_t).
        renoise: ζ, the fresh-noise share of the CLD renoise step (None: shift the velocity score
            instead and take a reverse-SDE step; restore_blind only).
        grid_power: time grid t_i = t_min + (1 - t_min)(1 - i/N)^power.
        grad_reg: μ = grad_reg σ², the Wiener-style gradient penalty of the data-consistency solve.
        cg_iters: conjugate-gradient iterations of the data-consistency solve (and of the
            least-squares kernel update).
        prior_var: s², the data variance that caps Var(x0 | u_t) in ρ_t.
    """

    steps: int = 30
    prox_strength: float = 1.0
    renoise: float | None = 1.0
    grid_power: float = 3.0
    grad_reg: float = 20.0
    cg_iters: int = 12
    prior_var: float = 0.25


@dataclass(frozen=True)
class GuidedSettings:
    """Gradient-guided CVSA (``restore``): CVSA Alg. 1 (``literal``), DPS (``dps``) or DMPS (``dmps``).

    Attributes:
        steps: reverse-diffusion steps; guidance: the likelihood term; scale: its weight (1 =
        literal 1/(2σ²); DPS's ζ; DMPS's factor); grid_power: 1 is Alg. 1's uniform grid;
        dmps_cg_iters: CG iterations of DMPS's closed form.
    """

    steps: int = 30
    guidance: Literal["literal", "dps", "dmps"] = "literal"
    scale: float = 1.0
    grid_power: float = 1.0
    dmps_cg_iters: int = 20


@dataclass(frozen=True)
class BlindSettings:
    """Blind CVSA (``restore_blind``): the paper's Alg. 2 or the production proximal extension.

    Attributes:
        proximal: the image step (and the sampler's steps, grid and renoise).
        method: "proximal" or "paper".
        image_guidance: proximal: share of the data-consistent image step; paper: gradient scale.
        kernel_guidance: proximal: blend of the kernel anchor into k̂0; paper: gradient scale.
        kernel_reg: Tikhonov weight of the least-squares kernel update.
        kernel_every: the kernel update runs every this many steps (and on the last).
        kernel_threshold: soft projection threshold of the kernel process's kernels.
        kernel_t_start: the least-squares kernel update runs once t <= this.
        canvas_multiple: the image canvas is rounded up to this (the U-Net halves it 3 times).
    """

    proximal: ProximalSettings = field(default_factory=ProximalSettings)
    method: Method = "proximal"
    image_guidance: float = 1.0
    kernel_guidance: float = 0.5
    kernel_reg: float = 1e-3
    kernel_every: int = 1
    kernel_threshold: float = 0.02
    kernel_t_start: float = 0.0
    canvas_multiple: int = 8


def code_defaults() -> dict[str, Any]:
    """What the product's restoration uses beyond :class:`RestorationSettings`: the defaults of the
    settings dataclasses (and :data:`ALGORITHM_VERSION`). Part of the idempotency key, so changing
    one in code makes every frame pending."""
    return {
        "algorithm_version": ALGORITHM_VERSION,
        "blind": asdict(BlindSettings()),
        "classical": asdict(BlindConfig()),
    }


_BLIND = BlindSettings()


class Frozen(BaseModel):
    """Immutable, and unknown keys are errors (a typo in a YAML file fails at load)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class RestorationSettings(Frozen):
    """Numbers handed to the blind sampler by the restoring service (restoration/service.py).

    Every field except those in :attr:`PIXEL_NEUTRAL` changes the restored pixels and so enters
    :meth:`PipelineConfig.config_hash` (the ledger's idempotency key).
    """

    # per-sample restoration: batch mates (frames, or score tiles) never change a frame's pixels
    PIXEL_NEUTRAL: ClassVar[frozenset[str]] = frozenset({"batch_size", "tile_batch"})

    working_size: int = Field(256, ge=16, description="side of the native-pixel region the kernel is "
                              "estimated on; frames are always restored at their own size")
    kernel_size: int = Field(41, ge=3, le=63, description="odd side of the estimated blur kernel, native px")
    steps: int = Field(_BLIND.proximal.steps, ge=1, description="reverse-diffusion steps of the sampler")
    noise_sigma: float | Literal["auto"] = Field(
        "auto", description="noise std of the input on the [0, 1] intensity scale; 'auto' estimates it per "
        "frame (median absolute deviation of the finest diagonal wavelet band, restoration/noise.py); "
        "the samplers get model_noise_sigma(): the [-1, 1] scale")
    tile_size: int = Field(256, ge=16, description="the image score network runs on tiles of this side, px")
    tile_overlap: int = Field(32, ge=0, description="overlap of neighbouring score tiles, px (blended)")
    tile_batch: int = Field(4, ge=1, description="score tiles per network call (bounds memory)")
    method: Method = Field(_BLIND.method, description="blind sampler variant")
    image_guidance: float = Field(
        _BLIND.image_guidance, ge=0, description="proximal: share of the data-consistent image step")
    kernel_guidance: float = Field(
        _BLIND.kernel_guidance, ge=0, description="proximal: blend of the kernel update into k0_hat")
    prox_strength: float = Field(
        _BLIND.proximal.prox_strength, gt=0, description="lambda in rho_t = lambda sigma^2 / Var(x0 | u_t)")
    renoise: float = Field(
        _BLIND.proximal.renoise, ge=0, le=1, description="proximal: fresh-noise share of the renoise step")
    kernel_strategy: KernelStrategy = Field(
        "select", description="which kernel restores a frame (kernel_choice.KERNEL_STRATEGIES)")
    kernel_t_start: float = Field(
        _BLIND.kernel_t_start, ge=0, le=1, description="least-squares kernel refinement below this t")
    guard: bool = Field(True, description="ship the input instead of a restoration the no-reference "
                        "guard rejects (restoration/guard.py); the report row says why (fallback)")
    guard_max_fit: float = Field(1.2, gt=0, description="guard: re-blur residual limit, in noise floors")
    guard_max_sparsity: float = Field(1.0, gt=0, description="guard: output/input normalised gradient "
                                      "sparsity limit (above 1 the output added dense texture)")
    guard_max_chroma: float = Field(2.0, gt=0, description="guard: chroma over luma gradient gain limit "
                                    "(colour fringes)")
    batch_size: int = Field(4, ge=1, description="frames restored together in one vectorised batch")
    bf16: bool = Field(True, description="run the score networks under bfloat16 autocast (inference only)")

    @field_validator("kernel_size")
    @classmethod
    def _kernel_size_is_odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"must be odd (the kernel has a centre pixel), got {v}")
        return v

    @field_validator("noise_sigma")
    @classmethod
    def _sigma(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and not 0 < v <= 0.5:
            raise ValueError(f"must be 'auto' or a number in (0, 0.5], got {v}")
        return v

    @model_validator(mode="after")
    def _compatible(self) -> RestorationSettings:
        if self.kernel_size >= self.working_size:
            raise ValueError(f"kernel_size {self.kernel_size} must be smaller than working_size "
                             f"{self.working_size} (the region the kernel is estimated on)")
        if self.tile_size <= 2 * self.tile_overlap:
            raise ValueError(f"tile_size {self.tile_size} must exceed twice tile_overlap {self.tile_overlap}")
        return self

    def blind_settings(self) -> BlindSettings:
        """The blind sampler's settings: these fields over the dataclass defaults."""
        proximal = ProximalSettings(steps=self.steps, prox_strength=self.prox_strength, renoise=self.renoise)
        return BlindSettings(
            proximal=proximal, method=self.method, image_guidance=self.image_guidance,
            kernel_guidance=self.kernel_guidance, kernel_t_start=self.kernel_t_start,
        )  # fmt: skip

    def guard_settings(self) -> GuardSettings | None:
        """The guard's limits, or None when the guard is off."""
        from restoration.guard import GuardSettings  # torch: only where frames are restored

        if not self.guard:
            return None
        return GuardSettings(self.guard_max_fit, self.guard_max_sparsity, self.guard_max_chroma)

    def pixel_settings(self) -> dict[str, Any]:
        """What changes restored pixels: these settings (all but :attr:`PIXEL_NEUTRAL`) and, under
        ``"code"``, the code's own pixel-changing defaults with :data:`ALGORITHM_VERSION`
        (:func:`code_defaults`): the idempotency key."""
        return {**self.model_dump(exclude=set(self.PIXEL_NEUTRAL)), "code": code_defaults()}


