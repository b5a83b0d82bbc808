"""A typo in any closed set of names on the command line is answered with the closest valid name."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main


@pytest.mark.parametrize("args, hint", [
    (["teacher-cache", "--backend", "schpp"], "did you mean 'schp'?"),
    (["manifest", "--dataset", "hmbd51"], "did you mean 'hmdb51'?"),
    (["finetune", "--select-on", "vall"], "did you mean 'val'?"),
    (["sweep", "--protocol", "linear_probe", "--dataset", "hmdb51"], "did you mean 'linear-probe'?"),
    (["parse-image", "--labels", "pascall", "--checkpoint", __file__, "-o", "x.png", __file__],
     "did you mean 'pascal'?"),
    (["--set", "finetune.dataset=hmbd51", "finetune", "--dry-run"], "did you mean 'hmdb51'?"),
    (["--set", "retrieval.dataset=hmbd51", "retrieval", "--dry-run"], "did you mean 'hmdb51'?"),
    (["--set", "linear_probe.dataset=ucf10", "linear-probe", "--dry-run"], "did you mean 'ucf101'?"),
    (["sweep", "--protocol", "finetune", "--dataset", "hmbd51", "--dry-run"], "did you mean 'hmdb51'?"),
    (["--set", 'run.stages=["synthetc"]', "run", "--dry-run"], "did you mean 'synthetic'?"),
])
def test_typo_gets_a_suggestion(tmp_path: Path, args: list[str], hint: str):
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), *args])
    assert result.exit_code != 0 and hint in result.output, result.output
