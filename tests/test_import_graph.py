"""The import graph, read statically with ast (what a maintainer's tools see): P3 and P8 use the
stable_diffusion package as an ordinary import, no package reaches into it through a path
trick, and no problem folder imports another problem folder (they share only hw2_utils,
evaluation and stable_diffusion)."""

from __future__ import annotations

import ast

from conftest import REPO

PROBLEMS = sorted(p.name for p in REPO.glob("p[1-8]_*") if p.is_dir())


def _imports(package: str) -> set[str]:
    """Top-level names of every module the package's files import."""
    found = set()
    for path in (REPO / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


def test_p3_and_p8_import_the_stable_diffusion_package():
    assert "stable_diffusion" in _imports("p3_textual_inversion")
    assert "stable_diffusion" in _imports("p8_controlnet")
    init = (REPO / "stable_diffusion" / "__init__.py").read_text()
    assert "__path__" not in init  # a real package, not a shim pointing elsewhere
    assert (REPO / "stable_diffusion" / "loader.py").is_file()


def test_no_problem_imports_another_problem():
    for package in PROBLEMS:
        others = _imports(package) & (set(PROBLEMS) - {package})
        assert not others, f"{package} imports {sorted(others)}"
