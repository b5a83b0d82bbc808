"""Classification and retrieval metrics with deterministic tie handling.

Ties: wherever scores are ranked (top-k classes, nearest neighbours), equal scores are ordered by
the LOWER index first (a stable descending sort). So a prediction never depends on how a
particular ``torch.topk`` kernel happens to order equal values, and a constant score row
predicts class 0. ``k`` larger than the number of candidates is clamped to that number.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F


def rank_desc(scores: torch.Tensor) -> torch.Tensor:
    """Indices sorting each row of ``scores`` (N, C) from best to worst; ties: lower index first."""
    if scores.dim() != 2:
        raise ValueError(f"expected scores of shape (N, C), got {tuple(scores.shape)}")
    return torch.sort(scores, dim=1, descending=True, stable=True).indices


def topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``min(k, C)`` best classes per row (N, k'), ties broken by lower class index."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return rank_desc(scores)[:, : min(k, scores.shape[1])]


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean (N,): whether the label is among the top-``k`` classes (k clamped to C)."""
    labels = torch.as_tensor(labels, device=scores.device).long()
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match scores {tuple(scores.shape)}")
    return (topk_indices(scores, k) == labels[:, None]).any(dim=1)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is in the top-k, for each k (0.0 for an empty set)."""
    out: dict[int, float] = {}
    for k in ks:
        correct = topk_correct(scores, labels, k)
        out[int(k)] = int(correct.sum()) / correct.numel() if correct.numel() else 0.0  # exact count / n
    return out


def confusion_matrix(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
                     num_classes: int) -> np.ndarray:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    preds = np.asarray(preds, dtype=np.int64).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.size} predictions but {labels.size} labels")
    for name, arr in (("prediction", preds), ("label", labels)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f"a {name} is outside [0, {num_classes}): min {arr.min()}, max {arr.max()}")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_accuracy(preds: Sequence[int] | np.ndarray, labels: Sequence[int] | np.ndarray,
                       num_classes: int) -> list[float | None]:
    """Recall of each class (diagonal / row sum); ``None`` for a class with no samples."""
    cm = confusion_matrix(preds, labels, num_classes)
    rows = cm.sum(axis=1)
    return [float(cm[c, c] / rows[c]) if rows[c] else None for c in range(num_classes)]


def mean_class_accuracy(per_class: Sequence[float | None]) -> float:
    """Mean over the classes that have samples (0.0 when none do)."""
    vals = [v for v in per_class if v is not None]
    return float(np.mean(vals)) if vals else 0.0


def cosine_ranking(queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
    """Gallery indices per query (Q, G), nearest first by cosine similarity; ties: lower index first."""
    if queries.dim() != 2 or gallery.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D); got {tuple(queries.shape)} and {tuple(gallery.shape)}")
    sim = F.normalize(queries.double(), dim=1) @ F.normalize(gallery.double(), dim=1).T
    return rank_desc(sim)


def recall_at_k(queries: torch.Tensor, query_labels: Sequence[int] | torch.Tensor,
                gallery: torch.Tensor, gallery_labels: Sequence[int] | torch.Tensor,
                ks: Iterable[int]) -> dict[int, float]:
    """R@k: the fraction of queries with at least one same-label item among their k nearest.

    Distances are cosine; ``k`` is clamped to the gallery size (the returned dict keeps the
    requested k as key). Computed in float64 so near-ties do not flip between devices.
    """
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {ks}")
    ql = torch.as_tensor(query_labels).long().cpu()
    gl = torch.as_tensor(gallery_labels).long().cpu()
    if len(ql) != len(queries) or len(gl) != len(gallery):
        raise ValueError("feature and label counts differ")
    if len(queries) == 0 or len(gallery) == 0:
        return {k: 0.0 for k in ks}
    order = cosine_ranking(queries.cpu(), gallery.cpu())
    match = gl[order] == ql[:, None]  # (Q, G) in rank order
    first_hit = torch.where(match.any(1), match.float().argmax(1), torch.full_like(ql, len(gl)))
    return {k: int((first_hit < min(k, len(gl))).sum()) / len(ql) for k in ks}


def recall_at_k_chance(query_labels: Sequence[int], gallery_labels: Sequence[int],
                       ks: Iterable[int]) -> dict[int, float]:
    """R@k of a random ranking: mean over queries of 1 - C(G - n_c, k) / C(G, k), with n_c the gallery
    items of the query's class among G (k clamped to G), i.e. the chance that k random picks hit one."""
    gallery = list(gallery_labels)
    counts: dict[int, int] = {}
    for g in gallery:
        counts[int(g)] = counts.get(int(g), 0) + 1
    size, queries = len(gallery), list(query_labels)
    out = {}
    for k in (int(k) for k in ks):
        kk = min(k, size)
        miss = []
        for q in queries:
            p, others = 1.0, size - counts.get(int(q), 0)
            for i in range(kk):
                p *= max(others - i, 0) / (size - i)
            miss.append(p)
        out[k] = 1.0 - sum(miss) / len(miss) if miss else 0.0
    return out
