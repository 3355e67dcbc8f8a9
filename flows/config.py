"""Pipeline configuration: YAML in configs/, loaded once at the edge into frozen pydantic models."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RestorationSettings(Frozen):
    """Numbers handed to the blind sampler (restoration/ never sees this object)."""

    working_size: int = Field(128, ge=16, description="longest side restored; frames are resized to it")
    kernel_size: int = Field(31, ge=3, description="odd side of the estimated blur kernel")
    steps: int = Field(100, ge=1)
    noise_sigma: float = Field(0.02, gt=0, description="assumed noise std on the [0, 1] scale")
    method: str = Field("proximal", description="blind sampler variant: 'proximal' or 'paper'")
    image_guidance: float = Field(1.0, ge=0, description="proximal: share of the data-consistent image step")
    kernel_guidance: float = Field(0.5, ge=0, description="proximal: blend of the kernel update into k0_hat")
    prox_strength: float = Field(1.0, gt=0, description="lambda in rho_t = lambda sigma^2 / Var(x0 | u_t)")
    renoise: float = Field(1.0, ge=0, le=1, description="proximal: fresh-noise share of the CLD renoise step")
    kernel_init: str = Field("classical-fixed", description="'prior', 'classical', 'classical-fixed'")
    kernel_t_start: float = Field(0.0, ge=0, le=1, description="least-squares kernel refinement below this t")
    batch_size: int = Field(4, ge=1, description="frames restored together in one vectorised batch")
    bf16: bool = Field(True, description="run the score networks under bfloat16 autocast (inference only)")


class ClusterSettings(Frozen):
    actors: int = Field(2, ge=1)
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 in production)")
    num_cpus: float = Field(1.0, gt=0)
    max_in_flight: int = Field(4, ge=1, description="batches submitted but not yet returned")
    address: str | None = Field(None, description="Ray cluster address; RAY_ADDRESS wins when set")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each actor requests, e.g. {restore_worker: 1}: actors then run "
        "only on nodes started with that resource (ray start --resources, a KubeRay worker group)")


class ScheduleSettings(Frozen):
    cron: str = "0 2 * * *"
    timezone: str = "UTC"
    upload_debounce_seconds: int = Field(30, ge=0)


class PipelineConfig(Frozen):
    name: str
    restoration: RestorationSettings = RestorationSettings()
    cluster: ClusterSettings = ClusterSettings()
    schedule: ScheduleSettings = ScheduleSettings()

    def config_hash(self) -> str:
        """Stable hash of everything that changes outputs (restoration settings only)."""
        canon = json.dumps(self.restoration.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


def load_config(name_or_path: str = "default") -> PipelineConfig:
    """Load `configs/<name>.yaml` (packaged) or a YAML file path."""
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        text = path.read_text()
        name = path.stem
    else:
        res = resources.files("configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            names = (p.name for p in resources.files("configs").iterdir())
            available = sorted(n[:-5] for n in names if n.endswith(".yaml"))
            raise FileNotFoundError(f"no config {name_or_path!r}; available: {available}")
        text = res.read_text()
        name = name_or_path
    data = yaml.safe_load(text) or {}
    data.setdefault("name", name)
    return PipelineConfig.model_validate(data)
