"""Retrieval: R@k on a hand-built feature set through the real stage, and the files it writes."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.core.config import RetrievalConfig
from pipeline.core.distributed import DistInfo
from student import retrieval as retrieval_mod
from pipeline.core.errors import StageError
from student.retrieval import gather_features, retrieval, video_features
from data_manifests.manifest import load_manifest
from tiny_videos import CLIP_LEN, make_dataset, tiny_model_config, write_student


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rt")
    man = make_dataset(tmp, classes=2, train_per_class=2, test_per_class=1, frames=8)
    write_student(tmp / "pretrain", tiny_model_config(), seed=4)
    return tmp, man


# Hand-built features per video id. Gallery (train): class0 -> c0_train0 (1,0), c0_train1 (0,1);
# class1 -> c1_train0 (0.9,0.1), c1_train1 (-1,0). Queries (test): c0_test0 (1,0.05), c1_test0 (0,-1).
FEATS = {"c0_train0": [1.0, 0.0], "c0_train1": [0.0, 1.0], "c1_train0": [0.9, 0.1], "c1_train1": [-1.0, 0.0],
         "c0_test0": [1.0, 0.05], "c1_test0": [0.0, -1.0]}
# c0_test0: cosine order c0_train0 (0.9988) > c1_train0 (0.9987...) > c0_train1 > c1_train1 -> hit @1
# c1_test0: sims c0_train0 0, c0_train1 -1, c1_train0 -0.110, c1_train1 0 -> order: c0_train0, c1_train1
#   (tie at 0: lower gallery index first; gallery order c0_train0, c0_train1, c1_train0, c1_train1), ...
#   -> first same-label item (c1_train1) at rank 2
EXPECTED = {"R@1": 0.5, "R@2": 1.0, "R@50": 1.0}


def test_recall_through_the_stage_on_constructed_features(setup, tmp_path, monkeypatch):
    tmp, man = setup

    def fake_features(encoder, manifest, entries, positions, **kw):
        assert kw["clips"] == 3 and kw["clip_len"] == CLIP_LEN
        return {p: np.array(FEATS[entries[p].id]) for p in positions}

    monkeypatch.setattr(retrieval_mod, "video_features", fake_features)
    res = retrieval(man, tmp / "pretrain", tmp_path, RetrievalConfig(clips=3, ks=[1, 2, 50], device="cpu", workers=0),
                    dist=DistInfo())
    assert res["recall"] == EXPECTED
    assert (res["num_queries"], res["num_gallery"], res["ks_effective"]) == (2, 4, [1, 2, 4])
    written = json.loads((tmp_path / "retrieval.json").read_text())
    assert written == json.loads(json.dumps(res))
    # RSPNet's published figures are UCF101 split 1's: shown beside a UCF101 run only
    assert written["dataset"] != "ucf101" and written["reference"] is None
    assert retrieval_mod.RSPNET_C3D_REFERENCE["recall"] == {"R@1": 0.360, "R@5": 0.567, "R@10": 0.665, "R@20": 0.763,
                                                            "R@50": 0.877}


def test_real_features_are_clip_averages_of_the_representation(setup):
    tmp, man = setup
    manifest = load_manifest(man)
    student, _ = retrieval_mod.load_student(tmp / "pretrain", "cpu")
    entries = manifest.by_split("test")
    feats = video_features(student, manifest, entries, [0, 1], clip_len=CLIP_LEN, input_size=32, clips=2,
                           device="cpu", progress=False)
    from student.finetune_data import FrameSource, multi_views

    e = entries[1]
    views = multi_views(FrameSource(manifest, e), e.frames, CLIP_LEN, 32, 2, 1)
    with torch.no_grad():
        expected = student.representation(views).double().mean(0).numpy()
    np.testing.assert_allclose(feats[1], expected, rtol=1e-5, atol=1e-6)
    assert feats[0].shape == (2 * student.out_channels,)


def test_gather_refuses_gaps_and_the_full_stage_runs(setup, tmp_path):
    tmp, man = setup
    entries = load_manifest(man).by_split("train")
    with pytest.raises(StageError, match="have no feature"):
        gather_features({0: np.zeros(2)}, entries, "gallery")
    res = retrieval(man, tmp / "pretrain", tmp_path, RetrievalConfig(clips=1, ks=[1, 5], device="cpu", workers=0),
                    dist=DistInfo())
    assert set(res["recall"]) == {"R@1", "R@5"} and res["recall"]["R@5"] == 1.0  # k clamps to the 4 train videos
