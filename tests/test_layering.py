"""One-way layering, checked by folder by reading ``import`` statements (no module is executed).

The floors, bottom to top::

    pipeline/core/            config, run time, distributed, files, errors, progress, fingerprints, ...
            ^
    library                   data_manifests/, teacher/, student/
            ^
    pipeline/ (the rest)      CLI, stage engine, stage builders, report, sweep, results

``pipeline.core`` imports nothing of the project outside ``pipeline/core/``; the libraries import
nothing of ``pipeline`` outside ``pipeline/core/``. Every import counts: module level, inside
functions (a "lazy" import hides a cycle, it does not remove it) and under ``TYPE_CHECKING``. The
floor of a module is its folder, so a new file needs no list to be checked.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("data_manifests", "teacher", "student")
PROJECT = ("pipeline", *LIBRARY)
CORE = "pipeline.core"


def project_modules(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for every ``.py`` file of the project's packages under ``root``."""
    found = {}
    for pkg in PROJECT:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file, as dotted names.

    ``from pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``;
    relative imports are resolved against ``module``'s package.
    """
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in known else base)
    return {m for m in out if m.split(".")[0] in PROJECT}


def in_core(module: str) -> bool:
    return module == CORE or module.startswith(CORE + ".")


def floor(module: str) -> int:
    """0 for pipeline/core/, 1 for the libraries, 2 for the rest of pipeline/."""
    if in_core(module):
        return 0
    return 1 if module.split(".")[0] in LIBRARY else 2


def upward_imports(root: Path) -> list[str]:
    """Every import that points up the floors, as ``"importer -> imported"`` lines."""
    modules = project_modules(root)
    known = set(modules)
    bad = []
    for module, path in modules.items():
        # `import pipeline.core.x` names the package `pipeline` too; only the module itself counts.
        targets = {t for t in imported(module, path, known) if t != "pipeline" or floor(module) == 2}
        bad += [f"{module} -> {t}" for t in sorted(targets) if floor(t) > floor(module)]
    return bad


def test_no_module_imports_a_floor_above_its_own() -> None:
    bad = upward_imports(REPO)
    assert bad == [], ("upward imports (move the shared code down into pipeline/core/, or pass "
                       "the value in from the caller):\n  " + "\n  ".join(bad))


def test_core_is_a_folder_of_its_own() -> None:
    modules = project_modules(REPO)
    assert CORE in modules and modules[CORE].parent.name == "core"
    assert {m for m in modules if in_core(m)} >= {f"{CORE}.config", f"{CORE}.errors", f"{CORE}.files"}


def test_the_checker_sees_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    """The check itself can fail: a fake tree with one upward import of each kind is reported."""
    for pkg in (*PROJECT, "pipeline/core"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "cli.py").write_text("")
    (tmp_path / "pipeline" / "core" / "config.py").write_text("def f():\n    from .. import cli\n")
    (tmp_path / "pipeline" / "core" / "errors.py").write_text("from student import model\n")
    (tmp_path / "student" / "model.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.stages import X\n")
    (tmp_path / "teacher" / "ok.py").write_text(
        "from pipeline.core.config import f\nfrom pipeline.core import errors\n")
    (tmp_path / "teacher" / "up.py").write_text("from pipeline import cli\n")
    assert sorted(upward_imports(tmp_path)) == ["pipeline.core.config -> pipeline.cli",
                                                "pipeline.core.errors -> student.model",
                                                "student.model -> pipeline.stages", "teacher.up -> pipeline.cli"]
