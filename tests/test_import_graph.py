"""The import graph of the project's packages: no cycle, and the layers of docs/design.md §2.

Every ``import`` / ``from ... import`` anywhere in a module counts, including those inside
functions (a function-level import that closes a cycle is still a cycle: it only moves the
failure to the first call). The graph is read from the source with :mod:`ast`; nothing is imported.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "storage", "restoration")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of the project's packages: dotted name -> file."""
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` (a module or ``module.attribute``) lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Project modules that module ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                pkg = name.split(".") if is_package else name.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join([*pkg, base] if base else pkg)
            # `from pkg import sub` names the submodule; `from pkg import attr` the package itself
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            hit = _resolve(target, known)
            if hit is not None and hit != name:
                found.add(hit)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    # Only what a module names counts: importing a.b.c also runs a/__init__ first, but a package
    # that imports its own submodules is the ordinary layout, not a cycle.
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycle(edges: dict[str, set[str]]) -> list[str]:
    """One import cycle (``[a, b, ..., a]``), or [] when the graph has none."""
    try:
        TopologicalSorter(edges).prepare()
    except CycleError as exc:
        return list(exc.args[1])
    return []


def test_the_detector_finds_a_cycle_and_passes_a_chain() -> None:
    found = cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert found[0] == found[-1] and set(found) == {"a", "b", "c"}
    assert cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_function_level_imports_count(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from flows.config import load_config\n    import storage.keys\n")
    known = {"flows.config": src, "storage.keys": src, "m": src}
    assert imports_of("m", src, known) == {"flows.config", "storage.keys"}


def test_no_import_cycle() -> None:
    found = cycle(graph())
    assert found == [], "import cycle (function-level imports included): " + " -> ".join(found)


# (importer prefix, forbidden prefix, why)
LAYERS = (
    ("restoration", "flows", "restoration/ is tensors only: it never imports the pipeline (design §2)"),
    ("restoration", "storage", "restoration/ reads no file or store (design §2)"),
    ("storage", "flows", "storage/ is bytes and tables under the flows (design §2)"),
    ("storage", "restoration", "storage/ has no torch model code (design §2)"),
    ("flows.evaluation", "flows.pipeline", "quality benchmarks measure the core, not the flow"),
    ("flows.reports", "flows.pipeline", "reports render tables; the flow calls them"),
    ("flows.pipeline", "flows.evaluation", "the product never runs the benchmarks"),
    ("flows.reports", "flows.evaluation", "reports render the pipeline's tables, not the bench's"),
    ("flows.pipeline", "flows.cli", "command-line entry points sit on top, nothing imports them"),
    ("flows.evaluation", "flows.cli", "command-line entry points sit on top, nothing imports them"),
    ("flows.reports", "flows.cli", "command-line entry points sit on top, nothing imports them"),
)


#: throughput measurements of the pipeline itself: they run the flow / the actors on purpose
MEASURE_THE_PIPELINE = frozenset({"flows.evaluation.scale_run", "flows.evaluation.pipeline_bench"})


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


@pytest.mark.parametrize(("importer", "forbidden", "why"), LAYERS)
def test_layers(importer: str, forbidden: str, why: str) -> None:
    bad = sorted(f"{a} -> {b}" for a, targets in graph().items()
                 if _under(a, importer) and a not in MEASURE_THE_PIPELINE
                 for b in targets if _under(b, forbidden))
    assert bad == [], f"{why}: {bad}"
