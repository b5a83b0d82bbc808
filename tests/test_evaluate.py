"""Multi-view evaluation: files agree with the returned numbers, chunking, two-process gloo run."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from pipeline.core.config import EvaluateConfig
from pipeline.core.distributed import DistInfo
from student.confusion_png import read_confusion_csv
from pipeline.core.errors import StageError
from student.evaluate import VideoScore, check_gathered, evaluate, rank_positions
from data_manifests.manifest import load_manifest
from tiny_videos import make_dataset, tiny_model_config, write_classifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ev")
    man = make_dataset(tmp, classes=3, train_per_class=0, test_per_class=1, frames=14)  # 3 test videos
    ft = tmp / "finetune"
    write_classifier(ft, man, tiny_model_config(), seed=2)
    return tmp, man, ft


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    """The single-process evaluation with 10 clips per video, in chunks of 3 (3 + 3 + 3 + 1 views)."""
    _, man, ft = setup
    out = tmp_path_factory.mktemp("single")
    return out, evaluate(man, ft, out, _cfg(), dist=DistInfo())


def _cfg(**kw) -> EvaluateConfig:
    return EvaluateConfig(**{**dict(clips=10, crops=1, chunk=3, workers=0, device="cpu"), **kw})


def _predictions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_files_match_returned_metrics(setup, single):
    _, man, ft = setup
    tmp_path, m = single
    assert json.loads((tmp_path / "metrics.json").read_text()) == json.loads(json.dumps(m))
    preds = _predictions(tmp_path / "predictions.jsonl")
    assert [p["id"] for p in preds] == [e.id for e in load_manifest(man).by_split("test")]
    assert all(p["views"] == 10 and len(p["probs"]) == 3 and len(p["top5"]) == 3 for p in preds)
    assert all(abs(sum(p["probs"]) - 1) < 1e-5 and p["pred"] == int(np.argmax(p["probs"])) for p in preds)
    top1 = np.mean([p["pred"] == p["label"] for p in preds])
    assert m["video_top1"] == top1 and m["video_top5"] == 1.0  # 3 classes: top-5 clamps to 3
    assert (m["num_videos"], m["num_views"], m["views_per_video"]) == (3, 30, 10)
    classes, cm = read_confusion_csv(tmp_path / "confusion.csv")
    assert classes == ["class0", "class1", "class2"]
    expected = np.zeros((3, 3), np.int64)
    for p in preds:
        expected[p["label"], p["pred"]] += 1
    np.testing.assert_array_equal(cm, expected)
    for i, name in enumerate(classes):
        assert m["per_class"][name] == cm[i, i] / cm[i].sum()
    png = cv2.imread(str(tmp_path / "confusion.png"))
    assert png is not None and png.shape[2] == 3
    assert 0.0 <= m["clip_top1"] <= 1.0 and m["clip_top5"] == 1.0


def test_chunk_size_does_not_change_results_and_three_crops(setup, tmp_path):
    _, man, ft = setup
    a = evaluate(man, ft, tmp_path / "a", _cfg(clips=4, chunk=3), dist=DistInfo())
    b = evaluate(man, ft, tmp_path / "b", _cfg(clips=4, chunk=4), dist=DistInfo())
    pa, pb = _predictions(tmp_path / "a" / "predictions.jsonl"), _predictions(tmp_path / "b" / "predictions.jsonl")
    np.testing.assert_allclose([p["probs"] for p in pa], [p["probs"] for p in pb], rtol=0, atol=1e-6)
    assert a["video_top1"] == b["video_top1"] and a["clip_top1"] == b["clip_top1"]
    c = evaluate(man, ft, tmp_path / "c", _cfg(clips=1, crops=3, chunk=3), dist=DistInfo())
    assert (c["num_views"], c["views_per_video"]) == (9, 3)


def _score(pos, vid, views):
    return VideoScore(pos, vid, 0, views, np.array([1.0, 0.0]), 1, 1)


def test_consistency_checker_rejects_bad_gathers(setup):
    entries = load_manifest(setup[1]).by_split("test")[:3]
    good = [_score(i, e.id, 10) for i, e in enumerate(entries)]
    assert [s.pos for s in check_gathered(list(reversed(good)), entries, 10)] == [0, 1, 2]
    with pytest.raises(StageError, match="appears more than once"):
        check_gathered(good + [good[1]], entries, 10)
    with pytest.raises(StageError, match="has 9 views, expected 10"):
        check_gathered([good[0], _score(1, entries[1].id, 9), good[2]], entries, 10)
    with pytest.raises(StageError, match="1 videos have no predictions"):
        check_gathered(good[:2], entries, 10)
    with pytest.raises(StageError, match="not in the evaluated split"):
        check_gathered(good + [_score(7, "other", 10)], entries, 10)
    assert rank_positions(5, 0, 2) == [0, 2, 4] and rank_positions(5, 1, 2) == [1, 3]


CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from pipeline.core.config import EvaluateConfig
    from pipeline.core.distributed import cleanup, init_distributed
    from student.evaluate import evaluate
    man, ft, out = map(Path, sys.argv[1:4])
    d = init_distributed("cpu")
    m = evaluate(man, ft, out, EvaluateConfig(clips=10, crops=1, chunk=3, workers=0, device="cpu"), dist=d)
    (out / f"returned-rank{d.rank}.json").write_text(json.dumps(m))
    cleanup()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_evaluation_counts_every_video_once(setup, single, tmp_path):
    tmp, man, ft = setup
    # 3 videos over 2 ranks: uneven split (videos 0, 2 on rank 0; video 1 on rank 1), no padding
    out = tmp_path / "ddp"
    out.mkdir()
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(man), str(ft), str(out)], cwd=REPO,
                              env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    preds = _predictions(out / "predictions.jsonl")
    ids = [e.id for e in load_manifest(man).by_split("test")]
    assert [p["id"] for p in preds] == ids and all(p["views"] == 10 for p in preds)
    r0 = json.loads((out / "returned-rank0.json").read_text())
    r1 = json.loads((out / "returned-rank1.json").read_text())
    assert r0 == r1 == json.loads((out / "metrics.json").read_text())
    single_dir, single_metrics = single
    ps = _predictions(single_dir / "predictions.jsonl")
    np.testing.assert_allclose([p["probs"] for p in preds], [p["probs"] for p in ps], rtol=0, atol=1e-5)
    assert [p["pred"] for p in preds] == [p["pred"] for p in ps]
    for key in ("video_top1", "video_top5", "clip_top1", "clip_top5", "num_videos", "num_views", "per_class"):
        assert r0[key] == json.loads(json.dumps(single_metrics[key])), key


# ------------------------------------------------------------------ class-activation maps

class _BrightSpotModel(torch.nn.Module):
    """Two 'branches' whose features are the pooled brightness (and its ReLU); class 0 always wins."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([100.0, 0.0]))

    def features_and_logits(self, x):
        z = torch.nn.functional.avg_pool3d(x.mean(1, keepdim=True), (2, 4, 4))
        maps = [z, torch.relu(z)]
        return maps, self.fc(torch.cat([m.mean(dim=(2, 3, 4)) for m in maps], 1))

    def cam_weights(self):
        return list(self.fc.weight.split(1, dim=1))


def test_cam_peaks_on_the_bright_square():
    from student.cam import cam_strip, clip_cam
    from student.finetune_data import to_tensor

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 40, size=(4, 48, 64, 3), dtype=np.uint8)
    frames[:, 8:24, 40:56] = 255  # rows 8..23, columns 40..55
    heat, pred, _ = clip_cam(_BrightSpotModel(), to_tensor(frames), (4, 48, 64))
    assert pred == 0 and heat.shape == (4, 48, 64) and heat.min() == 0.0 and heat.max() == 1.0
    for t in range(4):
        y, x = np.unravel_index(np.argmax(heat[t]), heat[t].shape)
        assert 8 <= y < 24 and 40 <= x < 56
        hot = np.argwhere(heat[t] > 0.7)
        assert hot[:, 0].min() >= 4 and hot[:, 0].max() < 28 and hot[:, 1].min() >= 36 and hot[:, 1].max() < 60
    strip, rec = cam_strip(_BrightSpotModel(), frames, 32, 8, "cpu", ["square", "none"])
    assert strip.shape == (48, 8 * 64, 3) and rec["pred_name"] == "square"
    # JET maps hot to red: the square is redder than the background in every tile
    assert strip[16, 48, 2] > strip[40, 10, 2]


def test_cam_png_strips_from_a_classifier_file(setup, tmp_path):
    from student.cam import class_activation_maps

    tmp, man, ft = setup
    videos = [tmp / "videos" / "class0" / "test_0.avi", tmp / "videos" / "class1" / "test_0.avi"]
    paths = class_activation_maps(ft / "classifier.pt", videos, tmp_path, frames_per_strip=5)
    assert [p.name for p in paths] == ["test_0.cam.png", "test_0-2.cam.png"]  # same stem: de-duplicated
    for p in paths:
        img = cv2.imread(str(p))
        assert img.shape == (40, 5 * 48, 3)
    recs = [json.loads(line) for line in (tmp_path / "cam.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(r["pred_name"] in ("class0", "class1", "class2") for r in recs)
