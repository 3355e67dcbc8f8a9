"""Fan-out of batches over a pool of restore actors (:class:`ActorPool`, :func:`fan_out`): at most
``max_in_flight`` batches outstanding, one per actor, a crashed actor's batch resubmitted once the
actor is back, and a batch that keeps killing its actor split to isolate the frame responsible
(module docstring of flows/pipeline/actors.py)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from flows.config import ClusterSettings
from flows.pipeline.actors import (
    FaultHook,
    PipelineError,
    RestorerFactory,
    RestoreWorker,
    RunContext,
    quarantine_rows,
    report_row,
)
from restoration.settings import RestorationSettings
from storage.sidecars import FrameRef

log = logging.getLogger("checkout_restore.actors")

MAX_RESTARTS = 3  # per actor, then the pool replaces it
MAX_REPLACEMENTS_PER_ACTOR = 3  # then the run fails: actors that cannot stay up are not a frame's fault
MAX_ATTEMPTS = 3  # per batch, before it is split into single frames
STOP_GRACE_S = 10.0  # after a stop request, how long batches in flight may still return
WAIT_S = 1.0  # ray.wait timeout: how often the fan-out looks at its stop request
NOT_ATTEMPTED = "not_attempted"  # reason of the frames a stopped run did not restore


def not_attempted_rows(refs: Sequence[FrameRef]) -> list[dict]:
    """Rows of frames a stopped run never restored (skipped; pending again next run)."""
    return [report_row(r, "skipped", reason=NOT_ATTEMPTED, detail="the run stopped before this frame")
            for r in refs]


class ClusterLostError(PipelineError):
    """No batch came back for ``cluster.stall_timeout_s`` (the node or every actor is lost); ``rows``:
    the frames finished before, then every other frame as ``not_attempted``."""

    def __init__(self, message: str, rows: list[dict]) -> None:
        super().__init__(message)
        self.rows = rows


class ActorPool:
    """``cluster.actors`` restore actors, replaced when one dies for good."""

    def __init__(self, cluster: ClusterSettings, settings: RestorationSettings, ctx: RunContext,
                 *, local: bool, fault_hook: FaultHook | None = None,
                 restorer_factory: RestorerFactory | None = None) -> None:
        import ray

        self._ray = ray
        self._cluster = cluster
        self._args = (settings.model_dump(), ctx, "cuda" if cluster.num_gpus > 0 else "cpu",
                      max(1, math.floor(cluster.num_cpus)), fault_hook, restorer_factory)
        options: dict[str, Any] = {
            "num_cpus": cluster.num_cpus, "num_gpus": cluster.num_gpus,
            "max_restarts": MAX_RESTARTS, "max_task_retries": 0,  # resubmission is explicit (fan_out)
        }
        if cluster.resources:  # placement by custom resource: only nodes that offer it get actors
            options["resources"] = dict(cluster.resources)
        # No runtime_env with credentials: Ray logs runtime envs to files. Local actors inherit the
        # driver's environment; cluster nodes bring their own (environment or instance role).
        self._local = local
        self.stall_timeout_s = cluster.stall_timeout_s
        self._cls = ray.remote(RestoreWorker).options(**options)
        self.actors = [self._cls.remote(*self._args) for _ in range(cluster.actors)]
        self.replaced = 0

    def ready(self) -> list[dict[str, Any]]:
        """Wait for every actor's priors; a failure here (not a frame's fault) fails the run."""
        try:
            return self._ray.get([a.ready.remote() for a in self.actors])
        except self._ray.exceptions.RayError as exc:
            raise PipelineError(f"restore actors failed to start: {exc}") from exc

    def replace(self, index: int) -> None:
        self._ray.kill(self.actors[index], no_restart=True)
        self.actors[index] = self._cls.remote(*self._args)
        self.replaced += 1

    def close(self) -> None:
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)


@dataclass(frozen=True)
class BatchDone:
    """Progress relayed to the flow after each batch (the flow logs it and updates artifacts)."""

    rows: list[dict]
    frames_done: int
    frames_total: int
    batches_done: int
    batches_total: int
    resubmitted: int
    elapsed_s: float


def fan_out(
    pool: ActorPool,
    batches: Sequence[list[FrameRef]],
    *,
    max_in_flight: int,
    on_batch: Callable[[BatchDone], None] | None = None,
    logger: logging.Logger | logging.LoggerAdapter = log,
    max_attempts: int = MAX_ATTEMPTS,
    stop: Callable[[], bool] | None = None,
    stall_s: float | None = None,
) -> tuple[list[dict], int]:
    """Run every batch on the pool; returns (rows in completion order, batches resubmitted).

    Each actor holds at most one batch and at most ``max_in_flight`` are outstanding (``ray.wait``),
    so when an actor dies the batch it was running is known exactly (a batch queued behind it
    would fail too, innocently). That batch is resubmitted once the actor is back: a probe call
    with task retries waits for Ray to restart it, and an actor out of restarts is replaced. After
    ``max_attempts`` failures a multi-frame batch is split into single frames (one more attempt
    each), and a single frame that still kills its actor is quarantined as ``worker_crashed``.
    ``logger`` is the driver-side logger (the flow passes Prefect's run logger). When ``stop()``
    turns true (a signal), nothing more is submitted, the batches in flight get
    :data:`STOP_GRACE_S` to return, and every frame without a row becomes ``not_attempted``.
    When nothing returns for ``stall_s`` seconds (a lost node: actors dead and never restarted),
    :class:`ClusterLostError` carries the rows so far and the rest as ``not_attempted``.
    """
    run = _FanOut(pool, batches, on_batch=on_batch, logger=logger, max_attempts=max_attempts)
    stop_at: float | None = None
    last = time.monotonic()
    while run.queue or run.batch_refs:
        if stall_s is not None and stop_at is None and time.monotonic() - last > stall_s:
            run.queue = run.drop_queue()
            run.abandon()
            raise ClusterLostError(f"no batch returned for {stall_s:g} s (cluster.stall_timeout_s): the Ray "
                                   "node or its actors are lost", run.rows)
        if stop_at is None and stop is not None and stop():
            stop_at, run.queue = time.monotonic() + STOP_GRACE_S, run.drop_queue()
        if stop_at is not None and (time.monotonic() > stop_at or not run.batch_refs):
            break
        if stop_at is None:
            run.submit(max_in_flight)
        # A timeout, so the flow's signal handler runs and ``stop`` is looked at every second.
        ready, _ = pool._ray.wait([*run.batch_refs, *run.probe_refs], num_returns=1, timeout=WAIT_S)
        if any(ref in run.batch_refs for ref in ready):
            last = time.monotonic()
        for ref in ready:
            run.probed(ref) if ref in run.probe_refs else run.returned(ref)
    if stop_at is not None:
        run.abandon()
    return run.rows, run.resubmitted


class _FanOut:
    """The state of one :func:`fan_out`: queued batches, calls in flight, rows, counters."""

    def __init__(self, pool: ActorPool, batches: Sequence[list[FrameRef]], *,
                 on_batch: Callable[[BatchDone], None] | None,
                 logger: logging.Logger | logging.LoggerAdapter, max_attempts: int) -> None:
        self.pool, self.ray = pool, pool._ray
        self.on_batch, self.logger, self.max_attempts = on_batch, logger, max_attempts
        self.queue: list[tuple[list[FrameRef], int]] = [(list(b), 0) for b in reversed(batches) if b]
        self.frames_total = sum(len(b) for b, _ in self.queue)
        self.batches_total = len(self.queue)
        self.idle = list(range(len(pool.actors)))  # actors ready for a batch
        self.batch_refs: dict[Any, tuple[list[FrameRef], int, int]] = {}  # ref -> (batch, attempts, actor)
        self.probe_refs: dict[Any, int] = {}  # ref of a ready() probe -> actor index
        self.rows: list[dict] = []
        self.resubmitted = self.batches_done = self.replacements = self.not_attempted = 0
        self.start = time.monotonic()

    def submit(self, max_in_flight: int) -> None:
        while self.queue and self.idle and len(self.batch_refs) < max_in_flight:
            batch, attempts = self.queue.pop()
            idx = self.idle.pop(0)
            self.batch_refs[self.pool.actors[idx].restore.remote(batch)] = (batch, attempts, idx)

    def drop_queue(self) -> list[tuple[list[FrameRef], int]]:
        """Stop submitting: the queued batches become ``not_attempted`` rows now."""
        for batch, _ in self.queue:
            self.rows.extend(not_attempted_rows(batch))
            self.not_attempted += len(batch)
        return []

    def abandon(self) -> None:
        """The batches still in flight after the grace period: ``not_attempted`` too."""
        for batch, _, _ in self.batch_refs.values():
            self.rows.extend(not_attempted_rows(batch))
        self.batch_refs.clear()

    def probed(self, ref: Any) -> None:
        """A restarted (or replacement) actor answered its probe, or died for good."""
        idx = self.probe_refs.pop(ref)
        try:
            self.ray.get(ref)
            self.idle.append(idx)
        except self.ray.exceptions.RayActorError:
            self.recover(idx, dead=True)

    def returned(self, ref: Any) -> None:
        """A batch call ended: its rows, or a crash / failure to retry."""
        batch, attempts, idx = self.batch_refs.pop(ref)
        try:
            got = self.ray.get(ref)
        except self.ray.exceptions.RayActorError as exc:
            self.logger.warning("actor %d died on a batch of %d frames (attempt %d): %s",
                                idx, len(batch), attempts + 1, exc)
            self.recover(idx, dead=isinstance(exc, self.ray.exceptions.ActorDiedError))
            self.retry(batch, attempts + 1, "worker_crashed", f"the actor died {attempts + 1} times: {exc}")
            return
        except self.ray.exceptions.RayError as exc:
            # The batch call raised (or its result was lost) but the actor lives: not a crash. The
            # worker isolates frames itself, so this is rare; retry, then split, then quarantine.
            cause = getattr(exc, "cause", None) or exc
            self.logger.warning("a batch of %d frames failed on actor %d (attempt %d): %s: %s",
                                len(batch), idx, attempts + 1, type(cause).__name__, cause)
            self.idle.append(idx)
            self.retry(batch, attempts + 1, "unexpected_error", f"{type(cause).__name__}: {cause}"[:2000])
            return
        self.idle.append(idx)
        self.finished(got)

    def finished(self, got: list[dict]) -> None:
        self.rows.extend(got)
        self.batches_done += 1
        if self.on_batch is not None:
            self.on_batch(BatchDone(rows=got, frames_done=len(self.rows) - self.not_attempted,
                                    frames_total=self.frames_total,
                                    batches_done=self.batches_done, batches_total=self.batches_total,
                                    resubmitted=self.resubmitted, elapsed_s=time.monotonic() - self.start))

    def recover(self, idx: int, dead: bool) -> None:
        if dead:  # out of restarts (or never started): a fresh actor takes its place
            self.replacements += 1
            if self.replacements > MAX_REPLACEMENTS_PER_ACTOR * len(self.pool.actors):
                raise PipelineError(f"restore actors keep dying ({self.replacements} replaced); giving up")
            self.pool.replace(idx)
        # Task retries make the probe wait until Ray has restarted the actor.
        self.probe_refs[self.pool.actors[idx].ready.options(max_task_retries=-1).remote()] = idx

    def retry(self, batch: list[FrameRef], attempts: int, reason: str, detail: str) -> None:
        """Resubmit a failed batch; after ``max_attempts``, split it into single frames; a single
        frame that keeps failing is quarantined with ``reason``."""
        if attempts < self.max_attempts:
            self.resubmitted += 1
            self.queue.append((batch, attempts))
        elif len(batch) > 1:
            self.resubmitted += len(batch)
            self.batches_total += len(batch) - 1
            self.queue.extend(([one], self.max_attempts - 1) for one in reversed(batch))
        else:
            self.finished(quarantine_rows(batch, reason, detail))
