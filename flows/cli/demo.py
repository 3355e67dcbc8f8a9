"""`checkout-restore demo`: the embedded default, end to end, on a local folder.

Writes a handful of synthetic degraded checkout frames (motion blur, Gaussian blur, a hand over
the label) plus one corrupt upload into `<dir>/inbox`, runs the restore-frames flow into
`<dir>/out` with the shipped priors, and prints where the report is. Rerunning skips finished
frames (the ledger), exactly as production reruns do.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def write_inbox(inbox: Path, frames_per_suite: int, size: int) -> int:
    """Synthetic frames in the sidecar layout (benchmark generator, held-out seeds) + one corrupt file."""
    from flows.evaluation.suites import BenchSpec, generate_set
    from flows.fonts import SYSTEM_FONT_GLOBS, find_fonts
    from storage.stores import open_store

    store = open_store(inbox, create=True)
    spec = BenchSpec(frames_per_suite=frames_per_suite, size=size, fonts=tuple(find_fonts(SYSTEM_FONT_GLOBS)))
    records = generate_set(store, spec, progress=False)
    if not store.exists("uploads/broken-upload.jpg"):
        # a camera upload cut off mid-transfer: quarantined with its reason, never a failed run
        store.put("uploads/broken-upload.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00truncated")
    return len(records) + 1


def add_demo_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser("demo", help="restore a synthetic local inbox end to end (embedded default)")
    p.add_argument("--dir", type=Path, default=Path("runs/demo"), help="inbox/ and out/ go here")
    p.add_argument("--frames-per-suite", type=int, default=2, help="synthetic frames per degradation")
    p.add_argument("--size", type=int, default=96, help="side of the synthetic frames")
    p.add_argument("--config", default="default", help="pipeline config name or YAML path")
    p.set_defaults(func=demo_main)
    return p


def demo_main(args: argparse.Namespace) -> int:
    from flows.pipeline.flow import restore_frames

    inbox, out = args.dir / "inbox", args.dir / "out"
    n = write_inbox(inbox, args.frames_per_suite, args.size)
    print(f"inbox:  {inbox.resolve()} ({n} uploads, one of them corrupt)")
    summary = restore_frames(source=str(inbox.resolve()), dest=str(out.resolve()), config=args.config)
    c = summary["counts"]
    print(f"run id: {summary['run_id']}")
    print(f"frames: {c['restored']} restored, {c['skipped']} skipped, {c['quarantined']} quarantined")
    print(f"report: {summary['report_uri']}")
    print(f"browse: checkout-restore dashboard --dest {out.resolve()}")
    return 0
