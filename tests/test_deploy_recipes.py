"""The deployment recipes in deploy/, parsed and checked against the code they deploy.

No Docker engine, Kubernetes API or AWS account is available to the tests, so: the Dockerfile is
parsed (``dockerfile-parse``), the KubeRay manifest is checked at schema level (kinds, required
fields, the GPU worker group and its resource matching configs/gpu.yaml), ``prefect.yaml`` goes
through Prefect's own ``prefect deploy`` models (deployments, cron schedule, event trigger) and is
compared with ``checkout-restore serve``'s deployments, and the S3 notification configuration is
applied to moto's S3 for real and its notifications bridged into upload events.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from string import Template

import boto3
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from flows.config import load_config
from flows.pipeline.bridge_sqs import bridge_once
from flows.pipeline.deploy import upload_trigger
from flows.pipeline.upload_events import SOURCE_LABEL
from storage.stores import open_store

DEPLOY = Path("deploy")
SECRET_NAME = re.compile(r"SECRET|TOKEN|PASSWORD|ACCESS_KEY|SESSION", re.I)


# -- container image ---------------------------------------------------------------------------


def _stages(parser: DockerfileParser) -> list[list[dict]]:
    stages: list[list[dict]] = []
    for instr in parser.structure:
        if instr["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instr)
    return stages


def test_dockerfile_parses_non_root_with_entrypoint_and_no_credentials() -> None:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    assert parser.baseimage == "python:3.11-slim-bookworm"  # the default BASE_IMAGE (CPU)
    args = {i["value"].split("=", 1)[0] for i in parser.structure if i["instruction"] == "ARG"}
    assert {"BASE_IMAGE", "TORCH_INDEX_URL"} <= args  # CUDA builds: a build argument, same file
    cpu_index = next(i["value"] for i in parser.structure
                     if i["instruction"] == "ARG" and i["value"].startswith("TORCH_INDEX_URL="))
    assert cpu_index.endswith("/whl/cpu")

    build, final = _stages(parser)[0], _stages(parser)[-1]
    users = [i["value"] for i in final if i["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0") and not users[-1].startswith("0:")
    [entry] = [i for i in final if i["instruction"] == "ENTRYPOINT"]
    assert json.loads(entry["value"]) == ["checkout-restore"]
    # The checkpoints are installed and loaded during the build (it fails without them).
    assert any(i["instruction"] == "RUN" and "load_shipped('image')" in i["value"]
               and "load_shipped('kernel')" in i["value"] for i in build)

    # No credentials: no ENV/ARG named like a secret, no AWS key material anywhere.
    for instr in parser.structure:
        if instr["instruction"] in ("ENV", "ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instr["value"])
            assert not [n for n in names if SECRET_NAME.search(n)], instr
    assert "AWS_" not in parser.content and not re.search(r"AKIA[0-9A-Z]{16}", parser.content)

    # Every path the build copies from the context exists and is let through the ignore file.
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    for instr in build:
        if instr["instruction"] == "COPY" and "--from" not in instr["value"]:
            for src in instr["value"].split()[:-1]:
                assert Path(src).exists(), src
                assert f"!{src}" in ignore, src
    assert "**" in ignore  # everything else (.venv, runs/, .git) stays out of the context


# -- KubeRay -------------------------------------------------------------------------------------


def _containers(template: dict) -> list[dict]:
    containers = template["spec"]["containers"]
    assert containers and all(c.get("name") and c.get("image") for c in containers)
    return containers


def test_kuberay_raycluster_gpu_worker_group_matches_the_gpu_config() -> None:
    doc = yaml.safe_load((DEPLOY / "kuberay" / "raycluster.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["rayVersion"].startswith("2.60") and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # no actors on the head
    images = {c["image"] for c in _containers(head["template"])}

    cfg = load_config("gpu").cluster
    [group] = spec["workerGroupSpecs"]
    assert group["groupName"] and 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    [worker] = _containers(group["template"])
    images.add(worker["image"])
    assert len(images) == 1  # one image for head and workers
    gpus = int(group["rayStartParams"]["num-gpus"])
    assert gpus >= 1 and worker["resources"]["limits"]["nvidia.com/gpu"] == str(gpus)
    # KubeRay passes `resources` to `ray start` as a quoted JSON string.
    offered = json.loads(json.loads(group["rayStartParams"]["resources"]))
    assert cfg.num_gpus >= 1 and set(cfg.resources) <= set(offered)
    assert all(offered[k] >= v for k, v in cfg.resources.items())
    # The configured actors fit the autoscaling bound (one actor per GPU).
    assert cfg.actors <= group["maxReplicas"] * gpus / cfg.num_gpus

    for template in (head["template"], group["template"]):
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in _containers(template):
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            assert "value" not in env["RAY_AUTH_TOKEN"] and env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]


# -- Prefect work pool ---------------------------------------------------------------------------


def test_prefect_yaml_deployments_match_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.cli.deploy._schedules import _schedule_config_to_deployment_schedule
    from prefect.cli.deploy._triggers import _initialize_deployment_triggers
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.templating import apply_values

    source = open_store(tmp_path / "inbox", create=True).uri  # the canonical URI events carry
    env = {"CHECKOUT_SOURCE": source, "CHECKOUT_DEST": str(tmp_path / "out")}
    for name, value in env.items():  # `prefect deploy` fills {{ $NAME }} from the environment
        monkeypatch.setenv(name, value)
    raw = yaml.safe_load((DEPLOY / "prefect.yaml").read_text())
    model = PrefectYamlModel.model_validate(raw)
    assert model.pull and "set_working_directory" in next(iter(model.pull[0]))
    configs = {d.name: apply_values(d.model_dump(exclude_unset=True, mode="json"), env, remove_notset=False)
               for d in model.deployments}
    assert set(configs) == {"nightly", "on-upload"}  # the names `serve` registers
    cfg = load_config("gpu")
    for dc in configs.values():
        flow = load_flow_from_entrypoint(dc["entrypoint"])
        assert flow.name == "restore-frames"
        assert dc["parameters"] == {"source": source, "dest": env["CHECKOUT_DEST"], "config": "gpu"}
        assert dc["work_pool"]["name"] and dc["work_pool"]["work_queue_name"]
        for name, value in dc["work_pool"].get("job_variables", {}).get("env", {}).items():
            assert not SECRET_NAME.search(name), (name, value)  # secrets come from the worker's env

    [sched] = [_schedule_config_to_deployment_schedule(s) for s in configs["nightly"]["schedules"]]
    assert (sched["schedule"].cron, sched["schedule"].timezone) == (cfg.schedule.cron, cfg.schedule.timezone)
    assert not configs["nightly"].get("triggers")

    [trigger] = _initialize_deployment_triggers("on-upload", configs["on-upload"]["triggers"])
    want = upload_trigger(source, cfg.schedule.upload_debounce_seconds)
    assert trigger.match.model_dump() == {SOURCE_LABEL: source}
    for attr in ("expect", "posture", "threshold", "within", "schedule_after"):
        assert getattr(trigger, attr) == getattr(want, attr), attr
    assert not configs["on-upload"].get("schedules")


# -- S3 -> SQS -> bridge-sqs ---------------------------------------------------------------------


def _fill(path: Path, **values: str) -> str:
    text = Template(path.read_text()).substitute(values)  # envsubst's ${NAME} syntax
    assert "${" not in text
    return text


def test_s3_notification_recipe_delivers_frames_under_the_prefix(s3_bucket: str) -> None:
    s3, sqs = boto3.client("s3"), boto3.client("sqs")
    queue = sqs.create_queue(QueueName=f"q-{s3_bucket}")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    policy = json.loads(_fill(DEPLOY / "s3-sqs" / "queue-policy.json", QUEUE_ARN=arn, BUCKET=s3_bucket,
                              ACCOUNT="123456789012"))
    [stmt] = policy["Statement"]
    assert stmt["Principal"] == {"Service": "s3.amazonaws.com"} and stmt["Action"] == "sqs:SendMessage"
    assert stmt["Condition"]["ArnEquals"]["aws:SourceArn"] == f"arn:aws:s3:::{s3_bucket}"
    sqs.set_queue_attributes(QueueUrl=queue, Attributes={"Policy": json.dumps(policy)})
    notification = json.loads(_fill(DEPLOY / "s3-sqs" / "notification.json", QUEUE_ARN=arn, PREFIX="frames"))
    s3.put_bucket_notification_configuration(Bucket=s3_bucket, NotificationConfiguration=notification)

    inbox = open_store(f"s3://{s3_bucket}/frames")
    inbox.put("lane1/a.png", b"frame")
    open_store(f"s3://{s3_bucket}/other").put("b.png", b"not ours")  # outside the prefix: no message
    sent: list[str] = []
    for _ in range(4):
        bridge_once(sqs, queue, inbox.uri, lambda batch: sent.extend(u.key for u in batch), wait_s=1)
    assert sent == ["lane1/a.png"]

    manifest = yaml.safe_load(_fill(DEPLOY / "s3-sqs" / "bridge-sqs.yaml", QUEUE_URL=queue, BUCKET=s3_bucket,
                                    PREFIX="frames", REGION="us-east-1", PREFECT_API_URL="http://prefect:4200/api"))
    assert manifest["apiVersion"] == "apps/v1" and manifest["kind"] == "Deployment"
    spec = manifest["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    [c] = spec["template"]["spec"]["containers"]
    assert c["args"][:1] == ["bridge-sqs"] and c["args"][c["args"].index("--source") + 1] == inbox.uri
    assert not [e for e in c.get("env", []) if SECRET_NAME.search(e["name"])]
