"""The HTML report in a real browser: Debian's headless Chromium loads it from the dashboard server.

The pages set ``data-ready``, ``data-images-loaded`` and ``data-broken-images`` on ``<body>`` in a
``load`` handler (every ``<img>`` checked for ``complete && naturalWidth > 0``); Chromium's
``--dump-dom`` prints the DOM after that handler ran, so the test reads what the browser saw.
Chromium is installed by the session fixture when missing (``apt-get install -y chromium``).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import convolve

from flows.cli.dashboard import add_dashboard_parser
from flows.reports.dashboard import (
    CHROMIUM,
    ReportsServer,
    headless_chromium,
    start_dashboard,
    take_screenshot,
)
from flows.reports.html import KERNEL_MSE_DEFINITION, store_images, write_reports
from storage.base import ObjectStore
from storage.reports import write_frames_report, write_summary
from storage.stores import open_store

RUN_OLD = "20260301T020000Z-0a1b2c"
RUN_NEW = "20260302T020000Z-3d4e5f"
RUN_FAILED = "20260303T020000Z-6a7b8c"
N_RESTORED = 7
NAN = float("nan")


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's Chromium; installed with apt-get when missing (CI runs ``apt-get update`` first)."""
    if not os.access(CHROMIUM, os.X_OK):
        apt = shutil.which("apt-get")
        assert apt is not None, f"{CHROMIUM} is missing and apt-get is not available to install it"
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        done = subprocess.run([apt, "install", "-y", "chromium"], env=env, capture_output=True, timeout=900)
        if done.returncode != 0:  # stale package lists: refresh once and retry
            subprocess.run([apt, "update"], env=env, capture_output=True, timeout=300, check=True)
            subprocess.run([apt, "install", "-y", "chromium"], env=env, capture_output=True, timeout=900,
                           check=True)
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} not installed"
    return CHROMIUM


@dataclass
class _Dom:
    body: dict[str, str]
    rows: dict[str, int]  # tbody rows per table id
    text: str
    links: list[str]
    row_classes: dict[str, list[str]]  # class of each tbody row per table id


class _DomParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.body: dict[str, str] = {}
        self.rows: dict[str, int] = {}
        self.text: list[str] = []
        self.links: list[str] = []
        self.row_classes: dict[str, list[str]] = {}
        self._table: str | None = None
        self._tbody = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = a
        elif tag == "table":
            self._table = a.get("id", "")
            self.rows[self._table] = 0
        elif tag == "tbody":
            self._tbody = True
        elif tag == "tr" and self._tbody and self._table is not None:
            self.rows[self._table] += 1
            self.row_classes.setdefault(self._table, []).append(a.get("class", ""))
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"])

    def handle_endtag(self, tag: str) -> None:
        if tag == "tbody":
            self._tbody = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def dump_dom(binary: str, url: str) -> _Dom:
    parser = _DomParser()
    parser.feed(headless_chromium("--dump-dom", url, binary=binary).stdout)
    return _Dom(parser.body, parser.rows, " ".join(parser.text), parser.links, parser.row_classes)


# ----------------------------------------------------------------------------- a synthetic run


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _scene(rng: np.random.Generator, h: int = 240, w: int = 320) -> np.ndarray:
    """A checkout-like frame: belt, a box with a label, stripes of a barcode, a price tag."""
    belt = rng.integers(40, 80)
    img = Image.new("RGB", (w, h), (belt, belt, belt + 8))
    d = ImageDraw.Draw(img)
    for y in range(0, h, 18):
        d.line([(0, y), (w, y)], fill=(belt + 15,) * 3)
    x0, y0 = int(rng.integers(20, 90)), int(rng.integers(20, 60))
    box = tuple(int(c) for c in rng.integers(90, 250, 3))
    d.rectangle([x0, y0, x0 + 190, y0 + 150], fill=box, outline=(20, 20, 20), width=2)
    d.rectangle([x0 + 12, y0 + 12, x0 + 178, y0 + 52], fill=(250, 250, 245))
    d.text((x0 + 20, y0 + 22), f"FRESH {int(rng.integers(100, 999))}", fill=(30, 30, 30))
    bars = rng.integers(0, 2, 60)
    for i, b in enumerate(bars):
        if b:
            d.line([(x0 + 30 + 2 * i, y0 + 70), (x0 + 30 + 2 * i, y0 + 120)], fill=(10, 10, 10), width=1)
    d.rectangle([x0 + 120, y0 + 125, x0 + 180, y0 + 145], fill=(230, 40, 40))
    d.text((x0 + 126, y0 + 129), f"{rng.integers(1, 9)}.99", fill=(255, 255, 255))
    return np.asarray(img)


def _motion_kernel(rng: np.random.Generator, size: int = 15) -> np.ndarray:
    k = np.zeros((size, size), np.float32)
    angle = rng.uniform(0, np.pi)
    length = rng.uniform(4, 6.5)
    for t in np.linspace(-length, length, 60):
        k[round(size // 2 + t * np.sin(angle)), round(size // 2 + t * np.cos(angle))] += 1
    return k / k.sum()


def _degrade(sharp: np.ndarray, kernel: np.ndarray, hand: bool, rng: np.random.Generator) -> np.ndarray:
    blurred = np.stack([convolve(sharp[..., c].astype(np.float32), kernel, mode="nearest")
                        for c in range(3)], axis=-1)
    out = Image.fromarray(np.clip(blurred + rng.normal(0, 3, blurred.shape), 0, 255).astype(np.uint8))
    if hand:
        d = ImageDraw.Draw(out)
        cx, cy = int(rng.integers(180, 280)), int(rng.integers(120, 200))
        d.ellipse([cx - 50, cy - 35, cx + 50, cy + 35], fill=(224, 172, 140))
        for f in range(4):
            finger = [cx - 45 + 24 * f, cy - 80, cx - 29 + 24 * f, cy - 20]
            d.rounded_rectangle(finger, 8, fill=(218, 166, 134))
    return np.asarray(out)


def build_run(src: ObjectStore, dst: ObjectStore, run_id: str, *, seed: int, n_restored: int = 7,
              finished_minute: int = 4) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Inputs in ``src``, outputs in ``dst``, and the run's rows + summary. The "restored" frames
    are the sharp renders (this test checks the report, not restoration quality); ground truth
    metrics are filled for half of them, as in a calibration run mixed into production."""
    rng = np.random.default_rng(seed)
    rows: list[dict[str, object]] = []
    for i in range(n_restored):
        fid = f"lane{1 + i % 3}/cam1/f{seed:02d}{i:03d}"
        sharp = _scene(rng)
        kernel = _motion_kernel(rng)
        src.put(f"{fid}.png", _png(_degrade(sharp, kernel, hand=i % 3 == 1, rng=rng)))
        dst.put(f"restored/{fid}.png", _png(sharp))
        dst.put(f"kernels/{fid}.png", _png((255 * kernel / kernel.max()).astype(np.uint8)))
        truth = i % 2 == 0
        rows.append({
            "key": f"{fid}.png", "id": fid, "status": "restored", "reason": "",
            "psnr": float(rng.uniform(22, 31)) if truth else NAN,
            "ssim": float(rng.uniform(0.7, 0.93)) if truth else NAN,
            "kernel_mse": float(rng.uniform(2e-5, 3e-4)) if truth else NAN,
            "kernel_ncc": float(rng.uniform(0.4, 0.9)) if truth else NAN,
            "residual": float(rng.uniform(0.9, 2.5)), "sharpness_gain": float(rng.uniform(1.1, 3.0)),
            "kernel_extent": float(rng.uniform(2.0, 6.0)), "seconds": float(rng.uniform(3, 6)),
            "width": 320, "height": 240, "restored_key": f"restored/{fid}.png",
            "kernel_key": f"kernels/{fid}.npy", "kernel_png_key": f"kernels/{fid}.png",
        })
    blank = {"psnr": NAN, "ssim": NAN, "kernel_mse": NAN, "kernel_ncc": NAN, "residual": NAN,
             "sharpness_gain": NAN, "kernel_extent": NAN, "seconds": NAN, "width": NAN, "height": NAN,
             "restored_key": "", "kernel_key": "", "kernel_png_key": ""}
    src.put(f"lane2/cam2/broken{seed}.jpg", b"\xff\xd8\xff\xe0" + bytes(40))
    src.put(f"lane3/cam1/cut{seed}.png", _png(_scene(rng))[:900])
    rows += [
        {"key": f"lane1/cam1/f{seed:02d}old.png", "id": f"lane1/cam1/f{seed:02d}old", "status": "skipped",
         "reason": "already_restored", **blank},
        {"key": f"lane2/cam2/broken{seed}.jpg", "id": f"lane2/cam2/broken{seed}", "status": "quarantined",
         "reason": "corrupt_image", **blank},
        {"key": f"lane3/cam1/cut{seed}.png", "id": f"lane3/cam1/cut{seed}", "status": "quarantined",
         "reason": "truncated_image", **blank},
    ]
    restored = [r for r in rows if r["status"] == "restored"]

    def mean(col: str) -> float | None:
        vals = [float(r[col]) for r in restored if not np.isnan(float(r[col]))]  # type: ignore[arg-type]
        return float(np.mean(vals)) if vals else None

    day = f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}"
    summary: dict[str, object] = {
        "run_id": run_id, "started_at": f"{day}T02:00:00Z",
        "finished_at": f"{day}T02:{finished_minute:02d}:12Z",
        "source": src.uri, "dest": dst.uri, "config_name": "default",
        "config_hash": "5f0c2a9e71d3b8446a1e0f2c9d7b3a51",
        "model_version": "image-prior@1.0+kernel-prior@1.0",
        "counts": {"restored": len(restored), "skipped": 1, "quarantined": 2, "total": len(rows)},
        "means": {c: mean(c) for c in ("residual", "psnr", "ssim", "kernel_mse")},
        "report_key": f"reports/{run_id}/index.html",
    }
    return summary, rows


def publish_runs(root: Path) -> Path:
    """Two runs (older: 4 restored, newer: 7) written as the pipeline does: summary.json, then
    the HTML report. Returns the destination folder."""
    src = open_store(root / "inbox", durable=False)
    dst = open_store(root / "out", durable=False)
    for run_id, seed, n in ((RUN_OLD, 1, 4), (RUN_NEW, 2, N_RESTORED)):
        summary, rows = build_run(src, dst, run_id, seed=seed, n_restored=n)
        summary["status"] = "succeeded"
        write_frames_report(dst, run_id, rows)
        write_summary(dst, run_id, summary)
        write_reports(dst, run_id, summary, rows, store_images(src, dst))
    failed = {"run_id": RUN_FAILED, "status": "failed", "started_at": "2026-03-03T02:00:00Z",
              "finished_at": "2026-03-03T02:00:04Z", "source": src.uri, "dest": dst.uri,
              "config_name": "default", "counts": {"restored": 0, "skipped": 0, "quarantined": 0, "total": 0},
              "error": {"type": "StoreAccessError",
                        "message": "S3 ListObjectsV2 of s3://shop-frames/inbox failed with SlowDown "
                                   "(HTTP 503) after 5 attempt(s)"}}
    write_summary(dst, RUN_FAILED, failed)
    write_reports(dst, RUN_FAILED, failed, [], store_images(src, dst))
    return root / "out"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return publish_runs(tmp_path_factory.mktemp("runs"))


@contextmanager
def dashboard(dest: Path) -> Iterator[ReportsServer]:
    server, thread = start_dashboard(open_store(dest, read_only=True))
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    assert not thread.is_alive()


# ----------------------------------------------------------------------------- tests


def test_report_renders_in_chromium(chromium: str, published: Path, tmp_path: Path) -> None:
    with dashboard(published) as server:
        url = f"{server.url}{RUN_NEW}/"
        dom = dump_dom(chromium, url)
        index = dump_dom(chromium, server.url)
        shot = take_screenshot(url, tmp_path / "shot.png", binary=chromium)

    assert dom.body.get("data-ready") == "1", dom.body
    n_hists = 7  # residual, sharpness gain, kernel extent, PSNR, SSIM, kernel-MSE, kernel NCC
    assert int(dom.body["data-images-total"]) == 3 * N_RESTORED + n_hists
    assert dom.body["data-broken-images"] == "0", dom.body.get("data-broken-srcs")
    assert int(dom.body["data-images-loaded"]) == 3 * N_RESTORED + n_hists
    assert dom.rows["frames-table"] == N_RESTORED
    assert dom.rows["quarantine-table"] == 2 and dom.rows["skipped-table"] == 1
    assert "corrupt_image" in dom.text and "truncated_image" in dom.text
    assert "lane2/cam2/broken2.jpg" in dom.text and "lane3/cam1/cut2.png" in dom.text
    assert KERNEL_MSE_DEFINITION in dom.text and "no-reference proxies" in dom.text

    assert index.body.get("data-ready") == "1" and index.body["data-broken-images"] == "0"
    assert int(index.body["data-images-total"]) == 4  # restored, residual, kernel-MSE, PSNR trends
    assert index.rows["runs-table"] == 3
    assert index.text.index(RUN_FAILED) < index.text.index(RUN_NEW) < index.text.index(RUN_OLD)
    assert index.row_classes["runs-table"] == ["failed", "", ""]  # the failed night on top, in red
    assert "Latest run" in index.text and "SlowDown" in index.text

    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        pixels = np.asarray(im.convert("L"), dtype=np.float32)
    assert pixels.std() > 20  # a rendered page, not a blank one


def test_browser_check_detects_a_broken_image(chromium: str, published: Path, tmp_path: Path) -> None:
    """The load check can fail: drop one thumbnail from a copy of the store and the browser says so."""
    dest = Path(shutil.copytree(published, tmp_path / "out"))
    thumbs = sorted((dest / "reports" / RUN_NEW / "thumbs").glob("*-kernel.png"))
    thumbs[0].unlink()
    with dashboard(dest) as server:
        dom = dump_dom(chromium, f"{server.url}{RUN_NEW}/")
    assert dom.body["data-broken-images"] == "1"
    assert dom.body["data-broken-srcs"] == f"thumbs/{thumbs[0].name}"
    assert int(dom.body["data-images-loaded"]) == int(dom.body["data-images-total"]) - 1


def test_dashboard_screenshot_command(chromium: str, published: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``checkout-restore dashboard --dest D --screenshot PNG`` shoots the newest run and exits."""
    parser = argparse.ArgumentParser()
    add_dashboard_parser(parser.add_subparsers())
    out = tmp_path / "docs" / "report.png"
    args = parser.parse_args(["dashboard", "--dest", str(published), "--screenshot", str(out)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    with Image.open(out) as im:
        assert im.size == (1280, 1600)
        top = np.asarray(im.convert("L"))[:200]
    assert top.std() > 20  # the run's header was drawn


def test_chromium_failure_is_reported() -> None:
    with pytest.raises(RuntimeError, match="chromium exited"):
        headless_chromium("--dump-dom", "--definitely-not-a-flag", binary="/bin/false")


def _links_answer(server: ReportsServer, page_url: str, links: list[str]) -> list[str]:
    """Every link of a page fetched from the dashboard; returns those that do not answer 200."""
    import urllib.error
    import urllib.request
    from urllib.parse import urljoin

    bad = []
    for href in links:
        url = urljoin(page_url, href)
        assert url.startswith(server.url)  # nothing points off the dashboard
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                if resp.status != 200:
                    bad.append(f"{href}: {resp.status}")
        except urllib.error.HTTPError as exc:
            bad.append(f"{href}: {exc.code}")
    return bad


def test_full_size_side_by_side_failed_run_and_no_broken_links(chromium: str, published: Path) -> None:
    with dashboard(published) as server:
        run_url = f"{server.url}{RUN_NEW}/"
        run = dump_dom(chromium, run_url)
        frame_pages = sorted({h for h in run.links if h.startswith("frames/")})
        assert len(frame_pages) == N_RESTORED
        frame_url = run_url + frame_pages[0]
        frame = dump_dom(chromium, frame_url)
        index = dump_dom(chromium, server.url)
        failed = dump_dom(chromium, f"{server.url}{RUN_FAILED}/")
        assert _links_answer(server, run_url, run.links) == []
        assert _links_answer(server, frame_url, frame.links) == []
        assert _links_answer(server, server.url, index.links) == []
        assert _links_answer(server, f"{server.url}{RUN_FAILED}/", failed.links) == []

    # input, restored (full size, 320x240, served from the source and the destination) and kernel
    assert frame.body["data-broken-images"] == "0", frame.body.get("data-broken-srcs")
    sizes = frame.body["data-natural-sizes"].split()
    assert sizes[:2] == ["320x240", "320x240"] and len(sizes) == 3
    assert "input (before)" in frame.text and "restored (after)" in frame.text
    assert failed.body["data-ready"] == "1" and "Run FAILED" in failed.text and "SlowDown" in failed.text
