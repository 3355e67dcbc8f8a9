"""`checkout-restore dashboard`: registers the subcommand; the server is flows/reports/dashboard.py."""

from __future__ import annotations

import argparse


def add_dashboard_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``dashboard`` subcommand (``func`` = :func:`flows.reports.dashboard.dashboard_main`)."""
    from flows.reports import dashboard

    parser = subparsers.add_parser(
        "dashboard",
        help="serve a destination's reports on 127.0.0.1",
        description="Serve the HTML reports under DEST/reports/ on http://127.0.0.1:PORT/ (Ctrl-C stops).",
    )
    parser.add_argument("--dest", required=True, help="destination URI (path, file:// or s3://)")
    parser.add_argument("--port", type=int, default=dashboard.DEFAULT_PORT,
                        help=f"TCP port on 127.0.0.1 (default {dashboard.DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--screenshot", metavar="PNG", default=None,
                        help="instead of serving: write a screenshot of the newest run's report "
                             f"(headless {dashboard.CHROMIUM}) to PNG and exit")
    parser.set_defaults(func=dashboard.dashboard_main)
    return parser
