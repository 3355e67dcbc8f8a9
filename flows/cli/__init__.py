"""`checkout-restore` command line: one argparse dispatcher over the subcommand modules of this
package (flows/cli/: every command-line entry point in one place; the work they start lives in
flows/pipeline/, flows/evaluation/, flows/reports/ and restoration/).

Each module exposes `add_*_parser(subparsers)` which registers its subcommand(s) and sets
`func`. The literal table below is the whole registry, with each command's one-line help, so
`--help` and `--version` import no subcommand module (no torch, Prefect or Ray): only the module
of the command being run is imported.

Errors: a user or permanent error (bad config, URI, missing bucket or credentials...) prints one
line `checkout-restore: error: ...` and exits 2; any other failure prints one line and exits 1.
`--debug` (before or after the command) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# (module, function adding its subcommands, {command: help}) — a literal table, no discovery.
SUBCOMMANDS: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("flows.cli.train", "add_train_parser", {"train": "train a CLD prior (HSM) on project-generated data"}),
    ("flows.cli.dashboard", "add_dashboard_parser",
     {"dashboard": "serve a destination's reports on 127.0.0.1"}),
    ("flows.cli.pipeline", "add_pipeline_parsers", {
        "run": "run the restore-frames flow once and print where the report is",
        "serve": "serve the nightly and on-upload deployments (until Ctrl-C / SIGTERM)",
        "watch": "poll a store, emit upload events for new frames",
        "bridge-sqs": "turn S3 ObjectCreated notifications from SQS into events",
        "bench-pipeline": "frames/s of the Ray fan-out for 1 and 2 actors",
    }),
    ("flows.cli.demo", "add_demo_parser",
     {"demo": "restore a synthetic local inbox end to end (embedded default)"}),
    ("flows.cli.bench", "add_bench_parser",
     {"bench": "benchmark restoration methods on a deterministic set"}),
    ("flows.cli.restore", "add_restore_parser", {"restore": "restore one image for a known task (sr4, ...)"}),
)

EXIT_FAILED = 1  # the run failed (or ended failed_quality)
EXIT_USAGE = 2  # user / permanent error: fix the command, config or credentials, then rerun


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("checkout-restore")
    except PackageNotFoundError:
        return "unknown"


class _Version(argparse.Action):
    """``--version``: looks the version up only when asked (importlib.metadata costs ~0.1 s)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"{parser.prog} {version()}")
        parser.exit()


def build_parser(command: str | None = None, *, full: bool = False) -> argparse.ArgumentParser:
    """The parser with ``command``'s options (only its module is imported; the other commands are
    listed by name and help). ``full=True`` imports every module (tests of the whole CLI)."""
    parser = argparse.ArgumentParser(
        prog="checkout-restore",
        description="Blind restoration of checkout frames (CVSA on critically-damped Langevin diffusion).",
    )
    parser.add_argument("--version", action=_Version, nargs=0, help="print the version and exit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, adder, commands in SUBCOMMANDS:
        if full or command in commands:
            getattr(importlib.import_module(module), adder)(sub)
        else:  # listed in --help without importing the module
            for name, help_text in commands.items():
                sub.add_parser(name, help=help_text, add_help=False)
    return parser


def _command(argv: Sequence[str]) -> str | None:
    known = {name for _, _, commands in SUBCOMMANDS for name in commands}
    return next((a for a in argv if not a.startswith("-")), None) if any(a in known for a in argv) else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]
    if debug:
        argv.remove("--debug")
    args = build_parser(_command(argv)).parse_args(argv)
    args.debug = debug
    # Prefect's temporary server gets 20 s to start by default: too little on a busy host (seen:
    # the demo failing while other jobs loaded 2 cores). Set before Prefect is imported; the
    # operator's own value wins.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if debug:
        return int(args.func(args) or 0)
    from flows.errors import UserError, describe

    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("checkout-restore: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        user = describe(exc)
        print(f"checkout-restore: error: {user or _one_line(exc)}", file=sys.stderr)
        if user is None:
            print("checkout-restore: rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, UserError) or user is not None else EXIT_FAILED


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    return f"{type(exc).__name__}: {text[:500]}"

