"""`--dry-run` reports the errors a build would hit that the config alone shows (not "would build")."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.core.config import load_config
from pipeline.preflight import problems

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a CPU-only machine refuses")


def _invoke(tmp_path: Path, *args: str):
    return CliRunner().invoke(main, ["--work-dir", str(tmp_path), *args])


@no_gpu
@pytest.mark.parametrize("args", [["pretrain", "--dry-run", "--build-upstream"], ["run", "--dry-run"]])
def test_fp16_on_cpu_is_an_error_in_a_dry_run(tmp_path: Path, args: list[str]):
    res = _invoke(tmp_path, "--set", "pretrain.amp=fp16", *args)
    assert res.exit_code == 1, res.output
    assert "Error: pretrain:kinetics400 would fail: pretrain.amp = 'fp16' needs a CUDA device" in res.output
    assert not any(tmp_path.iterdir())  # nothing built


def test_run_dry_run_lists_each_stage_once(tmp_path: Path):
    res = _invoke(tmp_path, "run", "--dry-run")
    assert res.exit_code == 0, res.output
    lines = [line for line in res.output.splitlines() if line.startswith("would build ")]
    assert lines == ["would build synthetic:default (missing)", "would build manifest:kinetics400 (missing)",
                     "would build manifest:hmdb51 (missing)", "would build teacher-cache:kinetics400 (missing)",
                     "would build pretrain:kinetics400 (missing)", "would build finetune:hmdb51-split1 (missing)",
                     "would build evaluate:hmdb51-split1 (missing)",
                     "would build evaluate:hmdb51-split1.scene_swapped (missing)"]  # evaluate.test_sets
    assert res.output.splitlines()[-1] == "8 of 8 stages to build"


def test_problems_from_the_config_alone(tmp_path: Path):
    cfg = load_config(overrides=[f"pretrain.init_from={tmp_path / 'nope.pt'}", "teacher.backend=schp"])
    assert problems("pretrain", cfg) == [f"pretrain.init_from: {tmp_path / 'nope.pt'} does not exist"]
    assert problems("teacher-cache", cfg) == [
        "teacher.checkpoint is empty: the 'schp' backend needs a released SCHP checkpoint (.pth)"]
    assert problems("evaluate", load_config()) == [] and problems("manifest", cfg) == []
    if not torch.cuda.is_available():
        assert problems("finetune", load_config(overrides=["finetune.device=cuda"])) == [
            "finetune.device = 'cuda', but this machine has no CUDA device; use 'auto' or 'cpu'"]
