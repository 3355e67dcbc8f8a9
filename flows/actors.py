"""Ray fan-out: actors that hold both priors and restore batches of frames (docs/design.md §8).

Each actor (:class:`RestoreWorker` under ``ray.remote``) loads the two shipped priors once in
``__init__``, then for every batch it reads and decodes the frames (CPU side), restores the batch
as one vectorised call of :class:`flows.restorer.FrameRestorer`, writes ``restored/<id>.png`` and
``kernels/<id>.npy|.png``, records each frame in the ledger and *returns* the report rows. A bad
frame becomes a ``quarantined`` row with its reason; nothing a frame contains can fail a batch.

Workers never use Prefect's logger (their logs would not reach the Prefect server): progress
travels back in the return values and the flow logs it. :func:`fan_out` keeps at most
``max_in_flight`` batches submitted, and resubmits a batch whose actor crashed (the actor
restarts, ``max_restarts``; a permanently dead one is replaced), so every frame ends up in exactly
one row. A batch that keeps killing its actor is split into single frames to isolate the culprit,
which is then quarantined (``worker_crashed``).

Ray runs in-process by default (:func:`ensure_ray`); ``RAY_ADDRESS`` or ``cluster.address``
connects to an existing cluster instead.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flows.config import ClusterSettings, RestorationSettings
from storage.errors import FrameError, StorageError
from storage.sidecars import FrameRef

log = logging.getLogger("checkout_restore.actors")

MAX_RESTARTS = 3  # per actor, then the pool replaces it
MAX_REPLACEMENTS_PER_ACTOR = 3  # then the run fails: actors that cannot stay up are not a frame's fault
MAX_ATTEMPTS = 3  # per batch, before it is split into single frames
LOCAL_MIN_CPUS = 2
# Passed to actors of a cluster this process started, so workers reach the same object stores.
_FORWARDED_ENV = ("AWS_", "BOTO_")

REPORT_COLUMNS = (
    "key", "id", "status", "reason", "detail", "psnr", "ssim", "kernel_mse", "kernel_ncc", "residual",
    "sharpness_gain", "kernel_extent", "nfe", "seconds", "width", "height", "restored_key", "kernel_key",
    "kernel_png_key", "psnr_in", "ssim_in",
)
NAN = float("nan")
QUARANTINE_FIELD = "quarantine_reason"  # extra ledger field: the frame's content was unusable

RestorerFactory = Callable[[RestorationSettings, str], Any]
"""Builds the batch restorer in the actor: ``factory(settings, device)`` -> an object with
``model_version`` and ``__call__(list[FrameInput]) -> list[FrameOutput]``. Default:
:class:`flows.restorer.FrameRestorer` (both shipped priors)."""

FaultHook = Callable[[str], None]
"""Test-only: called in the worker with a frame's key after its outputs are written and before
its ledger entry; tests pass one that kills the worker process to simulate a crash mid-batch."""


class PipelineError(RuntimeError):
    """The run cannot proceed (Ray unreachable, priors that do not load): a failed run."""


@dataclass(frozen=True)
class RunContext:
    """What every actor needs to know about the run."""

    run_id: str
    source_uri: str
    dest_uri: str
    config_hash: str


def report_row(ref: FrameRef, status: str, *, reason: str = "", detail: str = "", **values: Any) -> dict:
    """One ``frames.parquet`` row with every column present (NaN / "" where not applicable)."""
    row: dict[str, Any] = {c: NAN for c in REPORT_COLUMNS}
    row.update(key=ref.key, id=ref.id, status=status, reason=reason, detail=detail,
               restored_key="", kernel_key="", kernel_png_key="", width=NAN, height=NAN, nfe=NAN)
    row.update(values)
    return row


def quarantine_rows(refs: Sequence[FrameRef], reason: str, detail: str) -> list[dict]:
    return [report_row(r, "quarantined", reason=reason, detail=detail) for r in refs]


@dataclass
class _Decoded:
    ref: FrameRef
    image: np.ndarray
    mask: np.ndarray | None
    sharp: np.ndarray | None = None
    kernel: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


class RestoreWorker:
    """The actor body (plain class; :func:`start_actors` wraps it with ``ray.remote``)."""

    def __init__(self, settings: dict[str, Any], ctx: RunContext, device: str = "cpu", threads: int = 1,
                 fault_hook: FaultHook | None = None,
                 restorer_factory: RestorerFactory | None = None) -> None:
        import torch

        from flows.device import choose_device
        from flows.restorer import FrameRestorer
        from storage.stores import open_store

        torch.set_num_threads(max(1, threads))  # one actor per core share, no oversubscription
        self._settings = RestorationSettings.model_validate(settings)
        self._device = choose_device(device, torch.cuda.is_available(), torch.cuda.device_count())
        self._restorer = (restorer_factory or FrameRestorer)(self._settings, str(self._device))
        # GPU: frames per vectorised call bounded by measured memory (flows/device.py); CPU: no bound.
        self._pixel_budget = self._measure_pixel_budget() if self._device.type == "cuda" else None
        self._ctx = ctx
        self._source = open_store(ctx.source_uri, read_only=True)
        self._dest = open_store(ctx.dest_uri)
        self._fault_hook = fault_hook

    def ready(self) -> dict[str, Any]:
        """Called once after start: the priors are loaded when this returns."""
        return {"model_version": self._restorer.model_version, "pid": os.getpid(),
                "device": str(self._device), "pixel_budget": self._pixel_budget}

    def _measure_pixel_budget(self) -> int | None:
        """Probe the restorer's peak GPU memory (1 and 2 frames, one step) -> pixels per call."""
        import torch

        from flows.device import probe_memory
        from flows.restorer import FrameInput, FrameRestorer

        if not isinstance(self._restorer, FrameRestorer):
            return None  # a test's stand-in restorer: nothing to measure
        size = self._settings.working_size
        probe = FrameRestorer(self._settings.model_copy(update={"steps": 1}), str(self._device),
                              priors=(self._restorer.image_prior, self._restorer.kernel_prior))
        image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        model = probe_memory(
            lambda n: probe([FrameInput(key=f"probe{i}", image=image, mask=None, seed_key=f"probe{i}")
                             for i in range(n)]), size * size, self._device)
        free, _ = torch.cuda.mem_get_info(self._device)
        return model.pixel_budget(free)

    def _working_pixels(self, image: np.ndarray) -> int:
        from flows.restorer import _working_shape

        h, w, _ = _working_shape(*image.shape[:2], self._settings.working_size)
        return h * w

    # -- one batch ---------------------------------------------------------------------------

    def restore(self, batch: list[FrameRef]) -> list[dict]:
        """Decode, restore as one vectorised batch, write outputs + ledger; one row per frame."""
        rows: dict[str, dict] = {}
        decoded: list[_Decoded] = []
        for ref in batch:
            try:
                decoded.append(self._decode(ref))
            except FrameError as exc:
                rows[ref.key] = report_row(ref, "quarantined", reason=exc.reason, detail=str(exc))
                self._remember_quarantine(ref, exc.reason)
            except StorageError as exc:
                rows[ref.key] = report_row(ref, "quarantined", reason="read_error", detail=str(exc))
        for item, out in self._restore_all(decoded, rows):
            rows[item.ref.key] = self._finish(item, out)
        return [rows[ref.key] for ref in batch]

    def _remember_quarantine(self, ref: FrameRef, reason: str) -> None:
        """Record a content error in the ledger (no outputs, plus the reason), so reruns skip the
        frame until its bytes, the config or the models change. Best effort: if the write fails,
        the next run simply decodes the frame again."""
        with suppress(StorageError):
            write_quarantine_entry(self._dest, ref, reason, config_hash=self._ctx.config_hash,
                                   model_version=self._restorer.model_version, run_id=self._ctx.run_id,
                                   source_uri=self._ctx.source_uri)

    def _decode(self, ref: FrameRef) -> _Decoded:
        from storage.images import decode_frame, decode_mask
        from storage.sidecars import load_kernel

        image = decode_frame(self._source.get(ref.key))
        mask = decode_mask(self._source.get(ref.mask_key), shape=image.shape) if ref.mask_key else None
        item = _Decoded(ref=ref, image=image, mask=mask)
        # Ground truth is optional: a broken truth sidecar loses the metrics, not the frame.
        if ref.sharp_key:
            try:
                sharp = decode_frame(self._source.get(ref.sharp_key))
                if sharp.shape != image.shape:
                    raise FrameError(f"sharp truth is {sharp.shape}, frame is {image.shape}",
                                     reason="truth_size_mismatch")
                item.sharp = sharp
            except (FrameError, StorageError) as exc:
                item.notes.append(f"sharp truth ignored ({getattr(exc, 'reason', 'read_error')}: {exc})")
        if ref.kernel_key:
            try:
                item.kernel = load_kernel(self._source.get(ref.kernel_key))
            except (FrameError, StorageError) as exc:
                item.notes.append(f"kernel truth ignored ({getattr(exc, 'reason', 'read_error')}: {exc})")
        return item

    def _restore_all(self, items: list[_Decoded], rows: dict[str, dict]) -> list[tuple[_Decoded, Any]]:
        """Restore ``items`` in one call; if that call fails, frame by frame to find the culprit.
        On a GPU the batch is first split into calls that fit its memory (per-frame results do not
        depend on batch mates, so the split changes nothing but the peak memory)."""
        from flows.device import split_by_pixels
        from flows.restorer import FrameInput

        if not items:
            return []
        if self._pixel_budget is not None and len(items) > 1:
            groups = split_by_pixels([self._working_pixels(d.image) for d in items], self._pixel_budget)
            if len(groups) > 1:
                return [pair for g in groups for pair in self._restore_all([items[i] for i in g], rows)]
        frames = [FrameInput(key=d.ref.key, image=d.image, mask=d.mask,
                             seed_key=f"{d.ref.key}:{self._ctx.config_hash}") for d in items]
        try:
            return list(zip(items, self._restorer(frames), strict=True))
        except Exception as exc:  # a frame the sampler cannot take must not sink its batch
            if len(items) == 1:
                rows[items[0].ref.key] = report_row(items[0].ref, "quarantined", reason="restore_error",
                                                    detail=f"{type(exc).__name__}: {exc}")
                return []
            return [pair for item in items for pair in self._restore_all([item], rows)]

    def _finish(self, item: _Decoded, out: Any) -> dict:
        """Write one frame's outputs, then its ledger entry; return its row."""
        from storage.images import encode_png, kernel_png
        from storage.keys import output_keys
        from storage.ledger import output_metadata, record_done
        from storage.sidecars import save_kernel

        ref, ctx = item.ref, self._ctx
        version = self._restorer.model_version
        rkey, kkey, kpng = output_keys(ref.id)
        meta = output_metadata(ref, ctx.config_hash, version, ctx.run_id)
        try:
            self._dest.put(rkey, encode_png(out.restored), metadata=meta)
            self._dest.put(kkey, save_kernel(out.kernel), metadata=meta)
            self._dest.put(kpng, kernel_png(out.kernel), metadata=meta)
            if self._fault_hook is not None:
                self._fault_hook(ref.key)
            record_done(self._dest, ref, config_hash=ctx.config_hash, model_version=version,
                        run_id=ctx.run_id, source_uri=ctx.source_uri)
        except (StorageError, FrameError) as exc:
            return report_row(ref, "quarantined", reason="write_error", detail=str(exc))
        h, w = item.image.shape[:2]
        return report_row(
            ref, "restored", detail="; ".join(item.notes), residual=float(out.residual),
            sharpness_gain=float(out.sharpness_gain), kernel_extent=float(out.kernel_extent),
            nfe=int(out.nfe), seconds=float(out.seconds), width=w, height=h,
            restored_key=rkey, kernel_key=kkey, kernel_png_key=kpng,
            **truth_metrics(out.restored, out.kernel, item.sharp, item.kernel, observed=item.image),
        )


def write_quarantine_entry(dest: Any, ref: FrameRef, reason: str, *, config_hash: str, model_version: str,
                           run_id: str, source_uri: str) -> None:
    """``ledger/<id>.json`` for a frame whose content cannot be restored: no outputs, and a
    ``quarantine_reason`` field (:class:`storage.ledger.LedgerEntry` readers ignore extra fields)."""
    from datetime import UTC, datetime

    from storage.keys import ledger_key
    from storage.ledger import LedgerEntry, output_metadata

    assert ref.etag is not None
    entry = LedgerEntry(frame_id=ref.id, source_key=ref.key, source_etag=ref.etag, config_hash=config_hash,
                        model_version=model_version, outputs=(), run_id=run_id, source_uri=source_uri,
                        completed_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    record = json.loads(entry.to_json()) | {QUARANTINE_FIELD: reason}
    dest.put(ledger_key(ref.id), json.dumps(record, indent=1, sort_keys=True).encode(),
             metadata=output_metadata(ref, config_hash, model_version, run_id))


def truth_metrics(restored: np.ndarray, kernel: np.ndarray, sharp: np.ndarray | None,
                  true_kernel: np.ndarray | None, observed: np.ndarray | None = None) -> dict[str, float]:
    """psnr/ssim against the sharp truth ([0, 1] RGB) and kernel_mse/kernel_ncc against the true
    kernel (docs/design.md §7); ``psnr_in``/``ssim_in``: the same for the ``observed`` input, so the
    report shows whether restoration helped. NaN where there is no truth."""
    from restoration import metrics

    out = {"psnr": NAN, "ssim": NAN, "kernel_mse": NAN, "kernel_ncc": NAN, "psnr_in": NAN, "ssim_in": NAN}
    if sharp is not None:
        ref = np.moveaxis(sharp.astype(np.float64) / 255.0, -1, 0)[None]
        for suffix, image in (("", restored), ("_in", observed)):
            if image is None:
                continue
            x = np.moveaxis(image.astype(np.float64) / 255.0, -1, 0)[None]
            out[f"psnr{suffix}"] = float(metrics.psnr(x, ref)[0])
            out[f"ssim{suffix}"] = float(metrics.ssim(x, ref)[0])
    if true_kernel is not None:
        out["kernel_mse"] = float(metrics.kernel_mse(kernel[None, None], true_kernel[None, None])[0])
        out["kernel_ncc"] = float(metrics.kernel_ncc(kernel[None, None], true_kernel[None, None])[0])
    return out


# -- Ray lifecycle ------------------------------------------------------------------------------


@contextmanager
def ensure_ray(cluster: ClusterSettings) -> Iterator[bool]:
    """Make Ray available for the block; yield True when Ray runs in-process (a local instance).

    Already initialised (e.g. by a test fixture or a notebook): used as is and left running.
    ``RAY_ADDRESS`` or ``cluster.address``: connect to that cluster. Otherwise start Ray
    in-process, small (``num_cpus`` just enough for the actors, at least 2), without the
    dashboard, in a temp folder this call owns and removes.
    ``address="local"`` makes Ray ignore a stale ``ray_current_cluster`` file left in its temp
    folder by a crashed session.
    """
    import ray

    global _local_cluster
    if ray.is_initialized():
        yield _local_cluster  # a cluster this process started earlier (e.g. a test fixture) is local
        return
    address = os.environ.get("RAY_ADDRESS") or cluster.address
    if address:
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PipelineError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
        try:
            yield False
        finally:
            ray.shutdown()
        return
    temp_dir = tempfile.mkdtemp(prefix="ckr-ray-", dir="/tmp")  # short: Ray's socket paths live here
    try:
        ray.init(
            address="local",
            num_cpus=max(LOCAL_MIN_CPUS, math.ceil(cluster.actors * cluster.num_cpus)),
            include_dashboard=False,
            _temp_dir=temp_dir,
            _node_ip_address="127.0.0.1",
        )
        _local_cluster = True
        yield True
    finally:
        _local_cluster = False
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


_local_cluster = False  # True while a Ray instance started by ensure_ray runs in this process


def _local_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}


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
        if local:
            options["runtime_env"] = {"env_vars": _local_env()}
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
) -> tuple[list[dict], int]:
    """Run every batch on the pool; returns (rows in completion order, batches resubmitted).

    Each actor holds at most one batch and at most ``max_in_flight`` are outstanding (``ray.wait``),
    so when an actor dies the batch it was running is known exactly (a batch queued behind it
    would fail too, innocently). That batch is resubmitted once the actor is back: a probe call
    with task retries waits for Ray to restart it, and an actor out of restarts is replaced. After
    ``max_attempts`` failures a multi-frame batch is split into single frames (one more attempt
    each), and a single frame that still kills its actor is quarantined as ``worker_crashed``.
    ``logger`` is the driver-side logger (the flow passes Prefect's run logger).
    """
    ray = pool._ray
    queue: list[tuple[list[FrameRef], int]] = [(list(b), 0) for b in reversed(batches) if b]
    frames_total = sum(len(b) for b, _ in queue)
    batches_total = len(queue)
    idle = list(range(len(pool.actors)))  # actors ready for a batch
    batch_refs: dict[Any, tuple[list[FrameRef], int, int]] = {}  # ref -> (batch, attempts, actor index)
    probe_refs: dict[Any, int] = {}  # ref of a ready() probe -> actor index
    rows: list[dict] = []
    resubmitted = batches_done = replacements = 0
    start = time.monotonic()

    def finished(got: list[dict]) -> None:
        nonlocal batches_done
        rows.extend(got)
        batches_done += 1
        if on_batch is not None:
            on_batch(BatchDone(rows=got, frames_done=len(rows), frames_total=frames_total,
                               batches_done=batches_done, batches_total=batches_total,
                               resubmitted=resubmitted, elapsed_s=time.monotonic() - start))

    def recover(idx: int, dead: bool) -> None:
        nonlocal replacements
        if dead:  # out of restarts (or never started): a fresh actor takes its place
            replacements += 1
            if replacements > MAX_REPLACEMENTS_PER_ACTOR * len(pool.actors):
                raise PipelineError(f"restore actors keep dying ({replacements} replaced); giving up")
            pool.replace(idx)
        # Task retries make the probe wait until Ray has restarted the actor.
        probe_refs[pool.actors[idx].ready.options(max_task_retries=-1).remote()] = idx

    while queue or batch_refs:
        while queue and idle and len(batch_refs) < max_in_flight:
            batch, attempts = queue.pop()
            idx = idle.pop(0)
            batch_refs[pool.actors[idx].restore.remote(batch)] = (batch, attempts, idx)
        [ref], _ = ray.wait([*batch_refs, *probe_refs], num_returns=1)
        if ref in probe_refs:
            idx = probe_refs.pop(ref)
            try:
                ray.get(ref)
                idle.append(idx)
            except ray.exceptions.RayActorError:
                recover(idx, dead=True)
            continue
        batch, attempts, idx = batch_refs.pop(ref)
        try:
            got = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            attempts += 1
            logger.warning("actor %d died on a batch of %d frames (attempt %d): %s",
                           idx, len(batch), attempts, exc)
            recover(idx, dead=isinstance(exc, ray.exceptions.ActorDiedError))
            if attempts < max_attempts:
                resubmitted += 1
                queue.append((batch, attempts))
            elif len(batch) > 1:
                resubmitted += len(batch)
                batches_total += len(batch) - 1
                queue.extend(([one], max_attempts - 1) for one in reversed(batch))
            else:
                finished(quarantine_rows(batch, "worker_crashed", f"the actor died {attempts} times: {exc}"))
            continue
        idle.append(idx)
        finished(got)
    return rows, resubmitted
