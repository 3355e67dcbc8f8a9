"""Ray fan-out: actors that hold both priors and restore batches of frames (docs/design.md §8).

Each actor (:class:`RestoreWorker` under ``ray.remote``) loads the two shipped priors once in
``__init__``, then for every batch it reads and decodes the frames (CPU side), restores the batch
as one vectorised call of :class:`restoration.service.FrameRestorer`, writes ``restored/<id>.png`` and
``kernels/<id>.npy|.png``, records each frame in the ledger and *returns* the report rows. A bad
frame becomes a ``quarantined`` row with its reason; nothing a frame contains can fail a batch.

Workers never use Prefect's logger (their logs would not reach the Prefect server): progress
travels back in the return values and the flow logs it. :func:`fan_out` keeps at most
``max_in_flight`` batches submitted, and resubmits a batch whose actor crashed (the actor
restarts, ``max_restarts``; a permanently dead one is replaced), so every frame ends up in exactly
one row. A batch that keeps killing its actor is split into single frames to isolate the culprit,
which is then quarantined (``worker_crashed``).

Ray runs in-process by default (:func:`ensure_ray`), bound to loopback only; ``RAY_ADDRESS`` or
``cluster.address`` connects to an existing cluster instead. Credentials are never handed to Ray:
actors of a local instance inherit the driver's environment, cluster nodes use their own.
``cluster.resources`` places actors by custom resource; GPU actors pick their device and size
their calls by memory (:mod:`restoration.device`).
"""

from __future__ import annotations

import glob
import importlib
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
from pathlib import Path
from typing import Any

import numpy as np

from flows.config import ClusterSettings
from restoration.settings import RestorationSettings
from storage.errors import FrameError, StorageError
from storage.sidecars import FrameRef

log = logging.getLogger("checkout_restore.actors")

MAX_RESTARTS = 3  # per actor, then the pool replaces it
MAX_REPLACEMENTS_PER_ACTOR = 3  # then the run fails: actors that cannot stay up are not a frame's fault
MAX_ATTEMPTS = 3  # per batch, before it is split into single frames
LOCAL_MIN_CPUS = 2
LOCAL_TEMP_PREFIX = "ckr-ray-"  # /tmp/ckr-ray-*: the temp folders of local Ray instances
OWNER_FILE = "ckr-owner.json"  # in such a folder: the pid (and start time) of the driver owning it
STALE_UNOWNED_S = 600  # a temp folder without an owner file and no process using it, this old: stale

REPORT_COLUMNS = (
    "key", "id", "status", "reason", "detail", "psnr", "ssim", "kernel_mse", "kernel_ncc", "residual",
    "sharpness_gain", "kernel_extent", "nfe", "seconds", "width", "height", "restored_key", "kernel_key",
    "kernel_png_key", "psnr_in", "ssim_in", "noise_sigma", "codes_in", "codes_out", "codes_agree",
)
NAN = float("nan")

RestorerFactory = Callable[[RestorationSettings, str], Any]
"""Builds the batch restorer in the actor: ``factory(settings, device)`` -> an object with
``model_version`` and ``__call__(list[FrameInput]) -> list[FrameOutput]``. Default:
:class:`restoration.service.FrameRestorer` (both shipped priors)."""

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

        from restoration.device import choose_device
        from restoration.service import FrameRestorer
        from storage.stores import open_store

        torch.set_num_threads(max(1, threads))  # one actor per core share, no oversubscription
        self._settings = RestorationSettings.model_validate(settings)
        self._device = choose_device(device, torch.cuda.is_available(), torch.cuda.device_count())
        self._restorer = (restorer_factory or FrameRestorer)(self._settings, str(self._device))
        # GPU: frames per vectorised call bounded by measured memory (restoration/device.py); CPU: no bound.
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

        from restoration.device import probe_memory
        from restoration.service import FrameInput, FrameRestorer

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
        """Pixels the sampler holds for this frame: frames are restored at their own size."""
        h, w = image.shape[:2]
        return h * w

    # -- one batch ---------------------------------------------------------------------------

    def restore(self, batch: list[FrameRef]) -> list[dict]:
        """Decode, restore as one vectorised batch, write outputs + ledger; one row per frame.

        Every step is isolated per frame: whatever one frame raises becomes that frame's
        quarantined row (:func:`frame_failure_row`), never the batch's failure."""
        rows: dict[str, dict] = {}
        decoded: list[_Decoded] = []
        for ref in batch:
            try:
                decoded.append(self._decode(ref))
            except Exception as exc:
                rows[ref.key] = frame_failure_row(ref, exc, stage="read")
                if isinstance(exc, FrameError):
                    self._remember_quarantine(ref, exc.reason)
        for item, out in self._restore_all(decoded, rows):
            try:
                rows[item.ref.key] = self._finish(item, out)
            except Exception as exc:
                rows[item.ref.key] = frame_failure_row(item.ref, exc, stage="write")
        return [rows[ref.key] for ref in batch]

    def _remember_quarantine(self, ref: FrameRef, reason: str) -> None:
        """Record a content error in the ledger (no outputs, plus the reason), so reruns skip the
        frame until its bytes, a sidecar, the config or the models change. Best effort: if the
        write fails, the next run simply decodes the frame again."""
        from storage.ledger import record_quarantined

        with suppress(StorageError, ValueError):
            record_quarantined(self._dest, ref, reason, config_hash=self._ctx.config_hash,
                               model_version=self._restorer.model_version, run_id=self._ctx.run_id,
                               source_uri=self._ctx.source_uri)

    def _decode(self, ref: FrameRef) -> _Decoded:
        from storage.frames import load_frame

        notes: list[str] = []
        data = load_frame(self._source, ref, on_bad_truth=notes.append)
        return _Decoded(ref=ref, image=data.image, mask=data.mask, sharp=data.sharp, kernel=data.kernel,
                        notes=notes)

    def _restore_all(self, items: list[_Decoded], rows: dict[str, dict]) -> list[tuple[_Decoded, Any]]:
        """Restore ``items`` in one call; if that call fails, frame by frame to find the culprit.
        On a GPU the batch is first split into calls that fit its memory (per-frame results do not
        depend on batch mates, so the split changes nothing but the peak memory)."""
        from restoration.device import split_by_pixels
        from restoration.service import FrameInput

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
        self._dest.put(rkey, encode_png(out.restored), metadata=meta)
        self._dest.put(kkey, save_kernel(out.kernel), metadata=meta)
        self._dest.put(kpng, kernel_png(out.kernel), metadata=meta)
        if self._fault_hook is not None:
            self._fault_hook(ref.key)
        record_done(self._dest, ref, config_hash=ctx.config_hash, model_version=version,
                    run_id=ctx.run_id, source_uri=ctx.source_uri)
        h, w = item.image.shape[:2]
        notes = list(item.notes)
        try:  # metrics against a truth sidecar must not turn a restored frame into a failure
            truth = truth_metrics(out.restored, out.kernel, item.sharp, item.kernel, observed=item.image)
        except Exception as exc:
            truth = {}
            notes.append(f"truth metrics skipped ({type(exc).__name__}: {exc})")
        return report_row(
            ref, "restored", detail="; ".join(notes), residual=float(out.residual),
            noise_sigma=float(getattr(out, "noise_sigma", NAN)), **code_counts(item.image, out.restored),
            sharpness_gain=float(out.sharpness_gain), kernel_extent=float(out.kernel_extent),
            nfe=int(out.nfe), seconds=float(out.seconds), width=w, height=h,
            restored_key=rkey, kernel_key=kkey, kernel_png_key=kpng, **truth,
        )


def frame_failure_row(ref: FrameRef, exc: BaseException, *, stage: str) -> dict:
    """The quarantined row for an exception tied to one frame, with a typed reason: the frame's
    own :class:`FrameError` reason (content), ``invalid_key`` (a key the store refuses),
    ``read_error`` / ``write_error`` (the store failed for this frame; retried next run), or
    ``unexpected_error`` (anything else, class name in the detail)."""
    from storage.errors import InvalidKeyError

    if isinstance(exc, FrameError):
        reason = exc.reason
    elif isinstance(exc, InvalidKeyError):
        reason = "invalid_key"
    elif isinstance(exc, StorageError):
        reason = f"{stage}_error"
    else:
        reason = "unexpected_error"
    return report_row(ref, "quarantined", reason=reason, detail=f"{type(exc).__name__}: {exc}"[:2000])


def _odd_square(kernel: np.ndarray) -> np.ndarray:
    """Zero-pad a 2-D kernel to an odd square, centred (a 1x9 or 4x4 truth kernel is valid input;
    the kernel metrics compare kernels on a common odd square canvas)."""
    side = max(kernel.shape) | 1
    out = np.zeros((side, side), kernel.dtype)
    top, left = (side - kernel.shape[0]) // 2, (side - kernel.shape[1]) // 2
    out[top:top + kernel.shape[0], left:left + kernel.shape[1]] = kernel
    return out


def code_counts(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
    """codes_in / codes_out: texts zxing-cpp reads in the input / restored frame; codes_agree: 1.0
    when every code read in the input is read with the same text in the output, else 0.0."""
    from restoration.codes import codes_agree, decode_codes

    codes_in, codes_out = decode_codes(before), decode_codes(after)
    return {"codes_in": len(codes_in), "codes_out": len(codes_out),
            "codes_agree": float(codes_agree(codes_in, codes_out))}


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
        est, true = _odd_square(kernel)[None, None], _odd_square(true_kernel)[None, None]
        out["kernel_mse"] = float(metrics.kernel_mse(est, true)[0])
        out["kernel_ncc"] = float(metrics.kernel_ncc(est, true)[0])
    return out


# -- Ray lifecycle ------------------------------------------------------------------------------


@contextmanager
def ensure_ray(cluster: ClusterSettings) -> Iterator[bool]:
    """Make Ray available for the block; yield True when Ray runs in-process (a local instance).

    Already initialised (e.g. by a test fixture or a notebook): used as is and left running.
    ``RAY_ADDRESS`` or ``cluster.address``: connect to that cluster. Otherwise start Ray
    in-process, small (``num_cpus`` just enough for the actors, at least 2), without the
    dashboard, in a temp folder this call owns and removes, with every Ray process bound to
    127.0.0.1 (:func:`loopback_ray_init`). Before that, temp folders of local instances whose
    driver died (killed) are cleaned up: their processes killed, the folders removed
    (:func:`reap_stale_local_instances`).
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
    reap_stale_local_instances()
    temp_dir = tempfile.mkdtemp(prefix=LOCAL_TEMP_PREFIX, dir=LOCAL_TEMP_BASE)  # short: socket paths
    try:
        _write_owner(temp_dir)
        loopback_ray_init(num_cpus=max(LOCAL_MIN_CPUS, math.ceil(cluster.actors * cluster.num_cpus)),
                          temp_dir=temp_dir)
        _local_cluster = True
        yield True
    finally:
        _local_cluster = False
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


_local_cluster = False  # True while a Ray instance started by ensure_ray runs in this process
LOCAL_TEMP_BASE = "/tmp"


def loopback_ray_init(*, num_cpus: int, temp_dir: str) -> None:
    """``ray.init`` of a local instance in which every process listens on 127.0.0.1 only.

    Ray 2.60 binds its gRPC servers (GCS, raylet, core workers) to all interfaces unless the node
    IP is exactly 127.0.0.1, and ``ray.init`` replaces a loopback ``_node_ip_address`` by the
    machine's routable IP unless ``ray_constants.ENABLE_RAY_CLUSTER`` is off (what Ray itself does
    on macOS/Windows; env ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported). With it
    off during init, the node IP stays 127.0.0.1 and the GCS, raylet, workers, dashboard agent,
    runtime-env agent and metrics exporter all bind loopback (tests/test_reliability.py lists the
    sockets). The dashboard is not started. No credential goes through ``runtime_env``: workers
    inherit the driver's environment from the raylet, and Ray writes nothing of it to its logs.
    """
    import ray
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                 _node_ip_address="127.0.0.1")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _psutil() -> Any:
    """psutil as shipped with Ray (``ray/thirdparty_files``, on the path once ray is imported)."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _write_owner(temp_dir: str) -> None:
    me = _psutil().Process()
    with open(os.path.join(temp_dir, OWNER_FILE), "w") as f:
        json.dump({"pid": me.pid, "create_time": me.create_time(), "space": _pid_space()}, f)


def _pid_space() -> str:
    """This machine boot and pid namespace: an owner pid means something only within the same."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            parts.append("?")
    return " ".join(parts)


def _owner_alive(temp_dir: str) -> bool | None:
    """True/False when the folder names its driver (alive or not); None without an owner file."""
    psutil = _psutil()

    try:
        with open(os.path.join(temp_dir, OWNER_FILE)) as f:
            owner = json.load(f)
        if owner.get("space") != _pid_space():
            return True  # another machine or container: not ours to judge, treat as alive
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner["create_time"])) < 1.0  # not a reused pid
    except (OSError, ValueError, KeyError, TypeError):
        return None
    except psutil.Error:
        return False


def _processes_using(temp_dir: str) -> list[Any]:
    """Processes whose command line names ``temp_dir`` (every Ray process of that instance does)."""
    psutil = _psutil()

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            args = proc.info["cmdline"] or ()
            if proc.pid != os.getpid() and any(temp_dir + os.sep in a or a.endswith(temp_dir) for a in args):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def reap_stale_local_instances(base: str | None = None) -> list[str]:
    """Kill what a dead driver's local Ray instance left behind and remove its temp folder.

    A folder ``<base>/ckr-ray-*`` is stale when its owner file names a process that is gone (or a
    reused pid), or, without an owner file, when no process uses it and it is older than
    :data:`STALE_UNOWNED_S`. Its processes (GCS, raylet, agents, workers: their command lines
    name the folder) get SIGTERM, then SIGKILL after 5 s. Returns the folders removed.
    """
    psutil = _psutil()
    removed = []
    for temp_dir in sorted(glob.glob(os.path.join(base or LOCAL_TEMP_BASE, LOCAL_TEMP_PREFIX + "*"))):
        alive = _owner_alive(temp_dir)
        if alive:
            continue
        procs = _processes_using(temp_dir)
        if alive is None and (procs or time.time() - os.path.getmtime(temp_dir) < STALE_UNOWNED_S):
            continue
        for proc in procs:
            with suppress(psutil.Error):
                proc.terminate()
        _, left = psutil.wait_procs(procs, timeout=5)
        for proc in left:
            with suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.warning("cleaned up a dead run's local Ray instance: %d processes stopped, %s removed",
                    len(procs), temp_dir)
        removed.append(temp_dir)
    return removed


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

    def retry(batch: list[FrameRef], attempts: int, reason: str, detail: str) -> None:
        """Resubmit a failed batch; after ``max_attempts``, split it into single frames; a single
        frame that keeps failing is quarantined with ``reason``."""
        nonlocal resubmitted, batches_total
        if attempts < max_attempts:
            resubmitted += 1
            queue.append((batch, attempts))
        elif len(batch) > 1:
            resubmitted += len(batch)
            batches_total += len(batch) - 1
            queue.extend(([one], max_attempts - 1) for one in reversed(batch))
        else:
            finished(quarantine_rows(batch, reason, detail))

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
            logger.warning("actor %d died on a batch of %d frames (attempt %d): %s",
                           idx, len(batch), attempts + 1, exc)
            recover(idx, dead=isinstance(exc, ray.exceptions.ActorDiedError))
            retry(batch, attempts + 1, "worker_crashed", f"the actor died {attempts + 1} times: {exc}")
            continue
        except ray.exceptions.RayError as exc:
            # The batch call raised (or its result was lost) but the actor lives: not a crash. The
            # worker isolates frames itself, so this is rare; retry, then split, then quarantine.
            cause = getattr(exc, "cause", None) or exc
            logger.warning("a batch of %d frames failed on actor %d (attempt %d): %s: %s",
                           len(batch), idx, attempts + 1, type(cause).__name__, cause)
            idle.append(idx)
            retry(batch, attempts + 1, "unexpected_error", f"{type(cause).__name__}: {cause}"[:2000])
            continue
        idle.append(idx)
        finished(got)
    return rows, resubmitted
