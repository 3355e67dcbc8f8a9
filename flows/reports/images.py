"""Pictures for the report pages: thumbnails of frames and kernels (hostile bytes give None, never
an exception) and the matplotlib histograms and trend plots (Agg, no pyplot state)."""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Sequence
from datetime import datetime, timedelta

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from PIL import Image, ImageOps

THUMB_SIZE = 144  # longest side of before/after thumbnails, px
KERNEL_THUMB_SIZE = 72  # kernel pictures are upscaled (nearest) to about this size
MAX_THUMB_SOURCE_PIXELS = 64_000_000  # decompression-bomb guard, checked before decoding


def thumb_name(role: str, key: str) -> str:
    """Stable, URL- and key-safe file name for one image of one frame."""
    digest = hashlib.sha256(f"{role}\0{key}".encode()).hexdigest()[:20]
    return f"thumbs/{digest}-{role}.png"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def make_thumbnail(data: bytes, *, kernel: bool = False) -> bytes | None:
    """PNG thumbnail of PNG/JPEG/WebP bytes, or None if they cannot be decoded.

    Frames shrink to :data:`THUMB_SIZE` on the longest side; kernel pictures (tiny, K×K) are
    enlarged by an integer factor with nearest-neighbour so single pixels stay visible.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width <= 0 or height <= 0 or width * height > MAX_THUMB_SOURCE_PIXELS:
                return None
            if kernel:
                grey = img.convert("L")
                scale = max(1, KERNEL_THUMB_SIZE // max(width, height))
                grey = grey.resize((width * scale, height * scale), Image.Resampling.NEAREST)
                if max(grey.size) > 2 * KERNEL_THUMB_SIZE:
                    grey.thumbnail((KERNEL_THUMB_SIZE, KERNEL_THUMB_SIZE), Image.Resampling.BOX)
                return _png(grey)
            img.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG: decode at reduced scale
            rgb = ImageOps.exif_transpose(img).convert("RGB")  # as displayed (and as restored)
            rgb.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS)
            return _png(rgb)
    except Exception:  # PIL raises many types on hostile bytes (OSError, SyntaxError, zlib.error...)
        return None


def _figure_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def histogram(values: Sequence[float], column: str, label: str, fmt: str) -> bytes:
    """Histogram PNG of one metric (``column``, shown as ``label``, values printed with ``fmt``) over
    the restored frames."""
    data = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(4.2, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    bins = int(min(30, max(5, math.ceil(math.sqrt(data.size)) * 2)))
    if column == "kernel_mse" and data.size and np.all(data > 0):
        # kernel-MSE spans decades; bin its logarithm.
        edges = np.geomspace(data.min(), max(data.max(), data.min() * 1.0001), bins + 1)
        ax.hist(data, bins=edges, color="#3a6ea5", edgecolor="white")
        ax.set_xscale("log")
    else:
        ax.hist(data, bins=bins, color="#3a6ea5", edgecolor="white")
    ax.axvline(float(np.median(data)), color="#c0392b", linewidth=1.2)  # the median, named in the title
    ax.set_title(f"{label}  (n = {data.size}, red line: median {fmt.format(np.median(data))})",
                 fontsize=9)
    ax.set_ylabel("frames", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())  # log axes: no crowded minor labels
    return _figure_png(fig)


def trend(points: Sequence[tuple[datetime, float]], title: str, ylabel: str,
           *, log: bool = False, integer: bool = False) -> bytes:
    """Line plot of a per-run value against the run start time."""
    fig = Figure(figsize=(5.0, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    ax.plot(xs, ys, marker="o", markersize=4, linewidth=1.4, color="#3a6ea5")
    if log and min(ys) > 0 and max(ys) / min(ys) > 20:  # log only when the values span decades
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
    if integer:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if min(xs) == max(xs):  # one run (or runs started in the same second): give the axis a span
        ax.set_xlim(xs[0] - timedelta(hours=12), xs[0] + timedelta(hours=12))
    locator = AutoDateLocator(maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_title(title, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    return _figure_png(fig)
