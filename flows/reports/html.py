"""HTML run reports and the all-runs index (docs/design.md §5, §7). Pure rendering, no torch.

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
``<body>``, which the browser test reads).
"""

from __future__ import annotations

import hashlib
import html
import io
import math
import numbers
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter
from PIL import Image, ImageOps

from storage.base import ObjectStore
from storage.errors import FrameError, StorageError
from storage.keys import REPORTS_INDEX_KEY, REPORTS_PREFIX, RUN_ID_RE, report_key, validate_key
from storage.reports import escape_controls, update_run_index

ImageReader = Callable[[str, str], bytes | None]
"""``images(role, key) -> bytes | None`` with ``role`` one of :data:`IMAGE_ROLES`.

``"input"`` keys are source-store keys (a row's ``key``); ``"restored"`` and ``"kernel"`` keys
are destination-store keys (``restored_key``, ``kernel_png_key``). Return ``None`` when the
object is missing or unreadable; the page then shows "no preview" instead of a broken image.
"""

IMAGE_ROLES = ("input", "restored", "kernel")
DEFAULT_MAX_FRAMES = 200  # frames with thumbnails in the per-run table
DEFAULT_MAX_LIST = 1000  # rows in the quarantine / skipped lists
DEFAULT_PAGE_SIZE = 50  # runs per page of the all-runs index
FAILED_STATUSES = ("failed", "failed_quality")
# Columns the frames table shows by name; other numeric columns (codes_in, codes_out, a kernel
# strategy's fields...) are shown generically after them.
_KNOWN_COLUMNS = frozenset({"key", "id", "status", "reason", "detail", "nfe", "seconds", "width", "height",
                            "restored_key", "kernel_key", "kernel_png_key", "mask_key"})
THUMB_SIZE = 144  # longest side of before/after thumbnails, px
KERNEL_THUMB_SIZE = 72  # kernel pictures are upscaled (nearest) to about this size
MAX_THUMB_SOURCE_PIXELS = 64_000_000  # decompression-bomb guard, checked before decoding
MAX_IMAGE_BYTES = 64 * 1024 * 1024

KERNEL_MSE_DEFINITION = (
    "kernel-MSE: both kernels sum to 1 and are centred on a common odd canvas; the estimate is "
    "aligned to the truth by the integer shift (within ±3 px) that minimises the MSE, because "
    "blind deconvolution cannot tell a shifted kernel from a shifted image. On sum-1 kernels the "
    "MSE rewards diffuse blobs (a fixed Gaussian σ = 2 guess beats a delta by about 50× on typical "
    "shake kernels), so read it beside kernel NCC (normalised cross-correlation, maximum over the "
    "same shifts)."
)
NO_REFERENCE_NOTE = (
    "Residual, sharpness gain and kernel extent are no-reference proxies, not quality "
    "measurements: residual is the RMS data-fit error y − M ⊙ (k̂ ∗ x̂) over the observed pixels "
    "divided by the noise level (about 1 fits to the noise; much lower can mean over-fitting), "
    "sharpness gain compares restored and input sharpness, and kernel extent is the spread of the estimated "
    "kernel. PSNR, SSIM (on [0, 1] RGB, scikit-image conventions), kernel-MSE and kernel NCC "
    "need ground truth and are empty where a frame has none."
)


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


def _num(value: object) -> float | None:
    """A finite float, or None for None / NaN / "" / non-numbers (parquet gives NaN or None)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _text(value: object) -> str:
    """Row text field as str; None/NaN become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _esc(value: object) -> str:
    return html.escape(escape_controls(_text(value)), quote=True)


def _fmt(value: float | None, fmt: str) -> str:
    return "—" if value is None else fmt.format(value)


def _parse_time(value: object) -> datetime | None:
    """ISO-8601 time (``Z`` accepted) as an aware datetime, else None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        out = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return out if out.tzinfo else out.replace(tzinfo=UTC)


def _run_time(summary: Mapping[str, object]) -> datetime | None:
    """When a run started: ``started_at``, else the time encoded in its run id."""
    started = _parse_time(summary.get("started_at"))
    if started is not None:
        return started
    run_id = summary.get("run_id")
    if isinstance(run_id, str) and RUN_ID_RE.match(run_id):
        return datetime.strptime(run_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    return None


def _duration(summary: Mapping[str, object]) -> str:
    start, end = _parse_time(summary.get("started_at")), _parse_time(summary.get("finished_at"))
    if start is None or end is None:
        return "—"
    seconds = (end - start).total_seconds()
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min"


def _thumb_name(role: str, key: str) -> str:
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


def _histogram(values: Sequence[float], metric: _Metric) -> bytes:
    """Histogram PNG of one metric over the restored frames (matplotlib, Agg, no pyplot state)."""
    data = np.asarray(values, dtype=np.float64)
    fig = Figure(figsize=(4.2, 2.8), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    bins = int(min(30, max(5, math.ceil(math.sqrt(data.size)) * 2)))
    if metric.column == "kernel_mse" and data.size and np.all(data > 0):
        # kernel-MSE spans decades; bin its logarithm.
        edges = np.geomspace(data.min(), max(data.max(), data.min() * 1.0001), bins + 1)
        ax.hist(data, bins=edges, color="#3a6ea5", edgecolor="white")
        ax.set_xscale("log")
    else:
        ax.hist(data, bins=bins, color="#3a6ea5", edgecolor="white")
    ax.axvline(float(np.median(data)), color="#c0392b", linewidth=1.2)  # the median, named in the title
    ax.set_title(f"{metric.label}  (n = {data.size}, red line: median {metric.fmt.format(np.median(data))})",
                 fontsize=9)
    ax.set_ylabel("frames", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.xaxis.set_minor_formatter(NullFormatter())  # log axes: no crowded minor labels
    return _figure_png(fig)


def _trend(points: Sequence[tuple[datetime, float]], title: str, ylabel: str,
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


# ----------------------------------------------------------------------------- page parts

_CSS = """
:root { --ink:#1d2733; --muted:#5b6b7c; --line:#d8dee6; --bg:#f5f7fa; --card:#fff;
        --ok:#1e8449; --skip:#7f8c8d; --bad:#c0392b; --accent:#3a6ea5; }
* { box-sizing: border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;
       color:var(--ink); background:var(--bg); }
main { max-width:1440px; margin:0 auto; padding:20px 24px 48px; }
h1 { font-size:22px; margin:0 0 4px; } h2 { font-size:17px; margin:28px 0 10px; }
a { color:var(--accent); }
.muted { color:var(--muted); } .mono { font-family:ui-monospace,"DejaVu Sans Mono",monospace; }
.cards { display:flex; flex-wrap:wrap; gap:12px; margin:14px 0; }
.card { background:var(--card); border:1px solid var(--line); border-radius:8px; padding:10px 16px;
        min-width:130px; }
.card .n { font-size:26px; font-weight:650; } .card .l { color:var(--muted); font-size:12px; }
.card.ok .n { color:var(--ok); } .card.skip .n { color:var(--skip); } .card.bad .n { color:var(--bad); }
dl.meta { display:grid; grid-template-columns:max-content 1fr; gap:3px 16px; margin:8px 0;
          background:var(--card); border:1px solid var(--line); border-radius:8px; padding:12px 16px; }
dl.meta dt { color:var(--muted); } dl.meta dd { margin:0; overflow-wrap:anywhere; }
table { border-collapse:collapse; background:var(--card); border:1px solid var(--line); width:100%; }
th, td { padding:5px 7px; border-bottom:1px solid var(--line); text-align:left; vertical-align:middle; }
th { background:#eef2f6; font-size:12px; position:sticky; top:0; z-index:1; }
th.sortable { cursor:pointer; user-select:none; } th.sortable:hover { background:#e2e8ef; }
td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; white-space:nowrap; }
tbody tr:nth-child(even) { background:#fafbfc; }
td.key { min-width:150px; max-width:260px; overflow-wrap:anywhere;
         font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
td.key .sub { display:block; color:var(--muted); font-family:system-ui,sans-serif; font-size:11px; }
.scroll { overflow-x:auto; border-radius:6px; }
td.img { padding:3px 4px; }
td.img img { display:block; max-width:128px; max-height:128px; border:1px solid var(--line); }
td.img img.kernel { image-rendering:pixelated; background:#000; }
.nopreview { display:inline-block; width:80px; color:var(--muted); font-size:11px; }
.hists { display:grid; grid-template-columns:repeat(auto-fill,minmax(300px,1fr)); gap:12px; }
.hists img { width:100%; background:#fff; border:1px solid var(--line); border-radius:6px; }
.note { background:#fffbea; border:1px solid #f0e2a8; border-radius:8px; padding:10px 14px; margin:10px 0; }
.reason { font-family:ui-monospace,"DejaVu Sans Mono",monospace; color:var(--bad); }
.proxy { border-bottom:1px dotted var(--muted); }
details summary { cursor:pointer; margin:6px 0; }
.banner { border-radius:8px; padding:12px 16px; margin:12px 0; font-weight:600; overflow-wrap:anywhere; }
.banner.failed { background:#fdecea; border:2px solid var(--bad); color:var(--bad); }
.banner.ok { background:#eaf7ee; border:1px solid var(--ok); color:var(--ok); }
tr.failed td { background:#fdecea; } tr.failed td.status { color:var(--bad); font-weight:700; }
td.status { white-space:nowrap; }
.compare { display:flex; gap:16px; overflow-x:auto; align-items:flex-start; padding-bottom:8px; }
.compare figure { margin:0; } .compare figcaption { color:var(--muted); font-size:12px; margin-bottom:4px; }
.compare img { display:block; border:1px solid var(--line); }
.compare img.kernel { image-rendering:pixelated; background:#000; }
.pager { margin:10px 0; } .pager a, .pager span { margin-right:10px; }
td.worse { color:var(--bad); font-weight:650; } td.better { color:var(--ok); font-weight:650; }
td.detail { font-size:12px; overflow-wrap:anywhere; max-width:520px; }
"""

# Sorting by clicking a header (numbers by data-v, empty last) and the image load check.
_JS = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th.sortable').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
      var asc = th.dataset.dir !== 'asc'; th.dataset.dir = asc ? 'asc' : 'desc';
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[idx].dataset.v, y = b.cells[idx].dataset.v;
        if (x === undefined) { x = a.cells[idx].textContent; y = b.cells[idx].textContent;
          return asc ? x.localeCompare(y) : y.localeCompare(x); }
        if (x === '') return 1; if (y === '') return -1;
        return asc ? x - y : y - x;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.length - broken.length;
  document.body.dataset.brokenImages = broken.length;
  document.body.dataset.brokenSrcs = broken.map(function (i) { return i.getAttribute('src'); }).join(' ');
  document.body.dataset.naturalSizes = imgs.map(function (i) {
    return i.naturalWidth + 'x' + i.naturalHeight; }).join(' ');
  document.body.dataset.ready = '1';
});
"""


def _page(title: str, body: str) -> bytes:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n"
        f"<body><main>\n{body}\n</main><script>{_JS}</script></body></html>\n"
    ).encode()


def _cards(counts: Mapping[str, object]) -> str:
    items = [("restored", "ok"), ("skipped", "skip"), ("quarantined", "bad"), ("total", "")]
    return "<div class=\"cards\">" + "".join(
        f"<div class=\"card {cls}\" id=\"count-{name}\"><div class=\"n\">{_esc(counts.get(name, 0))}</div>"
        f"<div class=\"l\">{name}</div></div>"
        for name, cls in items
    ) + "</div>"


def _meta(summary: Mapping[str, object]) -> str:
    config_hash = _text(summary.get("config_hash"))
    means = summary.get("means") if isinstance(summary.get("means"), Mapping) else {}
    assert isinstance(means, Mapping)
    mean_text = ", ".join(
        f"{m.label} {_fmt(_num(means.get(m.column)), m.fmt)}"
        for m in _METRICS if m.column in means
    ) or "—"
    fields = [
        ("run id", f"<span class=\"mono\">{_esc(summary.get('run_id'))}</span>"),
        ("config", f"{_esc(summary.get('config_name')) or '—'} <span class=\"mono muted\" "
                   f"title=\"{_esc(config_hash)}\">{_esc(config_hash[:16])}</span>"),
        ("model version", f"<span class=\"mono\">{_esc(summary.get('model_version')) or '—'}</span>"),
        ("started", _esc(summary.get("started_at")) or "—"),
        ("finished", f"{_esc(summary.get('finished_at')) or '—'} ({_duration(summary)})"),
        ("source", f"<span class=\"mono\">{_esc(summary.get('source')) or '—'}</span>"),
        ("destination", f"<span class=\"mono\">{_esc(summary.get('dest')) or '—'}</span>"),
        ("means (restored)", _esc(mean_text)),
        ("codes readable", f"<span id=\"codes-readable\">{_esc(codes_text(summary))}</span>"),
    ]
    return "<dl class=\"meta\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in fields) + "</dl>"


def _status_banner(summary: Mapping[str, object]) -> str:
    """Red for ``failed`` (error class and message) and ``failed_quality`` (quarantine rate)."""
    status = _text(summary.get("status"))
    if status == "failed":
        err = summary.get("error") if isinstance(summary.get("error"), Mapping) else {}
        assert isinstance(err, Mapping)
        return (f"<div class=\"banner failed\" id=\"run-status\" data-status=\"failed\">Run FAILED: "
                f"<span class=\"mono\">{_esc(err.get('type'))}</span>: {_esc(err.get('message'))}</div>")
    if status == "failed_quality":
        rate = _num(summary.get("quarantine_rate"))
        return (f"<div class=\"banner failed\" id=\"run-status\" data-status=\"failed_quality\">Quality gate "
                f"FAILED: {_fmt(rate, '{:.0%}')} of the processed frames were quarantined (threshold "
                f"{_fmt(_num(summary.get('max_quarantine_rate')), '{:.0%}')}). Every frame was processed; "
                "see the quarantine list below.</div>")
    if status:
        return (f"<div class=\"banner ok\" id=\"run-status\" data-status=\"{_esc(status)}\">"
                f"Run {_esc(status)}</div>")
    return ""


def _before_after(rows: Sequence[Mapping[str, object]]) -> str:
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
    lines = []
    for base, cin, cout in pairs:
        raw = [(r.get(cin), r.get(cout)) for r in rows]
        both = [(a, b) for x, y in raw if (a := _num(x)) is not None and (b := _num(y)) is not None]
        counts = all(isinstance(x, numbers.Integral) and isinstance(y, numbers.Integral)
                     for x, y in raw if _num(x) is not None and _num(y) is not None)
        if not both:
            continue
        m = _BY_COLUMN.get(cout) or _BY_COLUMN.get(base)
        fmt = m.fmt if m else "{:.3g}"
        label = m.label if m else base.replace("_", " ")
        before = sum(a for a, _ in both) / len(both)
        after = sum(b for _, b in both) / len(both)
        total = ""
        if counts:  # e.g. codes readable: totals say more than means
            total = f" (total {int(sum(a for a, _ in both))} → {int(sum(b for _, b in both))})"
        better = m.higher_is_better if m else True  # counts (codes read) and unknown pairs: more is better
        verdict = "" if better is None or after == before else (
            " better" if (after > before) == better else " worse")
        lines.append(f"<tr><td>{_esc(label)}</td><td class=\"num\">{fmt.format(before)}</td>"
                     f"<td class=\"num\">{fmt.format(after)}</td>"
                     f"<td class=\"num{verdict}\">{after - before:+.3g}{total}</td>"
                     f"<td class=\"num\">{len(both)}</td></tr>")
    gains = [g for r in rows if (g := _num(r.get("sharpness_gain"))) is not None]
    if gains:
        better = sum(g > 1 for g in gains)
        lines.append("<tr><td><span class=\"proxy\">sharpness (after ÷ before)</span></td>"
                     "<td class=\"num\">1</td>"
                     f"<td class=\"num\">{sum(gains) / len(gains):.2f}</td><td class=\"num\">{better} of "
                     f"{len(gains)} sharper</td><td class=\"num\">{len(gains)}</td></tr>")
    if not lines:
        return ""
    return ("<h2>Before / after (restored frames)</h2><table id=\"before-after\"><thead><tr><th>metric</th>"
            "<th class=\"num\">before (input)</th><th class=\"num\">after (restored)</th>"
            "<th class=\"num\">change</th><th class=\"num\">frames</th></tr></thead><tbody>"
            + "".join(lines) + "</tbody></table>")


def codes_text(summary: Mapping[str, object]) -> str:
    """'before N, after M' barcode/QR texts read (zxing-cpp) in the run's inputs / outputs."""
    c = summary.get("codes")
    if not isinstance(c, Mapping) or not _num(c.get("frames")):
        return "—"
    lost = _num(c.get("frames_lost"))
    return (f"before {_text(c.get('before'))}, after {_text(c.get('after'))}"
            + (f" (a code lost on {int(lost)} frames)" if lost else ""))


def _worst_first(rows: Sequence[Mapping[str, object]]) -> tuple[list[Mapping[str, object]], str]:
    """Restored rows, worst first: by PSNR (ascending) when every one has truth, else by residual
    (descending, the no-reference proxy); rows without the value go last. Returns the order text."""
    if rows and all(_num(r.get("psnr")) is not None for r in rows):
        ordered = sorted(rows, key=lambda r: (_num(r.get("psnr")), _text(r.get("key"))))
        return ordered, "lowest PSNR"

    def by_residual(r: Mapping[str, object]) -> tuple[int, float, str]:
        res = _num(r.get("residual"))
        return (res is None, -(res or 0.0), _text(r.get("key")))

    return sorted(rows, key=by_residual), "highest residual, a no-reference proxy"


def _img_cell(files: dict[str, bytes], images: ImageReader, role: str, key: str, alt: str,
              href: str | None = None) -> str:
    if not key:
        return "<td class=\"img\"><span class=\"nopreview\">no output</span></td>"
    name = _thumb_name(role, key)
    if name not in files:
        data = _safe_read(images, role, key)
        thumb = make_thumbnail(data, kernel=role == "kernel") if data is not None else None
        if thumb is None:
            return "<td class=\"img\"><span class=\"nopreview\">no preview</span></td>"
        files[name] = thumb
    cls = " class=\"kernel\"" if role == "kernel" else ""
    img = f"<img{cls} src=\"{quote(name)}\" alt=\"{_esc(alt)}\">"
    if href:
        img = f"<a href=\"{href}\">{img}</a>"
    return f"<td class=\"img\">{img}</td>"


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
    return _text(row.get("mask_key")) or f"{_text(row.get('id'))}.mask.png"


def _extra_columns(rows: Sequence[Mapping[str, object]]) -> list[str]:
    """Numeric columns other parts of the pipeline add (codes_in/codes_out, a kernel strategy's
    chosen candidate...), shown generically after the known metrics."""
    seen: dict[str, None] = {}
    for r in rows:
        for c, v in r.items():
            if c in _KNOWN_COLUMNS or c in _BY_COLUMN or isinstance(v, bool):
                continue
            if _num(v) is not None:
                seen[c] = None
    return list(seen)


def _field(column: str, value: object) -> str:
    if column in _BY_COLUMN:
        return _fmt(_num(value), _BY_COLUMN[column].fmt)
    if isinstance(value, float):
        return _fmt(_num(value), "{:.4g}")
    return _text(value)


def _frame_page(files: dict[str, bytes], run_id: str, row: Mapping[str, object], images: ImageReader) -> str:
    """Input and output side by side at full size, mask and kernel, every field of the row."""
    key = _text(row.get("key"))
    figs = []
    mask_key = _mask_key(row)
    has_mask = _safe_read(images, "input", mask_key) is not None
    for role, label, okey in (("input", "input (before)", key),
                              ("restored", "restored (after)", _text(row.get("restored_key"))),
                              ("input", "mask (white = observed)", mask_key if has_mask else ""),
                              ("kernel", "estimated kernel", _text(row.get("kernel_png_key")))):
        if not okey:
            continue
        href = full_size_href(role, okey, 2)
        cls = " class=\"kernel\" width=\"160\"" if role == "kernel" else ""
        figs.append(f"<figure><figcaption>{label} · <a href=\"{href}\">open</a></figcaption>"
                    f"<a href=\"{href}\"><img{cls} src=\"{href}\" "
                    f"alt=\"{_esc(label)} {_esc(key)}\"></a></figure>")
    fields = "".join(
        f"<dt>{_esc(c)}</dt><dd>{_esc(_field(c, v))}</dd>" for c, v in row.items() if _text(v) != ""
    )
    body = (f"<p><a href=\"../index.html\">← run {_esc(run_id)}</a></p>"
            f"<h1 class=\"mono\">{_esc(key)}</h1>"
            f"<p class=\"muted\">Full size, before and after; click an image to open it alone.</p>"
            f"<div class=\"compare\" id=\"compare\">{''.join(figs)}</div>"
            f"<h2>All values</h2><dl class=\"meta\" id=\"frame-fields\">{fields}</dl>"
            f"<div class=\"note\">{html.escape(NO_REFERENCE_NOTE)}</div>")
    name = frame_page_name(key)
    files[name] = _page(f"{key} — run {run_id}", body)
    return name


def _safe_read(images: ImageReader, role: str, key: str) -> bytes | None:
    """The caller's reader, with missing/unreadable objects mapped to None (a report never fails
    because one thumbnail is gone)."""
    try:
        return images(role, key)
    except (StorageError, FrameError, OSError):
        return None


def _frames_table(files: dict[str, bytes], rows: Sequence[Mapping[str, object]], images: ImageReader,
                  metrics: Sequence[_Metric], run_id: str = "") -> str:
    extra = _extra_columns(rows)
    head = (
        "<tr><th class=\"num sortable\">#</th><th class=\"sortable\">frame</th>"
        "<th>before</th><th>after</th><th>kernel</th>"
        + "".join(
            f"<th class=\"num sortable\"><span class=\"{'' if m.truth else 'proxy'}\" "
            f"title=\"{'needs ground truth' if m.truth else 'no-reference proxy'}\">{m.label}</span></th>"
            for m in metrics
        )
        + "".join(f"<th class=\"num sortable\">{_esc(c)}</th>" for c in extra)
        + "<th class=\"num sortable\">seconds</th></tr>"
    )
    body = []
    for rank, row in enumerate(rows, start=1):
        key = _text(row.get("key"))
        page = _frame_page(files, run_id, row, images)
        w, h = _num(row.get("width")), _num(row.get("height"))
        size = f"<span class=\"sub\">{int(w)}×{int(h)} px</span>" if w is not None and h is not None else ""
        cells = [
            f"<td class=\"num\" data-v=\"{rank}\">{rank}</td>",
            f"<td class=\"key\"><a href=\"{quote(page)}\">{_esc(key)}</a>{size}</td>",
            _img_cell(files, images, "input", key, f"input {key}", quote(page)),
            _img_cell(files, images, "restored", _text(row.get("restored_key")), f"restored {key}",
                      quote(page)),
            _img_cell(files, images, "kernel", _text(row.get("kernel_png_key")), f"kernel {key}",
                      quote(page)),
        ]
        for m in metrics:
            v = _num(row.get(m.column))
            cells.append(f"<td class=\"num\" data-v=\"{'' if v is None else repr(v)}\">{_fmt(v, m.fmt)}</td>")
        for c in extra:
            v = _num(row.get(c))
            cells.append(f"<td class=\"num\" data-v=\"{'' if v is None else repr(v)}\">"
                         f"{_fmt(v, '{:.4g}')}</td>")
        sec = _num(row.get("seconds"))
        sec_v = "" if sec is None else repr(sec)
        cells.append(f"<td class=\"num\" data-v=\"{sec_v}\">{_fmt(sec, '{:.2f}')}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f"<div class=\"scroll\"><table id=\"frames-table\" class=\"sortable\"><thead>{head}</thead>"
            f"<tbody>{''.join(body)}</tbody></table></div>")


def _list_table(table_id: str, rows: Sequence[Mapping[str, object]]) -> str:
    body = "".join(
        f"<tr><td class=\"key\">{_esc(r.get('key'))}</td>"
        f"<td class=\"reason\">{_esc(r.get('reason')) or '—'}</td>"
        f"<td class=\"detail\">{_esc(r.get('detail'))}</td></tr>"
        for r in rows
    )
    return (f"<table id=\"{table_id}\" class=\"sortable\"><thead><tr><th class=\"sortable\">frame</th>"
            f"<th class=\"sortable\">reason</th><th>detail</th></tr></thead><tbody>{body}</tbody></table>")


def _more(shown: int, total: int) -> str:
    if total <= shown:
        return ""
    return (f"<p class=\"muted\">Showing {shown} of {total}; the rest are in "
            f"<a href=\"frames.csv\">frames.csv</a>.</p>")


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
        status = _text(row.get("status"))
        if status not in by_status:
            raise ValueError(f"row {_text(row.get('key'))!r}: unknown status {status!r}")
        by_status[status].append(row)
    restored, order_text = _worst_first(by_status["restored"])
    quarantined = sorted(by_status["quarantined"],
                         key=lambda r: (_text(r.get("reason")), _text(r.get("key"))))
    skipped = sorted(by_status["skipped"], key=lambda r: _text(r.get("key")))

    counts = summary.get("counts") if isinstance(summary.get("counts"), Mapping) else None
    if counts is None:  # derive from the rows when the summary lacks them
        counts = {k: len(v) for k, v in by_status.items()} | {"total": len(all_rows)}
    assert isinstance(counts, Mapping)

    # truth columns only where some frame has the value (no column of dashes)
    metrics = [m for m in _METRICS if not m.truth or any(_num(r.get(m.column)) is not None for r in restored)]

    files: dict[str, bytes] = {}
    hist_html = []
    for m in _METRICS:
        values = [v for v in (_num(r.get(m.column)) for r in restored) if v is not None]
        if not values:
            continue
        name = f"hist_{m.column}.png"
        files[name] = _histogram(values, m)
        hist_html.append(f"<img src=\"{name}\" alt=\"histogram of {html.escape(m.label)}\">")

    run_id = _text(summary.get("run_id"))
    shown = restored[:max_frames]
    parts = [
        "<p><a href=\"../index.html\">← all runs</a></p>",
        f"<h1>Restoration run <span class=\"mono\">{_esc(run_id)}</span></h1>",
        _status_banner(summary),
        _cards(counts),
        _before_after(by_status["restored"]),
        _meta(summary),
        "<p>Data: <a href=\"summary.json\">summary.json</a></p>"
        if _text(summary.get("status")) == "failed" else
        "<p>Data: <a href=\"frames.csv\">frames.csv</a> · <a href=\"frames.parquet\">frames.parquet</a>"
        " · <a href=\"summary.json\">summary.json</a></p>",
        f"<div class=\"note\" id=\"proxy-note\">{html.escape(NO_REFERENCE_NOTE)}</div>",
        f"<h2>Restored frames, worst first: {order_text}</h2>",
    ]
    if shown:
        parts += [_frames_table(files, shown, images, metrics, run_id), _more(len(shown), len(restored))]
    else:
        parts.append("<p class=\"muted\" id=\"no-restored\">No frame was restored in this run.</p>")
    parts.append("<h2>Metric histograms (restored frames)</h2>")
    parts.append(f"<div class=\"hists\">{''.join(hist_html)}</div>" if hist_html
                 else "<p class=\"muted\">No metrics to plot.</p>")
    parts.append(f"<h2>Quarantined frames ({len(quarantined)})</h2>")
    if quarantined:
        parts += [_list_table("quarantine-table", quarantined[:max_list]),
                  _more(min(len(quarantined), max_list), len(quarantined))]
    else:
        parts.append("<p class=\"muted\" id=\"no-quarantined\">None.</p>")
    parts.append(f"<h2>Skipped frames ({len(skipped)})</h2>")
    if skipped:
        parts += ["<details><summary>Already restored with the same input, config and models</summary>",
                  _list_table("skipped-table", skipped[:max_list]),
                  _more(min(len(skipped), max_list), len(skipped)), "</details>"]
    else:
        parts.append("<p class=\"muted\">None.</p>")
    parts.append(f"<h2>Definitions</h2><div class=\"note\" id=\"kernel-mse-definition\">"
                 f"{html.escape(KERNEL_MSE_DEFINITION)}</div>")
    files["index.html"] = _page(f"Run {run_id}", "\n".join(parts))
    return files


def index_page_name(page: int) -> str:
    """``index.html`` for the newest runs, ``index-2.html``, ``index-3.html``... for older ones."""
    return "index.html" if page == 1 else f"index-{page}.html"


def render_index(summaries: Iterable[Mapping[str, object]], *, page_size: int = DEFAULT_PAGE_SIZE
                 ) -> dict[str, bytes]:
    """Render ``reports/index.html`` (the newest ``page_size`` runs; older ones on ``index-2.html``...)
    and its ``trend_*.png`` plots. Failed runs are red rows, and a failed newest run puts a red
    banner on top. Trends skip failed and skip-only runs (nothing restored: no values to plot)."""
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    runs = [s for s in summaries if isinstance(s.get("run_id"), str) and RUN_ID_RE.match(str(s["run_id"]))]
    epoch = datetime.min.replace(tzinfo=UTC)
    runs.sort(key=lambda s: (_run_time(s) or epoch, str(s["run_id"])), reverse=True)

    def means(s: Mapping[str, object]) -> Mapping[str, object]:
        m = s.get("means")
        return m if isinstance(m, Mapping) else {}

    def counts(s: Mapping[str, object]) -> Mapping[str, object]:
        c = s.get("counts")
        return c if isinstance(c, Mapping) else {}

    def restored_any(s: Mapping[str, object]) -> bool:
        return _text(s.get("status")) != "failed" and (_num(counts(s).get("restored")) or 0) > 0

    chrono = [s for s in reversed(runs) if _run_time(s) is not None and restored_any(s)]
    files: dict[str, bytes] = {}
    plots = []
    trends = [
        ("restored", "frames restored per run", "frames", lambda s: _num(counts(s).get("restored")), False),
        ("residual", "mean residual (no-reference proxy)", "residual",
         lambda s: _num(means(s).get("residual")), False),
        ("kernel_mse", "mean kernel-MSE (runs with truth)", "kernel-MSE",
         lambda s: _num(means(s).get("kernel_mse")), True),
        ("psnr", "mean PSNR (runs with truth)", "dB", lambda s: _num(means(s).get("psnr")), False),
    ]
    for name, title, ylabel, get, log in trends:
        points = [(t, v) for s in chrono if (t := _run_time(s)) is not None and (v := get(s)) is not None]
        if not points:
            continue
        files[f"trend_{name}.png"] = _trend(points, title, ylabel, log=log, integer=name == "restored")
        plots.append(f"<img src=\"trend_{name}.png\" alt=\"{html.escape(title)}\">")

    head = ("<tr><th class=\"sortable\">run</th><th class=\"sortable\">status</th>"
            "<th class=\"sortable\">started (UTC)</th><th class=\"num\">wall time</th>"
            "<th class=\"sortable\">config</th>"
            "<th class=\"num sortable\">restored</th><th class=\"num sortable\">skipped</th>"
            "<th class=\"num sortable\">quarantined</th><th class=\"num sortable\">mean residual</th>"
            "<th class=\"num sortable\">mean PSNR</th><th class=\"num sortable\">mean kernel-MSE</th>"
            "<th>codes readable</th></tr>")

    def row_html(s: Mapping[str, object]) -> str:
        run_id = str(s["run_id"])
        t = _run_time(s)
        status = _text(s.get("status")) or "succeeded"
        failed = status in FAILED_STATUSES
        err = s.get("error") if isinstance(s.get("error"), Mapping) else None
        title = f" title=\"{_esc(err.get('type'))}: {_esc(err.get('message'))}\"" if err else ""
        cells = [
            f"<td class=\"mono\"><a href=\"{quote(run_id)}/index.html\">{_esc(run_id)}</a></td>",
            f"<td class=\"status\"{title}>{_esc(status)}</td>",
            f"<td>{t.strftime('%Y-%m-%d %H:%M:%S') if t else '—'}</td>",
            f"<td class=\"num\">{_duration(s)}</td>",
            f"<td>{_esc(s.get('config_name')) or '—'} <span class=\"mono muted\">"
            f"{_esc(_text(s.get('config_hash'))[:8])}</span></td>",
        ]
        for name in ("restored", "skipped", "quarantined"):
            v = _num(counts(s).get(name))
            cells.append(f"<td class=\"num\" data-v=\"{'' if v is None else int(v)}\">"
                         f"{'—' if v is None else int(v)}</td>")
        for col, fmt in (("residual", "{:.3f}"), ("psnr", "{:.2f}"), ("kernel_mse", "{:.2e}")):
            v = _num(means(s).get(col))
            cells.append(f"<td class=\"num\" data-v=\"{'' if v is None else repr(v)}\">{_fmt(v, fmt)}</td>")
        cells.append(f"<td class=\"codes\">{_esc(codes_text(s))}</td>")
        cls = (" class=\"failed\"" if failed else "") + f" data-status=\"{_esc(status)}\""
        return f"<tr{cls}>" + "".join(cells) + "</tr>"

    pages = max(1, math.ceil(len(runs) / page_size))
    banner = ""
    if runs and _text(runs[0].get("status")) in FAILED_STATUSES:
        newest = runs[0]
        err = newest.get("error") if isinstance(newest.get("error"), Mapping) else None
        what = (f"{_esc(err.get('type'))}: {_esc(err.get('message'))}" if err
                else f"{_fmt(_num(newest.get('quarantine_rate')), '{:.0%}')} of the processed frames "
                "quarantined")
        banner = (f"<div class=\"banner failed\" id=\"latest-failed\">Latest run "
                  f"<a href=\"{quote(str(newest['run_id']))}/index.html\">{_esc(newest['run_id'])}</a> "
                  f"{_esc(newest.get('status'))}: {what}</div>")
    for page in range(1, pages + 1):
        chunk = runs[(page - 1) * page_size: page * page_size]
        span = f"; runs {(page - 1) * page_size + 1}–{(page - 1) * page_size + len(chunk)}"
        pager = ""
        if pages > 1:
            links = [f"<span>page {page} of {pages}</span>"]
            if page > 1:
                links.append(f"<a href=\"{index_page_name(page - 1)}\" rel=\"prev\">← newer</a>")
            if page < pages:
                links.append(f"<a href=\"{index_page_name(page + 1)}\" rel=\"next\">older →</a>")
            pager = f"<p class=\"pager\">{' '.join(links)}</p>"
        parts = [
            "<h1>Checkout frame restoration — all runs</h1>",
            banner if page == 1 else "",
            f"<p class=\"muted\">{len(runs)} run{'s' if len(runs) != 1 else ''}, newest first"
            f"{span if pages > 1 else ''}.</p>",
            pager,
        ]
        if chunk:
            parts.append(f"<table id=\"runs-table\" class=\"sortable\"><thead>{head}</thead>"
                         f"<tbody>{''.join(row_html(s) for s in chunk)}</tbody></table>")
        else:
            parts.append("<p class=\"muted\" id=\"no-runs\">No runs yet.</p>")
        parts.append(pager)
        if page == 1:
            if plots:
                parts += ["<h2>Trends (runs that restored frames)</h2>",
                          f"<div class=\"hists\">{''.join(plots)}</div>"]
            if runs and not any(_num(means(s).get("psnr")) is not None for s in runs):
                parts.append("<p class=\"muted\">No run had ground truth yet: PSNR and kernel-MSE trends "
                             "appear once calibration frames (with .sharp.png / .kernel.npy sidecars) are "
                             "restored.</p>")
            parts += [f"<div class=\"note\">{html.escape(NO_REFERENCE_NOTE)}</div>",
                      f"<div class=\"note\">{html.escape(KERNEL_MSE_DEFINITION)}</div>"]
        files[index_page_name(page)] = _page("Checkout restoration runs", "\n".join(p for p in parts if p))
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
