"""The command line: `--version`/`--help` without heavy imports, help on every option, and user
errors as one line with exit code 2 — before any server, folder or cluster starts."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import cli
from storage.reports import load_run_index
from storage.stores import open_store

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "prefect", "ray", "pandas", "matplotlib", "boto3")


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None
         ) -> tuple[subprocess.CompletedProcess[str], float]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env=full, cwd=cwd or REPO, timeout=120, check=False)
    return done, time.perf_counter() - t0


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["run", "--help"], ["dashboard", "--help"],
                                  ["watch", "--help"]])
def test_help_and_version_import_nothing_heavy(args: list[str]) -> None:
    code = ("import sys, runpy; sys.argv = ['checkout-restore', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('flows.cli', run_name='__main__')\n"
            "except SystemExit as e:\n    print('EXIT', e.code)\n"
            f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=REPO, check=False)
    assert "EXIT 0" in done.stdout, done.stderr
    assert "HEAVY []" in done.stdout
    if args == ["--version"]:
        assert done.stdout.startswith("checkout-restore ")


def _walk(parser: argparse.ArgumentParser, path: str = "checkout-restore"):  # type: ignore[no-untyped-def]
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def test_every_option_of_every_command_has_help() -> None:
    missing = []
    for path, parser in _walk(cli.build_parser(full=True)):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def test_command_table_matches_the_real_parsers() -> None:
    """`--help` lists commands from the literal table; it must say what the modules register."""
    full = cli.build_parser(full=True)
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    real = {c.dest: c.help for c in sub._choices_actions}
    table = {name: text for _, _, commands in cli.SUBCOMMANDS for name, text in commands.items()}
    assert real == table


def test_debug_flag_anywhere_is_accepted(tmp_path: Path) -> None:
    done, _ = _run("run", "--source", str(tmp_path / "nope"), "--dest", str(tmp_path / "out"), "--debug")
    assert done.returncode != 0 and "Traceback" in done.stderr  # --debug shows the traceback


@pytest.mark.parametrize(("case", "needle"), [
    ("missing_folder", "does not exist"),
    ("bad_uri", "unsupported store URI scheme"),
    ("unknown_config", "no config 'nightly'"),
    ("bad_enum", "restoration.kernel_strategy"),
    ("yaml_syntax", "YAML syntax error"),
    ("overlap", "overlap"),
])
def test_user_errors_are_one_line_exit_2_and_create_nothing(tmp_path: Path, case: str, needle: str) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    dest = tmp_path / "out"
    config = "smoke"
    source = str(inbox)
    if case == "missing_folder":
        source = str(tmp_path / "no-such-inbox")
    elif case == "bad_uri":
        source = "ftp://host/frames"
    elif case == "unknown_config":
        config = "nightly"
    elif case == "bad_enum":
        config = str(tmp_path / "site.yaml")
        Path(config).write_text("restoration:\n  kernel_strategy: bogus\n")
    elif case == "yaml_syntax":
        config = str(tmp_path / "site.yaml")
        Path(config).write_text("restoration:\n  steps: [3\n")
    elif case == "overlap":
        dest = inbox / "out"
    done, _ = _run("run", "--source", source, "--dest", str(dest), "--config", config,
                   env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})  # would fail loudly if reached
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("checkout-restore: error: ") and needle in lines[0], lines
    assert "Traceback" not in done.stderr and done.stdout == ""
    assert not dest.exists()  # validated before anything was created
    if case in ("bad_enum", "yaml_syntax"):
        assert f"{config}:{2 if case == 'bad_enum' else 3}" in lines[0]  # file and line


@pytest.mark.parametrize("case", ["missing_bucket", "missing_credentials"])
def test_missing_bucket_or_credentials_fail_fast_with_one_line(tmp_path: Path, s3_env: object, case: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "AWS_EC2_METADATA_DISABLED": "true"}
    if case == "missing_credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name, raising=False)
        env |= {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_CONFIG_FILE": str(tmp_path / "none")}
    done, seconds = _run("run", "--source", "s3://no-such-bucket-7f3e/frames", "--dest",
                         str(tmp_path / "out"), "--config", "smoke", env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    needle = "bucket does not exist" if case == "missing_bucket" else "no AWS credentials"
    assert needle in lines[0] and "s3://no-such-bucket-7f3e/frames" in lines[0]
    assert not (tmp_path / "out").exists()
    print(f"{case}: exit 2 after {seconds:.1f} s wall")  # measured in the notes, not asserted


def test_missing_source_bucket_leaves_a_failed_row_on_a_writable_destination(tmp_path: Path,
                                                                              s3_env: object) -> None:
    dest = tmp_path / "out"
    dest.mkdir()  # the nightly destination exists and takes writes
    done, seconds = _run("run", "--source", "s3://no-such-bucket-7f3e/frames", "--dest", str(dest),
                         "--config", "smoke", env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "bucket does not exist" in lines[0], done.stderr
    [row] = load_run_index(open_store(dest))
    assert row["status"] == "failed"
    summary = json.loads((dest / "reports" / row["run_id"] / "summary.json").read_text())
    assert summary["error"]["type"] == "StoreAccessError"
    assert "bucket does not exist" in summary["error"]["message"]
    assert (dest / "reports" / "index.html").is_file()
    print(f"missing source bucket: exit 2 after {seconds:.1f} s wall, failed row on the destination's index")
