"""One-way layering, checked by reading ``import`` statements (no module is executed).

The layers, bottom to top::

    pipeline helpers (leaf)   config, distributed, runtime, progress, fingerprint, files, errors, charts,
                              code_digest, tensorboard_log, lifetime, and the package itself (__version__)
            ^
    library                   data_manifests/, teacher/, student/
            ^
    orchestration (top)       pipeline.cli, stages, stage, report, summary, results, tools, sweep

A module may import its own layer or the ones below, never one above. Every import counts: module
level, inside functions (a "lazy" import hides a cycle, it does not remove it) and under
``TYPE_CHECKING``. A new module in ``pipeline/`` must be put in one of the two lists below, so that
nobody adds a helper that quietly depends on the CLI.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("data_manifests", "teacher", "student")
PROJECT = ("pipeline", *LIBRARY)
# The helper layer: imports nothing of the project outside this set.
LEAF = frozenset({
    "pipeline", "pipeline.config", "pipeline.distributed", "pipeline.runtime", "pipeline.progress",
    "pipeline.fingerprint", "pipeline.files", "pipeline.errors", "pipeline.charts", "pipeline.code_digest",
    "pipeline.tensorboard_log", "pipeline.lifetime",
})
# The orchestration layer: may import anything; nothing in the library or the leaf may import it.
TOP = frozenset({
    "pipeline.cli", "pipeline.stages", "pipeline.stage", "pipeline.report", "pipeline.summary",
    "pipeline.results", "pipeline.tools", "pipeline.sweep",
})


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


def upward_imports(root: Path) -> list[str]:
    """Every import that points up the layers, as ``"importer -> imported"`` lines."""
    modules = project_modules(root)
    known = set(modules)
    bad = []
    for module, path in modules.items():
        targets = imported(module, path, known)
        if module.split(".")[0] in LIBRARY:
            up = {t for t in targets if t.split(".")[0] == "pipeline" and t not in LEAF}
        elif module in LEAF:
            up = {t for t in targets if t not in LEAF}
        else:
            up = set()
        bad += [f"{module} -> {t}" for t in sorted(up)]
    return bad


def test_no_module_imports_a_layer_above_its_own() -> None:
    bad = upward_imports(REPO)
    assert bad == [], ("upward imports (move the shared code down into a pipeline helper, or pass "
                       "the value in from the caller):\n  " + "\n  ".join(bad))


def test_every_pipeline_module_is_in_exactly_one_layer() -> None:
    pipeline = {m for m in project_modules(REPO) if m.split(".")[0] == "pipeline"}
    assert not LEAF & TOP
    unplaced = sorted(pipeline - LEAF - TOP)
    assert unplaced == [], f"put these in LEAF or TOP in {Path(__file__).name}: {unplaced}"


def test_the_checker_sees_lazy_relative_and_type_checking_imports(tmp_path: Path) -> None:
    """The check itself can fail: a fake tree with one upward import of each kind is reported."""
    for pkg in PROJECT:
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "pipeline" / "cli.py").write_text("")
    (tmp_path / "pipeline" / "config.py").write_text("def f():\n    from . import cli\n")
    (tmp_path / "pipeline" / "errors.py").write_text("from student import model\n")
    (tmp_path / "student" / "model.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.stages import X\n")
    (tmp_path / "teacher" / "ok.py").write_text("from pipeline.config import f\nfrom pipeline import errors\n")
    assert upward_imports(tmp_path) == ["pipeline.config -> pipeline.cli", "pipeline.errors -> student.model",
                                        "student.model -> pipeline.stages"]
