"""The package layout is the architecture (README "Architecture"): `api` on top and nothing below importing it,
the engine worker depending only on the artifact format, the protocol, the guard components and the metric
definitions, and no import cycles between packages. Read from the source (every import, lazy ones included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "guard_service"
ENTRY_POINTS = {"cli"}  # the command line starts the server: it may import anything
WORKER_MAY_IMPORT = {"worker", "guards", "policy", "protocol", "metrics", "embedding", "config", "packaged",
                     "validation", "errors"}


def unit(module: str) -> str:
    """guard_service.api.routes_openai -> api; guard_service.config -> config."""
    return module.split(".")[1]


def imports() -> dict[str, set[str]]:
    """Package (or top-level module) -> the packages it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        here = unit(".".join(rel.parts)) if len(rel.parts) > 1 else rel.parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            for name in names:
                if name.startswith("guard_service.") and unit(name) != here:
                    graph.setdefault(here, set()).add(unit(name))
    return graph


def test_nothing_below_api_imports_it() -> None:
    offenders = {pkg for pkg, deps in imports().items() if "api" in deps and pkg not in ENTRY_POINTS}
    assert not offenders, offenders


def test_the_worker_depends_only_on_what_crosses_the_process_boundary() -> None:
    assert imports().get("worker", set()) <= WORKER_MAY_IMPORT, imports()["worker"] - WORKER_MAY_IMPORT


def test_no_import_cycles_between_packages() -> None:
    graph = imports()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            for nxt in graph.get(node, ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted({tuple(sorted((a, b))) for a, deps in graph.items() for b in deps if reaches(b, a)})
    assert not cycles, cycles


@pytest.mark.parametrize("package", ["guards", "frontend", "worker", "compiler", "store", "policy"])
def test_the_layers_exist(package: str) -> None:
    assert (PACKAGE / package / "__init__.py").is_file()


def test_the_command_line_imports_no_metrics_before_serve_prepares_them() -> None:
    """prometheus_client picks its multiprocess mode when first imported: `serve` sets the shared directory
    first, so parsing the command line (every subcommand's parser, the eval suites included) must not import
    it, or the API process's own counters never reach /metrics."""
    import subprocess
    import sys

    code = ("import sys; from guard_service import cli, config; import guard_service.metrics.multiprocess as mp\n"
            "mp.prepare = lambda *a: sys.exit(3 if 'prometheus_client' in sys.modules else 0)\n"
            "cli.main(['serve', '--port', '1'])")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"prometheus_client was imported before multiprocess.prepare(): {run.stderr[-2000:]}"
