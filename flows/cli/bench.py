"""`checkout-restore bench`: registers the benchmark's subcommand (the runner and its flags live in
flows/evaluation/bench.py, which `python -m flows.evaluation.bench` also runs)."""

from __future__ import annotations

import argparse


def add_bench_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `checkout-restore bench` on the CLI dispatcher."""
    from flows.evaluation import bench

    p = subparsers.add_parser("bench", help="benchmark restoration methods on a deterministic set",
                              description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_bench_arguments(p)
    p.set_defaults(func=bench.bench_main)
    return p
