"""Held-out pretext evaluation (student/pretext_eval.py): the figures, the items, and the records
pretraining writes (untrained network at step 0, trained student at the end)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_manifests.manifest import Manifest, VideoEntry
from student.pretext_eval import (build_heldout_set, evaluate_pretext, heldout_entries, parsing_ious,
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
