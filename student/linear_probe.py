"""Linear probe: the standard self-supervised protocol beside finetuning.

The pretrained student is FROZEN. Each video's feature is its representation [GAP(z_h) || GAP(z_c)]
averaged over ``cfg.clips`` evenly spaced centre-crop clips (the retrieval / test views), so every
number here is video-level by construction. Features are standardised with the train split's mean
and standard deviation; a multinomial logistic regression (one Linear layer, L2 penalty) is
fitted by full-batch L-BFGS in float64 from zero weights: the problem is convex, so the result
depends only on the encoder and the data, not on a seed or a learning rate.

The L2 penalty is chosen as the field does it, without the test split: ``heldout_fraction`` of each
class's train videos (a fixed, seeded draw) is held out, a classifier is fitted on the rest for each
value of ``weight_decays``, and the value with the best held-out top-1 (ties: lower held-out
cross-entropy, then the larger penalty) is refitted on the whole train split. The test split is
scored once, by that classifier. The summary holds the chosen value, the search, train / held-out /
test top-1 and chance (1/C, and min(5, C)/C for top-5). Under torchrun the features are split
across ranks and gathered (as retrieval does); every rank fits the same small classifiers.
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
from student.finetune import stratified_holdout
from student.metrics import topk_accuracy, topk_indices
from student.model import MultiTaskStudent
from student.retrieval import gather_features, load_student, video_features

log = logging.getLogger(__name__)


def train_moments(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The TRAIN features' mean and std (constant features get std 1: they stay 0)."""
    mean = train.mean(0, keepdim=True)
    std = train.std(0, unbiased=False, keepdim=True)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def standardise(train: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Z-score every set with the TRAIN mean and std (constant features get std 1: they stay 0)."""
    mean, std = train_moments(train)
    return [(x - mean) / std for x in (train, *others)]


PROBE_HEAD = "probe_head.pt"


def save_probe_head(path: Path, layer: torch.nn.Linear, train: torch.Tensor, classes: Sequence[str],
                    test_scores: torch.Tensor, test_labels: torch.Tensor) -> None:
    """What an out-of-context test set (student/out_of_context.py: Mimetics) needs of the fitted probe:
    the layer, the train standardisation, the class list, and the in-distribution test scores."""
    mean, std = train_moments(train)
    torch.save({"weight": layer.weight.detach().cpu(), "bias": layer.bias.detach().cpu(), "mean": mean.cpu(),
                "std": std.cpu(), "classes": list(classes), "test_scores": test_scores.detach().cpu(),
                "test_labels": test_labels.cpu()}, path)


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


HOLDOUT_SEED = 0  # the held-out draw is part of the protocol, not a knob: every encoder is probed alike


def _scores(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        logits = layer(x)
        return {"top1": topk_accuracy(logits, y, (1,))[1], "loss": float(F.cross_entropy(logits, y))}


def choose_weight_decay(x: torch.Tensor, y: torch.Tensor, fit_pos: Sequence[int], held_pos: Sequence[int],
                        num_classes: int, grid: Sequence[float], max_iter: int) -> tuple[float, list[dict[str, float]]]:
    """(chosen weight decay, one record per candidate) from fits on ``fit_pos`` scored on ``held_pos``.

    ``x`` is the raw train feature matrix: each candidate is standardised with the fit part's
    statistics only, so the held-out videos stay unseen until they are scored.
    """
    fit_x, held_x = standardise(x[list(fit_pos)], x[list(held_pos)])
    fit_y, held_y = y[list(fit_pos)], y[list(held_pos)]
    search = []
    for wd in grid:
        layer, _ = fit_logistic(fit_x, fit_y, num_classes, float(wd), max_iter)
        held = _scores(layer, held_x, held_y)
        search.append({"weight_decay": float(wd), "fit_top1": _scores(layer, fit_x, fit_y)["top1"],
                       "heldout_top1": held["top1"], "heldout_loss": held["loss"]})
    best = max(search, key=lambda r: (r["heldout_top1"], -r["heldout_loss"], r["weight_decay"]))
    return best["weight_decay"], search


def chance_levels(num_classes: int) -> dict[str, float]:
    """Top-1 / top-5 of a uniform guess over ``num_classes`` classes."""
    return {"chance_top1": 1.0 / num_classes, "chance_top5": min(5, num_classes) / num_classes}


def linear_probe(manifest_dir: Path, pretrain_dir: Path, out_dir: Path, cfg: Any, *, dist: DistInfo,
                 clip_len: int | None = None) -> dict[str, Any]:
    """Choose the L2 penalty on held-out train videos, fit on the train split's frozen features, test on
    the test split (the val split when there is none: Kinetics-400); writes linear_probe.json,
    predictions.jsonl and probe_head.pt into ``out_dir`` and returns the summary (fractions, video-level)."""
    manifest_dir, out_dir = Path(manifest_dir), Path(out_dir)
    manifest = load_manifest(manifest_dir)
    train, test = manifest.by_split("train"), manifest.by_split("test")
    test_split = "test"
    if not test and manifest.by_split("val"):  # Kinetics-400: no test labels were released; its val is the test
        test, test_split = manifest.by_split("val"), "val"
    _labelled(manifest_dir, "train", train)
    _labelled(manifest_dir, test_split, test)
    device = stage_device(cfg.device, dist)
    student, meta = load_student(Path(pretrain_dir), device)
    clip_len, clip_len_from = resolve_clip_len(clip_len, meta, Path(pretrain_dir))
    input_size = int(meta["model_config"].get("input_size", 112))
    kw = dict(dist=dist, clip_len=clip_len, input_size=input_size, cfg=cfg, device=device)
    x_train_raw = _features(student, manifest, train, "train", **kw)
    x_train, x_test = standardise(x_train_raw, _features(student, manifest, test, test_split, **kw))
    y_train = torch.tensor([e.label for e in train])
    y_test = torch.tensor([e.label for e in test])
    classes = len(manifest.classes)
    fit_pos, held_pos = stratified_holdout(train, cfg.heldout_fraction, HOLDOUT_SEED)
    if cfg.weight_decays and held_pos:
        chosen, search = choose_weight_decay(x_train_raw, y_train, fit_pos, held_pos, classes, cfg.weight_decays,
                                             cfg.max_iter)
        chosen_on = f"held-out {len(held_pos)} of the {len(train)} train videos (stratified, seed {HOLDOUT_SEED})"
    else:  # no grid, or too few videos per class to hold any out: the configured value, said so
        chosen, search = float(cfg.weight_decay), []
        chosen_on = "not searched (linear_probe.weight_decay; empty grid or no held-out videos)"
    layer, fit = fit_logistic(x_train, y_train, classes, chosen, cfg.max_iter)
    with torch.no_grad():
        scores_test, scores_train = layer(x_test), layer(x_train)
    acc = topk_accuracy(scores_test, y_test, (1, 5))
    held_top1 = next((r["heldout_top1"] for r in search if r["weight_decay"] == chosen), None)
    result = {
        "dataset": manifest.dataset, "level": f"video (features averaged over {cfg.clips} clips)",
        "top1": acc[1], "top5": acc[5], "train_top1": topk_accuracy(scores_train, y_train, (1,))[1],
        "heldout_top1": held_top1, **chance_levels(classes),
        "num_train": len(train), "num_heldout": len(held_pos) if search else 0, "num_test": len(test),
        "test_split": test_split, "num_classes": classes, "feature_dim": int(x_train.shape[1]), "clips": cfg.clips,
        "clip_len": clip_len, "clip_len_from": clip_len_from, "input_size": input_size, "weight_decay": chosen,
        "weight_decay_chosen_on": chosen_on, "weight_decay_search": search,
        "classifier": "logistic regression, L-BFGS", **fit,
    }
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "linear_probe.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        top5 = topk_indices(scores_test, 5).tolist()
        lines = [json.dumps({"id": e.id, "label": e.label, "pred": t[0], "top5": t}) for e, t in zip(test, top5)]
        (out_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        save_probe_head(out_dir / PROBE_HEAD, layer, x_train_raw, manifest.classes, scores_test, y_test)
        log.info("linear probe (%d train, %d test videos, weight decay %g): top-1 %.1f%% (chance %.1f%%), "
                 "top-5 %.1f%%", len(train), len(test), chosen, 100 * result["top1"], 100 * result["chance_top1"],
                 100 * result["top5"])
    return result


__all__ = ["PROBE_HEAD", "StageError", "chance_levels", "choose_weight_decay", "fit_logistic", "linear_probe",
           "save_probe_head", "standardise"]
