"""Scoring one restored frame against its truth (docs/design.md §7), and the rows of
``results.parquet`` (:data:`COLUMNS`), including the hindsight fixed-kernel rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from flows.evaluation.frames import BenchFrame
from restoration import kernels as kern
from restoration.codes import decode_codes
from restoration.metrics import (
    kernel_mse,
    kernel_ncc,
    psnr,
    psnr_masked,
    registration_shift,
    sharpness_gain,
    ssim,
)

#: a frame is "harmed" when the output's PSNR is below the input's by more than this (dB)
HARM_MARGIN_DB = 0.3
#: Columns every results table has (plus psnr_in_mask / psnr_out_mask, NaN without a mask).
COLUMNS: tuple[str, ...] = (
    "method", "frame", "suite", "psnr", "ssim", "psnr_in_mask", "psnr_out_mask", "kernel_mse",
    "kernel_ncc", "seconds", "nfe", "sharpness_gain", "kernel_size_true", "kernel_size_est",
    "note", "codes_true", "codes_decoded", "codes_sharp", "codes_read",
    "psnr_input", "harmed", "shift_px", "kernel_choice", "kernel_score",
    "fallback", "codes_wrong", "psnr_unguarded",
)  # fmt: skip


def quantise(x: torch.Tensor) -> torch.Tensor:
    """Outputs are scored as saved: 8-bit."""
    return (x.float().clamp(0, 1) * 255).round() / 255


def nan() -> float:
    return float("nan")


def score(
    frame: BenchFrame, x: torch.Tensor, k: torch.Tensor | None, kernel_canvas: int
) -> dict[str, float]:
    """Truth-based and no-reference numbers of one restored frame (NaN where no truth)."""
    row: dict[str, float] = dict.fromkeys(
        ("psnr", "ssim", "psnr_in_mask", "psnr_out_mask", "kernel_mse", "kernel_ncc"), nan()
    )
    x = x[None] if x.dim() == 3 else x
    if frame.sharp is not None:
        row["psnr"] = float(psnr(x, frame.sharp)[0])
        row["ssim"] = float(ssim(x, frame.sharp)[0])
        if frame.mask is not None:
            row["psnr_in_mask"] = float(psnr_masked(x, frame.sharp, 1 - frame.mask)[0])
            row["psnr_out_mask"] = float(psnr_masked(x, frame.sharp, frame.mask)[0])
    if k is not None and frame.kernel is not None:
        canvas = max(kernel_canvas, frame.kernel.shape[-1], k.shape[-1])
        canvas += 1 - canvas % 2
        row["kernel_mse"] = float(kernel_mse(k, frame.kernel, canvas=canvas)[0])
        row["kernel_ncc"] = float(kernel_ncc(k, frame.kernel, canvas=canvas)[0])
    row["sharpness_gain"] = float(sharpness_gain(x, frame.y, frame.mask)[0])
    row.update(psnr_input=nan(), harmed=nan(), shift_px=nan())
    if frame.sharp is not None:
        # harm is judged where the frame was observed: under a hand the input holds the hand
        if frame.mask is None:
            before, after = float(psnr(frame.y, frame.sharp)[0]), row["psnr"]
        else:
            before = float(psnr_masked(frame.y, frame.sharp, frame.mask)[0])
            after = row["psnr_out_mask"]
        row["psnr_input"] = before
        row["harmed"] = float(after < before - HARM_MARGIN_DB)
        row["shift_px"] = float(registration_shift(x, frame.sharp)[0].norm())
    return row


def code_columns(frame: BenchFrame, x: torch.Tensor) -> dict[str, Any]:
    """codes_true / codes_decoded / codes_sharp / codes_wrong counts and the texts read ("" / NaN
    without codes). A text the reader returns that is no true code of the frame is a misread:
    worse than no read, so it is counted (codes_wrong), never silently dropped."""
    if frame.codes is None:
        return {"codes_true": nan(), "codes_decoded": nan(), "codes_sharp": nan(), "codes_read": "",
                "codes_wrong": nan()}
    img = (x[0] if x.dim() == 4 else x).mul(255).round().byte().permute(1, 2, 0).numpy()
    found = decode_codes(img)
    read = tuple(c for c in frame.codes if c in set(found))
    wrong = [t for t in found if t not in frame.codes]
    return {"codes_true": float(len(frame.codes)), "codes_decoded": float(len(read)),
            "codes_sharp": float(len(frame.codes_sharp)), "codes_read": ";".join(read),
            "codes_wrong": float(len(wrong))}


def guard_columns(frame: BenchFrame, row: dict[str, Any], fallback: str, rejected: torch.Tensor | None,
                  kernel_canvas: int) -> dict[str, Any]:
    """fallback (the guard's reason, "" if it kept the restoration) and psnr_unguarded: the PSNR
    the frame would have had without the guard (on observed pixels, like psnr_input)."""
    unguarded = row["psnr"] if frame.mask is None else row["psnr_out_mask"]
    if rejected is not None and frame.sharp is not None:
        raw = score(frame, quantise(rejected[None]), None, kernel_canvas)
        unguarded = raw["psnr"] if frame.mask is None else raw["psnr_out_mask"]
    return {"fallback": fallback, "psnr_unguarded": unguarded}


def _candidate_kernels(size: int) -> list[tuple[str, torch.Tensor]]:
    cands = []
    for sigma in np.arange(0.5, 8.01, 0.25):
        cands.append((f"gaussian sigma={sigma:.2f}", kern.gaussian_kernel(size, sigma, sigma)))
    for radius in np.arange(1.0, (size - 1) / 2 + 1e-9, 0.5):
        cands.append((f"disc radius={radius:.1f}", kern.defocus_kernel(size, float(radius))))
    return cands


def fixed_kernel_rows(frames: list[BenchFrame], kernel_canvas: int) -> list[dict[str, Any]]:
    """Per suite, the best FIXED kernel guess chosen with hindsight (min mean kernel-MSE)."""
    rows = []
    suites = sorted({f.suite for f in frames if f.kernel is not None})
    for suite in suites:
        members = [f for f in frames if f.suite == suite and f.kernel is not None]
        canvas = max([kernel_canvas] + [f.kernel.shape[-1] for f in members])
        canvas += 1 - canvas % 2
        best = None
        for label, cand in _candidate_kernels(canvas):
            c = cand[None, None]
            mse = [float(kernel_mse(c, f.kernel, canvas=canvas)[0]) for f in members]
            if best is None or np.mean(mse) < best[0]:
                best = (float(np.mean(mse)), label, c, mse)
        assert best is not None
        _, label, c, mses = best
        for f, mse in zip(members, mses, strict=True):
            row = {"method": "fixed-kernel", "frame": f.id, "suite": suite}
            row.update(dict.fromkeys(("psnr", "ssim", "psnr_in_mask", "psnr_out_mask"), nan()))
            row.update(
                kernel_mse=mse,
                kernel_ncc=float(kernel_ncc(c, f.kernel, canvas=canvas)[0]),
                sharpness_gain=nan(),
                seconds=0.0,
                nfe=0,
                kernel_size_true=f.kernel.shape[-1],
                kernel_size_est=canvas,
                note=f"hindsight: {label}",
                psnr_input=nan(),
                harmed=nan(),
                shift_px=nan(),
                kernel_choice="",
                fallback="",
                codes_wrong=nan(),
                psnr_unguarded=nan(),
                kernel_score=nan(),
            )
            rows.append(row)
    return rows
