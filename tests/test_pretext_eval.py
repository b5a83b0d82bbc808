"""Held-out pretext evaluation (student/pretext_eval.py): the figures, the items, and the records
pretraining writes (untrained network at step 0, trained student at the end)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_manifests.manifest import Manifest, VideoEntry
from pipeline.core.errors import ConfigError
from student.pretext_eval import (build_heldout_set, evaluate_pretext, heldout_entries, paired_gain, parsing_ious,
                                  retrieval_top1, rsp_accuracy)
from student.model import MultiTaskStudent


def test_parsing_ious_pool_pixels_and_skip_background() -> None:
    true = torch.zeros(1, 3, 4, 4)
    true[0, 0] = 1
    true[0, 0, :2, :2], true[0, 1, :2, :2] = 0, 1          # 4 px of class 1
    true[0, 0, 2:, 2:], true[0, 2, 2:, 2:] = 0, 1          # 4 px of class 2
    logits = true.clone() * 10                             # same resolution: a perfect student
    assert parsing_ious(logits, true) == (1.0, 1.0)
    wrong = logits.clone()
    wrong[0, :, 2:, 2:] = 0
    wrong[0, 1, 2:, 2:] = 10                               # class-2 pixels called class 1
    person, parts = parsing_ious(wrong, true)
    assert person == 1.0                                   # still person vs background
    assert parts == pytest.approx(np.mean([4 / 8, 0.0]))
    none = torch.zeros_like(logits)
    none[:, 0] = 10                                        # all background
    assert parsing_ious(none, true)[0] == 0.0
    small = torch.nn.functional.avg_pool2d(logits, 2)      # a coarser decoder is upsampled to the teacher's size
    assert parsing_ious(small, true)[0] > 0.0


def test_rsp_and_retrieval_figures() -> None:
    q = torch.eye(4)
    assert retrieval_top1(q, q) == 1.0
    assert retrieval_top1(q, q.roll(1, dims=0)) == 0.0
    assert retrieval_top1(q, torch.cat([q[:2], q[2:].flip(0)])) == 0.5
    assert rsp_accuracy(q, q, -q) == 1.0
    assert rsp_accuracy(q, -q, q) == 0.0


class _Reader:
    """Frames whose pixels encode (video, frame index), so crops and frame choices can be checked."""

    def __call__(self, path: Path, frames: list[int]) -> np.ndarray:
        v = int(Path(path).stem[1:])
        out = np.zeros((len(frames), 24, 32, 3), np.uint8)
        for i, f in enumerate(frames):
            out[i, :, :, 0] = f * 4
            out[i, :, :, 1] = v * 20
            out[i, :, :16, 2] = 200
        return out


class _Teacher:
    num_classes = 3

    def loader(self, path: Path, frames: list[int]) -> np.ndarray:
        return np.zeros((len(frames), 24, 32), np.uint8)

    def maps(self, batch: list[np.ndarray]) -> torch.Tensor:
        m = torch.zeros(len(batch), 3, 8, 8)
        m[:, 0] = 1
        return m


def _manifest(n: int = 6) -> Manifest:
    entries = [VideoEntry(id=f"v{i}", path=f"v{i}.avi", label=0, split="val" if i % 2 else "train", frames=20,
                          fps=25.0, width=32, height=24) for i in range(n)]
    return Manifest(dataset="toy", root=Path("/nowhere"), classes=["a"], entries=entries)


def test_heldout_items_are_unseen_deterministic_and_keys_share_their_crop() -> None:
    m = _manifest()
    held = heldout_entries(m, ["train"], 10)
    assert [e.id for e in held] == ["v1", "v3", "v5"]
    assert [e.id for e in heldout_entries(m, ["train"], 2)] == ["v1", "v3"]
    kw = dict(clip_len=4, speeds=[1, 2], input_size=16, crop_area=[0.4, 1.0], teacher=_Teacher(), reader=_Reader())
    a, b = build_heldout_set(m, held, **kw), build_heldout_set(m, held, **kw)
    for name in ("query", "key_pos", "key_neg", "whole", "teacher"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert a.query.shape == (3, 3, 4, 16, 16) and a.query.dtype == torch.uint8
    assert a.teacher is not None and a.teacher.shape == (3, 3, 8, 8)
    # whole: the middle clip at speed 1, uncropped (half the columns have blue 200)
    assert a.whole[0, 0, :, 0, 0].tolist() == [f * 4 for f in (8, 9, 10, 11)]
    assert 0.4 < float((a.whole[0, 2] > 100).float().mean()) < 0.6
    # video 0 (query speed 1): keys at speeds 1 and 2 start at the same frame; video 1 the other way round
    kp, kn = a.key_pos[0, 0, :, 0, 0].tolist(), a.key_neg[0, 0, :, 0, 0].tolist()
    assert kp[0] == kn[0] and kp[1] - kp[0] == 4 and kn[1] - kn[0] == 8
    kp1, kn1 = a.key_pos[1, 0, :, 0, 0].tolist(), a.key_neg[1, 0, :, 0, 0].tolist()
    assert kp1[1] - kp1[0] == 8 and kn1[1] - kn1[0] == 4
    # key_pos and key_neg share their geometry: their blue masks are identical
    assert torch.equal(a.key_pos[:, 2] > 100, a.key_neg[:, 2] > 100)


def test_evaluate_pretext_restores_the_mode_and_reports_chance() -> None:
    m = _manifest(8)
    hs = build_heldout_set(m, heldout_entries(m, ["train"], 8), clip_len=8, speeds=[1, 2], input_size=32,
                           crop_area=[0.4, 1.0], teacher=_Teacher(), reader=_Reader())
    torch.manual_seed(0)
    student = MultiTaskStudent("c3d", width=0.0625, num_parts=3, parse_size=4, proj_dim=8).train()
    fig = evaluate_pretext(student, hs)
    assert student.training
    assert fig["avid_gallery"] == 4 and fig["avid_chance"] == 0.25
    for k in ("rsp_acc", "avid_top1", "kd_person_iou", "kd_part_miou"):
        assert fig[k] is not None and 0.0 <= fig[k] <= 1.0 or np.isnan(fig[k]), k


def test_views_add_items_and_keep_view_zero_of_a_one_view_set() -> None:
    m = _manifest(8)
    held = heldout_entries(m, ["train"], 8)
    kw = dict(clip_len=4, speeds=[1, 2], input_size=16, crop_area=[0.4, 1.0], teacher=_Teacher(), reader=_Reader())
    one, three = build_heldout_set(m, held, **kw), build_heldout_set(m, held, views=3, **kw)
    assert three.views == 3 and len(three) == 4
    assert three.query.shape == (12, 3, 4, 16, 16) and three.query_colour.shape[0] == 12
    assert three.whole.shape == one.whole.shape and torch.equal(three.teacher, one.teacher)  # once per video
    for name in ("query", "key_pos", "key_neg", "query_colour", "key_colour"):
        assert torch.equal(getattr(three, name)[0::3], getattr(one, name)), name  # view 0 = the one-view items
    assert not torch.equal(three.query_colour[0::3], three.query_colour[1::3])  # other views: new draws
    # speeds alternate over views too: video 0 is at speed 1 in view 0, speed 2 in view 1
    steps = [int(three.key_pos[i, 0, 1, 0, 0]) - int(three.key_pos[i, 0, 0, 0, 0]) for i in range(3)]
    assert steps == [4, 8, 4]
    with pytest.raises(ConfigError, match="at least one view"):
        build_heldout_set(m, held, views=0, **kw)


def test_evaluate_pretext_reports_per_view_figures_and_the_paired_gain() -> None:
    m = _manifest(8)
    hs = build_heldout_set(m, heldout_entries(m, ["train"], 8), clip_len=8, speeds=[1, 2], input_size=32,
                           crop_area=[0.4, 1.0], views=4, reader=_Reader())
    torch.manual_seed(0)
    fig = evaluate_pretext(MultiTaskStudent("c3d", width=0.0625, num_parts=3, parse_size=4, proj_dim=8), hs)
    assert fig["heldout_views"] == 4 and len(fig["avid_top1_views"]) == 4 and len(fig["rsp_acc_views"]) == 4
    assert fig["avid_top1"] == pytest.approx(np.mean(fig["avid_top1_views"]), abs=1e-4)
    assert fig["avid_top1_se"] == pytest.approx(np.std(fig["avid_top1_views"], ddof=1) / 2, abs=1e-4)
    # the gain: differences paired by view, mean and 95 % t-interval (t_{0.975,3} = 3.182)
    trained = {"avid_top1_views": [0.10, 0.12, 0.08, 0.10], "rsp_acc_views": [0.9, 0.8]}
    untrained = {"avid_top1_views": [0.03, 0.03, 0.03, 0.03], "rsp_acc_views": [0.5]}
    gain = paired_gain(trained, untrained)
    half = 3.182 * np.std([0.07, 0.09, 0.05, 0.07], ddof=1) / 2
    assert gain == {"avid_top1": {"mean": 0.07, "low": round(0.07 - half, 4), "high": round(0.07 + half, 4),
                                  "views": 4}}  # RSP left out: its view counts differ
    assert paired_gain({"avid_top1_views": [0.1]}, {"avid_top1_views": [0.0]}) == {}
