"""``checkout-restore dashboard --dest URI [--port N]``: serve a destination's reports on 127.0.0.1.

Every request maps to a key under ``reports/`` and is read through the destination's
:class:`storage.base.ObjectStore`, so a local folder and an S3 prefix are served the same way
(for a local store that is a plain file read; for S3 a proxied GET with the store's credentials,
which never reach the browser). Reachable: ``reports/``, the outputs ``restored/`` and
``kernels/`` (the full-size "after" pictures), and, as ``/<run-id>/input/<key>``, the run's input
frames and masks from its source store (named in that run's ``summary.json``, opened read-only).
The ledger and anything else are not served. Paths are validated with the storage key rules (no
``..``, no empty segment, no backslash, no control character). Read-only: the stores are opened
with ``read_only=True``, and only GET and HEAD are answered.
"""

from __future__ import annotations

import argparse
import mimetypes
import subprocess
import tempfile
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from storage.base import ObjectStore
from storage.errors import InvalidKeyError, ObjectNotFoundError, ObjectTooLargeError, StorageError
from storage.keys import KERNELS_PREFIX, REPORTS_PREFIX, RESTORED_PREFIX, RUN_ID_RE, validate_key

DEFAULT_PORT = 8765
CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install -y chromium)
SCREENSHOT_SIZE = (1280, 1600)
HOST = "127.0.0.1"  # never exposed beyond this machine: reports show customer frames
MAX_OBJECT_BYTES = 256 * 1024 * 1024

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".parquet": "application/vnd.apache.parquet",
    ".npy": "application/octet-stream",
}


def content_type(key: str) -> str:
    """Content type of a report object, by extension (octet-stream when unknown)."""
    dot = key.rfind(".")
    ext = key[dot:].lower() if dot > key.rfind("/") else ""
    if ext in _TYPES:
        return _TYPES[ext]
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


def key_for_path(path: str) -> str:
    """The store key an URL path asks for: ``/`` -> ``reports/index.html``, ``/a/`` ->
    ``reports/a/index.html``, ``/a/b.png`` -> ``reports/a/b.png``. Raises
    :class:`InvalidKeyError` for anything that is not a valid key (``..``, ``//``, ``\\``, NUL)."""
    # Split off query/fragment by hand: urlsplit would read "//host/x" as a network location.
    rel = unquote(path.split("?", 1)[0].split("#", 1)[0], errors="strict")
    if not rel.startswith("/"):
        raise InvalidKeyError(path, "request path must start with '/'")
    rel = rel[1:]
    if rel == "" or rel.endswith("/"):
        rel += "index.html"
    return validate_key(REPORTS_PREFIX + validate_key(rel))


OUTPUT_PREFIXES = (RESTORED_PREFIX, KERNELS_PREFIX)  # served from the destination as they are
INPUT_SEGMENT = "input"


def route(path: str) -> tuple[str, str, str | None]:
    """``(where, key, run_id)`` for an URL path: ``("dest", "reports/...", None)`` for report files,
    ``("dest", "restored/x.png", None)`` for outputs, ``("input", "<source key>", run_id)`` for
    ``/<run-id>/input/<key>``. Raises :class:`InvalidKeyError` for anything else invalid."""
    key = key_for_path(path)
    rel = key[len(REPORTS_PREFIX):]
    if rel.startswith(OUTPUT_PREFIXES):
        return "dest", rel, None
    run_id, _, rest = rel.partition("/")
    if RUN_ID_RE.match(run_id) and rest.startswith(INPUT_SEGMENT + "/"):
        from storage.sidecars import classify

        source_key = validate_key(rest[len(INPUT_SEGMENT) + 1:])
        found = classify(source_key)
        if found is None or found[0] == "kernel":
            raise InvalidKeyError(source_key, "only frames and their masks/truth images are served")
        return "input", source_key, run_id
    return "dest", key, None


class ReportsHandler(BaseHTTPRequestHandler):
    """GET/HEAD of ``reports/`` objects from ``self.server.store`` (a :class:`ReportsServer`)."""

    server: ReportsServer
    server_version = "checkout-restore-dashboard"

    def do_GET(self) -> None:
        self._serve(body=True)

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def _serve(self, *, body: bool) -> None:
        try:
            where, key, run_id = route(self.path)
        except (InvalidKeyError, UnicodeDecodeError):
            self._error(HTTPStatus.BAD_REQUEST, "invalid path", body)
            return
        try:
            store = self.server.store if run_id is None else self.server.source_for(run_id)
            data = store.get(key, max_bytes=MAX_OBJECT_BYTES)
        except ObjectNotFoundError:
            # "/<run-id>" -> "/<run-id>/" so that the page's relative links resolve.
            folder = self.path.split("?", 1)[0].split("#", 1)[0]
            if where == "dest" and not folder.endswith("/") and store.exists(key + "/index.html"):
                self.send_response(HTTPStatus.MOVED_PERMANENTLY)
                self.send_header("Location", folder + "/")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self._error(HTTPStatus.NOT_FOUND, "not found", body)
            return
        except InvalidKeyError:  # the backend's own checks (e.g. its reserved names)
            self._error(HTTPStatus.BAD_REQUEST, "invalid path", body)
            return
        except ObjectTooLargeError:
            self._error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "object too large to serve", body)
            return
        except StorageError as exc:
            self.log_error("store error for %r: %s", key, exc)
            self._error(HTTPStatus.BAD_GATEWAY, "store error", body)
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type(key))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        if body:
            self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str, body: bool) -> None:
        payload = f"{status.value} {message}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)


class ReportsServer(ThreadingHTTPServer):
    """A threading HTTP server on 127.0.0.1 that serves ``store``'s ``reports/``."""

    daemon_threads = True

    def __init__(self, store: ObjectStore, port: int = DEFAULT_PORT, *, quiet: bool = False) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range 0..65535")
        self.store = store
        self.quiet = quiet
        self._sources: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()
        super().__init__((HOST, port), ReportsHandler)

    def source_for(self, run_id: str) -> ObjectStore:
        """The run's source store (from its ``summary.json``), opened read-only, cached per URI."""
        import json

        from storage.stores import open_store

        try:
            uri = json.loads(self.store.get(f"{REPORTS_PREFIX}{run_id}/summary.json"))["source"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ObjectNotFoundError(self.store.uri, f"{REPORTS_PREFIX}{run_id}/summary.json") from exc
        with self._lock:
            if uri not in self._sources:
                self._sources[uri] = open_store(uri, read_only=True)
            return self._sources[uri]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/`` (the real port when 0 was asked for)."""
        return f"http://{HOST}:{self.server_address[1]}/"


def start_dashboard(
    store: ObjectStore, port: int = 0, *, quiet: bool = True
) -> tuple[ReportsServer, threading.Thread]:
    """Start a :class:`ReportsServer` in a background thread (for tests and notebooks); stop it
    with ``server.shutdown(); server.server_close()``."""
    server = ReportsServer(store, port, quiet=quiet)
    thread = threading.Thread(target=server.serve_forever, name="reports-dashboard", daemon=True)
    thread.start()
    return server, thread


def headless_chromium(
    *args: str, binary: str = CHROMIUM, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium once with a throw-away profile (``--dump-dom URL`` prints the DOM
    after the page's ``load`` handlers ran; ``--screenshot=PATH URL`` writes a PNG). Offline
    flags: no background networking, component updates, sync or first-run pages. Raises
    :class:`RuntimeError` with Chromium's stderr tail when it fails."""
    with tempfile.TemporaryDirectory(prefix="crs-chromium-") as profile:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
               "--hide-scrollbars", f"--user-data-dir={profile}", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"chromium exited with {done.returncode}: {done.stderr[-2000:]}")
    return done


def take_screenshot(url: str, path: str | Path, *, size: tuple[int, int] = SCREENSHOT_SIZE,
                    binary: str = CHROMIUM) -> Path:
    """PNG screenshot (``size`` = window width, height) of ``url`` with headless Chromium."""
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    headless_chromium(f"--window-size={size[0]},{size[1]}", f"--screenshot={out}", url, binary=binary)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


def dashboard_main(args: argparse.Namespace) -> int:
    """Serve until interrupted (prints the URL), or write ``--screenshot``. Returns the exit status."""
    from storage.reports import list_runs  # pulls in pandas: only when the command runs
    from storage.stores import open_store

    store = open_store(args.dest, read_only=True)
    if getattr(args, "screenshot", None):
        runs = list_runs(store)
        server, thread = start_dashboard(store, 0)
        try:
            url = server.url + (f"{runs[-1]}/" if runs else "")
            print(take_screenshot(url, args.screenshot), flush=True)
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        return 0
    with ReportsServer(store, args.port) as server:
        print(f"Serving reports of {store.uri} at {server.url} (Ctrl-C to stop)", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return 0
