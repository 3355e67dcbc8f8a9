"""`checkout-restore` command line: one argparse dispatcher over the subcommand modules.

Each module exposes `add_*_parser(subparsers)` which registers its subcommand(s) and sets
`func`; the literal table below is the whole registry.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, function adding its subcommands) — a literal table, no plugin discovery.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("flows.train_cli", "add_train_parser"),
    ("flows.dashboard", "add_dashboard_parser"),
    ("flows.pipeline_cli", "add_pipeline_parsers"),
    ("flows.demo", "add_demo_parser"),
    ("flows.bench", "add_bench_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="checkout-restore",
        description="Blind restoration of checkout frames (CVSA on critically-damped Langevin diffusion).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, adder in SUBCOMMANDS:
        getattr(importlib.import_module(module), adder)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
