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

import contextlib
import math
import os
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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

from flows.config import PipelineConfig, ReportSettings, load_config
from flows.errors import is_transient
from flows.pipeline.actors import (
    REPORT_COLUMNS,
    ActorPool,
    BatchDone,
    FaultHook,
    PipelineError,
    RestorerFactory,
    RunContext,
    ensure_ray,
    fan_out,
    frame_failure_row,
    reap_stale_local_instances,
    report_row,
)
from flows.pipeline.notify import notify
from storage.base import ObjectStore, stores_overlap
from storage.errors import ObjectNotFoundError, OverlappingStoresError, StoreAccessError
from storage.keys import output_keys
from storage.lease import RunLease
from storage.lease import acquire as acquire_lease
from storage.lease import describe as describe_lease
from storage.ledger import LedgerEntry, look_up
from storage.reports import new_run_id, prune_runs, write_frames_report, write_summary
from storage.sidecars import IMAGE_EXTENSIONS, FrameRef, discover
from storage.stores import open_store

FLOW_NAME = "restore-frames"
LOOKUP_WORKERS = 8
TABLE_ARTIFACT_ROWS = 500  # the full table is frames.csv / frames.parquet
ARTIFACT_PREFIX = "restore-frames"
MEAN_COLUMNS = ("residual", "psnr", "ssim", "kernel_mse", "kernel_ncc", "sharpness_gain")
FALLBACK_ENV = "CHECKOUT_RESTORE_FALLBACK_DIR"  # where a failed run's report goes when dest is unreachable


@dataclass(frozen=True)
class Candidate:
    """A discovered frame with its source and sidecar ETags (read now) and its ledger entry (if
    any); ``quarantined`` is the reason when that entry records a content error instead of
    outputs; ``failed`` is the quarantine row when looking the frame up failed (this frame only)."""

    ref: FrameRef
    entry: LedgerEntry | None
    quarantined: str | None = None
    failed: dict | None = None


@dataclass(frozen=True)
class Discovery:
    candidates: list[Candidate]
    invalid: list[tuple[str, str]]  # (key, problem) for keys that break the key rules
    unsupported: list[str] = field(default_factory=list)  # neither a frame nor a sidecar (.bmp, .tiff...)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only what a retry can fix: backend/network failures, not bad input, config, a missing
    bucket or credentials (``flows.errors.is_permanent``)."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


IO_TASK = {"retries": 3, "retry_delay_seconds": [1, 5, 20], "retry_condition_fn": _transient,
           "cache_policy": NO_CACHE}


@task(name="discover-frames", **IO_TASK)
def discover_frames(source_uri: str, dest_uri: str) -> Discovery:
    """Every frame under the source with its current ETag and ledger entry (discovery order)."""
    return find_frames(open_store(source_uri, read_only=True), open_store(dest_uri))


def find_frames(source: ObjectStore, dest: ObjectStore) -> Discovery:
    """:func:`discover` the source and :func:`storage.ledger.look_up` each frame (threads);
    :func:`plan_run` then decides what is pending. Writes nothing."""
    invalid: list[tuple[str, str]] = []
    unsupported: list[str] = []

    def look(ref: FrameRef) -> Candidate | None:
        try:
            current, entry = look_up(source, dest, ref)
        except ObjectNotFoundError:
            return None  # deleted since the listing
        except Exception as exc:  # this frame's lookup only: its row, not the run's failure
            return Candidate(ref=ref, entry=None, failed=frame_failure_row(ref, exc, stage="read"))
        return Candidate(ref=current, entry=entry, quarantined=entry.quarantine_reason if entry else None)

    refs = discover(source, on_invalid=lambda key, problem: invalid.append((key, problem)),
                    on_other=unsupported.append)
    with ThreadPoolExecutor(LOOKUP_WORKERS, thread_name_prefix="discover") as pool:
        found = [c for c in pool.map(look, refs) if c is not None]
    failed = [c for c in found if c.failed is not None and c.failed["reason"] == "read_error"]
    if failed and len(failed) == len(found):
        # Every lookup failed on the store: that is the store, not the frames (Prefect retries).
        raise StoreAccessError(f"every frame lookup failed, e.g. {failed[0].failed['detail']}",
                               operation="discover", key=None)
    return Discovery(candidates=found, invalid=invalid, unsupported=unsupported)


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
    supported = ", ".join(IMAGE_EXTENSIONS)
    for key in found.unsupported:
        ext = os.path.splitext(key)[1].lower() or "(no extension)"
        rows.append(report_row(FrameRef(key=key, id=key), "skipped", reason="unsupported_format",
                               detail=f"{ext} is not restored; supported frame formats: {supported}"))
    for cand in found.candidates:
        ref = cand.ref
        for dup in ref.duplicates:
            rows.append(report_row(FrameRef(key=dup, id=ref.id), "quarantined", reason="duplicate_id",
                                   detail=f"same id as {ref.key!r}, which is restored instead"))
        if cand.failed is not None:
            rows.append(cand.failed)
            continue
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


class Progress:
    """Progress of the restore phase: a tqdm bar on a terminal (``stream.isatty()``), otherwise one
    compact log line every ``every`` frames and at the end (deployments, log files)."""

    def __init__(self, total: int, logger: Any, every: int = 100, stream: Any = None) -> None:
        from tqdm import tqdm

        self.total, self.logger, self.every = total, logger, every
        stream = stream if stream is not None else sys.stderr
        tty = bool(getattr(stream, "isatty", lambda: False)())
        self.bar = tqdm(total=total, unit="frame", desc="restoring", file=stream, dynamic_ncols=True) \
            if tty else None
        self.logged = 0

    def update(self, done: int, elapsed_s: float, resubmitted: int) -> None:
        rate = done / elapsed_s if elapsed_s > 0 else float("nan")
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(resubmitted=resubmitted, refresh=False)
        elif done - self.logged >= self.every or (done == self.total and done != self.logged):
            self.logged = done
            self.logger.info("%d/%d frames (%.0f%%), %.2f frames/s, %d batches resubmitted", done, self.total,
                             100.0 * done / self.total, rate, resubmitted)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@task(name="restore-batches", cache_policy=NO_CACHE)
def restore_batches(pool: ActorPool, refs: list[FrameRef], batch_size: int, max_in_flight: int,
                    progress_id: Any, progress_every: int = 100) -> tuple[list[dict], int]:
    """Fan the frames out to the actors; :class:`Progress` shows how far it got (a bar on a
    terminal, a compact line every ``progress_every`` frames otherwise). The progress artifact
    moves with every batch."""
    logger = get_run_logger()
    batches = [refs[i:i + batch_size] for i in range(0, len(refs), batch_size)]
    logger.info("restoring %d frames in %d batches on %d actors", len(refs), len(batches), len(pool.actors))
    progress = Progress(len(refs), logger, progress_every)

    def on_batch(done: BatchDone) -> None:
        for row in done.rows:
            if row["status"] == "quarantined":
                logger.warning("quarantined %s: %s (%s)", row["key"], row["reason"], row["detail"])
        progress.update(done.frames_done, done.elapsed_s, done.resubmitted)
        if progress_id is not None:
            update_progress_artifact(progress_id, progress=100.0 * done.frames_done / done.frames_total)

    try:
        return fan_out(pool, batches, max_in_flight=max_in_flight, on_batch=on_batch, logger=logger)
    finally:
        progress.close()


def summarize(rows: Sequence[dict], **fields: Any) -> dict[str, Any]:
    """summary.json: counts by status, reasons, the quarantine rate (quarantined / processed) and the
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
    processed = counts["restored"] + counts["quarantined"]
    return {**fields, "counts": counts, "means": means, "quarantine_reasons": reasons, "skip_reasons": skips,
            "quarantine_rate": counts["quarantined"] / processed if processed else None,
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
            key = f"reports/{run_id}/index.html"
            body = {**summary, "report_key": key, "report_uri": f"{store.uri.rstrip('/')}/{key}"}
            write_summary(store, run_id, body)
            with_html = _write_html(store, run_id, body, [], None, ReportSettings())
            summary.update(report_key=with_html, report_uri=body["report_uri"])
            if i > 0:
                logger.error("destination unreachable: failure report of run %s written to the local "
                             "fallback folder %s (set %s to change it)", run_id, store.uri, FALLBACK_ENV)
            return body["report_uri"]
        except Exception as exc:
            logger.warning("could not write the failure report of run %s to %s (%s: %s)", run_id, uri,
                           type(exc).__name__, " ".join(str(exc).split())[:300])
    return ""


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


def expected_model_version(config: PipelineConfig, restorer_factory: RestorerFactory | None) -> str:
    """The model version the actors will report (loads the priors once in this process)."""
    from restoration.service import FrameRestorer

    return (restorer_factory or FrameRestorer)(config.restoration, "cpu").model_version


class QualityGateError(RuntimeError):
    """The run processed every frame and wrote its report, but quarantined more than
    ``alerts.max_quarantine_rate`` of them: status ``failed_quality``."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__(f"quarantine rate {summary['quarantine_rate']:.2f} is over the threshold "
                         f"{summary['max_quarantine_rate']} ({summary['counts']['quarantined']} frames "
                         f"quarantined); report {summary['report_uri']}")
        self.summary = summary
        self.report_uri = summary["report_uri"]


def take_run_lease(dest: ObjectStore, run_id: str, logger: Any, *, wait_s: float = 0.0) -> RunLease:
    """Acquire the destination's run lease; if it is taken over from a run that died (killed
    driver), clean up after that run: its Prefect flow run is marked Crashed, and the processes
    and temp folders of its local Ray instance are removed."""
    from prefect.runtime import flow_run

    lease = acquire_lease(dest, run_id=run_id, flow_run_id=str(flow_run.id) if flow_run.id else None,
                          wait_s=wait_s)
    if lease.previous is not None:
        logger.warning("run lease of %s taken over from a run that stopped without releasing it: %s",
                       dest.uri, describe_lease(lease.previous))
        dead = lease.previous.get("run_id")
        mark_flow_run_crashed(lease.previous.get("flow_run_id"), logger,
                              f"run {dead} stopped (driver died); cleaned up by run {run_id}")
        reap_stale_local_instances()
    return lease


def mark_flow_run_crashed(flow_run_id: str | None, logger: Any, message: str) -> None:
    """Set a flow run that is still Running/Pending to Crashed (its driver is gone for good)."""
    if not flow_run_id:
        return
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
            if run.state is not None and not run.state.is_final():
                client.set_flow_run_state(run.id, Crashed(message=message), force=True)
                logger.warning("flow run %s (%s) marked Crashed", flow_run_id, run.name)
    except Exception as exc:  # another Prefect server, or it forgot the run: nothing to mark
        logger.warning("could not mark flow run %s crashed: %s: %s", flow_run_id, type(exc).__name__, exc)


def run_pipeline(
    source: str,
    dest: str,
    config: str = "default",
    limit: int | None = None,
    *,
    fault_hook: FaultHook | None = None,
    restorer_factory: RestorerFactory | None = None,
    lease_wait_s: float = 0.0,
) -> dict[str, Any]:
    """The body of ``restore-frames``; call it inside a flow run. ``fault_hook`` (tests) is passed
    to every actor; ``restorer_factory`` replaces :class:`restoration.service.FrameRestorer`.

    The run holds the destination's run lease (:mod:`storage.lease`) from discovery to the report;
    a second run waits ``lease_wait_s`` seconds for it, then stops with :class:`LeaseHeldError`.
    A run that fails still leaves ``reports/<run-id>/summary.json`` with ``status: failed``, the
    error class and message (in the destination, or :func:`fallback_dir` when that is
    unreachable) and a red row on top of the index; then the error propagates (the flow run is
    Failed). Over the quarantine threshold the run finishes everything, then raises
    :class:`QualityGateError` (status ``failed_quality``)."""
    from prefect.runtime import flow_run

    logger = get_run_logger()
    started = datetime.now(UTC)
    facts: dict[str, Any] = {
        "run_id": new_run_id(started), "flow_run_id": str(flow_run.id) if flow_run.id else None,
        "started_at": started.isoformat(), "source": source, "dest": dest, "config_name": config,
        "limit": limit, "status": "running"}
    webhook_env = "CHECKOUT_RESTORE_WEBHOOK_URL"
    try:
        cfg = load_config(config)
        webhook_env = cfg.alerts.webhook_env
        summary = _run(cfg, facts, limit, logger, fault_hook, restorer_factory, lease_wait_s)
    except QualityGateError:
        raise
    except Exception as exc:
        summary = {**facts, "status": "failed", "finished_at": datetime.now(UTC).isoformat(),
                   "error": {"type": type(exc).__name__, "message": " ".join(str(exc).split())[:2000]}}
        summary.setdefault("counts", {"restored": 0, "skipped": 0, "quarantined": 0, "total": 0})
        logger.error("run %s failed: %s: %s", facts["run_id"], type(exc).__name__, exc)
        uri = record_failure(summary, logger)
        notify(summary, webhook_env, logger)
        with contextlib.suppress(Exception):
            exc.report_uri = uri  # type: ignore[attr-defined]  # the CLI prints it
        raise
    notify(summary, webhook_env, logger)
    if summary["status"] == "failed_quality":
        raise QualityGateError(summary)
    return summary


def _run(cfg: PipelineConfig, facts: dict[str, Any], limit: int | None, logger: Any,
         fault_hook: FaultHook | None, restorer_factory: RestorerFactory | None,
         lease_wait_s: float = 0.0) -> dict[str, Any]:
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    source_store = open_store(facts["source"], read_only=True)
    dest_store = open_store(facts["dest"])
    if stores_overlap(source_store, dest_store):
        raise OverlappingStoresError(f"source {source_store.uri} and destination {dest_store.uri} overlap")
    run_id = facts["run_id"]
    config_hash = cfg.config_hash()
    facts.update(source=source_store.uri, dest=dest_store.uri, config_name=cfg.name, config_hash=config_hash)
    logger.info("run %s: %s -> %s, config %s (%s)", run_id, source_store.uri, dest_store.uri, cfg.name,
                config_hash)
    with take_run_lease(dest_store, run_id, logger, wait_s=lease_wait_s).heartbeat():
        return _restore_and_report(cfg, facts, limit, logger, source_store, dest_store,
                                   fault_hook=fault_hook, restorer_factory=restorer_factory)


def _restore_and_report(cfg: PipelineConfig, facts: dict[str, Any], limit: int | None, logger: Any,
                        source_store: ObjectStore, dest_store: ObjectStore, *, fault_hook: FaultHook | None,
                        restorer_factory: RestorerFactory | None) -> dict[str, Any]:
    """Discover, restore, report: the part of a run that holds the destination's run lease."""
    run_id, config_hash = facts["run_id"], facts["config_hash"]
    progress_id = create_progress_artifact(0.0, key=f"{ARTIFACT_PREFIX}-progress",
                                           description=f"Frames done in run {run_id}")

    found = discover_frames(source_store.uri, dest_store.uri)
    model_version = expected_model_version(cfg, restorer_factory)
    facts["model_version"] = model_version
    plan = plan_run(found, config_hash, model_version, limit)
    if found.unsupported:
        logger.warning("%d files skipped as unsupported_format (supported: %s), e.g. %s",
                       len(found.unsupported), ", ".join(IMAGE_EXTENSIONS), found.unsupported[0])
    logger.info("%d frames found: %d pending, %d up to date, %d quarantined before restoration, %d deferred",
                len(found.candidates) + len(found.invalid), len(plan.pending),
                sum(r["status"] == "skipped" for r in plan.rows) - len(found.unsupported),
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
                                                   progress_id, cfg.reports.progress_every)
                restore_s = (datetime.now(UTC) - t0).total_seconds()
            finally:
                pool.close()
        rows.extend(got)
    update_progress_artifact(progress_id, progress=100.0)
    rows.sort(key=lambda r: r["key"])

    report_key = f"reports/{run_id}/index.html"
    restored = sum(r["status"] == "restored" for r in rows)
    summary = summarize(
        rows, **facts, finished_at=datetime.now(UTC).isoformat(), deferred=plan.deferred, actors=actors,
        resubmitted_batches=resubmitted, frames_per_s=restored / restore_s if restore_s > 0 else None,
        report_key=report_key, report_uri=f"{dest_store.uri.rstrip('/')}/{report_key}",
        max_quarantine_rate=cfg.alerts.max_quarantine_rate,
    )
    gate = cfg.alerts.max_quarantine_rate
    rate = summary["quarantine_rate"]
    over = gate is not None and rate is not None and rate > gate
    summary["status"] = "failed_quality" if over else "succeeded"
    written = write_report(source_store.uri, dest_store.uri, run_id, summary, quote(rows), cfg.reports)
    if written != report_key:
        summary.update(report_key=written, report_uri=f"{dest_store.uri.rstrip('/')}/{written}")
    publish_artifacts(summary, quote(rows), cfg.reports.dashboard_url)
    c = summary["counts"]
    logger.info("run %s %s: %d restored, %d skipped, %d quarantined; report %s", run_id, summary["status"],
                c["restored"], c["skipped"], c["quarantined"], summary["report_uri"])
    return summary


@flow(name=FLOW_NAME, description="Blind-restore pending checkout frames (CVSA on CLD priors) and report.")
def restore_frames(
    source: str, dest: str, config: str = "default", limit: int | None = None
) -> dict[str, Any]:
    """Restore every pending frame of ``source`` into ``dest`` with the named config (or YAML path);
    ``limit`` caps the frames restored this run. Returns the run summary (``summary.json``)."""
    return run_pipeline(source, dest, config, limit)
