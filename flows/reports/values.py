"""Values on the report pages: missing-value handling (parquet gives NaN or None), number and time
formats, run times and durations, and the fixed notes every page carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

from storage.keys import RUN_ID_RE

FAILED_STATUSES = ("failed", "failed_quality")
KERNEL_MSE_DEFINITION = (
    "kernel-MSE: both kernels sum to 1 and are centred on a common odd canvas; the estimate is "
    "aligned to the truth by the integer shift (within ±3 px) that minimises the MSE, because "
    "blind deconvolution cannot tell a shifted kernel from a shifted image. On sum-1 kernels the "
    "MSE rewards diffuse blobs (a fixed Gaussian σ = 2 guess beats a delta by about 50× on typical "
    "shake kernels), so read it beside kernel NCC (normalised cross-correlation, maximum over the "
    "same shifts)."
)
NO_REFERENCE_NOTE = (
    "Residual, sharpness gain and kernel extent are no-reference proxies, not quality "
    "measurements: residual is the RMS data-fit error y − M ⊙ (k̂ ∗ x̂) over the observed pixels "
    "divided by the noise level (about 1 fits to the noise; much lower can mean over-fitting), "
    "sharpness gain compares restored and input sharpness, and kernel extent is the spread of the estimated "
    "kernel. PSNR, SSIM (on [0, 1] RGB, scikit-image conventions), kernel-MSE and kernel NCC "
    "need ground truth and are empty where a frame has none."
)


def as_number(value: object) -> float | None:
    """A finite float, or None for None / NaN / "" / non-numbers (parquet gives NaN or None)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def as_text(value: object) -> str:
    """Row text field as str; None/NaN become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def formatted(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def parse_time(value: object) -> datetime | None:
    """ISO-8601 time (``Z`` accepted) as an aware datetime, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        out = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return out if out.tzinfo else out.replace(tzinfo=UTC)


def run_time(summary: Mapping[str, object]) -> datetime | None:
    """When a run started: ``started_at``, else the time encoded in its run id."""
    started = parse_time(summary.get("started_at"))
    if started is not None:
        return started
    run_id = summary.get("run_id")
    if isinstance(run_id, str) and RUN_ID_RE.match(run_id):
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return None


def duration(summary: Mapping[str, object]) -> str:
    start, end = parse_time(summary.get("started_at")), parse_time(summary.get("finished_at"))
    if start is None or end is None:
        return "—"
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def codes_text(summary: Mapping[str, object]) -> str:
    """'before N, after M' barcode/QR texts read (zxing-cpp) in the run's inputs / outputs."""
    c = summary.get("codes")
    if not isinstance(c, Mapping) or not as_number(c.get("frames")):
        return "—"
    lost = as_number(c.get("frames_lost"))
    return (f"before {as_text(c.get('before'))}, after {as_text(c.get('after'))}"
            + (f" (a code lost on {int(lost)} frames)" if lost else ""))


def number_cell(value: float | None, fmt: str) -> dict[str, str]:
    """A sortable number cell: ``data-v`` exact (empty sorts last), text formatted."""
    return {"v": "" if value is None else repr(value), "text": formatted(value, fmt)}


def gate_over(rate: object, gate: object) -> bool:
    r, g = as_number(rate), as_number(gate)
    return r is not None and g is not None and r > g


def quality_gate_failed(summary: Mapping[str, object]) -> bool:
    """The run's quality gates: quarantined / processed over ``alerts.max_quarantine_rate``, or
    guard fallbacks / restored over ``alerts.max_fallback_rate`` (a restorer that keeps rejecting
    its own output is as much an incident as frames that fail)."""
    return (gate_over(summary.get("quarantine_rate"), summary.get("max_quarantine_rate"))
            or gate_over(summary.get("fallback_rate"), summary.get("max_fallback_rate")))


def quality_gate_text(summary: Mapping[str, object]) -> str:
    """Which quality gate a ``failed_quality`` run failed, in one clause (quarantine or fallback)."""
    counts = summary.get("counts") if isinstance(summary.get("counts"), Mapping) else {}
    assert isinstance(counts, Mapping)
    if gate_over(summary.get("quarantine_rate"), summary.get("max_quarantine_rate")):
        rate = formatted(as_number(summary.get("quarantine_rate")), "{:.0%}")
        gate = formatted(as_number(summary.get("max_quarantine_rate")), "{:.0%}")
        return (f"{rate} of the processed frames were quarantined (threshold {gate}, "
                "alerts.max_quarantine_rate)")
    return (f"the guard shipped {summary.get('fallbacks', 0)} of {counts.get('restored', 0)} restored frames "
            f"unrestored ({formatted(as_number(summary.get('fallback_rate')), '{:.0%}')}, threshold "
            f"{formatted(as_number(summary.get('max_fallback_rate')), '{:.0%}')}, alerts.max_fallback_rate)")
