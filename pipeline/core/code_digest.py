"""Which source files build a stage's output, and their digests (the "code" part of a fingerprint).

A stage names its entry modules (``student.finetune``); the files that can change its output are
those modules and every project module they import, found by reading ``import`` statements (no
module is executed). Only this project's packages count: a change to finetuning must rebuild the
finetune stage and its downstream, never a 240k-video teacher cache. Modules that cannot change
what a stage writes (the CLI, the stage engine, progress bars, config parsing, error types) are
left out, so editing them rebuilds nothing.
"""
from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "teacher", "student", "data_manifests")
# Execution-only modules: how a stage is scheduled, reported or configured, not what it computes.
# (Config values that change outputs enter the fingerprint as values, not as config.py's source.)
EXECUTION_ONLY = frozenset({
    "pipeline", "pipeline.cli", "pipeline.stages", "pipeline.stage", "pipeline.results", "pipeline.tools",
    "pipeline.core", "pipeline.core.progress", "pipeline.core.config", "pipeline.core.fingerprint",
    "pipeline.core.files", "pipeline.core.errors", "pipeline.core.code_digest",
})


def module_file(module: str, root: Path) -> Path | None:
    """The source file of a project module (``pkg/mod.py`` or ``pkg/mod/__init__.py``), or None."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """Module names imported anywhere in ``path`` (top-level and inside functions), absolute form."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


@lru_cache(maxsize=None)
def _closure(roots: tuple[str, ...], root: Path) -> tuple[Path, ...]:
    seen: dict[str, Path] = {}
    todo = list(roots)
    while todo:
        mod = todo.pop()
        if mod in seen or mod in EXECUTION_ONLY:
            continue
        path = module_file(mod, root)
        if path is None:
            continue
        seen[mod] = path
        todo.extend(_imported_modules(path, mod))
        parent = mod.rpartition(".")[0]  # importing pkg.sub runs pkg/__init__.py
        if parent:
            todo.append(parent)
    return tuple(sorted(set(seen.values())))


def source_files(roots: tuple[str, ...] | list[str], root: Path | None = None) -> list[Path]:
    """The project source files that ``roots`` run (transitively), sorted; execution-only modules excluded."""
    root = root or PROJECT_ROOT
    missing = [m for m in roots if module_file(m, root) is None]
    if missing:
        raise ValueError(f"code_digest: no source file for module(s) {missing} under {root}")
    return list(_closure(tuple(roots), root))


def code_digests(roots: tuple[str, ...] | list[str], root: Path | None = None) -> dict[str, str]:
    """``{relative path: sha256 of the file}`` for :func:`source_files` (read fresh on every call)."""
    root = root or PROJECT_ROOT
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in source_files(roots, root)}
