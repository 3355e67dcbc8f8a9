"""The flow against a Ray cluster it did not start: ``ray start --head`` + one worker node.

The worker node alone offers the custom resource ``restore_worker``; the config makes every actor
request it, so the actors must land there (checked in the cluster's actor table). The flow runs as
``checkout-restore run`` in its own process with ``RAY_ADDRESS`` and the cluster token in its
environment, exactly as an operator runs it; the cluster uses token authentication, and a driver
without the token is refused. Everything started is stopped by pid at the end (tests/raycluster.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from pipeline_frames import write_frames
from raycluster import RayCluster, listeners

from storage.keys import ledger_key, restored_key
from storage.reports import list_runs, load_frames_report
from storage.stores import open_store

pytestmark = pytest.mark.slow  # two Ray nodes, a temporary Prefect server and the priors: ~2 min here

FRAMES = ["lane1/a", "lane1/b", "lane2/c", "lane2/d"]  # batches of 2: both actors get work
RESOURCE = "restore_worker"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    rc = RayCluster(worker_cpus=2, worker_resources={RESOURCE: 2})
    try:
        yield rc.start()
    finally:
        ours = rc.pids()
        rc.stop()
        left = rc.pids()
        assert not left, f"Ray processes left running: {sorted(left)}"
        assert not listeners(ours | left), f"listeners left: {listeners(ours | left)}"


def _config(tmp_path: Path) -> Path:
    data = yaml.safe_load(Path("configs/smoke.yaml").read_text())
    data["restoration"]["batch_size"] = 2
    data["cluster"].update(actors=2, num_cpus=1, resources={RESOURCE: 1})
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_token_required(cluster: RayCluster) -> None:
    assert cluster.query("ray.cluster_resources().get('restore_worker')") == 2.0
    print("cluster listeners:", sorted(listeners(cluster.pids())))  # docs/deploy.md lists what binds where
    no_token = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    no_token["RAY_AUTH_MODE"] = "disabled"  # explicit: never picks up a ~/.ray/auth_token file either
    no_token["RAY_gcs_server_port_wait_time_s"] = "3"  # give up quickly instead of retrying for 20 s
    assert cluster.query("1", env=no_token) is None


def test_flow_on_external_cluster(cluster: RayCluster, tmp_path: Path) -> None:
    inbox, out = tmp_path / "inbox", tmp_path / "out"
    write_frames(open_store(inbox, create=True), FRAMES)
    env = {**cluster.env, "RAY_ADDRESS": cluster.address, "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli.pipeline", "run", "--source", str(inbox), "--dest", str(out),
         "--config", str(_config(tmp_path))],
        env=env, capture_output=True, text=True, timeout=600, check=False, cwd=os.getcwd())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 restored, 0 skipped, 0 quarantined" in proc.stdout, proc.stdout

    # Outputs and ledger complete.
    dest = open_store(out)
    for frame_id in FRAMES:
        assert dest.exists(restored_key(frame_id)) and dest.exists(ledger_key(frame_id)), frame_id
    [run_id] = list_runs(dest)
    rows = load_frames_report(dest, run_id)
    assert sorted(rows["status"]) == ["restored"] * 4

    # The actors ran on the cluster (not an in-process Ray), both on the node with the resource,
    # and released it.
    placed = cluster.query(
        "[(a['ActorClassName'], a['Address']['NodeID']) for a in ray._private.state.actors().values()]")
    nodes = cluster.query("{n['NodeID']: n['Resources'] for n in ray.nodes() if n['Alive']}")
    assert placed is not None and nodes is not None
    workers = [node for cls, node in placed if cls == "RestoreWorker"]
    assert len(workers) == 2, placed
    assert all(RESOURCE in nodes[node] for node in workers), (placed, nodes)
    assert len([n for n in nodes.values() if RESOURCE in n]) == 1  # the head does not offer it
    assert cluster.query(f"ray.available_resources().get({RESOURCE!r})") == 2.0
