"""Typed settings: validation at load time (file and line in the message), one place for defaults,
`--config` lookup order, and the idempotency key (which settings make frames pending again)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from flows.config import (
    AlertSettings,
    ClusterSettings,
    ConfigError,
    KernelStrategy,
    Method,
    PipelineConfig,
    ReportSettings,
    RestorationSettings,
    ScheduleSettings,
    available_configs,
    load_config,
)
from flows.pipeline.tasks import Candidate, Discovery, plan_run
from storage.ledger import LedgerEntry
from storage.sidecars import FrameRef

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(("section", "field", "values"), [
    ("restoration", "kernel_strategy", get_args(KernelStrategy)),
    ("restoration", "method", get_args(Method)),
])
def test_every_invalid_enum_fails_at_load_with_file_and_line(tmp_path: Path, section: str, field: str,
                                                            values: tuple[str, ...]) -> None:
    for good in values:
        load_config(str(_write(tmp_path, f"{section}:\n  {field}: {good}\n")))
    path = _write(tmp_path, f"# site config\n{section}:\n  steps: 12\n  {field}: bogus\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    message = str(err.value)
    assert f"{path}:4" in message and f"{section}.{field}" in message and "'bogus'" in message
    assert "\n" not in message
    for good in values:
        assert repr(good) in message  # the allowed values are named


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "restoration:\n  steps: 8\n  working_size: [48\n  kernel_size: 15\n")
    with pytest.raises(ConfigError, match=rf"{path}:4:\d+: YAML syntax error"):
        load_config(str(path))


@pytest.mark.parametrize(("text", "needle"), [
    ("cluster:\n  actorz: 2\n", "cluster.actorz: Extra inputs"),
    ("restoration:\n  kernel_size: 14\n", "must be odd"),
    ("restoration:\n  working_size: 32\n  kernel_size: 41\n", "smaller than working_size"),
    ("schedule:\n  timezone: Mars/Olympus\n", "unknown time zone"),
    ("schedule:\n  cron: '0 25 * * *'\n", "invalid cron"),
    ("reports:\n  dashboard_url: ftp://x\n", "http(s) URL"),
    ("alerts:\n  max_quarantine_rate: 1.5\n", "alerts.max_quarantine_rate"),
    ("- just\n- a list\n", "top level must be a mapping"),
])
def test_invalid_settings_fail_at_load(tmp_path: Path, text: str, needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert needle in str(err.value) and str(path) in str(err.value)


def _leaves(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for k, v in data.items():
        out.update(_leaves(v, (*prefix, k)) if isinstance(v, dict) else {(*prefix, k): v})
    return out


@pytest.mark.parametrize("name", available_configs())
def test_shipped_yaml_overrides_only_what_differs_from_the_model_defaults(name: str) -> None:
    data = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text()) or {}
    defaults = PipelineConfig(name="x").model_dump()
    for path, value in _leaves(data).items():
        default: Any = defaults
        for part in path:
            default = default.get(part) if isinstance(default, dict) else None
        assert value != default, f"configs/{name}.yaml repeats the default {'.'.join(path)} = {value!r}"
    load_config(name)


def test_config_lookup_order_and_listing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "nightly.yaml").write_text("restoration:\n  steps: 12\n")
    (tmp_path / "configs" / "smoke.yaml").write_text("restoration:\n  steps: 3\n  working_size: 48\n"
                                                     "  kernel_size: 15\n")
    (tmp_path / "configs" / "prior_local.yaml").write_text("model:\n  channels: 3\ntraining:\n  steps: 1\n")
    assert load_config("nightly").restoration.steps == 12  # ./configs/ in the working directory
    assert load_config("smoke").restoration.steps == 3  # ./configs/ before the packaged one
    assert load_config("default").schedule.timezone == "Europe/Berlin"  # packaged
    explicit = _write(tmp_path, "restoration:\n  steps: 5\n", "nightly")  # a path wins over a name
    assert load_config(str(explicit)).restoration.steps == 5
    names = available_configs()
    assert {"default", "smoke", "nightly"} <= set(names)
    assert not any(n.startswith("prior_") for n in names)  # training configs are not pipeline configs
    with pytest.raises(ConfigError, match=r"available: default, (.*, )?nightly, (.*, )?smoke$"):
        load_config("nope")
    with pytest.raises(ConfigError, match="not found"):
        load_config("missing/dir.yaml")


# ----------------------------------------------------------------------------- idempotency key

BASE = load_config("smoke")
MODEL = "image@1+kernel@1"
PIXEL_CHANGES: dict[str, Any] = {
    "working_size": 96, "kernel_size": 13, "steps": 7, "noise_sigma": 0.03, "method": "paper",
    "image_guidance": 0.9, "kernel_guidance": 0.7, "prox_strength": 2.0, "renoise": 0.5,
    "kernel_strategy": "classical", "kernel_t_start": 0.2, "bf16": False, "tile_size": 128, "tile_overlap": 8,
    "guard": False, "guard_max_fit": 1.5, "guard_max_sparsity": 1.1, "guard_max_chroma": 3.0,
}
NEUTRAL_CHANGES: dict[str, dict[str, Any]] = {
    "restoration": {"batch_size": 7, "tile_batch": 3},
    "cluster": {"actors": 5, "num_gpus": 1.0, "num_cpus": 3.0, "max_in_flight": 9, "address": "ray://h:10001",
                "connect_timeout_s": 3.0, "stall_timeout_s": 30.0,
                "resources": {"restore_worker": 1.0}},
    "schedule": {"cron": "30 3 * * 1", "timezone": "America/New_York", "upload_debounce_seconds": 120,
                 "max_backlog_frames": 5},
    "reports": {"keep_runs": 3, "index_page_size": 10, "max_frames": 20, "progress_every": 5,
                "progress_seconds": 9.0, "dashboard_url": "http://127.0.0.1:8765/"},
    "alerts": {"max_quarantine_rate": 0.1, "max_fallback_rate": 0.2, "webhook_env": "MY_HOOK"},
}
SECTIONS = {"restoration": RestorationSettings, "cluster": ClusterSettings, "schedule": ScheduleSettings,
            "reports": ReportSettings, "alerts": AlertSettings}


def _discovery(n: int = 6) -> Discovery:
    cands = []
    for i in range(n):
        ref = FrameRef(key=f"f{i}.png", id=f"f{i}", etag=f'"e{i}"')
        entry = LedgerEntry(frame_id=ref.id, source_key=ref.key, source_etag=f'"e{i}"',
                            config_hash=BASE.config_hash(), model_version=MODEL, outputs=())
        cands.append(Candidate(ref=ref, entry=entry))
    return Discovery(candidates=cands, invalid=[])


def _changed(section: str, **update: Any) -> PipelineConfig:
    sub = getattr(BASE, section).model_copy(update=update)
    return BASE.model_copy(update={section: SECTIONS[section].model_validate(sub.model_dump())})


def test_every_setting_is_classified() -> None:
    restoration = set(RestorationSettings.model_fields)
    assert restoration == set(PIXEL_CHANGES) | set(NEUTRAL_CHANGES["restoration"])
    for section, cls in SECTIONS.items():
        if section != "restoration":
            assert set(cls.model_fields) == set(NEUTRAL_CHANGES[section]), section


@pytest.mark.parametrize("section", list(NEUTRAL_CHANGES))
def test_batch_cluster_schedule_report_settings_leave_every_frame_up_to_date(section: str) -> None:
    found = _discovery()
    assert len(plan_run(found, BASE.config_hash(), MODEL, None).pending) == 0
    for field, value in NEUTRAL_CHANGES[section].items():
        cfg = _changed(section, **{field: value})
        assert getattr(getattr(cfg, section), field) == value
        plan = plan_run(found, cfg.config_hash(), MODEL, None)
        assert len(plan.pending) == 0 and len(plan.rows) == 6, (section, field)


@pytest.mark.parametrize("field", list(PIXEL_CHANGES))
def test_a_pixel_affecting_setting_makes_every_frame_pending(field: str) -> None:
    cfg = _changed("restoration", **{field: PIXEL_CHANGES[field]})
    assert cfg.config_hash() != BASE.config_hash()
    assert len(plan_run(_discovery(), cfg.config_hash(), MODEL, None).pending) == 6


def test_a_new_model_version_makes_every_frame_pending() -> None:
    assert len(plan_run(_discovery(), BASE.config_hash(), "image@2+kernel@1", None).pending) == 6


# ----------------------------------------------------------------------------- the code's own defaults

#: Numeric defaults of functions on the product's restoration path (restoration/, less the modules in
#: OFF_PRODUCT_PATH), each classified. A pixel-changing setting belongs in restoration/settings.py
#: (its dataclasses enter the key through code_defaults()); what remains here is either pixel-neutral
#: or an algorithm constant, pinned by value: changing one changes pixels, so it needs an
#: ALGORITHM_VERSION bump along with the new value here (test_algorithm_constants_are_pinned...).
ALGORITHM_CONSTANTS: dict[str, float] = {
    "noise.noise_floor.block": 8,  # the guard's noise floor: 16 px squares of 2x2 Haar blocks
    "noise.noise_floor.quantile": 0.1,  # ... their 10th percentile (flattest squares)
    "noise.noise_floor.floor": 0.0,  # the guard passes the 8-bit quantisation floor explicitly
    "classical.wiener_deconv.mm_iters": 10,  # oracle Wiener's refills (reference method)
    "classical._gst.iters": 3,  # generalised shrinkage fixed-point iterations
    "classical.sparse_deconv.p": 0.8,  # hyper-Laplacian exponent of the non-blind reference
    "classical.sparse_deconv.iters": 20,
    "kernel_ops.soft_project.threshold": 0.0,  # the least-squares kernel's soft projection
    "kernel_ops.soft_kernel.threshold": 0.0,  # Alg. 2's differentiable kernel map
    "periodic.inpaint.diffusion_iters": 100,  # initial fill of occlusions on the periodic canvas
    "whittle.gradient_spectrum.taper": 8,  # the kernel score's periodogram window
    "whittle.gradient_spectrum.freq_bins": 64,
    "whittle.whittle_nll.iters": 40,  # fixed-point iterations of the Whittle fit
}
PIXEL_NEUTRAL_DEFAULTS = {
    "kernel_ops.check_size.minimum": "validation",
    "kernel_ops.delta_kernel.batch": "shape",
    "noise.estimate_noise_sigma.floor": "the service always passes the quantisation floor",
    "operators.downsample.factor": "sr4 task geometry (Table 1)",
    "operators.downsample_adjoint.factor": "sr4 task geometry (Table 1)",
    "operators.pad_to_canvas.multiple": "callers pass the settings' canvas_multiple",
    "tiling.tiled_score.batch": "tiles per network call: memory, not pixels",
    "whittle.gradient_spectrum.min_size": "callers pass the kernel size",
    "whittle.training_gradient_profile.renders": "offline tool that regenerates GRADIENT_PROFILE",
    "whittle.training_gradient_profile.size": "offline tool that regenerates GRADIENT_PROFILE",
    "whittle.kernel_nll.frame": "an index",
}
#: generators, metrics, training, the analytic test prior, Table-1 tasks and their references
OFF_PRODUCT_PATH = {"synthetic", "train", "score_net", "metrics", "kernels", "analytic", "baselines", "tasks"}


def _code_defaults() -> dict[str, float]:
    import ast

    found: dict[str, float] = {}
    for path in sorted((REPO / "restoration").rglob("*.py")):
        if OFF_PRODUCT_PATH & set(path.relative_to(REPO / "restoration").with_suffix("").parts):
            continue
        if path.stem == "settings":
            continue  # the settings themselves
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            a = node.args
            pos = a.posonlyargs + a.args
            pairs = [*zip(pos[len(pos) - len(a.defaults):], a.defaults, strict=True),
                     *((k, d) for k, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None)]
            for arg, d in pairs:
                if isinstance(d, ast.Constant) and type(d.value) in (int, float):
                    found[f"{path.stem}.{node.name}.{arg.arg}"] = d.value
    return found


def test_every_code_default_on_the_restoration_path_is_classified() -> None:
    """A new numeric default in restoration/ (outside restoration/settings.py) fails here until it is
    moved into the settings (and so into the idempotency key) or classified above."""
    found = _code_defaults()
    unclassified = set(found) - set(ALGORITHM_CONSTANTS) - set(PIXEL_NEUTRAL_DEFAULTS)
    assert not unclassified, (
        f"pixel-changing defaults outside restoration/settings.py: {sorted(unclassified)}; move them into "
        "the settings dataclasses (they enter the key) or classify them in tests/test_config.py")
    assert set(found) >= set(ALGORITHM_CONSTANTS) | set(PIXEL_NEUTRAL_DEFAULTS), "stale classification"


def test_algorithm_constants_are_pinned_with_the_algorithm_version() -> None:
    """Changing an algorithm constant changes pixels: pin the new value here and bump ALGORITHM_VERSION."""
    from restoration.settings import ALGORITHM_VERSION

    found = _code_defaults()
    assert {k: found[k] for k in ALGORITHM_CONSTANTS} == ALGORITHM_CONSTANTS
    assert ALGORITHM_VERSION == 2


def test_the_key_holds_the_algorithm_version_and_the_codes_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    from restoration import settings

    key, found = BASE.config_hash(), _discovery()  # the ledger entries of the current key
    monkeypatch.setattr(settings, "ALGORITHM_VERSION", settings.ALGORITHM_VERSION + 1)
    bumped = BASE.config_hash()
    assert bumped != key
    assert len(plan_run(found, bumped, MODEL, None).pending) == 6
    monkeypatch.undo()
    assert BASE.config_hash() == key

    @dataclasses.dataclass(frozen=True)
    class Changed(settings.BlindSettings):
        kernel_reg: float = 2e-3  # a code default nobody configures

    monkeypatch.setattr(settings, "BlindSettings", Changed)
    assert BASE.config_hash() != key


def test_new_frames_go_before_the_backlog_which_is_capped_per_run() -> None:
    stored = _discovery(20)  # done under BASE's settings
    new = [Candidate(ref=FrameRef(key=f"n{i}.png", id=f"n{i}", etag=f'"n{i}"'), entry=None) for i in range(2)]
    found = Discovery(candidates=[*stored.candidates, *new], invalid=[])
    changed = _changed("restoration", steps=BASE.restoration.steps + 1).config_hash()  # a settings change
    plan = plan_run(found, changed, MODEL, None, max_backlog=5)
    assert [r.key for r in plan.pending[:2]] == ["n0.png", "n1.png"]  # today's uploads first
    assert len(plan.pending) == 7 and plan.deferred == 15  # then at most 5 of the 20 stored frames
    uncapped = plan_run(found, changed, MODEL, 4)
    assert [r.key for r in uncapped.pending[:2]] == ["n0.png", "n1.png"] and uncapped.deferred == 18
