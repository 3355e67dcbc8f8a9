"""Reports that answer "did it help?" and an index that scales: failed runs in red on top,
before/after metrics, a full-size side-by-side page per frame, fields other parts add shown
generically, pagination, trends without skip-only runs, one index read per run, retention."""

from __future__ import annotations

import json
import re
from pathlib import Path

from test_report_html import _Images, _mixed_rows, _Page, _row, _summary

from flows.reports.html import (
    frame_page_name,
    full_size_href,
    render_index,
    render_run_report,
    store_images,
    write_reports,
)
from storage.reports import RUN_INDEX_KEY, list_runs, load_run_index, prune_runs, write_summary
from storage.stores import open_store


def _run_id(day: int, hour: int = 2) -> str:
    return f"202603{day:02d}T{hour:02d}0000Z-{day:02d}{hour:02d}aa"


def test_failed_run_page_and_index_show_the_failure_in_red_on_top() -> None:
    ok = _summary(_run_id(1), [_row("a.png", "restored", residual=1.2)]) | {"status": "succeeded"}
    failed = {"run_id": _run_id(2), "status": "failed", "started_at": "2026-03-02T02:00:00Z",
              "finished_at": "2026-03-02T02:00:03Z", "config_name": "default",
              "error": {"type": "StoreAccessError", "message": "S3 ListObjectsV2 of s3://shop failed <x>"},
              "counts": {"restored": 0, "skipped": 0, "quarantined": 0, "total": 0}}
    index = render_index([ok, failed])["index.html"].decode()
    page = _Page(index)
    assert [r[0] for r in page.tables["runs-table"]] == [_run_id(2), _run_id(1)]
    assert [r[1] for r in page.tables["runs-table"]] == ["failed", "succeeded"]
    assert '<tr class="failed" data-status="failed">' in index
    banner = re.search(r'<div class="banner failed" id="latest-failed">(.*?)</div>', index)
    assert banner and "StoreAccessError" in banner.group(1) and "&lt;x&gt;" in banner.group(1)
    run_page = render_run_report(failed, [], _Images([]))["index.html"].decode()
    assert 'data-status="failed"' in run_page and "Run FAILED" in run_page and "&lt;x&gt;" in run_page
    # a newer good run: the failure stays a red row, the banner goes
    newer = _summary(_run_id(3), [_row("a.png", "restored", residual=1.0)]) | {"status": "succeeded"}
    index = render_index([ok, failed, newer])["index.html"].decode()
    assert "latest-failed" not in index and index.count('class="failed"') == 1


def test_before_after_table_and_generic_fields() -> None:
    rows = [
        _row("a.png", "restored", residual=1.1, psnr=26.0)
        | {"psnr_in": 22.0, "ssim_in": 0.6, "codes_in": 0, "codes_out": 1, "kstrat_score": 0.25},
        _row("b.png", "restored", residual=1.3, psnr=24.0)
        | {"psnr_in": 21.0, "ssim_in": 0.5, "codes_in": 1, "codes_out": 1, "kstrat_score": 0.5},
    ]
    files = render_run_report(_summary(_run_id(1), rows), rows, _Images(rows))
    page = _Page(files["index.html"].decode())
    table = {r[0]: r[1:] for r in page.tables["before-after"]}
    assert table["PSNR (dB)"][:3] == ["21.50", "25.00", "+3.5"]
    assert table["codes"][:2] == ["0.5", "1"] and "total 1 → 2" in table["codes"][2]
    assert table["sharpness (after ÷ before)"][1] == "1.40"
    html_text = files["index.html"].decode()
    assert '<td class="num better">+3.5</td>' in html_text  # PSNR went up: green
    worse = [_row("a.png", "restored", residual=1.1, psnr=20.0) | {"psnr_in": 22.0}]
    page_worse = render_run_report(_summary(_run_id(1), worse), worse, _Images(worse))["index.html"].decode()
    assert '<td class="num worse">-2</td>' in page_worse  # restoration made it worse: red
    head = files["index.html"].decode().split('id="frames-table"')[1].split("</thead>")[0]
    for column in ("codes_in", "codes_out", "kstrat_score", "input PSNR"):
        assert column in head  # fields other parts add are shown without code changes here
    frame = files[frame_page_name("a.png")].decode()
    assert "kstrat_score" in frame and "codes_out" in frame


def test_frame_page_links_full_size_input_output_mask_and_kernel() -> None:
    rows = _mixed_rows()
    images = _Images(rows)
    images.data[("input", "lane1/a.mask.png")] = images.data[("input", "lane1/a.jpg")]
    files = render_run_report(_summary(_run_id(1), rows), rows, images)
    page = files[frame_page_name("lane1/a.jpg")].decode()
    srcs = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert srcs == ["../input/lane1/a.jpg", "../../../restored/lane1/a.png", "../input/lane1/a.mask.png",
                    "../../../kernels/lane1/a.png"]
    assert full_size_href("restored", "restored/x y.png", 1) == "../../restored/x%20y.png"
    run = files["index.html"].decode()
    assert f'href="{frame_page_name("lane1/a.jpg")}"' in run  # thumbnails click through
    no_mask = files[frame_page_name("lane1/b.jpg")].decode()
    assert "mask" not in re.findall(r"<figcaption>(.*?)</figcaption>", no_mask)[-1]


def test_index_pages_and_trends_skip_skip_only_runs() -> None:
    summaries = []
    for day in range(1, 8):
        rows = [_row("a.png", "restored", residual=1.0 + day / 10)] if day % 2 else [_row("a.png", "skipped")]
        summaries.append(_summary(_run_id(day), rows) | {"status": "succeeded"})
    files = render_index(summaries, page_size=3)
    assert {n for n in files if n.startswith("index")} == {"index.html", "index-2.html", "index-3.html"}
    first, second, third = (_Page(files[n].decode()) for n in ("index.html", "index-2.html", "index-3.html"))
    assert [r[0] for r in first.tables["runs-table"]] == [_run_id(7), _run_id(6), _run_id(5)]
    assert [r[0] for r in third.tables["runs-table"]] == [_run_id(1)]
    assert 'href="index-2.html"' in files["index.html"].decode()
    assert 'href="index.html"' in files["index-2.html"].decode() and 'href="index-3.html"' in files[
        "index-2.html"].decode()
    assert second.imgs == [] and first.imgs  # trends on the first page only
    # trend_restored plots only the 4 runs that restored something: skip-only runs are not "0 restored"
    from PIL import Image

    assert "trend_restored.png" in files
    import io

    with Image.open(io.BytesIO(files["trend_restored.png"])) as im:
        assert im.size[0] > 0
    from flows.reports import index_page as report_html

    captured: list[list[float]] = []
    original = report_html.trend
    report_html.trend = lambda points, *a, **k: captured.append([v for _, v in points]) or b""  # type: ignore[assignment]
    try:
        render_index(summaries)
    finally:
        report_html.trend = original
    assert captured[0] == [1.0, 1.0, 1.0, 1.0]  # restored counts of the 4 runs that restored


class _CountingStore:
    def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
        self.inner = inner
        self.gets: list[str] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.inner, name)

    def get(self, key: str, max_bytes: int | None = None) -> bytes:
        self.gets.append(key)
        return self.inner.get(key, max_bytes)


def test_index_reads_one_file_not_every_summary_and_retention_prunes(tmp_path: Path) -> None:
    src, dst = open_store(tmp_path / "src", durable=False), open_store(tmp_path / "dst", durable=False)
    for day in range(1, 6):
        rows = [_row(f"f{day}.png", "restored", residual=1.0, with_outputs=False)]
        summary = _summary(_run_id(day), rows) | {"status": "succeeded"}
        write_summary(dst, _run_id(day), summary)
        counting = _CountingStore(dst)
        write_reports(counting, _run_id(day), summary, rows, store_images(src, dst))  # type: ignore[arg-type]
        if day > 1:  # the first run builds runs.json (from the summaries there are); then one read
            assert [k for k in counting.gets if k.endswith("summary.json")] == []
        assert counting.gets.count(RUN_INDEX_KEY) == 1
    assert [s["run_id"] for s in load_run_index(dst)] == [_run_id(d) for d in range(5, 0, -1)]

    removed = prune_runs(dst, 2, keep={_run_id(1)})
    assert removed == [_run_id(2), _run_id(3)]
    assert list_runs(dst) == [_run_id(1), _run_id(4), _run_id(5)]
    assert not (tmp_path / "dst" / "reports" / _run_id(2)).exists()  # folder gone, not left empty
    assert {s["run_id"] for s in json.loads(dst.get(RUN_INDEX_KEY))} == {_run_id(1), _run_id(4), _run_id(5)}

    # an older destination without runs.json: rebuilt once from the summaries
    (tmp_path / "dst" / RUN_INDEX_KEY).unlink()
    assert [s["run_id"] for s in load_run_index(dst)] == [_run_id(5), _run_id(4), _run_id(1)]
