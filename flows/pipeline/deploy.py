"""``checkout-restore serve``: the nightly and the on-upload deployments of ``restore-frames``.

* nightly: ``schedule.cron`` in ``schedule.timezone`` from the config;
* on upload: a :class:`DeploymentEventTrigger` on ``checkout.frame.uploaded`` events whose
  ``checkout.source`` label is the served source. Debounce: the trigger is reactive with
  threshold 1 and ``within = upload_debounce_seconds``; Prefect fires on the first event of a
  burst and ignores the rest of that window, and ``schedule_after`` (the same delay) starts the
  run when the window closes, so one run restores everything uploaded during the burst (and any
  frame the run does not see stays pending for the next event or the nightly run).

Both deployments run in the serving process's runner with ``limit=1``: a run that comes due
while another one is restoring waits instead of competing for the same frames. SIGTERM/Ctrl-C
pause the deployments' schedules (Prefect's default for ``serve``).
"""

from __future__ import annotations

from datetime import timedelta

from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.events import DeploymentEventTrigger
from prefect.schedules import Cron

from flows.config import PipelineConfig
from flows.pipeline.flow import restore_frames
from flows.pipeline.upload_events import SOURCE_LABEL, UPLOAD_EVENT

NIGHTLY = "nightly"
ON_UPLOAD = "on-upload"


def upload_trigger(source_uri: str, debounce_s: int) -> DeploymentEventTrigger:
    """The debounced trigger of the on-upload deployment (see the module docstring)."""
    return DeploymentEventTrigger(
        name=f"{ON_UPLOAD} {source_uri}",
        expect={UPLOAD_EVENT},
        match={SOURCE_LABEL: source_uri},
        posture="Reactive",
        threshold=1,
        within=timedelta(seconds=debounce_s),
        schedule_after=timedelta(seconds=debounce_s),
    )


def build_deployments(
    source_uri: str, dest: str, config: PipelineConfig, config_ref: str, *, name_prefix: str = ""
) -> tuple[RunnerDeployment, RunnerDeployment]:
    """(nightly, on-upload) deployments of ``restore-frames`` for one source/destination pair.

    ``source_uri`` must be the canonical store URI (``open_store(...).uri``): upload events carry
    that form. ``config_ref`` is the name or path the runs load (``config`` is it, loaded).
    """
    params = {"source": source_uri, "dest": dest, "config": config_ref}
    common = {
        "parameters": params,
        "entrypoint_type": EntrypointType.MODULE_PATH,
        "tags": ["checkout-restore", f"config:{config.name}"],
    }
    nightly = restore_frames.to_deployment(
        name=f"{name_prefix}{NIGHTLY}",
        schedules=[Cron(config.schedule.cron, timezone=config.schedule.timezone)],
        description=f"Restore everything pending in {source_uri} every night ({config.schedule.cron}, "
        f"{config.schedule.timezone}).",
        **common,
    )
    on_upload = restore_frames.to_deployment(
        name=f"{name_prefix}{ON_UPLOAD}",
        triggers=[upload_trigger(source_uri, config.schedule.upload_debounce_seconds)],
        description=f"Restore new frames of {source_uri} {config.schedule.upload_debounce_seconds} s "
        f"after the first {UPLOAD_EVENT} event of a burst.",
        **common,
    )
    return nightly, on_upload


def serve_deployments(
    source_uri: str, dest: str, config: PipelineConfig, config_ref: str, *, name_prefix: str = ""
) -> None:
    """Register both deployments and run their flow runs here until SIGTERM/Ctrl-C."""
    from prefect import serve

    nightly, on_upload = build_deployments(source_uri, dest, config, config_ref, name_prefix=name_prefix)
    serve(nightly, on_upload, limit=1)
