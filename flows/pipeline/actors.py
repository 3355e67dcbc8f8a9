"""Ray fan-out: actors that hold both priors and restore batches of frames (docs/design.md §8).

Each actor (:class:`RestoreWorker` under ``ray.remote``) loads the two shipped priors once in
``__init__``, then for every batch it reads and decodes the frames (CPU side), restores the batch
as one vectorised call of :class:`restoration.service.FrameRestorer`, writes ``restored/<id>.png`` and
``kernels/<id>.npy|.png``, records each frame in the ledger and *returns* the report rows. A bad
frame becomes a ``quarantined`` row with its reason; nothing a frame contains can fail a batch.

Workers never use Prefect's logger (their logs would not reach the Prefect server): progress
travels back in the return values and the flow logs it. :func:`flows.pipeline.fanout.fan_out` keeps
at most ``max_in_flight`` batches submitted, and resubmits a batch whose actor crashed (the actor
restarts, ``max_restarts``; a permanently dead one is replaced), so every frame ends up in exactly
one row. A batch that keeps killing its actor is split into single frames to isolate the culprit,
which is then quarantined (``worker_crashed``).

Ray runs in-process by default (:func:`flows.pipeline.ray_local.ensure_ray`), bound to loopback
only; ``RAY_ADDRESS`` or ``cluster.address`` connects to an existing cluster instead. Credentials
are never handed to Ray: actors of a local instance inherit the driver's environment, cluster
nodes use their own. ``cluster.resources`` places actors by custom resource; GPU actors pick their
device and size their calls by memory (:mod:`restoration.device`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from restoration.settings import RestorationSettings
from storage.errors import FrameError, StorageError
from storage.sidecars import FrameRef

log = logging.getLogger("checkout_restore.actors")


REPORT_COLUMNS = (
    "key", "id", "status", "reason", "detail", "psnr", "ssim", "kernel_mse", "kernel_ncc", "residual",
    "sharpness_gain", "kernel_extent", "nfe", "seconds", "width", "height", "restored_key", "kernel_key",
    "kernel_png_key", "psnr_in", "ssim_in", "noise_sigma", "codes_in", "codes_out", "codes_agree",
    "kernel_choice", "fallback",
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
               restored_key="", kernel_key="", kernel_png_key="", width=NAN, height=NAN, nfe=NAN,
               kernel_choice="", fallback="")
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
        for item in decoded:  # the sampler refused this frame's content: as permanent as a codec error
            if rows[item.ref.key]["reason"] == "restore_error":
                self._remember_quarantine(item.ref, "restore_error")
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
            restored_key=rkey, kernel_key=kkey, kernel_png_key=kpng,
            kernel_choice=str(getattr(out, "kernel_choice", "")), fallback=str(getattr(out, "fallback", "")),
            **truth,
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


