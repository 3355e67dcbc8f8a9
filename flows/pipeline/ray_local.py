"""Ray's lifecycle for a run: connect to a cluster, or start a small in-process instance bound to
127.0.0.1 in a temp folder this run owns (:func:`ensure_ray`), and clean up what a killed driver's
local instance left behind (:func:`reap_stale_local_instances`; docs/reliability.md)."""

from __future__ import annotations

import glob
import importlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from flows.config import ClusterSettings
from flows.pipeline import supervisor
from flows.pipeline.actors import PipelineError
from flows.pipeline.preflight import check_ray_address

log = logging.getLogger("checkout_restore.actors")

LOCAL_MIN_CPUS = 2
LOCAL_TEMP_PREFIX = "ckr-ray-"  # /tmp/ckr-ray-*: the temp folders of local Ray instances
OWNER_FILE = "ckr-owner.json"  # in such a folder: the pid (and start time) of the driver owning it
STALE_UNOWNED_S = 600  # a temp folder without an owner file and no process using it, this old: stale


@contextmanager
def ensure_ray(cluster: ClusterSettings) -> Iterator[bool]:
    """Make Ray available for the block; yield True when Ray runs in-process (a local instance).

    Already initialised (e.g. by a test fixture or a notebook): used as is and left running.
    ``RAY_ADDRESS`` or ``cluster.address``: connect to that cluster. Otherwise start Ray
    in-process, small (``num_cpus`` just enough for the actors, at least 2), without the
    dashboard, in a temp folder this call owns and removes, with every Ray process bound to
    127.0.0.1 (:func:`loopback_ray_init`). Before that, temp folders of local instances whose
    driver died (killed) are cleaned up: their processes killed, the folders removed
    (:func:`reap_stale_local_instances`).
    ``address="local"`` makes Ray ignore a stale ``ray_current_cluster`` file left in its temp
    folder by a crashed session.
    """
    import ray

    global _local_cluster
    if ray.is_initialized():
        yield _local_cluster  # a cluster this process started earlier (e.g. a test fixture) is local
        return
    address = os.environ.get("RAY_ADDRESS") or cluster.address
    if address:
        check_ray_address(address, cluster.connect_timeout_s)
        try:
            ray.init(address=address, log_to_driver=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise PipelineError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
        supervisor.reinstall()  # ray.init made SIGTERM a sys.exit: the run's handler again
        try:
            yield False
        finally:
            ray.shutdown()
        return
    reap_stale_local_instances()
    temp_dir = tempfile.mkdtemp(prefix=LOCAL_TEMP_PREFIX, dir=LOCAL_TEMP_BASE)  # short: socket paths
    try:
        _write_owner(temp_dir)
        loopback_ray_init(num_cpus=max(LOCAL_MIN_CPUS, math.ceil(cluster.actors * cluster.num_cpus)),
                          temp_dir=temp_dir)
        os.chmod(temp_dir, 0o700)  # Ray makes its temp folder 0777 (no sticky bit): private again
        supervisor.reinstall()
        _local_cluster = True
        yield True
    finally:
        _local_cluster = False
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


_local_cluster = False  # True while a Ray instance started by ensure_ray runs in this process
LOCAL_TEMP_BASE = "/tmp"


def loopback_ray_init(*, num_cpus: int, temp_dir: str) -> None:
    """``ray.init`` of a local instance in which every process listens on 127.0.0.1 only.

    Ray 2.60 binds its gRPC servers (GCS, raylet, core workers) to all interfaces unless the node
    IP is exactly 127.0.0.1, and ``ray.init`` replaces a loopback ``_node_ip_address`` by the
    machine's routable IP unless ``ray_constants.ENABLE_RAY_CLUSTER`` is off (what Ray itself does
    on macOS/Windows; env ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` before Ray is imported). With it
    off during init, the node IP stays 127.0.0.1 and the GCS, raylet, workers, dashboard agent,
    runtime-env agent and metrics exporter all bind loopback (tests/test_reliability.py lists the
    sockets). The dashboard is not started. No credential goes through ``runtime_env``: workers
    inherit the driver's environment from the raylet, and Ray writes nothing of it to its logs.
    """
    import ray
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _temp_dir=temp_dir,
                 _node_ip_address="127.0.0.1")
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _psutil() -> Any:
    """psutil as shipped with Ray (``ray/thirdparty_files``, on the path once ray is imported)."""
    import ray  # noqa: F401

    return importlib.import_module("psutil")


def _write_owner(temp_dir: str) -> None:
    me = _psutil().Process()
    with open(os.path.join(temp_dir, OWNER_FILE), "w") as f:
        json.dump({"pid": me.pid, "create_time": me.create_time(), "space": _pid_space()}, f)


def _pid_space() -> str:
    """This machine boot and pid namespace: an owner pid means something only within the same."""
    parts = []
    for path in ("/proc/sys/kernel/random/boot_id", "/proc/self/ns/pid"):
        try:
            parts.append(os.readlink(path) if path.endswith("/pid") else Path(path).read_text().strip())
        except OSError:
            parts.append("?")
    return " ".join(parts)


def _owner_alive(temp_dir: str) -> bool | None:
    """True/False when the folder names its driver (alive or not); None without an owner file."""
    psutil = _psutil()

    try:
        with open(os.path.join(temp_dir, OWNER_FILE)) as f:
            owner = json.load(f)
        if owner.get("space") != _pid_space():
            return True  # another machine or container: not ours to judge, treat as alive
        proc = psutil.Process(int(owner["pid"]))
        return abs(proc.create_time() - float(owner["create_time"])) < 1.0  # not a reused pid
    except (OSError, ValueError, KeyError, TypeError):
        return None
    except psutil.Error:
        return False


def _processes_using(temp_dir: str) -> list[Any]:
    """Processes whose command line names ``temp_dir`` (every Ray process of that instance does)."""
    psutil = _psutil()

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            args = proc.info["cmdline"] or ()
            if proc.pid != os.getpid() and any(temp_dir + os.sep in a or a.endswith(temp_dir) for a in args):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def reap_stale_local_instances(base: str | None = None) -> list[str]:
    """Kill what a dead driver's local Ray instance left behind and remove its temp folder.

    A folder ``<base>/ckr-ray-*`` is stale when its owner file names a process that is gone (or a
    reused pid), or, without an owner file, when no process uses it and it is older than
    :data:`STALE_UNOWNED_S`. Its processes (GCS, raylet, agents, workers: their command lines
    name the folder) get SIGTERM, then SIGKILL after 5 s. Returns the folders removed.
    """
    psutil = _psutil()
    removed = []
    for temp_dir in sorted(glob.glob(os.path.join(base or LOCAL_TEMP_BASE, LOCAL_TEMP_PREFIX + "*"))):
        alive = _owner_alive(temp_dir)
        if alive:
            continue
        procs = _processes_using(temp_dir)
        if alive is None and (procs or time.time() - os.path.getmtime(temp_dir) < STALE_UNOWNED_S):
            continue
        for proc in procs:
            with suppress(psutil.Error):
                proc.terminate()
        _, left = psutil.wait_procs(procs, timeout=5)
        for proc in left:
            with suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(left, timeout=5)
        shutil.rmtree(temp_dir, ignore_errors=True)
        log.warning("cleaned up a dead run's local Ray instance: %d processes stopped, %s removed",
                    len(procs), temp_dir)
        removed.append(temp_dir)
    return removed
