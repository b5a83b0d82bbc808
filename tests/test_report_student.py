"""The run report draws the student that pretraining saved: student.pt loaded whole, decoder included.

The planted bug this guards against (it shipped once): loading only the encoders left the parsing
decoder g_h at its random initialisation, so parsing.png showed an untrained decoder.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import report
from pipeline.core.config import ModelConfig, load_config
from pipeline.core.errors import TrainingError
from student.artifacts import build_student, load_pretrained_student

MODEL = ModelConfig(backbone="c3d", width=0.0625, split_after=3, input_size=32, parse_size=8, kd=True, proj_dim=16)


def _saved_student(folder: Path) -> dict[str, torch.Tensor]:
    """A student.pt as pretraining writes it, with every tensor (the decoder's too) moved off its initialisation."""
    torch.manual_seed(3)
    student = build_student(MODEL, 7)
    with torch.no_grad():
        for t in student.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.randn_like(t))
    state = {k: v.clone() for k, v in student.state_dict().items()}
    torch.save({"model_config": dataclasses.asdict(MODEL), "num_parts": 7, "label_names": [str(i) for i in range(7)],
                "state_dict": state, "epochs": 1, "global_step": 1}, folder / "student.pt")
    return state


def _assert_same_state(model: torch.nn.Module, saved: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(saved)
    assert any(k.startswith("g_h.") for k in saved)
    differ = [k for k in saved if not torch.equal(got[k], saved[k])]
    assert not differ, f"differs from student.pt: {differ[:5]}"


def test_report_draws_the_whole_student_of_student_pt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = _saved_student(tmp_path)
    seen: list[torch.nn.Module] = []

    def fake_rows(student, *args, **kwargs) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        seen.append(student)
        return [(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int64), np.zeros((8, 8), np.int64))]

    monkeypatch.setattr(report, "parsing_rows", fake_rows)
    monkeypatch.setattr(report, "_held_out_videos", lambda manifests, limit: [(tmp_path / "v.avi", 16)])
    cfg = load_config(overrides=["model.width=0.0625", "model.input_size=32", "model.parse_size=8"])
    written = report.write_run_report(tmp_path / "work", cfg, {"pretrain": tmp_path, "manifest": tmp_path})
    assert "parsing.png" in [p.name for p in written]
    assert len(seen) == 1
    _assert_same_state(seen[0], saved)


def test_load_pretrained_student_is_strict(tmp_path: Path) -> None:
    saved = _saved_student(tmp_path)
    model, meta = load_pretrained_student(tmp_path)
    _assert_same_state(model, saved)
    assert not model.training and "state_dict" not in meta
    ckpt = torch.load(tmp_path / "student.pt", weights_only=True)
    del ckpt["state_dict"]["g_h.classifier.weight"]
    torch.save(ckpt, tmp_path / "student.pt")
    with pytest.raises(TrainingError, match="student.pt"):
        load_pretrained_student(tmp_path)


def test_the_finetune_figure_marks_the_in_distribution_test_not_an_out_of_context_one(tmp_path: Path) -> None:
    """The demo runs two evaluate stages (split 1 and its scene-swapped copy); the finetuning figure's test
    point must come from the in-distribution one (a shipped bug marked the swapped set's 10.6 % there)."""
    from pipeline.stages import StageGraph

    cfg = load_config(None)
    assert cfg.evaluate.test_sets, "the demo evaluates an out-of-context test set too"
    roles = {}
    graph = StageGraph(cfg, tmp_path)
    for st in graph.run_stages():
        role = report.report_role(st.kind, st.name, cfg.pretrain.dataset, cfg.finetune.dataset)
        if role:
            assert role not in roles, f"two stages feed the report's {role!r}: {roles.get(role)} and {st.key}"
            roles[role] = st.key
    assert roles["evaluate"] == graph.evaluate().key
    assert roles["finetune"] == graph.finetune().key
