"""Sidecar discovery, kernel files, the idempotency ledger and the report
writers — each on both backends where a store is involved."""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import boto3
import numpy as np
import pandas as pd
import pytest

from flows.pipeline.tasks import find_frames, plan_run
from storage.errors import InvalidKeyError, KernelFileError, LedgerError
from storage.images import encode_png, kernel_png
from storage.keys import ledger_key, output_keys, report_key
from storage.ledger import output_metadata, read_ledger, record_done
from storage.reports import (
    list_runs,
    load_frames_report,
    load_summaries,
    new_run_id,
    run_started_at,
    write_frames_report,
    write_summary,
)
from storage.s3 import S3Store
from storage.sidecars import FrameRef, classify, discover, load_kernel, save_kernel

SOURCE_KEYS = [
    "lane3/cam1/f001.jpg",
    "lane3/cam1/f001.mask.png",
    "lane3/cam1/f001.sharp.png",
    "lane3/cam1/f001.kernel.npy",
    "lane3/cam1/f002.PNG",
    "lane3/cam1/f002.mask.png",
    "a.b.png",  # id "a.b"
    "a.mask.jpg",  # a frame with id "a.mask" (sidecars are .mask.png only)
    "a.mask.png",  # the mask of "a"
    "a.png",
    "orphan.mask.png",  # no frame: ignored
    "notes.txt",
    "x.jpg",
    "x.png",  # same id as x.jpg
]


def expected_refs() -> set[FrameRef]:
    d = "lane3/cam1/"
    return {
        FrameRef(
            f"{d}f001.jpg",
            f"{d}f001",
            mask_key=f"{d}f001.mask.png",
            sharp_key=f"{d}f001.sharp.png",
            kernel_key=f"{d}f001.kernel.npy",
        ),
        FrameRef(f"{d}f002.PNG", f"{d}f002", mask_key=f"{d}f002.mask.png"),
        FrameRef("a.b.png", "a.b"),
        FrameRef("a.mask.jpg", "a.mask"),
        FrameRef("a.png", "a", mask_key="a.mask.png"),
        FrameRef("x.jpg", "x", duplicates=("x.png",)),
    }


def fill(store: Any, keys: list[str]) -> None:
    for key in keys:
        store.put(key, f"content of {key}".encode())


# ---------------------------------------------------------------- discovery


def test_discover_pairs_sidecars(make_store: Any) -> None:
    store = make_store("src", page_size=2)
    fill(store, SOURCE_KEYS)
    refs = list(discover(store))
    assert set(refs) == expected_refs()
    assert len(refs) == len(expected_refs())
    sidecars = {k for k in SOURCE_KEYS if classify(k) and classify(k)[0] != "frame"}
    assert not sidecars & {r.key for r in refs}
    assert refs == list(discover(store))  # deterministic order
    sub = list(discover(store, "lane3/"))
    assert [r.id for r in sub] == ["lane3/cam1/f001", "lane3/cam1/f002"]  # ids keep folders


def test_classify() -> None:
    assert classify("lane3/cam1/f001.jpg") == ("frame", "lane3/cam1/f001")
    assert classify("F.JPEG") == ("frame", "F")
    assert classify("f.webp") == ("frame", "f")
    assert classify("f.MASK.PNG") == ("mask", "f")
    assert classify("f.kernel.npy") == ("kernel", "f")
    assert classify("f.sharp.png") == ("sharp", "f")
    assert classify("dir/.png") is None and classify("dir/.mask.png") is None
    assert classify("f.tif") is None and classify("f.npy") is None


def test_discover_streams_and_reports_invalid_keys(s3_bucket: str) -> None:
    from storage.stores import open_store

    store = open_store(f"s3://{s3_bucket}/src", page_size=2)
    fill(store, [f"f{i:02d}.png" for i in range(10)])
    raw = boto3.client("s3")
    raw.put_object(Bucket=s3_bucket, Key="src/bad//key.png", Body=b"x")
    raw.put_object(Bucket=s3_bucket, Key="src/a/../b.png", Body=b"x")
    calls = {"n": 0}
    store.client.meta.events.register(
        "before-call.s3.ListObjectsV2", lambda **_: calls.__setitem__("n", calls["n"] + 1)
    )
    seen: list[tuple[str, str]] = []
    it = discover(store, on_invalid=lambda key, problem: seen.append((key, problem)))
    assert next(it).id in ("f00", "f01")
    assert calls["n"] <= 2  # the first frame comes out before the listing is finished
    rest = list(it)
    assert len(rest) == 9
    assert sorted(k for k, _ in seen) == ["a/../b.png", "bad//key.png"]


# ---------------------------------------------------------------- kernel files


def test_kernel_roundtrip_and_normalisation() -> None:
    k = np.random.default_rng(1).random((9, 7))
    k /= k.sum()
    out = load_kernel(save_kernel(k))
    assert out.dtype == np.float32 and out.shape == (9, 7)
    assert abs(float(out.sum(dtype=np.float64)) - 1) < 1e-6
    np.testing.assert_allclose(out, k, rtol=1e-5)
    as64 = io.BytesIO()
    np.save(as64, k.astype(np.float64))
    np.testing.assert_allclose(load_kernel(as64.getvalue()), k, rtol=1e-6)


def npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a valid .npy"),
        (b"not an npy file at all", "not a valid .npy"),
        (npy_bytes(np.array([{"a": 1}], dtype=object), allow_pickle=True), "floating"),
        (npy_bytes(np.ones((3, 3), dtype=np.int64)), "floating"),
        (npy_bytes(np.ones(9) / 9), "2-D"),
        (npy_bytes(np.ones((300, 3)) / 900), "2-D"),
        (npy_bytes(np.full((3, 3), np.nan)), "non-finite"),
        (npy_bytes(np.array([[0.5, -0.1], [0.3, 0.3]])), "negative"),
        (npy_bytes(np.ones((3, 3))), "sums to 9"),
        (npy_bytes(np.ones((3, 3)) / 9)[:-10], "header says"),
    ],
)
def test_bad_kernel_files(data: bytes, match: str) -> None:
    with pytest.raises(KernelFileError, match=match) as info:
        load_kernel(data)
    assert info.value.reason == "bad_kernel"


def forged_npy(shape: tuple[int, ...], payload: bytes) -> bytes:
    """A well-formed .npy header claiming ``shape``, followed by ``payload``."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + payload


def test_kernel_header_claiming_huge_array_is_refused_cheaply() -> None:
    payload = (np.ones((3, 3), np.float32) / 9).tobytes()
    assert load_kernel(forged_npy((3, 3), payload)).shape == (3, 3)
    with pytest.raises(KernelFileError, match="sides"):
        load_kernel(forged_npy((200_000, 200_000), payload))  # 160 GB claimed, 36 B given
    with pytest.raises(KernelFileError, match="header says"):
        load_kernel(forged_npy((255, 255), payload))


# ---------------------------------------------------------------- ledger / pending


def write_outputs(dest: Any, ref: FrameRef, chash: str, model: str) -> None:
    meta = output_metadata(ref, chash, model, run_id="20261124T120000Z-abcdef")
    restored, k_npy, k_png = output_keys(ref.id)
    dest.put(restored, encode_png(np.zeros((4, 4, 3), np.uint8)), metadata=meta)
    kernel = np.full((3, 3), 1 / 9, np.float32)
    dest.put(k_npy, save_kernel(kernel), metadata=meta)
    dest.put(k_png, kernel_png(kernel), metadata=meta)


def pending(source: Any, dest: Any, chash: str, model: str) -> list[FrameRef]:
    """The flow's own decision: discovery + ledger look-up, then the plan's pending frames."""
    return plan_run(find_frames(source, dest), chash, model, None).pending


def test_pending_skips_done_and_redoes_changed(make_store: Any) -> None:
    writer = make_store("src", page_size=2)
    fill(writer, ["lane 3/f\u00e9.jpg", "lane 3/f\u00e9.mask.png", "b.png", "c.webp"])
    source = make_store("src", read_only=True, page_size=2)
    dest = make_store("dst", page_size=2)
    chash, model = "cfg-steps-10", "img-v1+ker-v1"

    todo = pending(source, dest, chash, model)
    assert [r.id for r in todo] == ["b", "c", "lane 3/f\u00e9"]
    for ref in todo:
        assert ref.etag == source.head(ref.key).etag
    assert list(dest.list()) == []  # pending never writes

    for ref in todo[:2]:
        write_outputs(dest, ref, chash, model)
        entry = record_done(dest, ref, config_hash=chash, model_version=model, run_id=None)
        assert read_ledger(dest, ref.id) == entry
    assert [r.id for r in pending(source, dest, chash, model)] == ["lane 3/f\u00e9"]

    # A changed config or model redoes everything.
    assert len(list(pending(source, dest, "cfg-steps-11", model))) == 3
    assert len(list(pending(source, dest, chash, "img-v2+ker-v1"))) == 3

    # A re-uploaded input (new ETag) redoes that frame only.
    writer.put("b.png", b"new content of b")
    assert [r.id for r in pending(source, dest, chash, model)] == ["b", "lane 3/f\u00e9"]

    # An unreadable ledger entry redoes the frame rather than trusting it.
    dest.put(ledger_key("c"), b"{not json")
    assert "c" in [r.id for r in pending(source, dest, chash, model)]


def test_output_metadata_roundtrips_any_key(make_store: Any) -> None:
    dest = make_store("dst")
    ref = FrameRef("lane 3/f\u00e9.jpg", "lane 3/f\u00e9", etag='"0123abcd"')
    write_outputs(dest, ref, "cafe", "m/v1")
    meta = dest.head(output_keys(ref.id)[0]).metadata
    assert unquote(meta["source-key"]) == ref.key
    assert unquote(meta["source-etag"]) == ref.etag
    assert unquote(meta["model-version"]) == "m/v1"
    assert meta["config-hash"] == "cafe" and meta["run-id"] == "20261124T120000Z-abcdef"


def test_record_done_requires_outputs_and_etag(make_store: Any) -> None:
    dest = make_store("dst")
    ref = FrameRef("f.png", "f", etag='"abc"')
    with pytest.raises(LedgerError, match="outputs missing"):
        record_done(dest, ref, config_hash="h", model_version="m")
    assert not dest.exists(ledger_key("f"))
    with pytest.raises(ValueError, match="no etag"):
        record_done(dest, FrameRef("f.png", "f"), config_hash="h", model_version="m")
    entry = record_done(dest, ref, config_hash="h", model_version="m", outputs=[], verify=True)
    assert json.loads(dest.get(ledger_key("f")))["source_etag"] == '"abc"'
    assert entry.outputs == ()


def test_discover_refuses_a_prefix_outside_the_store(make_store: Any) -> None:
    outer = make_store("data")
    with pytest.raises(InvalidKeyError):
        discover(outer, "../")


# ---------------------------------------------------------------- reports


def test_run_ids_sort_by_time() -> None:
    t0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    ids = [new_run_id(t0 + timedelta(seconds=s)) for s in (3600, 0, 59, 86400)]
    assert sorted(ids) == [ids[1], ids[2], ids[0], ids[3]]
    assert ids[1].startswith("20261124T120000Z-") and len(ids[1]) == 23
    assert run_started_at(ids[2]) == t0 + timedelta(seconds=59)


def test_frames_report_parquet_and_csv(make_store: Any) -> None:
    dest = make_store("dst")
    run = new_run_id()
    rows = [
        {"id": "a", "status": "ok", "psnr": 31.5, "residual": 0.01},
        {"id": "b", "status": "quarantined", "reason": "truncated_image"},
        {"id": "lane 3/f\u00e9", "status": "ok", "psnr": None, "residual": 0.02},
    ]
    pq_key, csv_key = write_frames_report(dest, run, rows)
    assert (pq_key, csv_key) == (report_key(run, "frames.parquet"), report_key(run, "frames.csv"))
    frame = load_frames_report(dest, run)
    assert list(frame.columns) == ["id", "status", "psnr", "residual", "reason"]
    assert frame["id"].tolist() == ["a", "b", "lane 3/f\u00e9"]
    assert frame["psnr"].iloc[0] == 31.5 and pd.isna(frame["psnr"].iloc[2])
    csv = pd.read_csv(io.BytesIO(dest.get(csv_key)))
    assert csv["reason"].iloc[1] == "truncated_image"
    assert csv["residual"].isna().tolist() == [False, True, False]

    empty = new_run_id()
    write_frames_report(dest, empty, [], columns=["id", "status"])
    assert list(load_frames_report(dest, empty).columns) == ["id", "status"]
    with pytest.raises(ValueError, match="frames report"):
        write_frames_report(dest, new_run_id(), [{"v": 1.5}, {"v": "text"}])


def test_summaries_newest_first_skipping_bad_runs(make_store: Any) -> None:
    dest = make_store("dst")
    t0 = datetime(2026, 11, 20, tzinfo=UTC)
    runs = [new_run_id(t0 + timedelta(days=d)) for d in range(3)]
    for i, run in enumerate(runs):
        write_summary(dest, run, {"frames": 10 + i, "psnr_mean": math.nan, "gain": np.float32(i)})
    crashed = new_run_id(t0 + timedelta(days=5))
    write_frames_report(dest, crashed, [{"id": "a"}])  # a run folder without summary
    broken = new_run_id(t0 + timedelta(days=6))
    dest.put(report_key(broken, "summary.json"), b"{truncated")
    dest.put("reports/index.html", b"<html>")
    dest.put("reports/assets/style.css", b"body{}")

    assert list_runs(dest) == [*runs, crashed, broken]
    summaries = load_summaries(dest)
    assert [s["run_id"] for s in summaries] == runs[::-1]
    assert summaries[0]["frames"] == 12 and summaries[0]["psnr_mean"] is None
    assert summaries[0]["gain"] == 2.0
    assert [s["run_id"] for s in load_summaries(dest, limit=2)] == runs[:0:-1]
    with pytest.raises(ValueError, match="run_id"):
        write_summary(dest, new_run_id(), {"run_id": "20000101T000000Z-000000"})


def test_s3_reports_are_plain_objects(s3_bucket: str) -> None:
    from storage.stores import open_store

    dest = open_store(f"s3://{s3_bucket}/out")
    assert isinstance(dest, S3Store)
    run = new_run_id()
    write_summary(dest, run, {"frames": 1})
    body = boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"out/reports/{run}/summary.json")
    assert json.loads(body["Body"].read()) == {"frames": 1, "run_id": run}


# ---------------------------------------------------------------- loading a frame set


def test_load_frame_with_sidecars(make_store: Any) -> None:
    from storage.errors import ImageTooLargeError, MaskSizeMismatchError, TruthSizeMismatchError
    from storage.frames import load_frame

    store = make_store("src")
    image = np.random.default_rng(0).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    observed = np.ones((6, 8), dtype=bool)
    observed[2:4, 3:6] = False
    kernel = np.full((3, 3), 1 / 9)
    store.put("f.png", encode_png(image))
    store.put("f.mask.png", encode_png(observed))
    store.put("f.sharp.png", encode_png(image[::-1]))
    store.put("f.kernel.npy", save_kernel(kernel))
    store.put("g.png", encode_png(image))
    store.put("g.mask.png", encode_png(observed[:, :4]))
    store.put("h.png", encode_png(image))
    store.put("h.sharp.png", encode_png(image[:5]))
    refs = {r.id: r for r in discover(store)}

    data = load_frame(store, refs["f"])
    np.testing.assert_array_equal(data.image, image)
    np.testing.assert_array_equal(data.mask, observed)
    np.testing.assert_array_equal(data.sharp, image[::-1])
    np.testing.assert_allclose(data.kernel, kernel, rtol=1e-6)
    with pytest.raises(MaskSizeMismatchError):
        load_frame(store, refs["g"])
    with pytest.raises(TruthSizeMismatchError) as info:
        load_frame(store, refs["h"])
    assert info.value.reason == "truth_size_mismatch"
    notes: list[str] = []  # the pipeline's policy: a bad truth loses the metrics, not the frame
    lenient = load_frame(store, refs["h"], on_bad_truth=notes.append)
    assert lenient.sharp is None and notes == [notes[0]] and notes[0].startswith(
        "sharp truth ignored (truth_size_mismatch: sharp truth is 5x8 (HxW), frame is 6x8")
    with pytest.raises(MaskSizeMismatchError):  # the mask is not truth: still the frame's fault
        load_frame(store, refs["g"], on_bad_truth=notes.append)
    with pytest.raises(ImageTooLargeError, match="bytes, over"):
        load_frame(store, refs["f"], max_bytes=10)
    assert load_frame(store, FrameRef("g.png", "g")).mask is None
