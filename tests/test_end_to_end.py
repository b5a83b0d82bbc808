"""The embedded default end to end, at a tiny size: every stage's output, reruns that do nothing,
and changes that rebuild exactly the stages downstream of them."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pipeline.cli import main

TINY = [
    "synthetic.kinetics_per_class=3", "synthetic.ucf_per_class=2", "synthetic.hmdb_per_class=3",
    "synthetic.frames=24", "synthetic.width=48", "synthetic.height=48",
    "clips.anchors_per_video=2", "clips.clip_len=8",
    "teacher.map_size=16", "teacher.shard_size=16", "teacher.workers=0",
    "model.width=0.125", "model.input_size=32", "model.parse_size=8",
    "pretrain.epochs=1", "pretrain.max_steps_per_epoch=2", "pretrain.batch_size=4", "pretrain.queue_size=16",
    "pretrain.workers=0", "finetune.epochs=1", "finetune.batch_size=4", "finetune.workers=0",
    "evaluate.clips=2", "evaluate.workers=0", "synthetic.workers=1",
]
STAGES = ["synthetic", "manifest", "teacher-cache", "pretrain", "finetune", "evaluate"]


def _run(work: Path, *extra: str) -> str:
    args = ["--work-dir", str(work)]
    for item in TINY + list(extra):
        args += ["--set", item]
    result = CliRunner().invoke(main, args + ["run"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _outputs(work: Path) -> dict[str, set[str]]:
    """Finished output folders per stage kind."""
    return {kind: {p.name for p in (work / kind).glob("*/*") if (p / "stage.json").is_file()}
            for kind in STAGES if (work / kind).is_dir()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("e2e")
    _run(work)
    return work


def _only(work: Path, kind: str, test_set: str = "") -> Path:
    """The one finished folder of a stage kind; for evaluate, the in-distribution one unless ``test_set``
    names an out-of-context set (its stage is named ``<finetune name>.<set>``)."""
    (path,) = [p for p in (work / kind).glob("*/*") if (p / "stage.json").is_file()
               and (p.parent.name.endswith("." + test_set) if test_set else "." not in p.parent.name)]
    return path


@pytest.mark.slow
def test_every_stage_output(work: Path):
    syn = _only(work, "synthetic")
    assert (syn / "kinetics" / "annotations" / "train.csv").is_file()
    assert (syn / "hmdb51" / "splits" / "wave_test_split1.txt").is_file()

    for name in ("kinetics400", "hmdb51"):
        m = work / "manifest" / name
        (mdir,) = [p for p in m.iterdir() if (p / "stage.json").is_file()]
        rows = [json.loads(line) for line in (mdir / "manifest.jsonl").read_text().splitlines()]
        assert rows and all(r["frames"] == 24 for r in rows)
        assert (mdir / "rejected.jsonl").read_text() == ""

    cache = _only(work, "teacher-cache")
    shards = sorted(cache.glob("shard-*.h5"))
    assert shards
    with h5py.File(shards[0], "r") as f:
        maps = f["maps"][:].astype(np.float32)
        assert maps.shape[1:] == (7, 16, 16)
        assert np.allclose(maps.sum(axis=1), 1.0, atol=1e-2)

    pre = _only(work, "pretrain")
    ckpt = torch.load(pre / "student.pt", map_location="cpu", weights_only=True)
    assert ckpt["num_parts"] == 7 and ckpt["model_config"]["width"] == 0.125
    assert (pre / "checkpoints" / "last.pt").is_file()
    assert (pre / "metrics.jsonl").read_text().strip()

    ft = _only(work, "finetune")
    assert (ft / "classifier.pt").is_file()

    ev = _only(work, "evaluate")
    metrics = json.loads((ev / "metrics.json").read_text())
    preds = [json.loads(line) for line in (ev / "predictions.jsonl").read_text().splitlines()]
    assert metrics["num_videos"] == len(preds) == 10 * 1  # 1 test video per class at 3 per class
    top1 = sum(p["pred"] == p["label"] for p in preds) / len(preds)
    assert metrics["video_top1"] == pytest.approx(top1)
    assert (ev / "confusion.csv").is_file() and (ev / "confusion.png").is_file()

    # the demo's out-of-context test set: the same test videos with another class's background
    swapped = json.loads((_only(work, "evaluate", "scene_swapped") / "metrics.json").read_text())
    assert swapped["num_videos"] == metrics["num_videos"]
    assert swapped["in_distribution_top1"] == pytest.approx(metrics["video_top1"])

    results = (work / "results.md").read_text()
    assert f"{100 * metrics['video_top1']:.1f}" in results and "hmdb51" in results
    assert "Pretext tasks on held-out videos" in results and "| A-VID: own key retrieved, top-1 of" in results
    # the synthetic test videos carry part masks: the human-focus score of the classifier's CAMs
    assert 0.0 <= metrics["human_focus"] <= 1.0 and 0.0 < metrics["person_area"] < 1.0

    # pictures of the run, for people
    for name in ("pretrain_curves.png", "finetune_curves.png", "parsing.png"):
        image = cv2.imread(str(work / "report" / name))
        assert image is not None and image.shape[0] > 100 and image.shape[1] > 200, name
        assert (work / "report" / name).with_suffix(".svg").is_file(), name


@pytest.mark.slow
def test_pretraining_changed_the_weights_that_finetuning_starts_from(work: Path):
    """The pretrained encoders differ from their random initialisation and reach finetuning intact."""
    from pipeline.core.config import load_config
    from student.finetune import build_classifier
    from student.pretrain import build_pretrain_model, seed_all

    cfg = load_config(overrides=TINY)
    pre = _only(work, "pretrain")
    saved = torch.load(pre / "student.pt", map_location="cpu", weights_only=True)
    seed_all(cfg.pretrain.seed)  # exactly how pretraining initialised its model
    initial = build_pretrain_model(cfg.model, cfg.pretrain, saved["num_parts"]).student.state_dict()
    trained = saved["state_dict"]
    moved = [k for k in trained if k.startswith(("f_l.", "h_h.", "h_c.")) and trained[k].is_floating_point()
             and not torch.equal(trained[k], initial[k])]
    conv_weights = [k for k in trained if k.startswith(("f_l.", "h_h.", "h_c.")) and k.endswith("weight")
                    and trained[k].dim() == 5]
    assert conv_weights and set(conv_weights) <= set(moved)  # every conv of every encoder was trained
    start = build_classifier(cfg.model, 10, saved).state_dict()  # what finetuning starts from
    for k in conv_weights:
        assert torch.equal(start[k], trained[k]), k


@pytest.mark.slow
def test_second_run_does_nothing(work: Path):
    before = _outputs(work)
    out = _run(work)
    from pipeline.core.config import load_config
    from pipeline.stages import StageGraph

    stages = StageGraph(load_config(overrides=TINY), work).run_stages()
    assert len(stages) == 8  # synthetic, 2 manifests, cache, pretrain, finetune, 2 evaluates (+ the swapped set's)
    assert f"Nothing to do: all {len(stages)} stages are up to date" in out
    assert _outputs(work) == before


@pytest.mark.slow
def test_finetune_key_reruns_finetune_and_evaluate_only(work: Path):
    before = _outputs(work)
    _run(work, "finetune.lr=0.03")
    after = _outputs(work)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"finetune", "evaluate"}


@pytest.mark.slow
def test_teacher_key_reruns_teacher_cache_and_everything_after(work: Path):
    before = _outputs(work)
    _run(work, "teacher.softness=0.8")
    after = _outputs(work)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {"teacher-cache", "pretrain", "finetune", "evaluate"}
