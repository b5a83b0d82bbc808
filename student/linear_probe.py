"""Linear probe: the standard self-supervised protocol beside finetuning.

The pretrained student is FROZEN. Each video's feature is its representation [GAP(z_h) || GAP(z_c)]
averaged over ``cfg.clips`` evenly spaced centre-crop clips (the retrieval / test views), so every
number here is video-level by construction. Features are standardised with the train split's mean
and standard deviation; a multinomial logistic regression (one Linear layer, L2 penalty
``weight_decay``) is fitted on the train split by full-batch L-BFGS in float64 from zero weights:
the problem is convex, so the result depends only on the encoder and the data, not on a seed or a
learning rate. Top-1 / top-5 are reported on the test split. Under torchrun the features are split
across ranks and gathered (as retrieval does); every rank fits the same small classifier.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from data_manifests.manifest import VideoEntry, load_manifest
from pipeline.core.distributed import DistInfo
from pipeline.core.errors import StageError
from pipeline.core.runtime import stage_device
from student.artifacts import resolve_clip_len
from student.metrics import topk_accuracy, topk_indices
from student.model import MultiTaskStudent
from student.retrieval import gather_features, load_student, video_features

log = logging.getLogger(__name__)


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Z-score every set with the TRAIN mean and std (constant features get std 1: they stay 0)."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, unbiased=False, keepdim=True)
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return [(x - mean) / std for x in (train, *others)]


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, weight_decay: float,
                 max_iter: int) -> tuple[torch.nn.Linear, dict[str, float]]:
    """Multinomial logistic regression on (N, D) float64 features by full-batch L-BFGS (strong Wolfe).

    Loss = mean cross-entropy + weight_decay/2 · ||W||² (the bias is not penalised). Zero init makes
    the fit deterministic.
    """
    layer = torch.nn.Linear(x.shape[1], num_classes, dtype=torch.float64)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    opt = torch.optim.LBFGS(layer.parameters(), lr=1.0, max_iter=max_iter, tolerance_grad=1e-9,
                            tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(layer(x), y) + 0.5 * weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        loss = float(F.cross_entropy(layer(x), y))
    state = opt.state[layer.weight]  # L-BFGS keeps its counters on the first parameter
    return layer, {"train_loss": loss, "iterations": int(state.get("n_iter", 0))}


def _labelled(manifest_dir: Path, split: str, entries: Sequence[VideoEntry]) -> None:
    if not entries:
        raise StageError(f"manifest {manifest_dir} has no {split} videos")
    bad = [e.id for e in entries if e.label < 0]
    if bad:
        raise StageError(f"manifest {manifest_dir}: {len(bad)} {split} videos have no label (first: {bad[:3]})")


def _features(student: MultiTaskStudent, manifest: Any, entries: Sequence[VideoEntry], what: str, *, dist: DistInfo,
              clip_len: int, input_size: int, cfg: Any, device: str) -> torch.Tensor:
    mine = list(range(dist.rank, len(entries), dist.world_size))
    local = video_features(student, manifest, entries, mine, clip_len=clip_len, input_size=input_size,
                           clips=cfg.clips, device=device, workers=cfg.workers, progress=dist.is_main,
                           desc=f"linear-probe {what}")
    return gather_features(local, entries, what).double()


def linear_probe(manifest_dir: Path, pretrain_dir: Path, out_dir: Path, cfg: Any, *, dist: DistInfo,
                 clip_len: int | None = None) -> dict[str, Any]:
    """Fit on the train split's frozen features, test on the test split; writes linear_probe.json and
    predictions.jsonl into ``out_dir`` and returns the summary (fractions, video-level)."""
    manifest_dir, out_dir = Path(manifest_dir), Path(out_dir)
    manifest = load_manifest(manifest_dir)
    train, test = manifest.by_split("train"), manifest.by_split("test")
    _labelled(manifest_dir, "train", train)
    _labelled(manifest_dir, "test", test)
    device = stage_device(cfg.device, dist)
    student, meta = load_student(Path(pretrain_dir), device)
    clip_len, clip_len_from = resolve_clip_len(clip_len, meta, Path(pretrain_dir))
    input_size = int(meta["model_config"].get("input_size", 112))
    kw = dict(dist=dist, clip_len=clip_len, input_size=input_size, cfg=cfg, device=device)
    x_train, x_test = standardise(_features(student, manifest, train, "train", **kw),
                                  _features(student, manifest, test, "test", **kw))
    y_train = torch.tensor([e.label for e in train])
    y_test = torch.tensor([e.label for e in test])
    classes = len(manifest.classes)
    layer, fit = fit_logistic(x_train, y_train, classes, cfg.weight_decay, cfg.max_iter)
    with torch.no_grad():
        scores_test, scores_train = layer(x_test), layer(x_train)
    acc = topk_accuracy(scores_test, y_test, (1, 5))
    result = {
        "dataset": manifest.dataset, "level": f"video (features averaged over {cfg.clips} clips)",
        "top1": acc[1], "top5": acc[5], "train_top1": topk_accuracy(scores_train, y_train, (1,))[1],
        "num_train": len(train), "num_test": len(test), "num_classes": classes,
        "feature_dim": int(x_train.shape[1]), "clips": cfg.clips, "clip_len": clip_len, "clip_len_from": clip_len_from,
        "input_size": input_size, "weight_decay": cfg.weight_decay, "classifier": "logistic regression, L-BFGS",
        **fit,
    }
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "linear_probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        top5 = topk_indices(scores_test, 5).tolist()
        lines = [json.dumps({"id": e.id, "label": e.label, "pred": t[0], "top5": t}) for e, t in zip(test, top5)]
        (out_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("linear probe (%d train, %d test videos): top-1 %.1f%%, top-5 %.1f%%", len(train), len(test),
                 100 * result["top1"], 100 * result["top5"])
    return result


__all__ = ["StageError", "fit_logistic", "linear_probe", "standardise"]
