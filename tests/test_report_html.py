"""HTML run reports, the all-runs index, and the dashboard server (no browser; see test_browser.py)."""

from __future__ import annotations

import argparse
import http.client
import io
import json
import math
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from flows.cli.dashboard import add_dashboard_parser
from flows.reports.dashboard import (
    ReportsServer,
    content_type,
    key_for_path,
    start_dashboard,
)
from flows.reports.html import (
    KERNEL_MSE_DEFINITION,
    NO_REFERENCE_NOTE,
    render_index,
    render_run_report,
    store_images,
    write_reports,
)
from flows.reports.images import THUMB_SIZE, make_thumbnail
from storage.errors import InvalidKeyError, ObjectNotFoundError
from storage.stores import open_store

RUN_A = "20260101T120000Z-aaaaaa"
RUN_B = "20260102T080000Z-bbbbbb"
NAN = float("nan")


# ----------------------------------------------------------------------------- fixtures


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def _frame(seed: int, h: int = 120, w: int = 200) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _kernel_png() -> bytes:
    k = np.zeros((15, 15), np.uint8)
    k[7, 3:12] = 255
    k[6, 9] = 100
    return _png(k)


def _row(key: str, status: str, *, residual: float = NAN, psnr: float = NAN, reason: str = "",
         with_outputs: bool = True) -> dict[str, object]:
    fid = key.rsplit(".", 1)[0]
    return {
        "key": key, "id": fid, "status": status, "reason": reason,
        "psnr": psnr, "ssim": NAN if math.isnan(psnr) else 0.8,
        "kernel_mse": NAN if math.isnan(psnr) else 1e-4, "kernel_ncc": NAN if math.isnan(psnr) else 0.7,
        "residual": residual, "sharpness_gain": 1.4, "kernel_extent": 5.0, "seconds": 1.5,
        "width": 200, "height": 120,
        "restored_key": f"restored/{fid}.png" if with_outputs else "",
        "kernel_key": f"kernels/{fid}.npy" if with_outputs else "",
        "kernel_png_key": f"kernels/{fid}.png" if with_outputs else "",
    }


def _summary(run_id: str, rows: list[dict[str, object]], **extra: object) -> dict[str, object]:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("restored", "skipped", "quarantined")}
    restored = [r for r in rows if r["status"] == "restored"]

    def mean(col: str) -> float | None:
        vals = [float(r[col]) for r in restored if not math.isnan(float(r[col]))]
        return float(np.mean(vals)) if vals else None

    return {
        "run_id": run_id, "started_at": f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}T{run_id[9:11]}:00:00Z",
        "finished_at": f"{run_id[:4]}-{run_id[4:6]}-{run_id[6:8]}T{run_id[9:11]}:02:30Z",
        "source": "file:///src", "dest": "file:///dst", "config_name": "smoke",
        "config_hash": "feedbeef" * 4, "model_version": "image@v1+kernel@v1",
        "counts": counts | {"total": len(rows)},
        "means": {c: mean(c) for c in ("residual", "psnr", "ssim", "kernel_mse")},
        "report_key": f"reports/{run_id}/index.html",
    } | extra


class _Images:
    """An in-memory ImageReader that records its calls."""

    def __init__(self, rows: list[dict[str, object]]) -> None:
        self.data: dict[tuple[str, str], bytes] = {}
        self.calls: list[tuple[str, str]] = []
        for i, r in enumerate(rows):
            self.data[("input", str(r["key"]))] = _jpeg(_frame(i))
            if r["restored_key"]:
                self.data[("restored", str(r["restored_key"]))] = _png(_frame(100 + i))
                self.data[("kernel", str(r["kernel_png_key"]))] = _kernel_png()

    def __call__(self, role: str, key: str) -> bytes | None:
        self.calls.append((role, key))
        return self.data.get((role, key))


class _Page(HTMLParser):
    """Collects table rows (cell texts per tbody row, by table id), img srcs, and text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.text: list[str] = []
        self._table: str | None = None
        self._tbody = False
        self._cell: list[str] | None = None
        self._sub = False
        self.sub_texts: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        elif tag == "tbody":
            self._tbody = True
        elif tag == "tr" and self._tbody and self._table is not None:
            self.tables[self._table].append([])
        elif tag == "td" and self._tbody and self._table is not None:
            self._cell = []
        elif tag == "span" and a.get("class") == "sub":
            self._sub = True  # the size line under a frame key: not part of the key
        elif tag == "img":
            self.imgs.append(a["src"] or "")
            if self._cell is not None:
                self._cell.append("[img]")
        elif tag == "a":
            self.links.append(a.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._sub = False
        if tag == "td" and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tbody":
            self._tbody = False
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._sub:
            self.sub_texts.append(data)
        elif self._cell is not None:
            self._cell.append(data)


def _page(files: dict[str, bytes]) -> _Page:
    return _Page(files["index.html"].decode("utf-8"))


def _mixed_rows() -> list[dict[str, object]]:
    return [
        _row("lane1/a.jpg", "restored", residual=1.2),
        _row("lane1/b.jpg", "restored", residual=3.5),
        _row("lane2/c.jpg", "restored", residual=0.9),
        _row("lane2/d.jpg", "restored", residual=NAN),
        _row("old.jpg", "skipped", reason="already_restored", with_outputs=False),
        _row("broken.jpg", "quarantined", reason="truncated_image", with_outputs=False),
        _row("zero.png", "quarantined", reason="empty_file", with_outputs=False),
    ]


# ----------------------------------------------------------------------------- run report


def test_run_report_structure_and_worst_first_by_residual() -> None:
    rows = _mixed_rows()
    images = _Images(rows)
    files = render_run_report(_summary(RUN_A, rows), rows, images)
    page = _page(files)

    frames = page.tables["frames-table"]
    assert [r[1] for r in frames] == ["lane1/b.jpg", "lane1/a.jpg", "lane2/c.jpg", "lane2/d.jpg"]
    assert all(r[2:5] == ["[img]", "[img]", "[img]"] for r in frames)
    # without truth the truth-based columns are left out, not shown empty
    assert len(frames[0]) == 5 + 3 + 1
    assert page.sub_texts == ["200×120 px"] * 4
    # quarantine list grouped by reason
    assert [r[:2] for r in page.tables["quarantine-table"]] == [["zero.png", "empty_file"],
                                                              ["broken.jpg", "truncated_image"]]
    assert all(len(r) == 3 for r in page.tables["quarantine-table"])  # + detail: on the page, not only in CSV
    assert [r[:2] for r in page.tables["skipped-table"]] == [["old.jpg", "already_restored"]]

    # every image the page shows is one of the returned files, and each is a decodable PNG
    assert len(page.imgs) == 4 * 3 + 3  # thumbnails + residual/sharpness/extent histograms
    for src in page.imgs:
        assert src in files, src
        with Image.open(io.BytesIO(files[src])) as im:
            assert im.format == "PNG" and im.size[0] > 0
    assert {n for n in files if n.startswith("hist_")} == {
        "hist_residual.png", "hist_sharpness_gain.png", "hist_kernel_extent.png"}
    # thumbnails are fetched only for restored rows, once per image
    assert sorted(images.calls) == sorted(set(images.calls))
    assert {k for _, k in images.calls} >= {"lane1/a.jpg", "restored/lane1/a.png", "kernels/lane1/a.png"}
    assert "old.jpg" not in {k for _, k in images.calls}

    text = " ".join(page.text)
    assert KERNEL_MSE_DEFINITION in text and NO_REFERENCE_NOTE in text
    assert "smoke" in text and "image@v1+kernel@v1" in text and "feedbeef" in text
    assert "2.5 min" in text  # duration from started_at / finished_at
    counts = re.findall(r'id="count-(\w+)"><div class="n">(\d+)<', files["index.html"].decode())
    assert dict(counts) == {"restored": "4", "skipped": "1", "quarantined": "2", "total": "7"}


def test_worst_first_by_psnr_when_every_frame_has_truth() -> None:
    rows = [_row(f"f{i}.png", "restored", residual=r, psnr=p)
            for i, (r, p) in enumerate([(5.0, 30.0), (1.0, 18.5), (2.0, 25.0)])]
    files = render_run_report(_summary(RUN_A, rows), rows, _Images(rows))
    page = _page(files)
    assert [r[1] for r in page.tables["frames-table"]] == ["f1.png", "f2.png", "f0.png"]
    assert "lowest PSNR" in " ".join(page.text)
    assert {"hist_psnr.png", "hist_ssim.png", "hist_kernel_mse.png", "hist_kernel_ncc.png"} <= set(files)
    assert len(page.tables["frames-table"][0]) == 5 + 7 + 1  # all seven metric columns
    assert page.tables["frames-table"][0][5 + 3] == "18.50"


def test_missing_or_corrupt_images_show_no_preview_not_broken_links() -> None:
    rows = [_row("a.jpg", "restored", residual=1.0), _row("b.jpg", "restored", residual=2.0)]
    images = _Images(rows)
    images.data[("input", "a.jpg")] = b"\xff\xd8\xff not really a jpeg"
    del images.data[("restored", "restored/b.png")]

    def reader(role: str, key: str) -> bytes | None:
        if role == "kernel" and key == "kernels/a.png":
            raise ObjectNotFoundError("file:///dst", key)  # a reader may raise storage errors too
        return images(role, key)

    files = render_run_report(_summary(RUN_A, rows), rows, reader)
    page = _page(files)
    assert all(src in files for src in page.imgs)
    cells = {r[1]: r[2:5] for r in page.tables["frames-table"]}
    assert cells["a.jpg"] == ["no preview", "[img]", "no preview"]
    assert cells["b.jpg"] == ["[img]", "no preview", "[img]"]


def test_html_escaping_of_keys_and_reasons() -> None:
    rows = [_row("<script>alert(1)</script>.jpg", "quarantined", reason="bad \"<b>\"", with_outputs=False),
            _row("ok&co.jpg", "restored", residual=1.0)]
    html = render_run_report(_summary(RUN_A, rows, config_name="<i>x</i>"), rows, _Images(rows))["index.html"]
    text = html.decode()
    assert "<script>alert" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in text
    assert "<b>" not in text and "<i>x</i>" not in text and "ok&amp;co.jpg" in text
    page = _Page(text)
    assert [r[:2] for r in page.tables["quarantine-table"]] == [["<script>alert(1)</script>.jpg",
                                                              'bad "<b>"']]


def test_caps_on_table_sizes_and_no_restored_frames() -> None:
    rows = [_row(f"f{i:02d}.png", "restored", residual=float(i)) for i in range(5)]
    rows += [_row(f"q{i}.png", "quarantined", reason="corrupt_image", with_outputs=False) for i in range(4)]
    files = render_run_report(_summary(RUN_A, rows), rows, _Images(rows), max_frames=2, max_list=3)
    page = _page(files)
    assert [r[1] for r in page.tables["frames-table"]] == ["f04.png", "f03.png"]
    assert len(page.tables["quarantine-table"]) == 3
    text = " ".join(page.text)
    assert "Showing 2 of 5" in text and "Showing 3 of 4" in text
    assert len([n for n in files if n.startswith("thumbs/")]) == 2 * 3

    only_skipped = [_row("s.png", "skipped", reason="already_restored")]
    page = _page(render_run_report(_summary(RUN_B, only_skipped), only_skipped, _Images(only_skipped)))
    assert "frames-table" not in page.tables and "No frame was restored" in " ".join(page.text)


def test_bad_rows_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        render_run_report(_summary(RUN_A, []), [{"key": "a.png", "status": "done"}], _Images([]))
    with pytest.raises(ValueError, match="max_frames"):
        render_run_report(_summary(RUN_A, []), [], _Images([]), max_frames=-1)


def test_parquet_rows_with_none_and_numpy_values_render() -> None:
    rows = _mixed_rows()
    frame = pd.DataFrame(rows)
    frame.loc[0, "residual"] = None  # parquet gives None/NaN for missing values
    records = frame.to_dict(orient="records")
    files = render_run_report(_summary(RUN_A, rows), records, _Images(rows))
    keys = [r[1] for r in _page(files).tables["frames-table"]]
    assert keys == ["lane1/b.jpg", "lane2/c.jpg", "lane1/a.jpg", "lane2/d.jpg"]


# ----------------------------------------------------------------------------- thumbnails


def test_thumbnails() -> None:
    big = _jpeg(_frame(1, 600, 900))
    with Image.open(io.BytesIO(make_thumbnail(big) or b"")) as im:
        assert im.format == "PNG" and max(im.size) == THUMB_SIZE and im.size[0] > im.size[1]
    k = np.zeros((15, 15), np.uint8)
    k[7, 3:12] = 255
    with Image.open(io.BytesIO(make_thumbnail(_png(k), kernel=True) or b"")) as im:
        arr = np.asarray(im)
    assert arr.shape == (60, 60)  # 15 px * 4, nearest-neighbour: pixels stay crisp
    np.testing.assert_array_equal(arr[::4, ::4], k)
    assert make_thumbnail(b"") is None
    assert make_thumbnail(b"\x89PNG\r\n\x1a\n" + b"\0" * 40) is None
    assert make_thumbnail(_png(k)[:-30]) is None  # truncated


# ----------------------------------------------------------------------------- index


def test_index_newest_first_with_trends() -> None:
    rows_a = [_row("a.png", "restored", residual=1.5)]
    rows_b = [_row("b.png", "restored", residual=1.1, psnr=24.0),
              _row("c.png", "restored", residual=1.3, psnr=26.0)]
    rows_c = [_row("b.png", "skipped")]
    run_c = "20260103T000000Z-cccccc"
    summaries = [_summary(RUN_B, rows_b), _summary(run_c, rows_c), _summary(RUN_A, rows_a),
                 {"run_id": "not-a-run"}]
    files = render_index(summaries)
    page = _page(files)
    runs = page.tables["runs-table"]
    assert [r[0] for r in runs] == [run_c, RUN_B, RUN_A]
    assert [r[1] for r in runs] == ["succeeded"] * 3  # no status in these summaries: shown as succeeded
    assert [r[5] for r in runs] == ["0", "2", "1"]
    assert runs[1][9] == "25.00" and runs[2][9] == "—"
    links = [h for h in page.links if h.endswith("index.html")]
    assert links == [f"{r}/index.html" for r in (run_c, RUN_B, RUN_A)]
    assert set(page.imgs) == {f"trend_{m}.png" for m in ("restored", "residual", "psnr", "kernel_mse")}
    assert set(files) == {"index.html", *page.imgs}

    without_truth = render_index([_summary(RUN_A, rows_a)])
    assert set(without_truth) == {"index.html", "trend_restored.png", "trend_residual.png"}
    assert "No run had ground truth yet" in without_truth["index.html"].decode()
    assert "No runs yet" in render_index([])["index.html"].decode()


# ----------------------------------------------------------------------------- storage round trip


class _RecordingStore:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.puts: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, metadata=None) -> None:  # type: ignore[no-untyped-def]
        self.puts.append(key)
        self.inner.put(key, data, metadata)


def _stores(tmp_path: Path):  # type: ignore[no-untyped-def]
    return open_store(tmp_path / "src", durable=False), open_store(tmp_path / "dst", durable=False)


def _fill(src, dst, rows: list[dict[str, object]]) -> None:  # type: ignore[no-untyped-def]
    images = _Images(rows)
    for (role, key), data in images.data.items():
        (src if role == "input" else dst).put(key, data)


def test_write_reports_puts_files_and_refreshes_index(tmp_path: Path) -> None:
    src, dst = _stores(tmp_path)
    rows_a = _mixed_rows()
    _fill(src, dst, rows_a)
    summary_a = _summary(RUN_A, rows_a)
    dst.put(f"reports/{RUN_A}/summary.json", json.dumps(summary_a).encode())
    recording = _RecordingStore(dst)
    key = write_reports(recording, RUN_A, summary_a, rows_a, store_images(src, dst))
    assert key == f"reports/{RUN_A}/index.html"
    run_puts = [k for k in recording.puts if k.startswith(f"reports/{RUN_A}/")]
    frame_pages = [k for k in run_puts if "/frames/" in k]
    assert run_puts[-1] == key and len(frame_pages) == 4 and len(run_puts) == 1 + 4 * 3 + 3 + 4
    assert recording.puts[-1] == "reports/index.html"
    page = _Page(dst.get(key).decode())
    assert all(dst.exists(f"reports/{RUN_A}/{src_}") for src_ in page.imgs)
    assert page.tables["frames-table"][0][1] == "lane1/b.jpg"

    # a second run: its summary.json is not stored yet, the index still lists it (and run A)
    rows_b = [_row("new.png", "restored", residual=1.0)]
    _fill(src, dst, rows_b)
    write_reports(dst, RUN_B, _summary(RUN_B, rows_b), rows_b, store_images(src, dst))
    index = _Page(dst.get("reports/index.html").decode())
    assert [r[0] for r in index.tables["runs-table"]] == [RUN_B, RUN_A]
    assert all(dst.exists(f"reports/{s}") for s in index.imgs)

    with pytest.raises(InvalidKeyError):
        write_reports(dst, "../evil", summary_a | {"run_id": "../evil"}, rows_a, store_images(src, dst))
    with pytest.raises(ValueError, match="run_id"):
        write_reports(dst, RUN_B, summary_a, rows_a, store_images(src, dst))


def test_store_images_reads_inputs_from_source_and_outputs_from_dest(tmp_path: Path) -> None:
    src, dst = _stores(tmp_path)
    src.put("restored/x.png", b"source bytes")  # same key in both stores: the role decides
    dst.put("restored/x.png", b"dest bytes")
    read = store_images(src, dst)
    assert read("input", "restored/x.png") == b"source bytes"
    assert read("restored", "restored/x.png") == b"dest bytes"
    assert read("kernel", "kernels/missing.png") is None
    assert read("input", "../escape.png") is None
    with pytest.raises(ValueError, match="role"):
        read("thumbnail", "restored/x.png")


# ----------------------------------------------------------------------------- dashboard


def test_key_for_path_and_content_types() -> None:
    assert key_for_path("/") == "reports/index.html"
    assert key_for_path(f"/{RUN_A}/") == f"reports/{RUN_A}/index.html"
    assert key_for_path(f"/{RUN_A}/thumbs/x.png?v=1#top") == f"reports/{RUN_A}/thumbs/x.png"
    assert key_for_path("/caf%C3%A9.png") == "reports/café.png"
    for bad in ("/../ledger/a.json", "/%2e%2e/restored/a.png", "/a/../../x", "//etc/passwd", "/a%5Cb",
                "/a%00b", "x.png", "/a//b"):
        with pytest.raises(InvalidKeyError):
            key_for_path(bad)
    with pytest.raises(UnicodeDecodeError):
        key_for_path("/%ff.png")
    assert content_type("reports/index.html") == "text/html; charset=utf-8"
    assert content_type("reports/r/thumbs/a.png") == "image/png"
    assert content_type("reports/r/frames.csv") == "text/csv; charset=utf-8"
    assert content_type("reports/r/summary.json") == "application/json"
    assert content_type("reports/r/frames.parquet") == "application/vnd.apache.parquet"
    assert content_type("reports/r.d/noext") == "application/octet-stream"


def _get(server: ReportsServer, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ReportsServer, object]]:
    src, dst = _stores(tmp_path)
    rows = _mixed_rows()
    _fill(src, dst, rows)
    write_reports(dst, RUN_A, _summary(RUN_A, rows), rows, store_images(src, dst))
    (tmp_path / "secret.txt").write_text("outside the store")
    server, thread = start_dashboard(open_store(tmp_path / "dst", read_only=True))
    yield server, dst
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_dashboard_serves_reports_only(served: tuple[ReportsServer, object]) -> None:
    server, dst = served
    assert server.server_address[0] == "127.0.0.1" and server.url.startswith("http://127.0.0.1:")
    status, headers, body = _get(server, "/")
    assert status == 200 and headers["content-type"] == "text/html; charset=utf-8"
    assert body == dst.get("reports/index.html")  # type: ignore[attr-defined]
    status, headers, body = _get(server, f"/{RUN_A}/")
    assert status == 200 and b"frames-table" in body
    thumb = next(s for s in _Page(body.decode()).imgs if s.startswith("thumbs/"))
    status, headers, png = _get(server, f"/{RUN_A}/{thumb}")
    assert status == 200 and headers["content-type"] == "image/png" and png.startswith(b"\x89PNG")
    assert headers["content-length"] == str(len(png)) and headers["x-content-type-options"] == "nosniff"
    status, headers, body = _get(server, f"/{RUN_A}/{thumb}", method="HEAD")
    assert status == 200 and body == b"" and headers["content-length"] == str(len(png))
    status, headers, _ = _get(server, f"/{RUN_A}")
    assert status == 301 and headers["location"] == f"/{RUN_A}/"

    assert _get(server, f"/{RUN_A}/nope.png")[0] == 404
    for bad in ("/../secret.txt", "/../../secret.txt", "/%2e%2e/secret.txt", "/..%2fsecret.txt",
                "/a%5c..%5c..%5csecret.txt", "/%ff"):
        status, _, body = _get(server, bad)
        assert status == 400, (bad, status)
        assert b"outside the store" not in body
    # reports/.crs-meta/x.json is an ordinary (missing) key: the store's metadata is at its root
    assert _get(server, "/.crs-meta/x.json")[0] == 404
    # http.server folds a leading "//" to "/": reports/secret.txt, which does not exist
    assert _get(server, "//secret.txt")[0] == 404
    # outputs are served read-only (full-size "after"); the ledger is not
    status, headers, png = _get(server, "/restored/lane1/a.png")
    assert status == 200 and png == dst.get("restored/lane1/a.png")  # type: ignore[attr-defined]
    dst.put("ledger/lane1/a.json", b"{}")  # type: ignore[attr-defined]
    assert _get(server, "/ledger/lane1/a.json")[0] == 404
    assert _get(server, "/", method="POST")[0] == 501


def test_dashboard_proxies_s3(tmp_path: Path, s3_bucket: str) -> None:
    src = open_store(tmp_path / "src", durable=False)
    dst = open_store(f"s3://{s3_bucket}/out")
    rows = _mixed_rows()
    _fill(src, dst, rows)
    write_reports(dst, RUN_A, _summary(RUN_A, rows), rows, store_images(src, dst))
    dst.put("restored/lane1/x.png", _png(_frame(0)))
    server, thread = start_dashboard(open_store(f"s3://{s3_bucket}/out", read_only=True))
    try:
        status, headers, body = _get(server, f"/{RUN_A}/index.html")
        assert status == 200 and headers["content-type"].startswith("text/html")
        srcs = _Page(body.decode()).imgs
        assert len(srcs) == 4 * 3 + 3
        for s in srcs:
            status, headers, png = _get(server, f"/{RUN_A}/{s}")
            assert (status, headers["content-type"]) == (200, "image/png") and png.startswith(b"\x89PNG")
            assert png == dst.get(f"reports/{RUN_A}/{s}")
        status, _, body = _get(server, "/")
        assert status == 200 and RUN_A.encode() in body
        assert _get(server, "/../restored/lane1/x.png")[0] == 400
        status, _, png = _get(server, "/restored/lane1/x.png")
        assert status == 200 and png == dst.get("restored/lane1/x.png")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_dashboard_parser() -> None:
    parser = argparse.ArgumentParser(prog="checkout-restore")
    add_dashboard_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dashboard", "--dest", "s3://b/p", "--port", "9000"])
    assert (args.command, args.dest, args.port) == ("dashboard", "s3://b/p", 9000)
    assert args.func.__name__ == "dashboard_main"
    assert parser.parse_args(["dashboard", "--dest", "out"]).port == 8765
    with pytest.raises(SystemExit):
        parser.parse_args(["dashboard"])
    with pytest.raises(ValueError, match="port"):
        ReportsServer(object(), 70000)  # type: ignore[arg-type]
