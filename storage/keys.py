"""Key rules and the output layout (docs/design.md §5).

A *key* is a store-relative, ``/``-separated name such as ``lane3/cam1/f001.jpg``. The same rules
hold on every backend, so a key that works locally works on S3 and vice versa:

* a non-empty ``str`` of at most :data:`MAX_KEY_BYTES` bytes in UTF-8 (S3's own limit);
* no leading ``/`` (absolute), no ``\\`` (a path separator elsewhere), no empty segment
  (``a//b``, trailing ``/``), no ``.`` or ``..`` segment;
* no control character (Unicode category ``Cc``: NUL, C0, DEL, C1) and no lone surrogate.

A frame's *id* is its source key without the image extension and keeps its sub-folders
(``lane3/cam1/f001.jpg`` -> ``lane3/cam1/f001``); output keys are built from it. Output files end
in ``.png``, ``.npy`` or ``.json``; a *folder* of the id that ends like that (or in ``~``) gets a
``~`` appended in output keys (:func:`output_path`), so a file and a folder of the outputs can
never share a name on a local destination: ``x.png`` beside a folder ``x.json/`` has
``ledger/x.json`` and ``ledger/x.json~/y.json``. The mapping is one-to-one; ids without such
folders (nearly all) keep the plain layout.
"""

from __future__ import annotations

import re
import unicodedata

from storage.errors import InvalidKeyError

MAX_KEY_BYTES = 1024

RESTORED_PREFIX = "restored/"
KERNELS_PREFIX = "kernels/"
REPORTS_PREFIX = "reports/"
LEDGER_PREFIX = "ledger/"
REPORTS_INDEX_KEY = "reports/index.html"

# Run ids sort by time: UTC second, then 6 random hex digits against same-second collisions.
RUN_ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{6}$")


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it obeys the key rules, else raise :class:`InvalidKeyError`."""
    if not isinstance(key, str):
        raise InvalidKeyError(key, f"must be str, not {type(key).__name__}")
    if not key:
        raise InvalidKeyError(key, "empty")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(key, "not encodable as UTF-8 (lone surrogate)") from exc
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"{size} bytes in UTF-8, over the {MAX_KEY_BYTES} limit")
    for ch in key:
        if unicodedata.category(ch) == "Cc":
            raise InvalidKeyError(key, f"control character U+{ord(ch):04X}")
    if key.startswith("/"):
        raise InvalidKeyError(key, "absolute (starts with '/')")
    if "\\" in key:
        raise InvalidKeyError(key, "contains '\\' (use '/' as the separator)")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKeyError(key, "empty path segment ('//' or trailing '/')")
        if segment in (".", ".."):
            raise InvalidKeyError(key, f"'{segment}' path segment")
    return key


def validate_prefix(prefix: object) -> str:
    """Validate a listing prefix: ``""``, or a key optionally ending with one ``/``.

    Prefixes have S3 semantics: ``"lane3/f0"`` matches ``"lane3/f001.jpg"``.
    """
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidKeyError(prefix, f"prefix must be str, not {type(prefix).__name__}")
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def validate_folder(prefix: object) -> str:
    """Validate a "folder" prefix for :meth:`list_dirs`: ``""`` or ending with ``/``."""
    prefix = validate_prefix(prefix)
    if prefix and not prefix.endswith("/"):
        raise InvalidKeyError(prefix, "folder prefix must be '' or end with '/'")
    return prefix


def validate_id(frame_id: object) -> str:
    """A frame id obeys the key rules (it is a key without its extension)."""
    return validate_key(frame_id)


OUTPUT_SUFFIXES = (".png", ".npy", ".json")
_FOLDER_ESCAPE = "~"


def output_path(frame_id: str) -> str:
    """The id as it appears in output keys: folder segments ending in an output suffix or in
    ``~`` get a ``~`` appended (one-to-one; no output folder then ends like an output file)."""
    *folders, name = validate_id(frame_id).split("/")
    escaped = [f + _FOLDER_ESCAPE if f.endswith((*OUTPUT_SUFFIXES, _FOLDER_ESCAPE)) else f for f in folders]
    return "/".join([*escaped, name])


def restored_key(frame_id: str) -> str:
    """``restored/<id>.png``: the restored frame, same size as the input."""
    return validate_key(f"{RESTORED_PREFIX}{output_path(frame_id)}.png")


def kernel_npy_key(frame_id: str) -> str:
    """``kernels/<id>.npy``: the estimated kernel, raw float32 2-D."""
    return validate_key(f"{KERNELS_PREFIX}{output_path(frame_id)}.npy")


def kernel_png_key(frame_id: str) -> str:
    """``kernels/<id>.png``: a viewable picture of the estimated kernel."""
    return validate_key(f"{KERNELS_PREFIX}{output_path(frame_id)}.png")


def ledger_key(frame_id: str) -> str:
    """``ledger/<id>.json``: the idempotency record, written after all outputs."""
    return validate_key(f"{LEDGER_PREFIX}{output_path(frame_id)}.json")


def output_keys(frame_id: str) -> tuple[str, str, str]:
    """The three outputs of one frame: restored PNG, kernel ``.npy``, kernel PNG."""
    return restored_key(frame_id), kernel_npy_key(frame_id), kernel_png_key(frame_id)


def validate_run_id(run_id: object) -> str:
    """Run ids look like ``20261124T120000Z-1a2b3c`` (see :func:`storage.reports.new_run_id`)."""
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise InvalidKeyError(run_id, "not a run id like 20261124T120000Z-1a2b3c")
    return run_id


def report_key(run_id: str, name: str) -> str:
    """``reports/<run-id>/<name>`` (``name`` may contain sub-folders, e.g. thumbnails)."""
    return validate_key(f"{REPORTS_PREFIX}{validate_run_id(run_id)}/{validate_key(name)}")
