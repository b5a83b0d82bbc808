"""Metrics on hand-built inputs: ties, clamped k, per-class accuracy, confusion, recall@k."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from student.metrics import (confusion_matrix, mean_class_accuracy, per_class_accuracy, rank_desc,
                             recall_at_k, topk_accuracy, topk_correct, topk_indices)


def test_ties_are_broken_by_lower_class_index():
    scores = torch.tensor([[0.2, 0.5, 0.5, 0.1],
                           [1.0, 1.0, 1.0, 1.0],
                           [0.0, 0.3, 0.3, 0.3]])
    assert topk_indices(scores, 1).tolist() == [[1], [0], [1]]
    assert topk_indices(scores, 2).tolist() == [[1, 2], [0, 1], [1, 2]]
    assert rank_desc(scores)[2].tolist() == [1, 2, 3, 0]
    # label 2 ties with 1 on row 0 but 1 wins top-1; row 2: label 3 is only third.
    labels = torch.tensor([2, 0, 3])
    assert topk_correct(scores, labels, 1).tolist() == [False, True, False]
    assert topk_correct(scores, labels, 2).tolist() == [True, True, False]
    assert topk_correct(scores, labels, 3).tolist() == [True, True, True]


def test_ties_do_not_depend_on_position_of_the_row_in_a_big_batch():
    row = torch.zeros(1, 50)
    big = torch.cat([torch.randn(300, 50), row])
    assert topk_indices(big, 5)[-1].tolist() == [0, 1, 2, 3, 4]


def test_k_larger_than_class_count_is_clamped():
    scores = torch.tensor([[0.1, 0.9, 0.0], [0.3, 0.3, 0.4]])
    labels = torch.tensor([2, 1])
    assert topk_indices(scores, 5).shape == (2, 3)
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    assert acc == {1: 0.0, 5: 1.0}
    with pytest.raises(ValueError):
        topk_indices(scores, 0)


def test_topk_accuracy_numbers():
    scores = torch.tensor([[5., 1, 0, 0, 0, 0],
                           [1., 5, 4, 3, 2, 0],
                           [1., 2, 3, 4, 5, 6],
                           [6., 5, 4, 3, 2, 1]])
    labels = torch.tensor([0, 5, 5, 5])
    # row0 top1 hit; row1: label 5 is 6th -> miss top5; row2: top1 hit; row3: 6th -> miss
    assert topk_accuracy(scores, labels, ks=(1, 5)) == {1: 0.5, 5: 0.5}


def test_confusion_matrix_and_per_class_accuracy():
    labels = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 0, 1, 1, 0, 2, 2, 1]
    cm = confusion_matrix(preds, labels, 4)
    expected = np.array([[2, 1, 0, 0],
                         [0, 2, 0, 0],
                         [1, 1, 2, 0],
                         [0, 0, 0, 0]])
    np.testing.assert_array_equal(cm, expected)
    assert cm.dtype == np.int64
    pc = per_class_accuracy(preds, labels, 4)
    assert pc == [pytest.approx(2 / 3), 1.0, 0.5, None]
    assert mean_class_accuracy(pc) == pytest.approx((2 / 3 + 1.0 + 0.5) / 3)
    with pytest.raises(ValueError, match="outside"):
        confusion_matrix([4], [0], 4)


def test_recall_at_k_hand_computed():
    # Gallery on the unit circle at angles 0, 90, 180, 270 degrees (labels a, b, a, c) and one
    # item at 45 degrees (label c). Cosine ranks hand-computed for each query below.
    g = torch.tensor([[1., 0], [0, 1], [-1, 0], [0, -1], [1, 1]])
    gl = [0, 1, 0, 2, 2]
    q = torch.tensor([[1., 0.1],    # order: 0 (a), 4 (c), 1 (b), 3 (c)/2 (a) ... label a -> hit @1
                      [0.1, 1.],    # order: 1 (b), 4 (c), 0 (a), 2, 3 -> label c: first hit @2
                      [-1., -0.1],  # order: 2 (a), 3 (c), 1 (b), 0 (a), 4 (c) -> label b: first hit @3
                      [0., -1.]])   # order: 3 (c) -> label a: ranks 3 (c), 0/2 tie (a) -> first hit @2
    ql = [0, 2, 1, 0]
    r = recall_at_k(q, ql, g, gl, ks=[1, 2, 3, 50])
    assert r == {1: 0.25, 2: 0.75, 3: 1.0, 50: 1.0}  # k = 50 is clamped to the 5 gallery items
    # A label absent from the gallery never hits, even at k = gallery size.
    assert recall_at_k(q[:1], [7], g, gl, ks=[5]) == {5: 0.0}


def test_recall_ties_prefer_lower_gallery_index():
    g = torch.tensor([[1., 0], [1, 0], [2, 0]])  # all identical direction
    q = torch.tensor([[3., 0]])
    assert recall_at_k(q, [1], g, [0, 1, 1], ks=[1, 2]) == {1: 0.0, 2: 1.0}


def test_recall_chance_hand_computed():
    from student.metrics import recall_at_k_chance

    # gallery of 4: two of class 0, one of 1, one of 2. A class-0 query: R@1 = 2/4, R@2 = 1 - (2·1)/(4·3) = 5/6;
    # a class-3 query (absent from the gallery) never hits.
    r = recall_at_k_chance([0, 3], [0, 0, 1, 2], [1, 2, 9])
    assert r[1] == 0.25 and abs(r[2] - 5 / 12) < 1e-12 and r[9] == 0.5
    # 10 balanced classes: R@1 chance is 1/10, as in the demo's retrieval
    assert abs(recall_at_k_chance(list(range(10)), list(range(10)) * 5, [1])[1] - 0.1) < 1e-12
