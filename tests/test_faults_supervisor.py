"""Fault injection on ``checkout-restore run`` as a real process (issue 23; the fault-injection
module's sibling: tests/test_faults.py is at its size limit). Each test starts the CLI with its own
temporary Prefect server and local Ray, and asserts what it leaves: the report, the index row,
the released lease, no process or listener left.

* SIGTERM mid-run: ends ``cancelled`` within 30 s, exit 143 (128 + SIGTERM), not 134;
* a second run on a held lease: the lease message within 10 s, exit 2; ``--wait-for-lease`` waits;
* ``RAY_ADDRESS=127.0.0.1:1``: exit 2 within 30 s, one line naming that address.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from pipeline_frames import write_frames

from flows.pipeline.ray_local import OWNER_FILE, _psutil
from storage.lease import LEASE_KEY, acquire
from storage.reports import load_run_index
from storage.stores import open_store

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'tests'}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "OMP_NUM_THREADS": "1", **extra}
    for name in ("PREFECT_API_URL", "RAY_ADDRESS"):
        if name not in extra:
            env.pop(name, None)  # the CLI starts (and must stop) its own Prefect server and Ray
    return env


def _cli(src: Path, dst: Path, *args: str, **env: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "flows.cli", "run", "--source", str(src), "--dest", str(dst),
           "--config", "smoke", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


class Tree:
    """Every process of a run's tree (sampled every 0.2 s) and every socket they listened on."""

    def __init__(self, pid: int) -> None:
        self.pid, self.procs, self.listeners = pid, {}, set()  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        psutil = _psutil()
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.pid)
                tree = [root, *root.children(recursive=True)]
            except psutil.Error:
                tree = []
            for proc in tree:
                try:
                    self.procs.setdefault(proc.pid, proc.create_time())
                    self.listeners.update((c.laddr.ip, c.laddr.port) for c in proc.net_connections("inet")
                                          if c.status == psutil.CONN_LISTEN)
                except psutil.Error:
                    continue
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def left(self, wait_s: float = 15.0) -> list[int]:
        psutil = _psutil()
        deadline = time.monotonic() + wait_s
        while True:
            alive = []
            for pid, created in self.procs.items():
                try:
                    if psutil.Process(pid).create_time() == created:
                        alive.append(pid)
                except psutil.Error:
                    continue
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.5)

    def non_loopback(self) -> list[tuple[str, int]]:
        def loopback(ip: str) -> bool:
            addr = ipaddress.ip_address(ip.split("%")[0])
            mapped = getattr(addr, "ipv4_mapped", None)
            return (mapped or addr).is_loopback

        return sorted(a for a in self.listeners if not loopback(a[0]))


def _owned_by(folder: Path, pid: int) -> bool:
    try:
        return json.loads((folder / OWNER_FILE).read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def _kill_tree(tree: Tree) -> None:
    for pid in tree.left(0):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _wait_for(proc: subprocess.Popen[str], text: str, sink: list[str], timeout_s: float) -> None:
    """Read the process's stdout+stderr lines (a thread each) until ``text`` appears."""
    deadline = time.monotonic() + timeout_s
    while not any(text in line for line in list(sink)):
        assert proc.poll() is None, "".join(sink)[-3000:]
        assert time.monotonic() < deadline, f"{text!r} never appeared:\n" + "".join(sink)[-3000:]
        time.sleep(0.2)


def _collect(proc: subprocess.Popen[str]) -> list[str]:
    sink: list[str] = []
    for stream in (proc.stdout, proc.stderr):
        threading.Thread(target=lambda s=stream: sink.extend(iter(s.readline, "")), daemon=True).start()
    return sink


@pytest.mark.timeout(300)
def test_sigterm_mid_run_ends_cancelled_with_report_row_lease_and_no_leftovers(tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), [f"s/f{i}" for i in range(200)], truth=False)
    proc = _cli(src, dst)
    tree, out = Tree(proc.pid), _collect(proc)
    try:
        _wait_for(proc, "restoring 200 frames", out, 240)
        [ray_dir] = [d for d in Path("/tmp").glob("ckr-ray-*") if _owned_by(d, proc.pid)]
        assert ray_dir.stat().st_mode & 0o777 == 0o700  # Ray made it 0777; the run makes it private
        time.sleep(3)  # a few batches in
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        tree.stop()
        _kill_tree(tree)
    text = "".join(out)
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert took < 30, took
    assert "status:      cancelled" in text and "Traceback" not in text
    dest = open_store(dst)
    [row] = load_run_index(dest)
    assert row["status"] == "cancelled"
    summary = json.loads(dest.get(f"reports/{row['run_id']}/summary.json"))
    assert summary["status"] == "cancelled"
    assert summary["skip_reasons"].get("not_attempted", 0) > 0, summary["counts"]
    assert summary["counts"]["total"] == 200
    assert json.loads(dest.get(LEASE_KEY))["released"]
    assert tree.left() == [], "processes of the run left behind"
    assert len(tree.procs) > 3 and tree.listeners  # Ray and Prefect's server were seen
    assert tree.non_loopback() == []
    print(f"\nFIGURES sigterm: exit {rc} {took:.1f} s after SIGTERM; {summary['counts']['restored']} "
          f"restored, {summary['skip_reasons']['not_attempted']} not_attempted; "
          f"{len(tree.procs)} processes, 0 left")


@pytest.mark.timeout(300)
def test_second_run_on_a_held_lease_exits_2_in_one_line_then_waits_when_asked(tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), ["a", "b"], truth=False)
    dest = open_store(dst)
    other = acquire(dest, run_id="20261204T000000Z-0ther0", ttl_s=120)  # a live run (this process)
    t0 = time.monotonic()
    proc = _cli(src, dst)
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 2, out + err
    assert took < 10, took
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "another run is restoring into" in lines[0], err
    assert "20261204T000000Z-0ther0" in lines[0] and "--wait-for-lease" in lines[0]
    assert [k for k in dest.list()] == [LEASE_KEY]  # nothing written

    timer = threading.Timer(3.0, other.release)
    timer.start()
    proc = _cli(src, dst, "--wait-for-lease", "120")
    tree = Tree(proc.pid)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        timer.cancel()
        tree.stop()
        _kill_tree(tree)
    assert proc.returncode == 0, (out + err)[-3000:]
    assert "2 restored" in out
    assert json.loads(dest.get(LEASE_KEY))["released"]
    assert tree.left() == []
    print(f"\nFIGURES lease: exit 2 after {took:.1f} s with one line")


@pytest.mark.timeout(120)
def test_dead_ray_address_exits_2_in_one_line_naming_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), ["a"], truth=False)
    t0 = time.monotonic()
    proc = _cli(src, dst, RAY_ADDRESS="127.0.0.1:1")
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 2, out + err
    assert took < 30, took
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1:1" in lines[0] and "192.0.2" not in err, err
    assert not dst.exists()  # stopped before anything was created
    print(f"\nFIGURES ray address: exit 2 after {took:.1f} s: {lines[0]}")


@pytest.mark.timeout(400)
def test_killed_driver_next_run_stops_its_temporary_prefect_server(tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), [f"k/f{i}" for i in range(40)], truth=False)
    proc = _cli(src, dst)
    tree, out = Tree(proc.pid), _collect(proc)
    try:
        _wait_for(proc, "restoring 40 frames", out, 240)
        held = json.loads(open_store(dst).get(LEASE_KEY))
        [server] = held["helpers"]  # the lease names the run's temporary Prefect server
        assert server["pid"] in tree.procs
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert _psutil().pid_exists(server["pid"])  # left running by the killed driver
        again = _cli(src, dst)
        rerun_out, rerun_err = again.communicate(timeout=300)
        server_left = server["pid"] in tree.left(0)  # before the clean-up below kills leftovers
    finally:
        tree.stop()
        _kill_tree(tree)
    assert again.returncode == 0, (rerun_out + rerun_err)[-3000:]
    assert "stopped the dead run's temporary Prefect server" in rerun_out + rerun_err
    assert not server_left
    assert json.loads(open_store(dst).get(LEASE_KEY))["released"]


@pytest.mark.timeout(400)
def test_lost_actors_end_the_run_failed_finished_frames_kept_then_a_rerun_finishes(tmp_path: Path) -> None:
    src, dst = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(src), [f"n/f{i}" for i in range(60)], truth=False)
    config = tmp_path / "stall.yaml"
    data = yaml.safe_load((REPO / "configs" / "smoke.yaml").read_text())
    data["cluster"]["stall_timeout_s"] = 8
    config.write_text(yaml.safe_dump(data))
    proc = _cli(src, dst, "--config", str(config))
    tree, out = Tree(proc.pid), _collect(proc)
    try:
        _wait_for(proc, "restoring 60 frames", out, 240)
        time.sleep(4)  # a few batches in
        actors = [p for p in _psutil().Process(proc.pid).children(recursive=True)
                  if "RestoreWorker" in " ".join(p.cmdline())]
        assert actors
        lost_at = time.monotonic()
        for actor in actors:  # a frozen node: the actors never answer again
            actor.suspend()
        rc = proc.wait(timeout=120)
        took = time.monotonic() - lost_at
        left = tree.left()
    finally:
        tree.stop()
        _kill_tree(tree)
    text = "".join(out)
    assert rc == 1 and took < 60, (rc, took, text[-3000:])
    assert left == [], "processes of the run left behind"
    dest = open_store(dst)
    [row] = load_run_index(dest)
    summary = json.loads(dest.get(f"reports/{row['run_id']}/summary.json"))
    assert row["status"] == summary["status"] == "failed" and summary["error"]["type"] == "ClusterLostError"
    done, missing = summary["counts"]["restored"], summary["skip_reasons"].get("not_attempted", 0)
    assert done > 0 and missing > 0 and summary["counts"]["total"] == 60, summary["counts"]
    assert json.loads(dest.get(LEASE_KEY))["released"]
    rerun = _cli(src, dst, "--config", str(config))
    rerun_out, rerun_err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0 and f"{missing} restored, {done} skipped" in rerun_out, rerun_out + rerun_err
    print(f"\nFIGURES cluster loss: exit {rc} {took:.1f} s after the actors froze (stall_timeout_s 8); "
          f"{done} restored, {missing} not_attempted, then restored by the rerun")
