"""The code a stage runs is part of its fingerprint: editing a module rebuilds exactly the stages
that run it (and their downstream), and ``status`` names the file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.core import code_digest
from pipeline.core.code_digest import PACKAGES, source_files
from pipeline.core.config import load_config
from pipeline.stage import explain_change
from pipeline.stages import StageGraph

ALL = {"synthetic:default", "manifest:kinetics400", "manifest:hmdb51", "teacher-cache:kinetics400",
       "pretrain:kinetics400", "finetune:hmdb51-split1", "evaluate:hmdb51-split1",
       "evaluate:hmdb51-split1.scene_swapped"}  # the demo config's evaluate.test_sets


def _graph_stages(work: Path) -> dict:
    graph = StageGraph(load_config(), work)
    return {st.key: st for st in graph.run_stages()}


@pytest.fixture()
def project_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the project's packages that the fingerprints read instead of the real ones."""
    root = tmp_path / "src"
    for pkg in PACKAGES:
        shutil.copytree(code_digest.PROJECT_ROOT / pkg, root / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(code_digest, "PROJECT_ROOT", root)
    return root


def _edit_and_compare(root: Path, work: Path, relpath: str) -> tuple[set[str], dict]:
    before = _graph_stages(work)
    fps = {k: s.fingerprint(work) for k, s in before.items()}
    with open(root / relpath, "a", encoding="utf-8") as fh:
        fh.write("\n# an edit\n")
    after = _graph_stages(work)
    changed = {k for k, s in after.items() if s.fingerprint(work) != fps[k]}
    return changed, {k: explain_change(before[k].components(work), after[k].components(work)) for k in changed}


def test_run_stage_keys_are_the_expected_graph(tmp_path: Path):
    assert set(_graph_stages(tmp_path)) == ALL


def test_finetune_edit_rebuilds_finetune_and_evaluate_only(project_copy: Path, tmp_path: Path):
    changed, reasons = _edit_and_compare(project_copy, tmp_path / "w", "student/finetune.py")
    assert changed == {"finetune:hmdb51-split1", "evaluate:hmdb51-split1", "evaluate:hmdb51-split1.scene_swapped"}
    assert "code student/finetune.py changed" in reasons["finetune:hmdb51-split1"]


def test_moco_edit_rebuilds_pretrain_and_downstream_not_the_teacher_cache(project_copy: Path, tmp_path: Path):
    changed, reasons = _edit_and_compare(project_copy, tmp_path / "w", "student/moco.py")
    assert changed == {"pretrain:kinetics400", "finetune:hmdb51-split1", "evaluate:hmdb51-split1",
                       "evaluate:hmdb51-split1.scene_swapped"}
    assert reasons["pretrain:kinetics400"] == ["code student/moco.py changed"]
    assert reasons["finetune:hmdb51-split1"] == ["upstream pretrain:kinetics400 changed"]


def test_generator_edit_rebuilds_everything_downstream(project_copy: Path, tmp_path: Path):
    changed, reasons = _edit_and_compare(project_copy, tmp_path / "w", "data_manifests/synthetic/render.py")
    assert changed == ALL
    assert "code data_manifests/synthetic/render.py changed" in reasons["synthetic:default"]


def test_execution_only_module_edit_rebuilds_nothing(project_copy: Path, tmp_path: Path):
    for rel in ("pipeline/cli.py", "pipeline/core/progress.py", "pipeline/stages.py"):
        changed, _ = _edit_and_compare(project_copy, tmp_path / "w", rel)
        assert changed == set(), rel


def test_closure_follows_relative_and_function_level_imports():
    files = {p.relative_to(code_digest.PROJECT_ROOT).as_posix() for p in source_files(["student.pretrain"])}
    assert {"student/pretrain.py", "student/moco.py", "student/losses.py", "teacher/cache_reader.py",
            "data_manifests/video.py", "student/backbones/c3d.py"} <= files
    assert "student/finetune.py" not in files and "pipeline/cli.py" not in files
    synth = {p.relative_to(code_digest.PROJECT_ROOT).as_posix()
             for p in source_files(["data_manifests.synthetic.generate"])}
    assert "data_manifests/synthetic/render.py" in synth  # reached through `from .render import ...`


def test_unknown_entry_module_is_an_error():
    with pytest.raises(ValueError, match="no source file"):
        source_files(["student.no_such_module"])
