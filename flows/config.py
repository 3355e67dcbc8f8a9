"""Pipeline configuration: typed settings, validated once at the edge.

The pydantic models below (and :class:`restoration.settings.RestorationSettings`, nested here) are
the one place where defaults live; a YAML file in ``configs/``
overrides only what differs. Enums are ``Literal`` types and incompatible combinations are
rejected by validators, so a typo (``kernel_strategy: bogus``) fails when the config is loaded —
with the file name and line — before any server, folder or cluster starts.

``--config REF`` resolves, in this order: a path to a YAML file, ``./configs/REF.yaml`` in the
working directory, the packaged ``configs/REF.yaml``. Only pipeline configs are listed when a
name is unknown (the training configs of ``checkout-restore train`` are a different schema).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

# the restoration settings live with the code they drive; re-exported here, the config's edge
from restoration.settings import (  # noqa: F401  (re-exports)
    Frozen,
    KernelStrategy,
    Method,
    RestorationSettings,
    model_noise_sigma,
)

WEBHOOK_ENV = "CHECKOUT_RESTORE_WEBHOOK_URL"


class ConfigError(ValueError):
    """A config that cannot be found, parsed or validated; the message is one line naming the file."""


class ClusterSettings(Frozen):
    actors: int = Field(2, ge=1, description="Ray actors (one per GPU in production)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per actor (1 in production)")
    num_cpus: float = Field(1.0, gt=0, description="CPU cores per actor (decoding, CPU restoration)")
    max_in_flight: int = Field(4, ge=1, description="batches submitted but not yet returned")
    address: str | None = Field(None, description="Ray cluster address; RAY_ADDRESS wins when set")
    stall_timeout_s: float = Field(
        300.0, gt=0, description="seconds without any batch returning (actors busy or being restarted) "
        "before the run gives up on the cluster: finished frames kept, the rest not_attempted, status failed")
    connect_timeout_s: float = Field(
        10.0, gt=0, description="seconds to reach a Ray cluster's address before the run stops with exit 2")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each actor requests, e.g. {restore_worker: 1}: actors then run "
        "only on nodes started with that resource (ray start --resources, a KubeRay worker group)")


class ScheduleSettings(Frozen):
    cron: str = Field("0 2 * * *", description="nightly run, 5-field cron expression")
    timezone: str = Field("UTC", description="IANA time zone of the cron expression")
    upload_debounce_seconds: int = Field(30, ge=0, description="one run per burst of uploads")
    max_backlog_frames: int | None = Field(
        None, ge=0, description="per run, at most N frames restored again because the settings or models "
        "changed (the backlog; new frames always go first); null: no cap")

    @field_validator("cron")
    @classmethod
    def _cron(cls, v: str) -> str:
        from datetime import datetime

        from cronsim import CronSim, CronSimError

        if len(v.split()) != 5:
            raise ValueError(f"cron needs 5 fields (minute hour day month weekday), got {v!r}")
        try:
            CronSim(v, datetime(2026, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {v!r}: {exc}") from None
        return v

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Berlin)") from None
        return v


class ReportSettings(Frozen):
    keep_runs: int | None = Field(None, ge=1, description="keep the newest N run reports (None: keep all)")
    index_page_size: int = Field(50, ge=1, description="runs per page of reports/index.html")
    max_frames: int = Field(200, ge=0, description="worst frames with pictures on a run page")
    progress_every: int = Field(100, ge=1, description="log a progress line every N frames")
    progress_seconds: float = Field(60.0, gt=0, description="... or every S seconds, whichever comes first")
    dashboard_url: str | None = Field(None, description="http(s) URL of `checkout-restore dashboard`; "
                                      "the Prefect link artifact points there")

    @field_validator("dashboard_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^https?://[^/\s]+(/\S*)?$", v):
            raise ValueError(f"must be an http(s) URL, got {v!r}")
        return v if v is None or v.endswith("/") else v + "/"


class AlertSettings(Frozen):
    max_quarantine_rate: float | None = Field(
        0.5, ge=0, le=1, description="quarantined / processed frames above this ends the run as "
        "failed_quality (after every frame is processed); None disables the gate")
    max_fallback_rate: float | None = Field(
        0.5, ge=0, le=1, description="restored frames the guard shipped unrestored (fallback) / restored "
        "frames above this ends the run as failed_quality; None disables the gate")
    webhook_env: str = Field(WEBHOOK_ENV, pattern=r"^[A-Z_][A-Z0-9_]*$",
                             description="environment variable holding the webhook URL (never the URL)")


class PipelineConfig(Frozen):
    name: str
    restoration: RestorationSettings = RestorationSettings()
    cluster: ClusterSettings = ClusterSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    reports: ReportSettings = ReportSettings()
    alerts: AlertSettings = AlertSettings()
    source_path: str | None = Field(None, exclude=True, description="file the config came from")

    def config_hash(self) -> str:
        """Stable hash of what changes restored pixels: the restoration settings minus the
        pixel-neutral ones (batch size). Cluster, schedule, report and alert settings never enter
        it, so changing them leaves every frame up to date."""
        canon = json.dumps(self.restoration.pixel_settings(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canon.encode()).hexdigest()[:16]


PIPELINE_SECTIONS = frozenset(PipelineConfig.model_fields) - {"source_path"}


def _is_pipeline_yaml(text: str) -> bool:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return True  # broken, but not recognisably something else: let loading say what is wrong
    return data is None or (isinstance(data, dict) and set(data) <= PIPELINE_SECTIONS)


def available_configs() -> list[str]:
    """Pipeline config names: ``./configs/*.yaml`` and the packaged ones (training configs left out)."""
    found: dict[str, str] = {}
    local = Path("configs")
    if local.is_dir():
        for p in local.glob("*.y*ml"):
            found.setdefault(p.stem, p.read_text())
    for res in resources.files("configs").iterdir():
        if res.name.endswith(".yaml"):
            found.setdefault(res.name[:-5], res.read_text())
    return sorted(n for n, text in found.items() if _is_pipeline_yaml(text))


def resolve_config(ref: str) -> tuple[str, str, str]:
    """``(name, yaml text, origin)`` for ``--config REF``: a file path, then ``./configs/REF.yaml``,
    then the packaged ``configs/REF.yaml``."""
    path = Path(ref)
    looks_like_path = path.suffix in {".yaml", ".yml"} or os.sep in ref or "/" in ref
    if looks_like_path or path.is_file():
        if not path.is_file():
            raise ConfigError(f"config file {ref} not found (give a YAML path or one of: "
                              f"{', '.join(available_configs())})")
        return path.stem, _read(path), str(path)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", ref):
        raise ConfigError(f"invalid config name {ref!r}")
    for local in (Path("configs") / f"{ref}.yaml", Path("configs") / f"{ref}.yml"):
        if local.is_file():
            return ref, _read(local), str(local)
    res = resources.files("configs") / f"{ref}.yaml"
    if res.is_file():
        return ref, res.read_text(), f"configs/{ref}.yaml (packaged)"
    raise ConfigError(f"no config {ref!r} (looked for a file, ./configs/{ref}.yaml and the packaged "
                      "configs); "
                      f"available: {', '.join(available_configs())}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (the deepest one that exists)."""
    line = None
    for part in loc:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next(((k, v) for k, v in node.value
                      if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        if match is None:
            break
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


def parse_config(text: str, name: str, origin: str) -> PipelineConfig:
    """Validate YAML ``text``; every problem becomes one :class:`ConfigError` line with file:line."""
    try:
        data = yaml.safe_load(text) or {}
        root = yaml.compose(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
        raise ConfigError(f"config {where}: YAML syntax error: {exc.problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {origin}: YAML error: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {origin}: top level must be a mapping of sections "
                          f"({', '.join(sorted(PIPELINE_SECTIONS))})")
    data.setdefault("name", name)
    try:
        return PipelineConfig.model_validate({**data, "source_path": origin})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            line = _line_of(root, loc)
            where = f"{origin}:{line}" if line else origin
            field = ".".join(str(p) for p in loc) or "(top level)"
            shown = err["type"] not in {"missing", "value_error"} and not isinstance(err.get("input"), dict)
            got = f" (got {err['input']!r})" if shown else ""
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{where}: {field}: {msg}{got}")
        raise ConfigError("invalid config " + "; ".join(problems)) from None


def load_config(name_or_path: str = "default") -> PipelineConfig:
    """Resolve (:func:`resolve_config`) and validate a config; :class:`ConfigError` on any problem."""
    name, text, origin = resolve_config(name_or_path)
    return parse_config(text, name, origin)
