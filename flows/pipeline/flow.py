"""The ``restore-frames`` Prefect flow: discover pending frames, restore them on Ray, report.

Tasks (flows/pipeline/tasks.py and run_report.py; Prefect retries only the I/O ones, and only on
transient storage errors):

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
import signal
from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.utilities.annotations import quote

from flows.config import PipelineConfig, load_config
from flows.pipeline.actors import FaultHook, PipelineError, RestorerFactory, RunContext
from flows.pipeline.fanout import NOT_ATTEMPTED, ActorPool, ClusterLostError, not_attempted_rows
from flows.pipeline.notify import notify
from flows.pipeline.ray_local import ensure_ray, reap_stale_local_instances
from flows.pipeline.run_report import publish_artifacts, record_failure, summarize, write_report
from flows.pipeline.supervisor import RunCancelled, active, cancel_on_signals
from flows.pipeline.tasks import (
    ARTIFACT_PREFIX,
    discover_frames,
    plan_run,
    restore_batches,
    update_ledger_index,
)
from flows.reports.values import quality_gate_failed, quality_gate_text
from storage import ledger_index
from storage.base import ObjectStore, stores_overlap
from storage.errors import OverlappingStoresError, StorageError
from storage.lease import RunLease, helper_identity, stop_helpers
from storage.lease import acquire as acquire_lease
from storage.lease import describe as describe_lease
from storage.reports import new_run_id
from storage.sidecars import IMAGE_EXTENSIONS
from storage.stores import open_store

FLOW_NAME = "restore-frames"


def expected_model_version(config: PipelineConfig, restorer_factory: RestorerFactory | None) -> str:
    """The model version the actors will report (loads the priors once in this process)."""
    from restoration.service import FrameRestorer

    return (restorer_factory or FrameRestorer)(config.restoration, "cpu").model_version


def run_shape(pending: int, actors: int, batch_size: int) -> tuple[int, int]:
    """(actors, frames per batch) for a run of ``pending`` frames: every actor gets work, whatever
    the run size (4 frames on 2 actors: 2 batches of 2, not one batch of 4 while an actor idles),
    and no more actors than frames (one upload does not load the priors twice)."""
    used = max(1, min(actors, pending))
    return used, max(1, min(batch_size, math.ceil(pending / used)))


class QualityGateError(RuntimeError):
    """The run processed every frame and wrote its report, but quarantined more than
    ``alerts.max_quarantine_rate`` of them, or the guard shipped more than ``alerts.max_fallback_rate``
    of the restored frames unrestored: status ``failed_quality``."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__(f"quality gate: {quality_gate_text(summary)}; report {summary['report_uri']}")
        self.summary = summary
        self.report_uri = summary["report_uri"]


def take_run_lease(dest: ObjectStore, run_id: str, logger: Any, *, wait_s: float = 0.0) -> RunLease:
    """Acquire the destination's run lease; if it is taken over from a run that died (killed
    driver), clean up after that run: its Prefect flow run is marked Crashed, and the processes
    and temp folders of its local Ray instance are removed."""
    from prefect.runtime import flow_run

    lease = acquire_lease(dest, run_id=run_id, flow_run_id=str(flow_run.id) if flow_run.id else None,
                          wait_s=wait_s, helpers=_started_helpers())
    if lease.previous is not None:
        logger.warning("run lease of %s taken over from a run that stopped without releasing it: %s",
                       dest.uri, describe_lease(lease.previous))
        dead = lease.previous.get("run_id")
        mark_flow_run_crashed(lease.previous.get("flow_run_id"), logger,
                              f"run {dead} stopped (driver died); cleaned up by run {run_id}")
        reap_stale_local_instances()
        for what in stop_helpers(lease.previous):
            logger.warning("stopped the dead run's %s", what)
    return lease


def _started_helpers() -> list[dict[str, Any]]:
    """The temporary Prefect server this process started (none with PREFECT_API_URL): a driver
    killed with SIGKILL leaves it running, so the lease names it for the next run to stop."""
    from prefect.server.api.server import SubprocessASGIServer

    procs = [s.server_process for s in SubprocessASGIServer._instances.values()
             if getattr(s, "server_process", None) is not None and s.server_process.poll() is None]
    return [helper_identity(p.pid, "temporary Prefect server") for p in procs]


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
    retry_quarantined: bool = False,
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
        "limit": limit, "retry_quarantined": retry_quarantined, "status": "running"}
    webhook_env = "CHECKOUT_RESTORE_WEBHOOK_URL"
    with cancel_on_signals() as token:
        try:
            cfg = load_config(config)
            webhook_env = cfg.alerts.webhook_env
            summary = _run(cfg, facts, limit, logger, fault_hook, restorer_factory, lease_wait_s)
        except Exception as exc:
            _failed(facts, exc, webhook_env, logger)
            raise
    notify(summary, webhook_env, logger)
    if summary["status"] == "cancelled":
        raise RunCancelled(f"run {facts['run_id']} cancelled by {signal.Signals(token.signum).name}: "
                           f"{summary['counts']['restored']} restored, "
                           f"{summary['skip_reasons'].get(NOT_ATTEMPTED, 0)} not attempted; "
                           f"report {summary['report_uri']}",
                           token.signum, summary["report_uri"])
    if summary["status"] == "failed_quality":
        raise QualityGateError(summary)
    return summary


def _failed(facts: dict[str, Any], exc: Exception, webhook_env: str, logger: Any) -> None:
    """A failed run is a run: its summary, index row and webhook (then the error propagates)."""
    written = getattr(exc, "summary", None)
    if isinstance(written, dict):  # the run wrote its full report already (a lost cluster)
        logger.error("run %s failed: %s: %s", facts["run_id"], type(exc).__name__, exc)
        notify(written, webhook_env, logger)
        return
    summary = {**facts, "status": "failed", "finished_at": datetime.now(UTC).isoformat(),
               "error": {"type": type(exc).__name__, "message": " ".join(str(exc).split())[:2000]}}
    summary.setdefault("counts", {"restored": 0, "skipped": 0, "quarantined": 0, "total": 0})
    logger.error("run %s failed: %s: %s", facts["run_id"], type(exc).__name__, exc)
    uri = record_failure(summary, logger)
    notify(summary, webhook_env, logger)
    with contextlib.suppress(Exception):
        exc.report_uri = uri  # type: ignore[attr-defined]  # the CLI prints it


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
    plan = plan_run(found, config_hash, model_version, limit, bool(facts.get("retry_quarantined")),
                    cfg.schedule.max_backlog_frames)
    if not found.candidates and not found.invalid:  # an S3 prefix typo must not read "succeeded" silently
        facts["warnings"] = [f"no frames under {source_store.uri} (supported: "
                             f"{', '.join(IMAGE_EXTENSIONS)}): check the source URI and its prefix"]
        logger.warning(facts["warnings"][0])
    if found.unsupported:
        logger.warning("%d files skipped as unsupported_format (supported: %s), e.g. %s",
                       len(found.unsupported), ", ".join(IMAGE_EXTENSIONS), found.unsupported[0])
    logger.info("%d frames found: %d pending, %d up to date, %d quarantined before restoration, %d deferred",
                len(found.candidates) + len(found.invalid), len(plan.pending),
                sum(r["status"] == "skipped" for r in plan.rows) - len(found.unsupported),
                sum(r["status"] == "quarantined" for r in plan.rows), plan.deferred)

    rows, resubmitted, restore_s, actors = list(plan.rows), 0, 0.0, 0
    lost: ClusterLostError | None = None
    token = active()
    if plan.pending and token is not None and token.is_set():  # stopped during discovery: no Ray
        rows.extend(not_attempted_rows(plan.pending))
    elif plan.pending:
        if found.index is not None:  # this run writes ledger entries the index does not hold yet
            ledger_index.mark_incomplete(dest_store)
        actors, batch_size = run_shape(len(plan.pending), cfg.cluster.actors, cfg.restoration.batch_size)
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
                got, resubmitted, lost = _restore(pool, plan.pending, batch_size, cluster.max_in_flight,
                                                  progress_id, cfg.reports)
                restore_s = (datetime.now(UTC) - t0).total_seconds()
            finally:
                pool.close()
        rows.extend(got)
    try:
        update_ledger_index(dest_store, found, plan.pending, rows, config_hash, model_version)
    except StorageError as exc:  # the index is a cache: the next run reads the ledger frame by frame
        logger.warning("ledger index not updated (%s: %s)", type(exc).__name__, exc)
    update_progress_artifact(progress_id, progress=100.0)
    rows.sort(key=lambda r: r["key"])

    report_key = f"reports/{run_id}/index.html"
    restored = sum(r["status"] == "restored" for r in rows)
    summary = summarize(
        rows, **facts, finished_at=datetime.now(UTC).isoformat(), deferred=plan.deferred, actors=actors,
        resubmitted_batches=resubmitted, frames_per_s=restored / restore_s if restore_s > 0 else None,
        report_key=report_key, report_uri=f"{dest_store.uri.rstrip('/')}/{report_key}",
        max_quarantine_rate=cfg.alerts.max_quarantine_rate, max_fallback_rate=cfg.alerts.max_fallback_rate,
    )
    _set_status(summary, token is not None and token.is_set(), lost)
    written = write_report(source_store.uri, dest_store.uri, run_id, summary, quote(rows), cfg.reports)
    if written != report_key:
        summary.update(report_key=written, report_uri=f"{dest_store.uri.rstrip('/')}/{written}")
    publish_artifacts(summary, quote(rows), cfg.reports.dashboard_url)
    c = summary["counts"]
    logger.info("run %s %s: %d restored, %d skipped, %d quarantined; report %s", run_id, summary["status"],
                c["restored"], c["skipped"], c["quarantined"], summary["report_uri"])
    if lost is not None:
        lost.summary = summary  # type: ignore[attr-defined]  # its report is written: run_pipeline notifies
        lost.report_uri = summary["report_uri"]  # type: ignore[attr-defined]
        raise lost
    return summary


def _set_status(summary: dict[str, Any], cancelled: bool, lost: ClusterLostError | None) -> None:
    summary["status"] = "failed_quality" if quality_gate_failed(summary) else "succeeded"
    if cancelled:
        summary["status"] = "cancelled"
    if lost is not None:  # a failed run with its rows: finished frames kept, the rest not_attempted
        summary.update(status="failed", error={"type": type(lost).__name__, "message": str(lost)})


def _restore(pool: ActorPool, refs: list, batch_size: int, max_in_flight: int, progress_id: Any,
             reports: Any) -> tuple[list[dict], int, ClusterLostError | None]:
    """restore-batches; a lost cluster gives the rows it has and the error, for the report."""
    try:
        got, resubmitted = restore_batches(quote(pool), quote(refs), batch_size, max_in_flight, progress_id,
                                           reports)
    except ClusterLostError as exc:
        return exc.rows, 0, exc
    return got, resubmitted, None


@flow(name=FLOW_NAME, description="Blind-restore pending checkout frames (CVSA on CLD priors) and report.")
def restore_frames(
    source: str, dest: str, config: str = "default", limit: int | None = None, lease_wait_s: float = 0.0,
    retry_quarantined: bool = False,
) -> dict[str, Any]:
    """Restore every pending frame of ``source`` into ``dest`` with the named config (or YAML path);
    ``limit`` caps the frames restored this run; ``lease_wait_s`` how long to wait for another run's
    lease; ``retry_quarantined`` restores again the frames an earlier run refused for good (their
    ledger records the reason). Returns the run summary (``summary.json``); a run stopped by
    SIGTERM/SIGINT ends in Prefect's Cancelled state after writing its ``cancelled`` report."""
    from prefect.states import Cancelled

    try:
        return run_pipeline(source, dest, config, limit, lease_wait_s=lease_wait_s,
                            retry_quarantined=retry_quarantined)
    except RunCancelled as exc:
        return Cancelled(message=str(exc))  # type: ignore[return-value]
