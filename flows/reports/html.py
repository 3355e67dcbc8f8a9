"""HTML run reports and the all-runs index (docs/design.md §5, §7). Pure rendering, no torch.

This module builds the pages' view models (plain values, never HTML); the markup is in the Jinja2
templates of flows/reports/templates/ (autoescaping on, flows/reports/render.py), the pictures
come from flows/reports/images.py.

Inputs are the report rows (the ``frames.parquet`` schema), the run summary (``summary.json``)
and a callable that fetches image bytes; outputs are ``{relative name: bytes}`` maps that
:func:`write_reports` puts under ``reports/<run-id>/`` and ``reports/``.

Thumbnails are separate small PNG files under ``reports/<run-id>/thumbs/`` rather than
``data:`` URIs: a run can hold 10⁴–10⁶ frames, and files keep ``index.html`` small, let the
browser fetch images in parallel and cache them, and let the dashboard serve each one with its
own content type. Only the ``max_frames`` worst frames get thumbnails; the full table is
``frames.csv`` / ``frames.parquet`` next to the page.

Every page is self-contained: inline CSS, no CDN, and a few lines of inline JavaScript (column
sorting, plus a load check that sets ``data-images-loaded`` / ``data-broken-images`` on
``<body>``, which the browser test reads): templates/report.css and report.js.
"""

from __future__ import annotations

import hashlib
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from flows.reports.images import histogram, make_thumbnail, thumb_name
from flows.reports.index_page import DEFAULT_PAGE_SIZE, render_index
from flows.reports.render import render
from flows.reports.values import (
    KERNEL_MSE_DEFINITION,
    NO_REFERENCE_NOTE,
    as_number,
    as_text,
    codes_text,
    duration,
    formatted,
    gate_over,
    number_cell,
    quality_gate_text,
)
from storage.base import ObjectStore
from storage.errors import FrameError, StorageError
from storage.keys import REPORTS_INDEX_KEY, REPORTS_PREFIX, report_key, validate_key
from storage.reports import update_run_index

ImageReader = Callable[[str, str], bytes | None]
"""``images(role, key) -> bytes | None`` with ``role`` one of :data:`IMAGE_ROLES`.

``"input"`` keys are source-store keys (a row's ``key``); ``"restored"`` and ``"kernel"`` keys
are destination-store keys (``restored_key``, ``kernel_png_key``). Return ``None`` when the
object is missing or unreadable; the page then shows "no preview" instead of a broken image.
"""

IMAGE_ROLES = ("input", "restored", "kernel")
DEFAULT_MAX_FRAMES = 200  # frames with thumbnails in the per-run table
DEFAULT_MAX_LIST = 1000  # rows in the quarantine / skipped lists
# Columns the frames table shows by name; other numeric columns (codes_in, codes_out, a kernel
# strategy's fields...) are shown generically after them.
_KNOWN_COLUMNS = frozenset({"key", "id", "status", "reason", "detail", "nfe", "seconds", "width", "height",
                            "restored_key", "kernel_key", "kernel_png_key", "mask_key"})
MAX_IMAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class _Metric:
    column: str
    label: str
    fmt: str
    truth: bool  # needs ground truth
    higher_is_better: bool | None


_METRICS: tuple[_Metric, ...] = (
    _Metric("residual", "residual", "{:.3f}", False, None),
    _Metric("sharpness_gain", "sharpness gain", "{:.2f}", False, True),
    _Metric("kernel_extent", "kernel extent", "{:.2f}", False, None),
    _Metric("psnr_in", "input PSNR (dB)", "{:.2f}", True, True),  # the input against the truth
    _Metric("psnr", "PSNR (dB)", "{:.2f}", True, True),
    _Metric("ssim_in", "input SSIM", "{:.3f}", True, True),
    _Metric("ssim", "SSIM", "{:.3f}", True, True),
    _Metric("kernel_mse", "kernel-MSE", "{:.2e}", True, False),
    _Metric("kernel_ncc", "kernel NCC", "{:.3f}", True, True),
)
_BY_COLUMN = {m.column: m for m in _METRICS}


# ----------------------------------------------------------------------------- small helpers


# ----------------------------------------------------------------------------- view models


def _before_after(rows: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """Per-run "did it help?": each metric that exists for input and output, mean before, mean
    after, change, over the restored frames that have both (``X_in`` pairs with ``X`` or ``X_out``)."""
    cols = {c for r in rows for c in r}
    pairs = []
    for c in sorted(cols):
        if not c.endswith("_in"):
            continue
        base = c[:-3]
        out = f"{base}_out" if f"{base}_out" in cols else base if base in cols else None
        if out is not None:
            pairs.append((base, c, out))
    lines: list[dict[str, object]] = []
    for base, cin, cout in pairs:
        raw = [(r.get(cin), r.get(cout)) for r in rows]
        both = [(a, b) for x, y in raw if (a := as_number(x)) is not None and (b := as_number(y)) is not None]
        counts = all(isinstance(x, numbers.Integral) and isinstance(y, numbers.Integral)
                     for x, y in raw if as_number(x) is not None and as_number(y) is not None)
        if not both:
            continue
        m = _BY_COLUMN.get(cout) or _BY_COLUMN.get(base)
        fmt = m.fmt if m else "{:.3g}"
        before = sum(a for a, _ in both) / len(both)
        after = sum(b for _, b in both) / len(both)
        total = ""
        if counts:  # e.g. codes readable: totals say more than means
            total = f" (total {int(sum(a for a, _ in both))} → {int(sum(b for _, b in both))})"
        better = m.higher_is_better if m else True  # counts (codes read) and unknown pairs: more is better
        verdict = "" if better is None or after == before else (
            " better" if (after > before) == better else " worse")
        lines.append({"label": m.label if m else base.replace("_", " "), "before": fmt.format(before),
                      "after": fmt.format(after), "verdict": verdict,
                      "change": f"{after - before:+.3g}{total}", "n": len(both)})
    return lines


def _sharpness(rows: Sequence[Mapping[str, object]]) -> dict[str, object] | None:
    gains = [g for r in rows if (g := as_number(r.get("sharpness_gain"))) is not None]
    if not gains:
        return None
    return {"mean": f"{sum(gains) / len(gains):.2f}", "better": sum(g > 1 for g in gains), "n": len(gains)}


def _worst_first(rows: Sequence[Mapping[str, object]]) -> tuple[list[Mapping[str, object]], str]:
    """Restored rows, worst first: by PSNR (ascending) when every one has truth, else by residual
    (descending, the no-reference proxy); rows without the value go last. Returns the order text."""
    if rows and all(as_number(r.get("psnr")) is not None for r in rows):
        ordered = sorted(rows, key=lambda r: (as_number(r.get("psnr")), as_text(r.get("key"))))
        return ordered, "lowest PSNR"

    def by_residual(r: Mapping[str, object]) -> tuple[int, float, str]:
        res = as_number(r.get("residual"))
        return (res is None, -(res or 0.0), as_text(r.get("key")))

    return sorted(rows, key=by_residual), "highest residual, a no-reference proxy"


def _img_cell(files: dict[str, bytes], images: ImageReader, role: str, key: str, alt: str,
              href: str | None = None) -> dict[str, object]:
    """A thumbnail cell (the thumbnail goes into ``files``), or the note shown instead."""
    if not key:
        return {"note": "no output"}
    name = thumb_name(role, key)
    if name not in files:
        data = _safe_read(images, role, key)
        thumb = make_thumbnail(data, kernel=role == "kernel") if data is not None else None
        if thumb is None:
            return {"note": "no preview"}
        files[name] = thumb
    return {"note": "", "src": quote(name), "alt": alt, "href": href, "kernel": role == "kernel"}


def full_size_href(role: str, key: str, depth: int) -> str:
    """Relative link to the full-size object from a page ``depth`` folders below ``reports/``
    (1: a run page, 2: a frame page). Outputs (``restored/``, ``kernels/``) are destination keys,
    reached as ``<dest>/<key>`` both on a local disk (file://) and on the dashboard (which serves
    them read-only); inputs are source keys that the dashboard serves as ``/<run-id>/input/<key>``."""
    if role == "input":
        return "../" * (depth - 1) + "input/" + quote(key)
    return "../" * (depth + 1) + quote(key)


def frame_page_name(key: str) -> str:
    """``frames/<hash>.html``: the side-by-side page of one frame (stable, URL-safe)."""
    return f"frames/{hashlib.sha256(key.encode()).hexdigest()[:20]}.html"


def _mask_key(row: Mapping[str, object]) -> str:
    return as_text(row.get("mask_key")) or f"{as_text(row.get('id'))}.mask.png"


def _extra_columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Numeric columns other parts of the pipeline add (codes_in/codes_out, a kernel strategy's
    chosen candidate...), shown generically after the known metrics."""
    seen: dict[str, None] = {}
    for r in rows:
        for c, v in r.items():
            if c in _KNOWN_COLUMNS or c in _BY_COLUMN or isinstance(v, bool):
                continue
            if as_number(v) is not None:
                seen[c] = None
    return list(seen)


def _field(column: str, value: object) -> str:
    if column in _BY_COLUMN:
        return formatted(as_number(value), _BY_COLUMN[column].fmt)
    if isinstance(value, float):
        return formatted(as_number(value), "{:.4g}")
    return as_text(value)


def _frame_page(files: dict[str, bytes], run_id: str, row: Mapping[str, object], images: ImageReader) -> str:
    """Input and output side by side at full size, mask and kernel, every field of the row."""
    key = as_text(row.get("key"))
    mask_key = _mask_key(row)
    has_mask = _safe_read(images, "input", mask_key) is not None
    figures = [
        {"label": label, "href": full_size_href(role, okey, 2), "kernel": role == "kernel"}
        for role, label, okey in (("input", "input (before)", key),
                                  ("restored", "restored (after)", as_text(row.get("restored_key"))),
                                  ("input", "mask (white = observed)", mask_key if has_mask else ""),
                                  ("kernel", "estimated kernel", as_text(row.get("kernel_png_key"))))
        if okey
    ]
    fields = [(c, _field(c, v)) for c, v in row.items() if as_text(v) != ""]
    name = frame_page_name(key)
    files[name] = render("frame.html.j2", title=f"{key} — run {run_id}", run_id=run_id, key=key,
                         figures=figures, fields=fields, no_reference_note=NO_REFERENCE_NOTE)
    return name


def _safe_read(images: ImageReader, role: str, key: str) -> bytes | None:
    """The caller's reader, with missing/unreadable objects mapped to None (a report never fails
    because one thumbnail is gone)."""
    try:
        return images(role, key)
    except (StorageError, FrameError, OSError):
        return None


def _frame_rows(files: dict[str, bytes], rows: Sequence[Mapping[str, object]], images: ImageReader,
                metrics: Sequence[_Metric], extra: Sequence[str], run_id: str) -> list[dict[str, object]]:
    """The frames table's rows, worst first; each frame's own page and thumbnails go into ``files``."""
    out = []
    for rank, row in enumerate(rows, start=1):
        key = as_text(row.get("key"))
        page = quote(_frame_page(files, run_id, row, images))
        w, h = as_number(row.get("width")), as_number(row.get("height"))
        numbers_ = [number_cell(as_number(row.get(m.column)), m.fmt) for m in metrics]
        numbers_ += [number_cell(as_number(row.get(c)), "{:.4g}") for c in extra]
        numbers_.append(number_cell(as_number(row.get("seconds")), "{:.2f}"))
        out.append({
            "rank": rank, "key": key, "page": page,
            "size": f"{int(w)}×{int(h)}" if w is not None and h is not None else "",
            "kernel_choice": as_text(row.get("kernel_choice")), "fallback": as_text(row.get("fallback")),
            "images": [
                _img_cell(files, images, "input", key, f"input {key}", page),
                _img_cell(files, images, "restored", as_text(row.get("restored_key")), f"restored {key}",
                          page),
                _img_cell(files, images, "kernel", as_text(row.get("kernel_png_key")), f"kernel {key}",
                          page),
            ],
            "numbers": numbers_,
        })
    return out


def _list_rows(rows: Sequence[Mapping[str, object]]) -> list[dict[str, str]]:
    return [{c: as_text(r.get(c)) for c in ("key", "reason", "detail")} for r in rows]


def _run_meta(summary: Mapping[str, object]) -> dict[str, str]:
    means = summary.get("means") if isinstance(summary.get("means"), Mapping) else {}
    assert isinstance(means, Mapping)
    mean_text = ", ".join(
        f"{m.label} {formatted(as_number(means.get(m.column)), m.fmt)}"
        for m in _METRICS if m.column in means
    ) or "—"
    meta = {k: as_text(summary.get(k)) for k in ("config_name", "config_hash", "model_version", "started_at",
                                                "finished_at", "source", "dest")}
    return meta | {"duration": duration(summary), "means": mean_text, "codes": codes_text(summary)}


def _status(summary: Mapping[str, object]) -> dict[str, object]:
    """What the status banner says: red for ``failed`` (error class and message) and
    ``failed_quality`` (quarantine rate)."""
    err = summary.get("error") if isinstance(summary.get("error"), Mapping) else {}
    assert isinstance(err, Mapping)
    return {"status": as_text(summary.get("status")), "error_type": as_text(err.get("type")),
            "error_message": as_text(err.get("message")),
            "quarantine_rate": formatted(as_number(summary.get("quarantine_rate")), "{:.0%}"),
            "max_quarantine_rate": formatted(as_number(summary.get("max_quarantine_rate")), "{:.0%}"),
            "quarantine_over": gate_over(summary.get("quarantine_rate"), summary.get("max_quarantine_rate")),
            "gate_text": quality_gate_text(summary)}


# ----------------------------------------------------------------------------- public API


def render_run_report(
    summary: Mapping[str, object],
    rows: Iterable[Mapping[str, object]],
    images: ImageReader,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    max_list: int = DEFAULT_MAX_LIST,
) -> dict[str, bytes]:
    """Render one run's report: ``{"index.html", "thumbs/<hash>-<role>.png", "hist_<metric>.png"}``.

    ``summary`` is the ``summary.json`` dict, ``rows`` the ``frames.parquet`` rows (NaN/None
    where a value is missing). The ``max_frames`` worst restored frames get a table row with
    before / after / kernel thumbnails; histograms cover every restored frame; the quarantine
    and skipped lists show up to ``max_list`` rows each (full data: ``frames.csv``).
    """
    if max_frames < 0 or max_list < 0:
        raise ValueError("max_frames and max_list must be >= 0")
    all_rows = list(rows)
    by_status: dict[str, list[Mapping[str, object]]] = {"restored": [], "skipped": [], "quarantined": []}
    for row in all_rows:
        status = as_text(row.get("status"))
        if status not in by_status:
            raise ValueError(f"row {as_text(row.get('key'))!r}: unknown status {status!r}")
        by_status[status].append(row)
    restored, order_text = _worst_first(by_status["restored"])
    quarantined = sorted(by_status["quarantined"],
                         key=lambda r: (as_text(r.get("reason")), as_text(r.get("key"))))
    skipped = sorted(by_status["skipped"], key=lambda r: as_text(r.get("key")))

    counts = summary.get("counts") if isinstance(summary.get("counts"), Mapping) else None
    if counts is None:  # derive from the rows when the summary lacks them
        counts = {k: len(v) for k, v in by_status.items()} | {"total": len(all_rows)}
    assert isinstance(counts, Mapping)

    # truth columns only where some frame has the value (no column of dashes)
    metrics = [m for m in _METRICS
               if not m.truth or any(as_number(r.get(m.column)) is not None for r in restored)]

    files: dict[str, bytes] = {}
    histograms = []
    for m in _METRICS:
        values = [v for v in (as_number(r.get(m.column)) for r in restored) if v is not None]
        if values:
            files[f"hist_{m.column}.png"] = histogram(values, m.column, m.label, m.fmt)
            histograms.append({"src": f"hist_{m.column}.png", "label": m.label})

    run_id = as_text(summary.get("run_id"))
    shown = restored[:max_frames]
    extra = _extra_columns(shown)
    files["index.html"] = render(
        "run.html.j2", title=f"Run {run_id}", run_id=run_id, **_status(summary), counts=counts,
        before_after=_before_after(by_status["restored"]), sharpness=_sharpness(by_status["restored"]),
        meta=_run_meta(summary), no_reference_note=NO_REFERENCE_NOTE, order_text=order_text,
        metrics=metrics, extra_columns=extra,
        frames=_frame_rows(files, shown, images, metrics, extra, run_id),
        restored_total=len(restored), histograms=histograms,
        quarantined=_list_rows(quarantined[:max_list]), quarantined_total=len(quarantined),
        skipped=_list_rows(skipped[:max_list]), skipped_total=len(skipped),
        kernel_mse_definition=KERNEL_MSE_DEFINITION,
    )
    return files


def store_images(source: ObjectStore, dest: ObjectStore) -> ImageReader:
    """The :data:`ImageReader` the pipeline passes: inputs from ``source``, outputs from ``dest``."""

    def read(role: str, key: str) -> bytes | None:
        if role not in IMAGE_ROLES:
            raise ValueError(f"unknown image role {role!r}; expected one of {IMAGE_ROLES}")
        store = source if role == "input" else dest
        try:
            return store.get(validate_key(key), max_bytes=MAX_IMAGE_BYTES)
        except StorageError:  # missing, invalid key, backend failure: no thumbnail
            return None

    return read


def write_reports(
    dest: ObjectStore,
    run_id: str,
    summary: Mapping[str, object],
    rows: Iterable[Mapping[str, object]],
    images: ImageReader,
    *,
    max_frames: int = DEFAULT_MAX_FRAMES,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> str:
    """Render and put the run's report under ``reports/<run-id>/``, then add the run to
    ``reports/runs.json`` (:func:`storage.reports.update_run_index`: one read, not one per run ever
    written) and rewrite the index pages from it. Pages are written after their thumbnails and
    plots, so a reader never sees a page that points at missing files. Returns the key of the
    run's ``index.html``."""
    if summary.get("run_id", run_id) != run_id:
        raise ValueError(f"summary says run_id {summary.get('run_id')!r}, writing it for {run_id!r}")
    files = render_run_report({**summary, "run_id": run_id}, rows, images, max_frames=max_frames)
    for name in sorted(files, key=lambda n: (n.endswith(".html"), n == "index.html")):
        dest.put(report_key(run_id, name), files[name])
    index = render_index(update_run_index(dest, {**summary, "run_id": run_id}), page_size=page_size)
    for name in sorted(index, key=lambda n: (n.endswith(".html"), n == "index.html")):
        dest.put(f"{REPORTS_PREFIX}{name}" if name != "index.html" else REPORTS_INDEX_KEY, index[name])
    return report_key(run_id, "index.html")
