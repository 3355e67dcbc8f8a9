"""Per-run report files in the destination store (docs/design.md §5) and their readers.

``reports/<run-id>/frames.parquet`` and ``frames.csv`` hold one row per frame; ``summary.json``
one object per run. Run ids (``20261124T120000Z-1a2b3c``) sort by start time, so listing
``reports/`` in key order is listing runs in time order.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from storage.base import ObjectStore
from storage.errors import InvalidKeyError, ObjectNotFoundError
from storage.keys import REPORTS_PREFIX, report_key, validate_run_id

log = logging.getLogger(__name__)

# A spreadsheet runs a cell starting with one of these as a formula (CSV injection).
FORMULA_PREFIXES = ("=", "+", "-", "@")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

FRAMES_PARQUET = "frames.parquet"
FRAMES_CSV = "frames.csv"
SUMMARY_JSON = "summary.json"
_RUN_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDDTHHMMSSZ-xxxxxx``: UTC start time, then 6 random hex digits."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return f"{moment.strftime(_RUN_TIME_FORMAT)}-{secrets.token_hex(3)}"


def run_started_at(run_id: str) -> datetime:
    """The UTC start time encoded in a run id."""
    stamp = validate_run_id(run_id).split("-")[0]
    return datetime.strptime(stamp, _RUN_TIME_FORMAT).replace(tzinfo=UTC)


def escape_controls(text: str) -> str:
    """Control characters (C0, DEL, C1: newlines and tabs too) as visible ``\\xNN`` escapes, and
    Unicode format characters (category Cf: bidi overrides such as U+202E, zero-width and
    invisible characters) as ``\\uNNNN``: they would reorder or hide what a report shows."""
    text = _CONTROL_RE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    if text.isascii():
        return text
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c) == "Cf" else c for c in text)


def csv_cell(value: Any) -> Any:
    """A text cell made inert for spreadsheets: control characters escaped, and a leading
    ``=``, ``+``, ``-`` or ``@`` prefixed with ``'`` (OWASP's CSV-injection advice).
    Numbers and missing values pass unchanged; Parquet keeps the raw text."""
    if not isinstance(value, str):
        return value
    text = escape_controls(value)
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def _frame(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> pd.DataFrame:
    if columns is None:
        seen: dict[str, None] = {}
        for row in rows:
            seen.update(dict.fromkeys(row))
        columns = list(seen)
    return pd.DataFrame([dict(r) for r in rows], columns=list(columns))


def write_frames_report(
    dest_store: ObjectStore,
    run_id: str,
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
) -> tuple[str, str]:
    """Write ``frames.parquet`` and ``frames.csv`` for a run; return their keys.

    Columns are the union of the rows' keys in first-seen order (or ``columns``, which also
    gives an empty run its header). Missing values are null in Parquet and empty in CSV.
    CSV text cells are neutralised (:func:`csv_cell`); Parquet holds the values as they are.
    A column mixing incompatible types (e.g. numbers and text) is a ``ValueError``.
    """
    frame = _frame(rows, columns)
    parquet = io.BytesIO()
    try:
        frame.to_parquet(parquet, engine="pyarrow", index=False)
    except (TypeError, ValueError) as exc:  # pyarrow.ArrowException subclasses these
        raise ValueError(f"frames report for run {run_id}: {exc}") from exc
    text_cols = [c for c in frame.columns
                 if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c])]
    safe = frame.assign(**{c: frame[c].map(csv_cell) for c in text_cols}) if text_cols else frame
    csv = safe.to_csv(index=False, lineterminator="\n").encode("utf-8")
    parquet_key = report_key(run_id, FRAMES_PARQUET)
    csv_key = report_key(run_id, FRAMES_CSV)
    dest_store.put(parquet_key, parquet.getvalue())
    dest_store.put(csv_key, csv)
    return parquet_key, csv_key


def load_frames_report(dest_store: ObjectStore, run_id: str) -> pd.DataFrame:
    """The ``frames.parquet`` of a run as a DataFrame."""
    data = dest_store.get(report_key(run_id, FRAMES_PARQUET))
    return pd.read_parquet(io.BytesIO(data), engine="pyarrow")


def _json_safe(obj: Any) -> Any:
    """NaN/inf -> null, numpy scalars/arrays -> Python, tuples -> lists."""
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


def write_summary(dest_store: ObjectStore, run_id: str, summary: Mapping[str, Any]) -> str:
    """Write ``reports/<run-id>/summary.json`` (``run_id`` added; NaN/inf become null)."""
    validate_run_id(run_id)
    body = _json_safe(dict(summary))
    if body.setdefault("run_id", run_id) != run_id:
        raise ValueError(f"summary says run_id {body['run_id']!r}, writing it for {run_id!r}")
    key = report_key(run_id, SUMMARY_JSON)
    data = json.dumps(body, indent=2, allow_nan=False, ensure_ascii=False).encode("utf-8")
    dest_store.put(key, data)
    return key


def list_runs(dest_store: ObjectStore) -> list[str]:
    """Run ids that have a folder under ``reports/``, oldest first (one delimiter listing)."""
    runs = []
    for folder in dest_store.list_dirs(REPORTS_PREFIX):
        name = folder[len(REPORTS_PREFIX) : -1]
        try:
            runs.append(validate_run_id(name))
        except InvalidKeyError:
            continue  # e.g. a thumbnails folder of the dashboard
    return runs


def load_summaries(dest_store: ObjectStore, *, limit: int | None = None) -> list[dict[str, Any]]:
    """All runs' summaries, newest first (``limit``: only the newest N).

    Runs without a summary (still running, or crashed) and unreadable summaries are skipped
    with a logged warning, so one bad run never hides the others.
    """
    out: list[dict[str, Any]] = []
    for run_id in reversed(list_runs(dest_store)):
        if limit is not None and len(out) >= limit:
            break
        key = report_key(run_id, SUMMARY_JSON)
        try:
            summary = json.loads(dest_store.get(key))
        except ObjectNotFoundError:
            continue
        except ValueError as exc:
            log.warning("skipping unreadable %s in %s: %s", key, dest_store.uri, exc)
            continue
        if not isinstance(summary, dict):
            log.warning("skipping %s in %s: not a JSON object", key, dest_store.uri)
            continue
        summary.setdefault("run_id", run_id)
        out.append(summary)
    return out


RUN_INDEX_KEY = f"{REPORTS_PREFIX}runs.json"
_INDEX_FIELDS = ("run_id", "status", "error", "started_at", "finished_at", "config_name", "config_hash",
                 "counts", "means", "quarantine_rate", "skip_reasons", "deferred", "frames_per_s")


def compact_summary(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a run summary the all-runs index shows and plots."""
    return _json_safe({k: summary[k] for k in _INDEX_FIELDS if k in summary})


def load_run_index(dest_store: ObjectStore) -> list[dict[str, Any]]:
    """Compact summaries of every run, newest first, from ``reports/runs.json`` (one read); built
    once from every ``summary.json`` when the file is missing or unreadable (older destinations)."""
    try:
        data = json.loads(dest_store.get(RUN_INDEX_KEY))
        if isinstance(data, list) and all(isinstance(s, dict) and "run_id" in s for s in data):
            return data
        log.warning("rebuilding %s in %s: unexpected content", RUN_INDEX_KEY, dest_store.uri)
    except ObjectNotFoundError:
        pass
    except ValueError as exc:
        log.warning("rebuilding unreadable %s in %s: %s", RUN_INDEX_KEY, dest_store.uri, exc)
    return [compact_summary(s) for s in load_summaries(dest_store)]


def update_run_index(dest_store: ObjectStore, summary: Mapping[str, Any], *,
                     drop: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Add (or replace) one run in ``reports/runs.json``, drop ``drop`` run ids; returns the index."""
    run_id = summary["run_id"]
    gone = {run_id, *drop}
    runs = [s for s in load_run_index(dest_store) if s.get("run_id") not in gone]
    runs.append(compact_summary(summary))
    runs.sort(key=lambda s: str(s.get("run_id")), reverse=True)
    dest_store.put(RUN_INDEX_KEY, json.dumps(runs, indent=0, allow_nan=False).encode())
    return runs


def prune_runs(dest_store: ObjectStore, keep_runs: int, *, keep: set[str] | frozenset[str] = frozenset()
               ) -> list[str]:
    """Retention: delete every object of all but the newest ``keep_runs`` report folders (run ids in
    ``keep`` are never deleted) and drop them from ``reports/runs.json``; returns the removed ids."""
    if keep_runs < 1:
        raise ValueError("keep_runs must be >= 1")
    runs = list_runs(dest_store)  # oldest first
    old = [r for r in runs[: max(0, len(runs) - keep_runs)] if r not in keep]
    for run_id in old:
        for key in list(dest_store.list(f"{REPORTS_PREFIX}{run_id}/")):
            dest_store.delete(key)
    if old:
        try:
            index = [s for s in load_run_index(dest_store) if s.get("run_id") not in set(old)]
            dest_store.put(RUN_INDEX_KEY, json.dumps(index, indent=0, allow_nan=False).encode())
        except ValueError as exc:
            log.warning("could not update %s after pruning: %s", RUN_INDEX_KEY, exc)
    return old
