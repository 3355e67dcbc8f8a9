"""What a ``restore-frames`` run leaves behind: the summary, ``frames.parquet``/``.csv``, the HTML
report (flows/reports/html.py), the Prefect artifacts, and a failed run's record."""


from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE

from flows.config import ReportSettings
from flows.pipeline.actors import REPORT_COLUMNS
from flows.pipeline.tasks import ARTIFACT_PREFIX, IO_TASK
from storage.base import ObjectStore
from storage.errors import StoreAccessError
from storage.reports import prune_runs, write_frames_report, write_summary
from storage.stores import open_store

TABLE_ARTIFACT_ROWS = 500  # the full table is frames.csv / frames.parquet
MEAN_COLUMNS = ("residual", "psnr", "ssim", "kernel_mse", "kernel_ncc", "sharpness_gain")
QUARANTINED_BEFORE = "quarantined_before:"  # reason prefix of a standing failure (skipped, unchanged)
FALLBACK_ENV = "CHECKOUT_RESTORE_FALLBACK_DIR"  # where a failed run's report goes when dest is unreachable


def summarize(rows: Sequence[dict], **fields: Any) -> dict[str, Any]:
    """summary.json: counts by status, reasons, the quarantine rate ((quarantined + standing failures)
    / (restored + up to date + quarantined + standing failures)) and the
    means of the restored frames' metrics (None if none), plus every other numeric column's mean
    (e.g. ``psnr_in`` or ``codes_in`` / ``codes_out`` where the rows have them)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("restored", "skipped", "quarantined")}
    counts["total"] = len(rows)
    means: dict[str, float | None] = {}
    restored = [r for r in rows if r["status"] == "restored"]
    extra = sorted({c for r in restored for c, v in r.items() if _finite(v) and not isinstance(v, bool)}
                   - set(MEAN_COLUMNS) - {"nfe", "width", "height"})
    for col in (*MEAN_COLUMNS, *extra):
        vals = [float(r[col]) for r in restored if _finite(r.get(col))]
        means[col] = sum(vals) / len(vals) if vals else None
    reasons: dict[str, int] = {}
    skips: dict[str, int] = {}
    for r in rows:
        if r["status"] == "quarantined":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
        elif r["status"] == "skipped":
            skips[r["reason"]] = skips.get(r["reason"], 0) + 1
    # The gate's share: this run's quarantined plus the standing failures (skipped as
    # quarantined_before) over the frames in their current state, so an unchanged folder gets the
    # same verdict every night (issue 23).
    standing = sum(n for reason, n in skips.items() if reason.startswith(QUARANTINED_BEFORE))
    processed = counts["restored"] + counts["quarantined"] + skips.get("up_to_date", 0) + standing
    fallbacks: dict[str, int] = {}
    for r in restored:
        if r.get("fallback"):
            fallbacks[r["fallback"]] = fallbacks.get(r["fallback"], 0) + 1
    return {**fields, "counts": counts, "means": means, "quarantine_reasons": reasons, "skip_reasons": skips,
            "standing_failures": standing,
            "quarantine_rate": (counts["quarantined"] + standing) / processed if processed else None,
            "fallbacks": sum(fallbacks.values()), "fallback_reasons": fallbacks,
            "fallback_rate": sum(fallbacks.values()) / len(restored) if restored else None,
            "codes": codes_readable(rows)}


def codes_readable(rows: Sequence[dict]) -> dict[str, int]:
    """Codes readable over the run's restored frames: before (input) and after (restored) restoration,
    and the frames where a code read in the input was lost or changed."""
    done = [r for r in rows if r["status"] == "restored" and _finite(r.get("codes_in"))]
    return {"frames": len(done),
            "before": int(sum(r["codes_in"] for r in done)),
            "after": int(sum(r["codes_out"] for r in done if _finite(r.get("codes_out")))),
            "frames_lost": int(sum(r.get("codes_agree") == 0.0 for r in done))}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@task(name="write-report", **IO_TASK)
def write_report(source_uri: str, dest_uri: str, run_id: str, summary: dict[str, Any],
                 rows: list[dict], settings: ReportSettings | None = None) -> str:
    """frames.parquet/csv, summary.json, the HTML report, then retention (``reports.keep_runs``);
    returns the key of the run's main report file."""
    logger = get_run_logger()
    settings = settings or ReportSettings()
    source, dest = open_store(source_uri, read_only=True), open_store(dest_uri)
    write_frames_report(dest, run_id, rows, columns=_columns(rows))
    summary_key = write_summary(dest, run_id, summary)
    try:
        key = _write_html(dest, run_id, summary, rows, source, settings)
    except StoreAccessError:
        raise  # transient: retried with the whole task
    except Exception as exc:
        logger.error("HTML report for run %s failed (%s: %s); summary.json is the report", run_id,
                     type(exc).__name__, exc)
        key = summary_key
        write_summary(dest, run_id, {**summary, "report_key": summary_key,
                                     "report_uri": f"{dest.uri.rstrip('/')}/{summary_key}"})
    if settings.keep_runs is not None:
        pruned = prune_runs(dest, settings.keep_runs, keep={run_id})
        if pruned:
            logger.info("retention (reports.keep_runs=%d): removed %d old report folders", settings.keep_runs,
                        len(pruned))
    return key


def _columns(rows: Sequence[dict]) -> list[str]:
    """REPORT_COLUMNS first, then any column other parts add (``psnr_in``, ``codes_in``...)."""
    extra = dict.fromkeys(c for r in rows for c in r if c not in REPORT_COLUMNS)
    return [*REPORT_COLUMNS, *extra]


def _write_html(dest: ObjectStore, run_id: str, summary: dict[str, Any], rows: list[dict],
                source: ObjectStore | None, settings: ReportSettings) -> str:
    from flows.reports.html import store_images, write_reports

    images = store_images(source, dest) if source is not None else (lambda role, key: None)
    return write_reports(dest, run_id, summary, rows, images, max_frames=settings.max_frames,
                         page_size=settings.index_page_size)


def fallback_dir() -> str:
    """Local folder for failure reports when the destination is unreachable."""
    return os.environ.get(FALLBACK_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "checkout-restore",
                                                        "failed-runs")


def record_failure(summary: dict[str, Any], logger: Any) -> str:
    """Write a failed run's ``summary.json`` and report page (and refresh the index) to the
    destination, or — when that fails — to :func:`fallback_dir`; returns the report URI."""
    run_id = summary["run_id"]
    targets: list[tuple[str, dict[str, Any]]] = []
    if summary.get("dest"):
        uri = str(summary["dest"])
        targets.append((uri, {"max_attempts": 2} if uri.startswith("s3://") else {}))
    targets.append((fallback_dir(), {}))
    for i, (uri, options) in enumerate(targets):
        try:
            store = open_store(uri, **options)
            write_failure(store, summary)
            if i > 0:
                logger.error("destination unreachable: failure report of run %s written to the local "
                             "fallback folder %s (set %s to change it)", run_id, store.uri, FALLBACK_ENV)
            return str(summary["report_uri"])
        except Exception as exc:
            logger.warning("could not write the failure report of run %s to %s (%s: %s)", run_id, uri,
                           type(exc).__name__, " ".join(str(exc).split())[:300])
    return ""


def write_failure(store: ObjectStore, summary: dict[str, Any]) -> str:
    """A failed run's ``summary.json``, red report page and index row in ``store``; sets (and
    returns) the summary's report URI."""
    run_id = summary["run_id"]
    key = f"reports/{run_id}/index.html"
    body = {**summary, "report_key": key, "report_uri": f"{store.uri.rstrip('/')}/{key}"}
    write_summary(store, run_id, body)
    with_html = _write_html(store, run_id, body, [], None, ReportSettings())
    summary.update(report_key=with_html, report_uri=body["report_uri"])
    return body["report_uri"]


def record_preflight_failure(source: str, dest: str, config: str, exc: BaseException) -> str | None:
    """A run stopped by its preflight (a missing source bucket, a bad config...) still leaves its
    failed row on the destination's index when the destination exists and takes writes, so a
    nightly failure shows there; nothing is created, and nothing is said when it cannot
    (the CLI's one-line error is the message). Returns the report URI, or None."""
    from datetime import UTC, datetime

    from flows.errors import describe
    from storage.reports import new_run_id

    if "://" not in dest.removeprefix("file://") and not os.path.isdir(dest.removeprefix("file://")):
        return None  # a local destination that does not exist yet: not created for this
    now = datetime.now(UTC)
    summary: dict[str, Any] = {
        "run_id": new_run_id(now), "flow_run_id": None, "started_at": now.isoformat(),
        "finished_at": now.isoformat(), "source": source, "dest": dest, "config_name": config,
        "status": "failed", "stage": "preflight",
        "error": {"type": type(exc).__name__,
                  "message": " ".join((describe(exc) or str(exc)).split())[:2000]},
        "counts": {"restored": 0, "skipped": 0, "quarantined": 0, "total": 0}}
    try:
        store = open_store(dest, **({"max_attempts": 2} if dest.startswith("s3://") else {}))
        summary["dest"] = store.uri
        return write_failure(store, summary)
    except Exception:
        return None


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.4g}")
    return value


def dashboard_link(summary: dict[str, Any], dashboard_url: str | None) -> str | None:
    """The http(s) address of the run's page on the dashboard (``reports.dashboard_url``)."""
    return f"{dashboard_url}{summary['run_id']}/" if dashboard_url else None


@task(name="publish-artifacts", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_artifacts(summary: dict[str, Any], rows: list[dict], dashboard_url: str | None = None) -> None:
    """Table of frames (quarantined first, then worst residual first), markdown summary, and the
    report: a link to the dashboard page when ``reports.dashboard_url`` is set (browsers do not
    open file:// or s3:// links from the Prefect UI), otherwise how to open it."""
    order = {"quarantined": 0, "restored": 1, "skipped": 2}

    def rank(r: dict) -> tuple[int, float, str]:
        res = r.get("residual")
        return order[r["status"]], -(res if _finite(res) else -math.inf), r["key"]

    shown = sorted(rows, key=rank)[:TABLE_ARTIFACT_ROWS]
    cols = ("key", "status", "reason", "residual", "sharpness_gain", "psnr", "ssim", "kernel_mse", "seconds")
    create_table_artifact([{c: _cell(r.get(c)) for c in cols} for r in shown],
                          key=f"{ARTIFACT_PREFIX}-frames",
                          description=f"Frames of run {summary['run_id']} ({len(shown)} of {len(rows)} rows; "
                          "all in frames.csv)")
    create_markdown_artifact(summary_markdown(summary), key=f"{ARTIFACT_PREFIX}-summary",
                             description=f"Summary of run {summary['run_id']}")
    link = dashboard_link(summary, dashboard_url)
    if link:
        create_link_artifact(link, link_text=f"report of run {summary['run_id']}",
                             key=f"{ARTIFACT_PREFIX}-report",
                             description="HTML report of the run (dashboard)")
    else:
        create_markdown_artifact(
            f"Report of run `{summary['run_id']}`: `{summary['report_uri']}`\n\nOpen it with "
            f"`checkout-restore dashboard --dest {summary['dest']}` and "
            f"http://127.0.0.1:8765/{summary['run_id']}/ (set `reports.dashboard_url` in the config to "
            "get a clickable link here).", key=f"{ARTIFACT_PREFIX}-report",
            description="HTML report of the run")


def summary_markdown(summary: dict[str, Any]) -> str:
    c, m = summary["counts"], summary["means"]

    def fmt(v: float | None, spec: str) -> str:
        return "—" if v is None else format(v, spec)

    lines = [
        f"# Run `{summary['run_id']}`",
        f"`{summary['source']}` → `{summary['dest']}`, config **{summary['config_name']}** "
        f"(`{summary['config_hash']}`), models `{summary['model_version']}`",
        "",
        "| restored | skipped | quarantined | total | deferred (limit) |",
        "|---:|---:|---:|---:|---:|",
        f"| {c['restored']} | {c['skipped']} | {c['quarantined']} | {c['total']} | {summary['deferred']} |",
        "",
        f"Mean residual {fmt(m['residual'], '.3f')} (no-reference proxy; ~1 fits to the noise), "
        f"sharpness gain {fmt(m['sharpness_gain'], '.2f')}; with truth: PSNR {fmt(m['psnr'], '.2f')} dB, "
        f"SSIM {fmt(m['ssim'], '.3f')}, kernel-MSE {fmt(m['kernel_mse'], '.2e')}.",
        codes_line(summary),
        f"Throughput {fmt(summary['frames_per_s'], '.2f')} frames/s on {summary['actors']} actors "
        f"({summary['resubmitted_batches']} batches resubmitted after actor crashes).",
    ]
    if summary["quarantine_reasons"]:
        reasons = sorted(summary["quarantine_reasons"].items())
        lines += ["", "Quarantined: " + ", ".join(f"{k} × {v}" for k, v in reasons)]
    lines += ["", f"Report: {summary['report_uri']}"]
    return "\n".join(lines)


def codes_line(summary: dict[str, Any]) -> str:
    """'Codes readable: before N, after M' (zxing-cpp read-out of the input and restored frames)."""
    c = summary.get("codes") or {}
    if not c.get("frames"):
        return "Codes readable: no restored frame in this run."
    lost = f", lost on {c['frames_lost']} frame(s)" if c.get("frames_lost") else ""
    return f"Codes readable: before {c['before']}, after {c['after']} ({c['frames']} frames{lost})."
