"""What each config key means, from ONE source: the ``Keys:`` block of each section's dataclass docstring.

Convention (pipeline/core/config.py)::

    Keys:
        name (unit): meaning, continued on lines
            indented deeper.
        other: meaning of a key without a unit.

Type, default and allowed values (choices, min, max) come from the dataclass fields and their
metadata; "execution only" from ``metadata["exec"]``; the demo's value from the built-in default
file. :func:`explain` is ``pipeline config --explain [KEY]``; :func:`markdown` is ``docs/config.md``
(``pipeline config --docs > docs/config.md``; a test checks that the two agree).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import tomllib
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from pipeline.core.config import (SECTIONS, Config, ConfigError, DatasetConfig, _suggest, _type_name,
                                  default_toml_text, toml_value)

_KEY_LINE = re.compile(r"^(?P<name>[a-z_][a-z0-9_]*)(?: \((?P<unit>[^)]*)\))?: (?P<text>.+)$")


@dataclass(frozen=True)
class KeyDoc:
    """Everything a user asks about one key."""

    key: str  # section.key, or datasets.<name>.key
    type: str
    default: str
    allowed: str
    unit: str
    meaning: str
    execution_only: bool
    demo: str | None  # the built-in demo's value when it differs from the default


def parse_keys_block(cls: type) -> dict[str, tuple[str, str]]:
    """``{field: (unit, meaning)}`` from the ``Keys:`` block of ``cls``'s docstring."""
    doc = inspect.getdoc(cls) or ""
    lines = doc.splitlines()
    if "Keys:" not in lines:
        return {}
    out: dict[str, tuple[str, str]] = {}
    current: str | None = None
    for line in lines[lines.index("Keys:") + 1:]:
        if not line.strip():
            current = None
            continue
        if line.startswith("        ") and current:  # continuation
            unit, text = out[current]
            out[current] = (unit, f"{text} {line.strip()}")
            continue
        m = _KEY_LINE.match(line.strip()) if line.startswith("    ") else None
        if m is None:
            raise ValueError(f"{cls.__name__}: cannot read the Keys: line {line!r}")
        current = m["name"]
        out[current] = (m["unit"] or "", m["text"].strip())
    return out


def _allowed(meta: dict[str, Any]) -> str:
    parts = []
    if "choices" in meta:
        parts.append("one of " + ", ".join(toml_value(c) for c in meta["choices"]))
    if "min" in meta:
        parts.append(f">= {meta['min']}")
    if "max" in meta:
        parts.append(f"<= {meta['max']}")
    return "; ".join(parts) or "any"


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc,operator]


def _demo_values() -> dict[str, Any]:
    raw = tomllib.loads(default_toml_text())
    flat: dict[str, Any] = {}
    for section, table in raw.items():
        if section == "datasets":
            continue
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat


def section_classes() -> dict[str, type]:
    """Section name -> dataclass, ``datasets`` as the DatasetConfig of every ``[datasets.<name>]``."""
    hints = get_type_hints(Config)
    return {name: (DatasetConfig if name == "datasets" else hints[name]) for name in SECTIONS}


def key_docs() -> list[KeyDoc]:
    """One :class:`KeyDoc` per key of every section, in the dataclasses' order."""
    demo = _demo_values()
    docs = []
    for section, cls in section_classes().items():
        prefix = "datasets.<name>" if section == "datasets" else section
        texts = parse_keys_block(cls)
        hints = get_type_hints(cls)
        for f in fields(cls):
            unit, meaning = texts.get(f.name, ("", ""))
            key = f"{prefix}.{f.name}"
            default = _default(f)
            shown = demo.get(key)
            docs.append(KeyDoc(key=key, type=_type_name(hints[f.name]), default=toml_value(default),
                               allowed=_allowed(dict(f.metadata)), unit=unit, meaning=meaning,
                               execution_only=bool(f.metadata.get("exec")),
                               demo=None if shown is None or shown == default else toml_value(shown)))
    return docs


def undocumented() -> list[str]:
    """Keys whose dataclass docstring has no ``Keys:`` line for them (a test keeps this empty)."""
    return [d.key for d in key_docs() if not d.meaning]


def _lookup(key: str) -> list[KeyDoc]:
    docs = key_docs()
    parts = key.split(".")
    if parts[0] == "datasets" and len(parts) >= 2:
        parts = ["datasets", "<name>", *parts[2:]]  # datasets.hmdb51.split -> datasets.<name>.split
    wanted = ".".join(parts)
    found = [d for d in docs if d.key == wanted or d.key.startswith(wanted + ".")]
    if not found:
        options = [d.key for d in docs] + list(SECTIONS)
        raise ConfigError(f"config --explain {key}: no such key or section{_suggest(wanted, options)}; "
                          f"sections: {', '.join(SECTIONS)}")
    return found


def _entry_lines(d: KeyDoc) -> list[str]:
    unit = f" [{d.unit}]" if d.unit else ""
    lines = [f"{d.key}{unit}: {d.meaning}",
             f"    {d.type}; default {d.default}" + (f" (built-in demo: {d.demo})" if d.demo else "")
             + f"; allowed: {d.allowed}"]
    if d.execution_only:
        lines.append("    execution only: changes how a stage runs, not its output (not in the fingerprint)")
    return lines


def explain(key: str | None = None) -> str:
    """Plain-text help for ``key`` (a key, a section, or everything when None)."""
    docs = key_docs() if not key else _lookup(key)
    return "\n".join(line for d in docs for line in _entry_lines(d))


def markdown() -> str:
    """``docs/config.md``: one table per section."""
    out = ["# Configuration keys", "",
           "Generated by `pipeline config --docs > docs/config.md` from the `Keys:` blocks of the dataclasses in",
           "`pipeline/core/config.py` (tests/test_config_docs.py checks that this file is up to date).",
           "`pipeline config --explain KEY` prints the same text for one key or section.",
           "Defaults are the paper's full-scale settings; the built-in demo's value is shown where it differs.",
           "Execution-only keys change how a stage runs, never its output, and stay out of its fingerprint.", ""]
    by_section: dict[str, list[KeyDoc]] = {}
    for d in key_docs():
        by_section.setdefault(d.key.rsplit(".", 1)[0], []).append(d)
    for section, docs in by_section.items():
        out += [f"## [{section}]", "", "| key | meaning | unit | type | default | demo | allowed |",
                "|---|---|---|---|---|---|---|"]
        for d in docs:
            name = d.key.rsplit(".", 1)[1] + (" (exec)" if d.execution_only else "")
            cells = [f"`{name}`", d.meaning, d.unit, d.type, f"`{d.default}`", f"`{d.demo}`" if d.demo else "",
                     d.allowed]
            out.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        out.append("")
    return "\n".join(out)


__all__ = ["KeyDoc", "explain", "key_docs", "markdown", "parse_keys_block", "undocumented"]
