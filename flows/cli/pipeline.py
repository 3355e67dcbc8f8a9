"""Subcommands ``run``, ``serve``, ``watch``, ``bridge-sqs`` and ``bench-pipeline``.

Registered by :func:`add_pipeline_parsers` (``flows/cli/__init__.py`` lists it). Prefect, Ray and torch
are imported inside the handlers so ``checkout-restore --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline by default


LEASE_WAIT_S = 6 * 3600.0  # --wait-for-lease without a value: a night's worth

CONFIG_HELP = ("config: a YAML path, a name in ./configs/, or a packaged name (default, smoke), "
               "looked up in that order")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_pipeline_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register the pipeline subcommands on the top-level parser's ``subparsers``."""
    p = subparsers.add_parser("run", help="run the restore-frames flow once and print where the report is",
                              description="Restore every pending frame once. Exit codes: 0 succeeded, "
                              "1 failed or over the quarantine threshold (failed_quality), 2 user/permanent "
                              "error.")
    p.add_argument("--source", required=True, help="frames to restore: a folder, file:// or s3:// URI")
    p.add_argument("--dest", required=True, help="where outputs and reports go (must not overlap --source)")
    p.add_argument("--config", default="default", help=CONFIG_HELP)
    p.add_argument("--limit", type=_non_negative, default=None,
                   help="restore at most N pending frames this run (the rest stay pending)")
    p.add_argument("--wait-for-lease", type=float, nargs="?", const=LEASE_WAIT_S, default=0.0, metavar="S",
                   help="when another run holds the destination's lease, wait up to S seconds for it "
                   f"(default with the flag: {LEASE_WAIT_S:g}) instead of exiting 2")
    p.add_argument("--retry-quarantined", action="store_true",
                   help="restore again the frames an earlier run refused for good although unchanged "
                   "(skipped as quarantined_before:<reason> otherwise)")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("serve",
                              help="serve the nightly and on-upload deployments (until Ctrl-C / SIGTERM)")
    p.add_argument("--source", required=True, help="the store to restore from (folder, file:// or s3:// URI)")
    p.add_argument("--dest", required=True, help="where outputs and reports go")
    p.add_argument("--config", default="default", help=CONFIG_HELP)
    p.add_argument("--name-prefix", default="", help="prefix of the deployment names (one pair per source)")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("watch", help="poll a store, emit upload events for new frames")
    p.add_argument("--source", required=True, help="the store to watch (the source `serve` was given)")
    p.add_argument("--state", type=Path, default=None, help="seen-keys state file (default: in ~/.cache)")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between polls")
    p.add_argument("--once", action="store_true", help="poll once and exit")
    p.add_argument("--baseline", action="store_true", help="first poll records existing frames silently")
    p.add_argument("--max-events", type=int, default=1000, help="events per poll at most")
    p.add_argument("--check-changes", action="store_true",
                   help="HEAD every frame each poll to catch overwritten objects (costly on big stores)")
    p.set_defaults(func=cmd_watch)

    p = subparsers.add_parser("bridge-sqs", help="turn S3 ObjectCreated notifications from SQS into events")
    p.add_argument("--queue-url", required=True, help="SQS queue receiving the bucket's notifications")
    p.add_argument("--source", required=True, help="the served s3:// source; other keys are ignored")
    p.add_argument("--region", default=None, help="SQS region (default: the AWS configuration's)")
    p.add_argument("--wait", type=int, default=20, help="long-poll seconds (0-20)")
    p.add_argument("--once", action="store_true", help="one long poll, then exit")
    p.set_defaults(func=cmd_bridge_sqs)

    p = subparsers.add_parser("bench-pipeline", help="frames/s of the Ray fan-out for 1 and 2 actors")
    p.add_argument("--frames", type=int, default=16, help="synthetic frames to restore per actor count")
    p.add_argument("--size", type=int, default=64, help="side of the square synthetic frames")
    p.add_argument("--working-size", type=int, default=64, help="kernel-estimation region")
    p.add_argument("--steps", type=int, help="sampler steps (default: 20; with --sizes: the config's)")
    p.add_argument("--batch-size", type=int, default=4, help="frames per vectorised batch")
    p.add_argument("--actors", default="1,2", help="comma-separated actor counts to measure")
    p.add_argument("--config", help="base config (the options above override it); default: smoke, "
                   "or default with --sizes")
    p.add_argument("--sizes", help="WxH list, e.g. 320x320,640x480,1920x1080: s/frame and peak RSS of one "
                   "frame per size restored at native resolution (FrameRestorer, fresh process per size)")
    p.add_argument("--device", default="cpu", help="with --sizes: torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=2, help="with --sizes: torch threads")
    p.set_defaults(func=cmd_bench_pipeline)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def _preflight(args: argparse.Namespace, *, lease: bool) -> None:
    """:func:`check_run`; a failure still leaves its red row on the destination's index where it
    can (not for a held lease: that run owns the index now; not for overlapping stores)."""
    from flows.pipeline.preflight import check_run

    try:
        check_run(args.source, args.dest, args.config, lease=lease)
    except Exception as exc:
        from storage.errors import OverlappingStoresError
        from storage.lease import LeaseHeldError

        if not isinstance(exc, LeaseHeldError | OverlappingStoresError):
            from flows.pipeline.run_report import record_preflight_failure

            record_preflight_failure(args.source, args.dest, args.config, exc)
        raise


def cmd_run(args: argparse.Namespace) -> int:
    """Preflight (config, stores: seconds, nothing created), then the flow. Exit 0 / 1 / 2."""
    wait_s = getattr(args, "wait_for_lease", 0.0)
    # raises a permanent error before anything starts (the lease too, unless asked to wait for it)
    _preflight(args, lease=wait_s <= 0)
    from prefect.exceptions import CancelledRun

    from flows.pipeline import supervisor
    from flows.pipeline.flow import QualityGateError, restore_frames

    if not getattr(args, "debug", False):
        _one_line_console_logs()

    try:
        summary = restore_frames(source=args.source, dest=args.dest, config=args.config, limit=args.limit,
                                 lease_wait_s=wait_s,
                                 retry_quarantined=getattr(args, "retry_quarantined", False))
    except QualityGateError as exc:
        summary = exc.summary
    except (CancelledRun, supervisor.RunCancelled) as exc:
        print(f"status:      cancelled\n{' '.join(str(exc).split())}", flush=True)
        return 128 + (supervisor.last_signum or signal.SIGTERM)
    except Exception as exc:
        report = getattr(exc, "report_uri", None)
        if report:
            print(f"status:      failed\nreport:      {report}", flush=True)
        raise
    c = summary["counts"]
    skips = summary.get("skip_reasons") or {}
    print(f"run id:      {summary['run_id']}")
    print(f"flow run id: {summary['flow_run_id']}")
    print(f"status:      {summary.get('status', 'succeeded')}")
    print(f"frames:      {c['restored']} restored, {c['skipped']} skipped, {c['quarantined']} quarantined"
          + (f", {summary['deferred']} left for a later run (--limit)" if summary["deferred"] else "")
          + (f" ({n} unsupported files)" if (n := skips.get("unsupported_format")) else ""))
    codes = summary.get("codes") or {}
    if codes.get("frames"):
        print(f"codes:       readable before {codes['before']}, after {codes['after']}"
              + (f" (lost on {codes['frames_lost']} frames)" if codes.get("frames_lost") else ""))
    if fallback := summary.get("fallbacks"):
        reasons = ", ".join(f"{k} {v}" for k, v in (summary.get("fallback_reasons") or {}).items())
        print(f"guard:       {fallback} restored frames shipped unrestored (fallback: {reasons})")
    print(f"report:      {summary['report_uri']}", flush=True)
    for warning in summary.get("warnings") or ():
        print(f"checkout-restore: warning: {warning}", file=sys.stderr)
    if summary.get("status") == "failed_quality":
        from flows.reports.values import quality_gate_text

        print(f"checkout-restore: error: quality gate: {quality_gate_text(summary)}", file=sys.stderr)
        return 1
    return 0


class _NoTraceback(logging.Filter):
    """Console records keep their one-line message; the traceback goes only with ``--debug``."""

    def filter(self, record: logging.LogRecord) -> bool:
        # In place (Python 3.11 filters cannot return a copy); Prefect's API handler sits on the
        # child logger and has already sent the full record to the server by now.
        record.exc_info = None
        record.exc_text = None
        return True


def _one_line_console_logs() -> None:
    """Prefect's console handlers print a failed flow's traceback; ``run`` says it in one line."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(_NoTraceback())


def cmd_serve(args: argparse.Namespace) -> int:
    """Validate first; then serve, retrying with backoff while the Prefect API is unreachable.
    SIGTERM / Ctrl-C stop cleanly also while waiting (Prefect's runner handles them once serving)."""
    from flows.pipeline.daemon import Backoff
    from flows.pipeline.preflight import check_run

    checked = check_run(args.source, args.dest, args.config)
    from flows.pipeline.deploy import serve_deployments

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("checkout_restore.serve")
    backoff = Backoff("Prefect API", log)

    def interrupt(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while True:
            try:
                # upload events carry the canonical source URI
                serve_deployments(checked.source_uri, args.dest, checked.config, args.config,
                                  name_prefix=args.name_prefix)
                return 0
            except (OSError, ConnectionError, TimeoutError) as exc:
                delay = backoff.failed(exc)
            except Exception as exc:  # httpx/Prefect wrap connection failures in their own types
                if "connect" not in type(exc).__name__.lower() and "connect" not in str(exc).lower():
                    raise
                delay = backoff.failed(exc)
            time.sleep(delay)
    except KeyboardInterrupt:
        log.info("stopped")
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def cmd_watch(args: argparse.Namespace) -> int:
    from flows.pipeline.upload_events import prefect_emitter
    from flows.pipeline.watch import WatchOptions, watch
    from storage.stores import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(args.source, read_only=True)
    options = WatchOptions(state_path=args.state, interval_s=args.interval, once=args.once,
                           baseline=args.baseline, max_events=args.max_events,
                           check_changes=args.check_changes)
    sent = watch(store, prefect_emitter, options, stop=_stop_on_signals())
    print(f"{sent} events sent")
    return 0


def cmd_bridge_sqs(args: argparse.Namespace) -> int:
    import boto3

    from flows.errors import UserError
    from flows.pipeline.bridge_sqs import bridge, check_queue
    from flows.pipeline.upload_events import prefect_emitter

    if not 0 <= args.wait <= 20:
        raise UserError(f"--wait must be 0..20 seconds (SQS long-poll limit), got {args.wait}")
    if not args.source.startswith("s3://"):
        raise UserError("--source must be an s3:// URI (the bucket that notifies the queue), "
                        f"got {args.source!r}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sqs = boto3.client("sqs", region_name=args.region)
    check_queue(sqs, args.queue_url)
    sent = bridge(sqs, args.queue_url, args.source, prefect_emitter, wait_s=args.wait, once=args.once,
                  stop=_stop_on_signals())
    print(f"{sent} events sent")
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    if args.sizes:
        from flows.evaluation.bench_sizes import SizeBenchError, bench_sizes, parse_sizes, table

        try:
            sizes = parse_sizes(args.sizes)
        except SizeBenchError as exc:
            raise SystemExit(f"bench-pipeline: {exc}") from exc
        config = args.config or "default"
        rows = bench_sizes(sizes, config, args.threads, args.device, args.steps)
        print(table(rows, config))
        return 0
    args.config = args.config or "smoke"
    args.steps = args.steps or 20
    counts = [int(a) for a in args.actors.split(",") if a.strip()]
    if not counts or min(counts) < 1:
        raise SystemExit("--actors needs positive integers, e.g. 1,2")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"bench-pipeline: {args.frames} frames {args.size}x{args.size}, working size {args.working_size}, "
          f"{args.steps} steps, batch {args.batch_size}, {os.cpu_count()} CPUs (load average {load})",
          flush=True)
    from flows.evaluation.pipeline_bench import bench_pipeline

    results = bench_pipeline(args.frames, args.size, args.working_size, args.steps, args.batch_size, counts,
                             args.config)
    print("| actors | frames | working size | steps | start-up s | restore s | sampler s/frame | frames/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['actors']} | {r['frames']} | {r['working_size']} | {r['steps']} | {r['startup_s']:.1f} "
              f"| {r['restore_s']:.1f} | {r['actor_s_per_frame']:.2f} | {r['frames_per_s']:.3f} |")
    sys.stdout.flush()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m flows.cli.pipeline``): the pipeline subcommands only."""
    parser = argparse.ArgumentParser(prog="checkout-restore", description="pipeline subcommands")
    add_pipeline_parsers(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
