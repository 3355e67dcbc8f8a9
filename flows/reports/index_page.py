"""The all-runs index (``reports/index.html``, ``index-2.html``...) and its trend plots: the view
model of templates/index.html.j2."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from urllib.parse import quote

from flows.reports.images import trend
from flows.reports.render import render
from flows.reports.values import (
    FAILED_STATUSES,
    KERNEL_MSE_DEFINITION,
    NO_REFERENCE_NOTE,
    as_number,
    as_text,
    codes_text,
    duration,
    formatted,
    number_cell,
    run_time,
)
from storage.keys import RUN_ID_RE

DEFAULT_PAGE_SIZE = 50  # runs per page of the all-runs index


def index_page_name(page: int) -> str:
    """``index.html`` for the newest runs, ``index-2.html``, ``index-3.html``... for older ones."""
    return "index.html" if page == 1 else f"index-{page}.html"


def _means(s: Mapping[str, object]) -> Mapping[str, object]:
    m = s.get("means")
    return m if isinstance(m, Mapping) else {}


def _counts(s: Mapping[str, object]) -> Mapping[str, object]:
    c = s.get("counts")
    return c if isinstance(c, Mapping) else {}


#: the index's trend plots: (name, title, y label, value of a run summary, log axis)
_TRENDS: tuple[tuple[str, str, str, Callable[[Mapping[str, object]], float | None], bool], ...] = (
    ("restored", "frames restored per run", "frames", lambda s: as_number(_counts(s).get("restored")), False),
    ("residual", "mean residual (no-reference proxy)", "residual",
     lambda s: as_number(_means(s).get("residual")), False),
    ("kernel_mse", "mean kernel-MSE (runs with truth)", "kernel-MSE",
     lambda s: as_number(_means(s).get("kernel_mse")), True),
    ("psnr", "mean PSNR (runs with truth)", "dB", lambda s: as_number(_means(s).get("psnr")), False),
)


def _trend_plots(files: dict[str, bytes], runs: Sequence[Mapping[str, object]]) -> list[dict[str, str]]:
    """Trend PNGs (into ``files``) over the runs that restored frames, oldest first."""

    def restored_any(s: Mapping[str, object]) -> bool:
        return as_text(s.get("status")) != "failed" and (as_number(_counts(s).get("restored")) or 0) > 0

    chrono = [s for s in reversed(runs) if run_time(s) is not None and restored_any(s)]
    plots = []
    for name, title, ylabel, get, log in _TRENDS:
        points = [(t, v) for s in chrono if (t := run_time(s)) is not None and (v := get(s)) is not None]
        if points:
            files[f"trend_{name}.png"] = trend(points, title, ylabel, log=log, integer=name == "restored")
            plots.append({"src": f"trend_{name}.png", "title": title})
    return plots


def _index_row(s: Mapping[str, object]) -> dict[str, object]:
    run_id = str(s["run_id"])
    t = run_time(s)
    status = as_text(s.get("status")) or "succeeded"
    err = s.get("error") if isinstance(s.get("error"), Mapping) else None
    numbers_ = []
    for name in ("restored", "skipped", "quarantined"):
        v = as_number(_counts(s).get(name))
        numbers_.append({"v": "" if v is None else int(v), "text": "—" if v is None else int(v)})
    for col, fmt in (("residual", "{:.3f}"), ("psnr", "{:.2f}"), ("kernel_mse", "{:.2e}")):
        numbers_.append(number_cell(as_number(_means(s).get(col)), fmt))
    return {
        "run_id": run_id, "href": f"{quote(run_id)}/index.html", "status": status,
        "failed": status in FAILED_STATUSES,
        "error": f"{as_text(err.get('type'))}: {as_text(err.get('message'))}" if err else "",
        "started": t.strftime("%Y-%m-%d %H:%M:%S") if t else "—", "duration": duration(s),
        "config_name": as_text(s.get("config_name")), "config_hash": as_text(s.get("config_hash"))[:8],
        "numbers": numbers_, "codes": codes_text(s),
    }


def _latest_failed(runs: Sequence[Mapping[str, object]]) -> dict[str, str] | None:
    """The red banner on top of the index when the newest run failed."""
    if not runs or as_text(runs[0].get("status")) not in FAILED_STATUSES:
        return None
    newest = runs[0]
    err = newest.get("error") if isinstance(newest.get("error"), Mapping) else None
    what = (f"{as_text(err.get('type'))}: {as_text(err.get('message'))}" if err
            else f"{formatted(as_number(newest.get('quarantine_rate')), '{:.0%}')} of the processed frames "
            "quarantined")
    return {"href": f"{quote(str(newest['run_id']))}/index.html", "run_id": as_text(newest["run_id"]),
            "status": as_text(newest.get("status")), "what": what}


def render_index(summaries: Iterable[Mapping[str, object]], *, page_size: int = DEFAULT_PAGE_SIZE
                 ) -> dict[str, bytes]:
    """Render ``reports/index.html`` (the newest ``page_size`` runs; older ones on ``index-2.html``...)
    and its ``trend_*.png`` plots. Failed runs are red rows, and a failed newest run puts a red
    banner on top. Trends skip failed and skip-only runs (nothing restored: no values to plot)."""
    if page_size < 1:
        raise ValueError("page_size must be >= 1")
    runs = [s for s in summaries if isinstance(s.get("run_id"), str) and RUN_ID_RE.match(str(s["run_id"]))]
    epoch = datetime.min.replace(tzinfo=UTC)
    runs.sort(key=lambda s: (run_time(s) or epoch, str(s["run_id"])), reverse=True)
    files: dict[str, bytes] = {}
    plots = _trend_plots(files, runs)
    pages = max(1, math.ceil(len(runs) / page_size))
    banner = _latest_failed(runs)
    no_truth_yet = bool(runs) and not any(as_number(_means(s).get("psnr")) is not None for s in runs)
    for page in range(1, pages + 1):
        chunk = runs[(page - 1) * page_size: page * page_size]
        first = (page - 1) * page_size
        span = f"; runs {first + 1}–{first + len(chunk)}" if pages > 1 else ""
        files[index_page_name(page)] = render(
            "index.html.j2", title="Checkout restoration runs", page=page, pages=pages,
            prev_page=index_page_name(page - 1), next_page=index_page_name(page + 1),
            banner=banner if page == 1 else None, total=len(runs), span=span,
            runs=[_index_row(s) for s in chunk], plots=plots, no_truth_yet=no_truth_yet,
            no_reference_note=NO_REFERENCE_NOTE, kernel_mse_definition=KERNEL_MSE_DEFINITION,
        )
    return files
