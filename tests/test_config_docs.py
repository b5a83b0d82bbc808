"""Config help from one source: every key documented in its dataclass, `config --explain`, and
docs/config.md generated from the same text (this test fails when the file is out of date)."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.config_docs import explain, key_docs, markdown, parse_keys_block, section_classes, undocumented

DOCS = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_every_key_is_documented_and_no_doc_names_a_missing_key():
    assert undocumented() == []
    for section, cls in section_classes().items():
        names = {f.name for f in fields(cls)}
        assert set(parse_keys_block(cls)) <= names, f"[{section}] documents keys it does not have"


def test_docs_config_md_is_generated_from_the_dataclasses():
    assert DOCS.read_text(encoding="utf-8") == markdown() + "\n", (
        "docs/config.md is out of date: run `python -m pipeline.cli config --docs > docs/config.md`")


def test_explain_covers_every_key_with_unit_default_and_allowed_values():
    text = explain()
    for d in key_docs():
        assert f"{d.key}" in text and d.meaning in text
    one = explain("pretrain.lr")
    assert one.splitlines()[0].startswith("pretrain.lr [learning rate]: SGD learning rate")
    assert "default 0.1" in one and "allowed: >= 0.0" in one
    assert "built-in demo: 4" in explain("evaluate.clips")
    assert "execution only" in explain("pretrain.workers") and "execution only" not in explain("pretrain.seed")
    assert explain("datasets.hmdb51.split").startswith("datasets.<name>.split: official split number")
    assert 'one of "auto", "off", "fp16", "bf16"' in explain("finetune.amp")


def test_cli_explain_and_did_you_mean():
    runner = CliRunner()
    out = runner.invoke(main, ["config", "--explain", "model.kd"])
    assert out.exit_code == 0 and out.output.startswith("model.kd: train the human-prior distillation branch")
    bad = runner.invoke(main, ["config", "--explain", "pretrain.lamda_kd"])
    assert bad.exit_code == 1 and "did you mean 'pretrain.lambda_kd'?" in bad.output
    every = runner.invoke(main, ["config", "--explain"])
    assert every.exit_code == 0 and every.output.count("\n") >= len(key_docs()) * 2
