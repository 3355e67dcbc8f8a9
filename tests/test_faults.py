"""Fault injection end to end (issue #12): real Prefect (temporary server), real Ray, S3 on moto
behind a TCP proxy that can take the store down. Every test asserts that every frame ends
restored exactly once or quarantined with a reason.

* hostile names and bad sidecars on S3, no planted secret in any file under the Ray temp folder
  or in the outputs afterwards;
* a store outage in the middle of a run, then a rerun;
* an actor killed mid-batch on S3;
* a second run while the destination's run lease is held (exits clearly, or waits);
* ``checkout-restore run`` as a process: every Ray process listens on loopback only, nothing of
  the run is left afterwards;
* a driver killed mid-run (SIGKILL), then the next run: Prefect flow run marked Crashed, the dead
  instance's processes and temp folder removed, every frame restored exactly once.
"""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import numpy as np
import pipeline_frames
import pytest
import ray
import yaml
from faultproxy import OutageProxy
from pipeline_frames import (
    CrashOnce,
    FailOn,
    Hooks,
    MarkOnce,
    make_frame,
    npy_bytes,
    truncated_png,
    write_frames,
)
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.testing.utilities import prefect_test_harness
from s3server import MotoS3

import flows.pipeline.ray_local
from flows.config import load_config
from flows.pipeline.flow import run_pipeline
from flows.pipeline.ray_local import OWNER_FILE, ensure_ray
from storage.base import ObjectStore
from storage.images import encode_png
from storage.lease import LEASE_KEY, LeaseHeldError, acquire
from storage.ledger import read_ledger
from storage.reports import load_frames_report
from storage.stores import open_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PLANTED_TOKEN = "planted-session-token-7c1e0b"  # a second secret, besides moto's secret key


def _psutil():  # type: ignore[no-untyped-def]
    return flows.pipeline.ray_local._psutil()


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


class TreeWatch:
    """Samples a process tree every 0.2 s while a run goes on: every listening socket, every
    process seen, every ``ckr-ray-*`` folder its processes name."""

    def __init__(self, root_pid: int) -> None:
        self.root_pid = root_pid
        self.listeners: set[tuple[str, str, int]] = set()  # (process name, ip, port)
        self.procs: dict[int, float] = {}  # pid -> create time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> TreeWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        psutil = _psutil()
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root_pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for proc in tree:
                try:
                    self.procs.setdefault(proc.pid, proc.create_time())
                    for conn in proc.net_connections(kind="inet"):
                        if conn.status == psutil.CONN_LISTEN:
                            self.listeners.add((proc.name(), conn.laddr.ip, conn.laddr.port))
                except psutil.Error:
                    continue
            self._stop.wait(0.2)

    def non_loopback(self) -> list[tuple[str, str, int]]:
        return sorted(entry for entry in self.listeners if not _is_loopback(entry[1]))

    def still_running(self) -> list[int]:
        psutil = _psutil()
        alive = []
        for pid, created in self.procs.items():
            try:
                if psutil.Process(pid).create_time() == created and pid != os.getpid():
                    alive.append(pid)
            except psutil.Error:
                continue
        return alive


def files_containing(root: Path, secrets: list[str]) -> tuple[int, list[str]]:
    """(files scanned, files that contain any of ``secrets``) under ``root``."""
    needles = [s.encode() for s in secrets]
    scanned, hits = 0, []
    for path in root.rglob("*"):
        try:
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
        except OSError:
            continue  # a socket or a file removed meanwhile
        scanned += 1
        if any(n in data for n in needles):
            hits.append(str(path))
    return scanned, hits


def objects_containing(store: ObjectStore, secrets: list[str]) -> tuple[int, list[str]]:
    needles = [s.encode() for s in secrets]
    keys = list(store.list())
    return len(keys), [k for k in keys if any(n in store.get(k) for n in needles)]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def prefect_api() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with prefect_test_harness(server_startup_timeout=120):
            yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="module")
def proxy(moto_s3: MotoS3) -> Iterator[OutageProxy]:
    server = OutageProxy(("127.0.0.1", moto_s3.port)).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def s3_via_proxy(moto_s3: MotoS3, proxy: OutageProxy) -> Iterator[dict[str, str]]:
    """Environment for boto3 through the proxy, with a planted session token (moto ignores it);
    set before Ray starts, so the actors inherit it."""
    env = {**moto_s3.env(), "AWS_ENDPOINT_URL": proxy.endpoint, "AWS_SESSION_TOKEN": PLANTED_TOKEN,
           "AWS_MAX_ATTEMPTS": "3"}
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_RETRY_MODE",
                     "AWS_REGION"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        yield env


@pytest.fixture(scope="module")
def ray_base(s3_via_proxy: dict[str, str]) -> Iterator[Path]:
    """The module's Ray instance, started by ``ensure_ray`` (the pipeline's own path) under a
    short temp base of its own (Ray's socket paths must stay under 108 bytes)."""
    ray.cloudpickle.register_pickle_by_value(pipeline_frames)
    base = Path(tempfile.mkdtemp(prefix="ckrt-", dir="/tmp"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(flows.pipeline.ray_local, "LOCAL_TEMP_BASE", str(base))
        mp.delenv("RAY_ADDRESS", raising=False)
        with ensure_ray(load_config("smoke").cluster) as local:
            assert local
            yield base
    assert list(base.iterdir()) == []  # the instance's temp folder went with it
    base.rmdir()


def _bucket(env: dict[str, str]) -> str:
    name = f"f-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=name)
    return name


def assert_exactly_once(dest: ObjectStore, summaries: list[dict], frame_keys: set[str]) -> dict[str, dict]:
    """Every frame key appears in every run's report; across the runs it is restored exactly once
    (its ledger entry names that run) unless its last row is quarantined with a reason; returns
    the last row of each key."""
    restored_in: dict[str, list[str]] = {k: [] for k in frame_keys}
    last: dict[str, dict] = {}
    for summary in summaries:
        rows = load_frames_report(dest, summary["run_id"]).to_dict("records")
        assert sorted(r["key"] for r in rows) == sorted(frame_keys), summary["run_id"]
        for row in rows:
            if row["status"] == "restored":
                restored_in[row["key"]].append(summary["run_id"])
            if row["status"] == "quarantined":
                assert row["reason"], row
            last[row["key"]] = row
    for key, runs in restored_in.items():
        if last[key]["status"] == "quarantined" or last[key]["reason"].startswith("quarantined_before:"):
            assert runs == [], (key, runs)
        else:
            assert len(runs) == 1, (key, runs)
            entry = read_ledger(dest, last[key]["id"])
            assert entry is not None and entry.run_id == runs[0] and entry.source_key == key
    return last


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> str:
    """configs/smoke.yaml without the quarantine-rate gate: these runs quarantine most frames on
    purpose (the gate would end them failed_quality after their report, not what is tested here)."""
    path = tmp_path_factory.mktemp("cfg") / "faults.yaml"
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    path.write_text(yaml.safe_dump({**data, "alerts": {"max_quarantine_rate": None}}))
    return str(path)


@flow(name="restore-frames-faults")
def _run(source: str, dest: str, config: str, hook: str = "", arg: str = "",
         lease_wait_s: float = 0.0) -> dict:
    hooks = {"": lambda a: None, "crash+fail": lambda a: Hooks(CrashOnce(a), FailOn("lane/f2.png")),
             "mark": lambda a: MarkOnce(a)}
    return run_pipeline(source, dest, config, fault_hook=hooks[hook](arg), lease_wait_s=lease_wait_s)


def _png_header_bomb() -> bytes:
    """A small PNG whose header claims 30000 x 30000 pixels (a decompression bomb)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


# Hostile keys (S3 holds any of them) and bad inputs; expected outcome per key.
GOOD = ["lane/f0", "lane/f1", "lane/f2", "x", "x.json/y", ".crs-x", "=cmd|' /C calc'!A0",
        "<img src=x onerror=alert(1)>", "lane/k19", "lane/k44", "lane/nan_kernel", "lane/bad_sharp",
        "ünï cödé/ß"]
BAD_CONTENT = {"trunc.png": ("truncated_image", "corrupt_image"), "empty.png": ("empty_file",),
               "text.png": ("not_an_image",), "bomb.png": ("image_too_large",),
               "lane/badmask.png": ("mask_size_mismatch",),
               "lane/corruptmask.png": ("corrupt_image", "not_an_image", "truncated_image")}
HOSTILE = ["...png", "..png", "a/...jpg", "z" * 1016 + ".png", "q/" + "w" * 1017 + ".png"]


def _fill_hostile_source(store: ObjectStore) -> set[str]:
    write_frames(store, GOOD, truth=True, mask_first=True)
    store.put("lane/k19.kernel.npy", npy_bytes(np.full((1, 9), 1 / 9)))
    store.put("lane/k44.kernel.npy", npy_bytes(np.full((4, 4), 1 / 16)))
    store.put("lane/nan_kernel.kernel.npy", npy_bytes(np.full((3, 3), np.nan)))
    store.put("lane/bad_sharp.sharp.png", encode_png(np.zeros((5, 7, 3), np.uint8)))
    frame, _, _ = make_frame(7)
    for key in ("lane/badmask.png", "lane/corruptmask.png"):
        store.put(key, encode_png(frame))
    store.put("lane/badmask.mask.png", encode_png(np.ones((4, 4), bool)))
    store.put("lane/corruptmask.mask.png", b"\x89PNG\r\n\x1a\nbroken")
    store.put("trunc.png", truncated_png())
    store.put("empty.png", b"")
    store.put("text.png", b"just some text, not an image\n")
    store.put("bomb.png", _png_header_bomb())
    for key in HOSTILE:
        store.put(key, encode_png(frame))
    return {f"{g}.png" for g in GOOD} | set(BAD_CONTENT) | set(HOSTILE)


# -- tests ----------------------------------------------------------------------------------------


@pytest.mark.timeout(400)
def test_hostile_names_bad_sidecars_actor_kill_and_no_secret_on_disk(
        prefect_api: str, cfg: str, ray_base: Path, s3_via_proxy: dict[str, str], tmp_path: Path) -> None:
    bucket = _bucket(s3_via_proxy)
    src, dst = f"s3://{bucket}/inbox", f"s3://{bucket}/out"
    keys = _fill_hostile_source(open_store(src))
    marker = tmp_path / "crashed"
    first = _run(src, dst, cfg, "crash+fail", str(marker))
    assert marker.exists() and first["resubmitted_batches"] >= 1  # an actor was killed mid-batch
    second = _run(src, dst, cfg)  # rerun: lane/f2 (failed unexpectedly) is redone, the rest skipped
    dest = open_store(dst)
    last = assert_exactly_once(dest, [first, second], keys)
    for g in GOOD:
        assert last[f"{g}.png"]["status"] in ("restored", "skipped"), last[f"{g}.png"]
    for key, reasons in BAD_CONTENT.items():
        assert last[key]["status"] in ("quarantined", "skipped"), last[key]
        assert last[key]["reason"].removeprefix("quarantined_before:") in reasons, last[key]
    for key in HOSTILE:
        assert (last[key]["status"], last[key]["reason"]) == ("quarantined", "invalid_key")
    first_rows = {r["key"]: r for r in load_frames_report(dest, first["run_id"]).to_dict("records")}
    assert first_rows["lane/f2.png"]["reason"] == "unexpected_error"
    assert "injected failure" in first_rows["lane/f2.png"]["detail"]
    for kid in ("lane/k19", "lane/k44"):
        assert np.isfinite(first_rows[f"{kid}.png"]["kernel_ncc"])
    assert "kernel truth ignored" in first_rows["lane/nan_kernel.png"]["detail"]
    assert "sharp truth ignored" in first_rows["lane/bad_sharp.png"]["detail"]
    assert second["counts"]["restored"] == 1  # only lane/f2

    secrets = [s3_via_proxy["AWS_SECRET_ACCESS_KEY"], PLANTED_TOKEN]
    scanned, hits = files_containing(ray_base, secrets)
    assert scanned > 20 and hits == [], hits  # Ray's logs, session files, runtime-env agent log
    n_objects, leaked = objects_containing(dest, secrets)
    assert n_objects > 40 and leaked == [], leaked
    print(f"\nFIGURES secret: {scanned} files under the Ray temp folder, {n_objects} output objects, "
          f"{len(hits) + len(leaked)} containing a planted secret; hostile keys {len(HOSTILE)} tried, "
          f"bad inputs {len(BAD_CONTENT) + 4} tried")


@pytest.mark.timeout(400)
def test_store_outage_mid_run_loses_nothing(prefect_api: str, cfg: str, ray_base: Path,
                                            s3_via_proxy: dict[str, str], proxy: OutageProxy,
                                            tmp_path: Path) -> None:
    bucket = _bucket(s3_via_proxy)
    src, dst = f"s3://{bucket}/inbox", f"s3://{bucket}/out"
    names = [f"cam/f{i}" for i in range(8)]
    write_frames(open_store(src), names, truth=False)
    trigger = tmp_path / "outage"
    proxy.arm(trigger, outage_s=12.0)
    try:
        first = _run(src, dst, cfg, "mark", str(trigger))
    finally:
        proxy.arm(tmp_path / "never", 0.0)
    assert trigger.exists() and proxy.refused > 0
    reasons = set(first["quarantine_reasons"])
    assert first["counts"]["quarantined"] >= 1 and reasons <= {"read_error", "write_error"}, first
    second = _run(src, dst, cfg)
    keys = {f"{n}.png" for n in names}
    last = assert_exactly_once(open_store(dst), [first, second], keys)
    assert all(row["status"] in ("restored", "skipped") for row in last.values())
    assert second["counts"]["restored"] == first["counts"]["quarantined"]


@pytest.mark.timeout(300)
def test_second_run_exits_clearly_while_the_lease_is_held_then_waits(prefect_api: str, cfg: str,
                                                                     ray_base: Path, tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), ["a", "b"], truth=False)
    dest = open_store(dst)
    other = acquire(dest, run_id="20261130T000000Z-0ther0", ttl_s=60)  # a live run (this process)
    with pytest.raises(LeaseHeldError, match=r"another run is restoring into .*20261130T000000Z-0ther0"):
        _run(str(src), str(dst), cfg)
    written = [k for k in dest.list() if k != LEASE_KEY]
    assert written and all(k.startswith("reports/") for k in written), written  # its failure report only
    failed = [json.loads(dest.get(k)) for k in written if k.endswith("/summary.json")]
    assert [(f["status"], f["error"]["type"]) for f in failed] == [("failed", "LeaseHeldError")]
    timer = threading.Timer(3.0, other.release)
    timer.start()
    try:
        summary = _run(str(src), str(dst), cfg, lease_wait_s=60.0)  # waits for the lease, then runs
    finally:
        timer.cancel()
    assert summary["counts"]["restored"] == 2
    assert_exactly_once(dest, [summary], {"a.png", "b.png"})


def _driver_env(prefect_url: str, env: dict[str, str]) -> dict[str, str]:
    out = {**os.environ, **env, "PREFECT_API_URL": prefect_url, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1"}
    out.pop("RAY_ADDRESS", None)
    return out


@pytest.mark.timeout(400)
def test_cli_run_listens_on_loopback_only_and_leaves_nothing(prefect_api: str, ray_base: Path,
                                                              s3_via_proxy: dict[str, str]) -> None:
    bucket = _bucket(s3_via_proxy)
    src, dst = f"s3://{bucket}/inbox", f"s3://{bucket}/out"
    write_frames(open_store(src), ["p/a", "p/b", "p/c"], truth=False)
    cmd = [sys.executable, "-m", "flows.cli.pipeline", "run", "--source", src, "--dest", dst,
           "--config", "smoke"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_driver_env(prefect_api, s3_via_proxy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen_dirs: set[str] = set()
    secret_hits: set[str] = set()
    secrets = [s3_via_proxy["AWS_SECRET_ACCESS_KEY"], PLANTED_TOKEN]
    with TreeWatch(proc.pid) as watch:
        while proc.poll() is None:  # sample the run's Ray folder while it exists
            for d in Path("/tmp").glob("ckr-ray-*"):
                if _owned_by(d, proc.pid):
                    seen_dirs.add(str(d))
                    secret_hits.update(files_containing(d, secrets)[1])
            time.sleep(0.5)
    out = proc.stdout.read() if proc.stdout else ""
    assert proc.returncode == 0, out[-3000:]
    assert "3 restored" in out
    assert seen_dirs, "the run's Ray temp folder was never seen"
    assert len(watch.listeners) >= 5, watch.listeners  # gcs, raylet, agents, workers were watched
    assert watch.non_loopback() == [], watch.non_loopback()
    assert secret_hits == set(), secret_hits
    _psutil().wait_procs([_psutil().Process(p) for p in watch.still_running() if _exists(p)], timeout=15)
    assert watch.still_running() == []  # every process the run started is gone
    assert [d for d in seen_dirs if Path(d).exists()] == []  # and its temp folder
    print(f"\nFIGURES listeners: {len(watch.listeners)} listening sockets in the run's process tree "
          f"{sorted({e[0] for e in watch.listeners})}, {len(watch.non_loopback())} on a non-loopback "
          "address; "
          f"{len(watch.procs)} processes, {len(watch.still_running())} left after the run")


def _exists(pid: int) -> bool:
    try:
        _psutil().Process(pid)
        return True
    except _psutil().Error:
        return False


def _owned_by(folder: Path, pid: int) -> bool:
    try:
        return json.loads((folder / OWNER_FILE).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


HANG_SCRIPT = """
import sys, time, os
from prefect import flow
import ray, pipeline_frames
ray.cloudpickle.register_pickle_by_value(pipeline_frames)
from flows.pipeline.flow import run_pipeline

class Hang:
    def __init__(self, marker): self.marker = marker
    def __call__(self, key):
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.write(fd, key.encode()); os.close(fd)
        time.sleep(3600)

@flow(name="restore-frames-killed")
def run(src, dst, marker):
    return run_pipeline(src, dst, "smoke", fault_hook=Hang(marker))

run(sys.argv[1], sys.argv[2], sys.argv[3])
"""


@pytest.mark.timeout(500)
def test_killed_driver_next_run_cleans_up_and_finishes(prefect_api: str, cfg: str, ray_base: Path,
                                                       s3_via_proxy: dict[str, str], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    names = [f"k/f{i}" for i in range(6)]
    write_frames(open_store(src), names, truth=False)
    marker = tmp_path / "hanging"
    script = tmp_path / "driver.py"
    script.write_text(HANG_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(dst), str(marker)], cwd=REPO,
                            env=_driver_env(prefect_api, s3_via_proxy), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert proc.poll() is None, (proc.stdout.read() if proc.stdout else "")[-3000:]
        assert time.monotonic() < deadline, "the driver never reached the hanging frame"
        time.sleep(0.5)
    dead_dirs = [d for d in Path("/tmp").glob("ckr-ray-*") if _owned_by(d, proc.pid)]
    assert len(dead_dirs) == 1
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    dest = open_store(dst)
    held = json.loads(dest.get(LEASE_KEY))
    assert held["pid"] == proc.pid and not held["released"]  # the dead run still "holds" it
    with get_client(sync_client=True) as client:
        dead_run = client.read_flow_run(uuid.UUID(held["flow_run_id"]))
        assert dead_run.state is not None and dead_run.state.is_running()

    # where the dead driver's Ray lived
    monkeypatch.setattr(flows.pipeline.ray_local, "LOCAL_TEMP_BASE", "/tmp")
    summary = _run(str(src), str(dst), cfg)  # the next run, right after

    with get_client(sync_client=True) as client:
        state = client.read_flow_run(uuid.UUID(held["flow_run_id"])).state
    assert state is not None and state.is_crashed(), state
    assert not dead_dirs[0].exists()
    assert flows.pipeline.ray_local._processes_using(str(dead_dirs[0])) == []
    # Frames the dead run committed stay done (skipped); the rest, the hanging one included, are
    # restored now: each exactly once.
    committed = {n for n in names
                 if (e := read_ledger(dest, n)) is not None and e.run_id != summary["run_id"]}
    rows = {r["key"]: r for r in load_frames_report(dest, summary["run_id"]).to_dict("records")}
    assert set(rows) == {f"{n}.png" for n in names}
    for n in names:
        expected = "skipped" if n in committed else "restored"
        assert rows[f"{n}.png"]["status"] == expected, rows[f"{n}.png"]
        if expected == "restored":
            assert read_ledger(dest, n).run_id == summary["run_id"]
    assert marker.read_text() in {f"{n}.png" for n in names if n not in committed}
    assert json.loads(dest.get(LEASE_KEY))["released"]
