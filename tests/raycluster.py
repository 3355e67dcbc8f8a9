"""A real two-node Ray cluster on this machine for tests (not a test module).

``ray start --head`` plus one worker node, each ``ray start --block`` in its own process group,
with token authentication (``RAY_AUTH_MODE=token``; the token lives only in the environment of
the processes started here, never in a file). Stopping terminates what was started *by process
id*: both process groups, then every process that descended from them or carries the cluster's
token in its environment (Ray puts its workers in their own process groups, and a worker outlives
a killed raylet for a moment). ``ray stop`` is never used: it kills every Ray process of the user,
including other sessions' clusters on a shared machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            ppid = int(stat[stat.rfind(")") + 2:].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def descendants(roots: list[int]) -> set[int]:
    """The processes below ``roots`` (live ones, from /proc)."""
    children, seen, stack = _children(), set(), list(roots)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in seen:
                seen.add(child)
                stack.append(child)
    return seen


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), None when it is gone or a zombie: with the
    pid it identifies a process for good (a pid alone can be reused by an unrelated process)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _listening_inodes() -> dict[int, str]:
    """socket inode -> ``addr:port`` for every listening TCP socket (from /proc/net/tcp{,6})."""
    out: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            addr, port = fields[1].split(":")
            raw = bytes.fromhex(addr)
            if len(raw) == 4:
                host = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four host-order 32-bit words
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                host = socket.inet_ntop(socket.AF_INET6, words)
            out[int(fields[9])] = f"{host}:{int(port, 16)}"
    return out


def listeners(pids: set[int] | None = None) -> list[str]:
    """``addr:port`` of the listening TCP sockets of the processes ``pids`` (every listening
    socket when None). Read from /proc, so no ``ss``/``netstat`` is needed."""
    sockets = _listening_inodes()
    if pids is None:
        return sorted(set(sockets.values()))
    found = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and int(link[8:-1]) in sockets:
                found.add(sockets[int(link[8:-1])])
    return sorted(found)


class RayCluster:
    """Head (no custom resource) + one worker node offering ``worker_resources``."""

    def __init__(self, *, worker_cpus: int = 2, worker_resources: dict[str, float] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.temp_dir = tempfile.mkdtemp(prefix="ckr-rc-", dir="/tmp")  # short: socket paths live here
        self.worker_cpus = worker_cpus
        self.worker_resources = worker_resources or {}
        # A fresh token per cluster, only in the environment of the processes that need it.
        self.env = {**(env or os.environ), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
                    "RAY_USAGE_STATS_ENABLED": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []
        self.seen: dict[int, int] = {}  # pid -> start time of every process of this cluster seen

    def _start(self, args: list[str], log_name: str) -> None:
        log = open(Path(self.temp_dir) / log_name, "w")  # noqa: SIM115 (the process keeps it)
        self.procs.append(subprocess.Popen([RAY, "start", "--block", *args], env=self.env, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def _wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited with {p.returncode}: {self.logs()}")
            got = self.query("len([n for n in ray.nodes() if n['Alive']])", timeout=60)
            if got is not None and got >= n:
                return
            time.sleep(2)
        raise TimeoutError(f"Ray cluster did not reach {n} nodes in {timeout} s: {self.logs()}")

    def start(self, timeout: float = 300) -> RayCluster:
        common = ["--num-gpus=0", "--object-store-memory=100000000", f"--temp-dir={self.temp_dir}",
                  "--disable-usage-stats"]
        self._start(["--head", f"--port={self.port}", "--num-cpus=1", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}", *common], "head.log")
        self._wait_nodes(1, timeout)
        self._start([f"--address={self.address}", f"--num-cpus={self.worker_cpus}",
                     f"--resources={json.dumps(self.worker_resources)}", *common], "worker.log")
        self._wait_nodes(2, timeout)
        return self

    def query(self, expression: str, timeout: float = 120, env: dict[str, str] | None = None) -> object:
        """Evaluate ``expression`` in a fresh driver connected to the cluster (JSON result), None when
        the driver could not connect. A subprocess: Ray reads its auth mode once per process."""
        code = (f"import json, ray\nray.init(address={self.address!r}, log_to_driver=False)\n"
                f"print('RESULT' + json.dumps({expression}))\nray.shutdown()\n")
        try:
            out = subprocess.run([sys.executable, "-c", code], env=env or self.env, capture_output=True,
                                 text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return None
        for line in out.stdout.splitlines():
            if line.startswith("RESULT"):
                return json.loads(line[len("RESULT"):])
        return None

    def _carrying_token(self) -> set[int]:
        """Processes whose environment holds this cluster's token: every process the cluster
        started (Ray passes its environment on), even one orphaned when its raylet died."""
        marker = f"RAY_AUTH_TOKEN={self.env['RAY_AUTH_TOKEN']}".encode()
        found = set()
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if marker in f.read().split(b"\0"):
                            found.add(int(entry))
                except OSError:
                    continue
        return found

    def pids(self) -> set[int]:
        """Every live process of this cluster: the ``ray start`` processes, their descendants and
        whatever carries the cluster's token (remembered with their start time, so a reused pid is
        never taken for one of ours)."""
        roots = [p.pid for p in self.procs]
        for pid in {*roots, *descendants(roots), *self._carrying_token()}:
            started = start_time(pid)
            if started is not None:
                self.seen.setdefault(pid, started)
        return {pid for pid, started in self.seen.items() if start_time(pid) == started}

    def logs(self) -> str:
        return " | ".join(f"{p.name}: {p.read_text()[-1500:]}" for p in Path(self.temp_dir).glob("*.log"))

    def stop(self, grace: float = 30) -> None:
        """SIGTERM both ``ray start --block`` groups (they stop their node), then SIGKILL whatever
        process of the cluster is still alive, by pid, until none is left."""
        self.pids()
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.5)
        deadline = time.monotonic() + 30
        while (left := self.pids()) and time.monotonic() < deadline:
            for pid in left:  # again and again: a dying raylet may still have started a worker
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.5)
        for p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        if not self.pids():
            shutil.rmtree(self.temp_dir, ignore_errors=True)
