"""The ``restore-frames`` Prefect flow: discover pending frames, restore them on Ray, report.

Tasks (Prefect retries only the I/O ones, and only on transient storage errors):

* ``discover-frames`` (I/O, retried): list the source, pair sidecars, HEAD each frame and read its
  ledger entry (threads, bounded look-ahead);
* ``restore-batches`` (compute, not retried by Prefect: Ray restarts crashed actors and the
  fan-out resubmits their batches): batches of ``restoration.batch_size`` frames to the actors,
  at most ``cluster.max_in_flight`` outstanding; progress goes to the logs and a progress
  artifact as batches return;
* ``write-report`` (I/O, retried): ``frames.parquet`` / ``frames.csv``, ``summary.json`` and the
  HTML report under ``reports/<run-id>/``;
* ``publish-artifacts`` (I/O, retried): a table of the frames, a markdown summary, a link to
  the HTML report.

Every frame seen becomes one report row: ``restored``, ``skipped`` (its ledger entry names the
same source ETag, config hash and model version) or ``quarantined`` with a reason. Per-frame
problems never fail the run; configuration problems (unknown config, overlapping stores, priors
that do not load, Ray unreachable) do.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote

from flows.actors import (
    QUARANTINE_FIELD,
    REPORT_COLUMNS,
    ActorPool,
    BatchDone,
    FaultHook,
    PipelineError,
    RestorerFactory,
    RunContext,
    ensure_ray,
    fan_out,
    report_row,
)
from flows.config import PipelineConfig, load_config
from storage.base import ObjectStore, stores_overlap
from storage.errors import ObjectNotFoundError, OverlappingStoresError, StoreAccessError
from storage.keys import ledger_key, output_keys
from storage.ledger import LedgerEntry
from storage.reports import new_run_id, write_frames_report, write_summary
from storage.sidecars import FrameRef, discover
from storage.stores import open_store

FLOW_NAME = "restore-frames"
LOOKUP_WORKERS = 8
TABLE_ARTIFACT_ROWS = 500  # the full table is frames.csv / frames.parquet
ARTIFACT_PREFIX = "restore-frames"
MEAN_COLUMNS = ("residual", "psnr", "ssim", "kernel_mse", "kernel_ncc", "sharpness_gain")


@dataclass(frozen=True)
class Candidate:
    """A discovered frame with its source ETag (read now) and its ledger entry (if any);
    ``quarantined`` is the reason when that entry records a content error instead of outputs."""

    ref: FrameRef
    entry: LedgerEntry | None
    quarantined: str | None = None


def read_entry(dest: ObjectStore, frame_id: str) -> tuple[LedgerEntry | None, str | None]:
    """A frame's ledger entry and its quarantine reason (None, None when absent or unreadable:
    then the frame is simply redone)."""
    try:
        data = dest.get(ledger_key(frame_id))
        entry = LedgerEntry.from_json(data)
        reason = json.loads(data).get(QUARANTINE_FIELD)
    except ObjectNotFoundError:
        return None, None
    except (ValueError, TypeError, AttributeError):
        return None, None
    return entry, reason if isinstance(reason, str) else None


@dataclass(frozen=True)
class Discovery:
    candidates: list[Candidate]
    invalid: list[tuple[str, str]]  # (key, problem) for keys that break the key rules


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: backend/network failures, not bad input or config."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, StoreAccessError | ConnectionError | TimeoutError)


IO_TASK = {"retries": 3, "retry_delay_seconds": [1, 5, 20], "retry_condition_fn": _transient,
           "cache_policy": NO_CACHE}


@task(name="discover-frames", **IO_TASK)
def discover_frames(source_uri: str, dest_uri: str) -> Discovery:
    """Every frame under the source with its current ETag and ledger entry (discovery order)."""
    source, dest = open_store(source_uri, read_only=True), open_store(dest_uri)
    invalid: list[tuple[str, str]] = []

    def look_up(ref: FrameRef) -> Candidate | None:
        try:
            etag = source.head(ref.key).etag
        except ObjectNotFoundError:
            return None  # deleted since the listing
        entry, reason = read_entry(dest, ref.id)
        return Candidate(ref=replace(ref, etag=etag), entry=entry, quarantined=reason)

    refs = discover(source, on_invalid=lambda key, problem: invalid.append((key, problem)))
    with ThreadPoolExecutor(LOOKUP_WORKERS, thread_name_prefix="discover") as pool:
        found = [c for c in pool.map(look_up, refs) if c is not None]
    return Discovery(candidates=found, invalid=invalid)


@dataclass(frozen=True)
class Plan:
    pending: list[FrameRef]
    deferred: int  # pending frames left for a later run by ``limit``
    rows: list[dict]  # skipped and quarantined-before-restoration rows


def plan_run(found: Discovery, config_hash: str, model_version: str, limit: int | None) -> Plan:
    """Split candidates into skipped (up to date) and pending; apply ``limit`` to the pending."""
    rows: list[dict] = []
    pending: list[FrameRef] = []
    for key, problem in found.invalid:
        rows.append(report_row(FrameRef(key=key, id=key), "quarantined", reason="invalid_key",
                               detail=problem))
    for cand in found.candidates:
        ref = cand.ref
        for dup in ref.duplicates:
            rows.append(report_row(FrameRef(key=dup, id=ref.id), "quarantined", reason="duplicate_id",
                                   detail=f"same id as {ref.key!r}, which is restored instead"))
        assert ref.etag is not None
        current = cand.entry is not None and cand.entry.is_current(ref, ref.etag, config_hash, model_version)
        if current and cand.quarantined:
            rows.append(report_row(ref, "skipped", reason=f"quarantined_before:{cand.quarantined}",
                                   detail="unchanged since a run found it unusable"))
        elif current:
            rkey, kkey, kpng = output_keys(ref.id)
            rows.append(report_row(ref, "skipped", reason="up_to_date", restored_key=rkey, kernel_key=kkey,
                                   kernel_png_key=kpng))
        else:
            pending.append(ref)
    deferred = 0
    if limit is not None and len(pending) > limit:
        deferred = len(pending) - limit
        pending = pending[:limit]
    return Plan(pending=pending, deferred=deferred, rows=rows)


@task(name="restore-batches", cache_policy=NO_CACHE)
def restore_batches(pool: ActorPool, refs: list[FrameRef], batch_size: int, max_in_flight: int,
                    progress_id: Any) -> tuple[list[dict], int]:
    """Fan the frames out to the actors; log progress and update the progress artifact per batch."""
    logger = get_run_logger()
    batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    logger.info("restoring %d frames in %d batches on %d actors", len(refs), len(batches), len(pool.actors))

    def on_batch(done: BatchDone) -> None:
        for row in done.rows:
            if row["status"] == "quarantined":
                logger.warning("quarantined %s: %s (%s)", row["key"], row["reason"], row["detail"])
        rate = done.frames_done / done.elapsed_s if done.elapsed_s > 0 else float("nan")
        logger.info("batch %d/%d done: %d/%d frames (%.2f frames/s, %d resubmitted)", done.batches_done,
                    done.batches_total, done.frames_done, done.frames_total, rate, done.resubmitted)
        if progress_id is not None:
            update_progress_artifact(progress_id, progress=100.0 * done.frames_done / done.frames_total)

    return fan_out(pool, batches, max_in_flight=max_in_flight, on_batch=on_batch, logger=logger)


def summarize(rows: Sequence[dict], **fields: Any) -> dict[str, Any]:
    """summary.json: counts by status and the means of the restored frames' metrics (None if none)."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("restored", "skipped", "quarantined")}
    counts["total"] = len(rows)
    means: dict[str, float | None] = {}
    for col in MEAN_COLUMNS:
        vals = [float(r[col]) for r in rows if r["status"] == "restored" and _finite(r.get(col))]
        means[col] = sum(vals) / len(vals) if vals else None
    reasons: dict[str, int] = {}
    for r in rows:
        if r["status"] == "quarantined":
            reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {**fields, "counts": counts, "means": means, "quarantine_reasons": reasons}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@task(name="write-report", **IO_TASK)
def write_report(source_uri: str, dest_uri: str, run_id: str, summary: dict[str, Any],
                 rows: list[dict]) -> str:
    """frames.parquet/csv, summary.json, then the HTML report (when the renderer is installed);
    returns the key of the run's main report file."""
    logger = get_run_logger()
    source, dest = open_store(source_uri, read_only=True), open_store(dest_uri)
    write_frames_report(dest, run_id, rows, columns=REPORT_COLUMNS)
    summary_key = write_summary(dest, run_id, summary)
    try:
        from storage.report_html import store_images, write_reports
    except ImportError:
        return summary_key
    try:
        return write_reports(dest, run_id, summary, rows, store_images(source, dest))
    except StoreAccessError:
        raise  # transient: retried with the whole task
    except Exception as exc:
        logger.error("HTML report for run %s failed (%s: %s); summary.json is the report", run_id,
                     type(exc).__name__, exc)
        return write_summary(dest, run_id, {**summary, "report_key": summary_key,
                                            "report_uri": f"{dest.uri.rstrip('/')}/{summary_key}"})


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return None if not math.isfinite(value) else float(f"{value:.4g}")
    return value


@task(name="publish-artifacts", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_artifacts(summary: dict[str, Any], rows: list[dict]) -> None:
    """Table of frames (quarantined first, then worst residual first), markdown summary, report link."""
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
    create_link_artifact(summary["report_uri"], link_text=f"report of run {summary['run_id']}",
                         key=f"{ARTIFACT_PREFIX}-report", description="HTML report of the run")


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
        f"Throughput {fmt(summary['frames_per_s'], '.2f')} frames/s on {summary['actors']} actors "
        f"({summary['resubmitted_batches']} batches resubmitted after actor crashes).",
    ]
    if summary["quarantine_reasons"]:
        reasons = sorted(summary["quarantine_reasons"].items())
        lines += ["", "Quarantined: " + ", ".join(f"{k} × {v}" for k, v in reasons)]
    lines += ["", f"Report: {summary['report_uri']}"]
    return "\n".join(lines)


def expected_model_version(config: PipelineConfig, restorer_factory: RestorerFactory | None) -> str:
    """The model version the actors will report (loads the priors once in this process)."""
    from flows.restorer import FrameRestorer

    return (restorer_factory or FrameRestorer)(config.restoration, "cpu").model_version


def run_pipeline(
    source: str,
    dest: str,
    config: str = "default",
    limit: int | None = None,
    *,
    fault_hook: FaultHook | None = None,
    restorer_factory: RestorerFactory | None = None,
) -> dict[str, Any]:
    """The body of ``restore-frames``; call it inside a flow run. ``fault_hook`` (tests) is passed
    to every actor; ``restorer_factory`` replaces :class:`flows.restorer.FrameRestorer`."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    cfg = load_config(config)
    source_store, dest_store = open_store(source, read_only=True), open_store(dest)
    if stores_overlap(source_store, dest_store):
        raise OverlappingStoresError(f"source {source_store.uri} and destination {dest_store.uri} overlap")
    run_id = new_run_id()
    started = datetime.now(UTC)
    config_hash = cfg.config_hash()
    logger.info("run %s: %s -> %s, config %s (%s)", run_id, source_store.uri, dest_store.uri, cfg.name,
                config_hash)
    progress_id = create_progress_artifact(0.0, key=f"{ARTIFACT_PREFIX}-progress",
                                           description=f"Frames done in run {run_id}")

    found = discover_frames(source_store.uri, dest_store.uri)
    model_version = expected_model_version(cfg, restorer_factory)
    plan = plan_run(found, config_hash, model_version, limit)
    logger.info("%d frames found: %d pending, %d up to date, %d quarantined before restoration, %d deferred",
                len(found.candidates) + len(found.invalid), len(plan.pending),
                sum(r["status"] == "skipped" for r in plan.rows),
                sum(r["status"] == "quarantined" for r in plan.rows), plan.deferred)

    rows, resubmitted, restore_s, actors = list(plan.rows), 0, 0.0, 0
    if plan.pending:
        # No more actors than batches: a run for one upload should not load the priors twice.
        actors = min(cfg.cluster.actors, math.ceil(len(plan.pending) / cfg.restoration.batch_size))
        cluster = cfg.cluster.model_copy(update={"actors": actors})
        ctx = RunContext(run_id=run_id, source_uri=source_store.uri, dest_uri=dest_store.uri,
                         config_hash=config_hash)
        with ensure_ray(cluster) as local:
            pool = ActorPool(cluster, cfg.restoration, ctx, local=local, fault_hook=fault_hook,
                             restorer_factory=restorer_factory)
            try:
                versions = {r["model_version"] for r in pool.ready()}
                if versions != {model_version}:
                    raise PipelineError(f"actors run models {sorted(versions)}, expected {model_version}")
                t0 = datetime.now(UTC)
                got, resubmitted = restore_batches(quote(pool), quote(plan.pending),
                                                   cfg.restoration.batch_size, cluster.max_in_flight,
                                                   progress_id)
                restore_s = (datetime.now(UTC) - t0).total_seconds()
            finally:
                pool.close()
        rows.extend(got)
    update_progress_artifact(progress_id, progress=100.0)
    rows.sort(key=lambda r: r["key"])

    report_key = f"reports/{run_id}/index.html"
    restored = sum(r["status"] == "restored" for r in rows)
    summary = summarize(
        rows, run_id=run_id, flow_run_id=str(flow_run.id) if flow_run.id else None,
        started_at=started.isoformat(), finished_at=datetime.now(UTC).isoformat(),
        source=source_store.uri, dest=dest_store.uri, config_name=cfg.name, config_hash=config_hash,
        model_version=model_version, limit=limit, deferred=plan.deferred, actors=actors,
        resubmitted_batches=resubmitted, frames_per_s=restored / restore_s if restore_s > 0 else None,
        report_key=report_key, report_uri=f"{dest_store.uri.rstrip('/')}/{report_key}",
    )
    written = write_report(source_store.uri, dest_store.uri, run_id, summary, quote(rows))
    if written != report_key:
        summary.update(report_key=written, report_uri=f"{dest_store.uri.rstrip('/')}/{written}")
    publish_artifacts(summary, quote(rows))
    c = summary["counts"]
    logger.info("run %s finished: %d restored, %d skipped, %d quarantined; report %s", run_id, c["restored"],
                c["skipped"], c["quarantined"], summary["report_uri"])
    return summary


@flow(name=FLOW_NAME, description="Blind-restore pending checkout frames (CVSA on CLD priors) and report.")
def restore_frames(
    source: str, dest: str, config: str = "default", limit: int | None = None
) -> dict[str, Any]:
    """Restore every pending frame of ``source`` into ``dest`` with the named config (or YAML path);
    ``limit`` caps the frames restored this run. Returns the run summary (``summary.json``)."""
    return run_pipeline(source, dest, config, limit)
