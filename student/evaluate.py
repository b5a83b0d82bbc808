"""Multi-view test protocol: N clips × M crops per video, views averaged per video.

Each video's views (``finetune_data.multi_views``) are run in chunks of ``cfg.chunk`` so memory
is bounded whatever N × M is. How the views are combined follows the classifier's finetuning
protocol (``student.protocols.view_aggregation``): the paper and RSPNet protocols average the
views' logits, as RSPNet's test script does; a custom protocol averages their softmax
probabilities. The two can rank classes differently (one confident view weighs more in the logit
mean), so the choice is recorded in metrics.json. A video's ``probs`` are the mean probabilities,
or the softmax of the mean logits, so predictions.jsonl always holds a distribution.
"Clip-level" accuracy counts every view as its own prediction (with M = 3 a view is one crop of
one clip) and is labelled as such everywhere.

Distributed: rank r takes videos r, r + W, r + 2W, ... (no padding, so nothing is counted twice),
results are gathered with ``all_gather_objects``, and :func:`check_gathered` refuses any duplicate
video, missing video or wrong view count before a number is computed. Every rank computes the same
metrics from the gathered list; rank 0 writes the files. Ties in top-k: lower class index first
(``student.metrics``).
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_manifests.manifest import Manifest, VideoEntry, load_manifest
from pipeline.core.distributed import DistInfo, all_gather_objects
from pipeline.core.errors import StageError
from pipeline.core.lifetime import DieWithParent
from pipeline.core.progress import Progress
from pipeline.core.runtime import stage_device
from student.artifacts import load_classifier
from student.confusion_png import write_confusion_csv, write_confusion_png
from student.finetune_data import ViewChunks
from student.metrics import (confusion_matrix, mean_class_accuracy, per_class_accuracy, topk_accuracy,
                             topk_correct, topk_indices)
from student.protocols import view_aggregation

log = logging.getLogger(__name__)


@dataclass
class VideoScore:
    """One video's accumulated views: video-level probabilities and per-view top-1/top-5 hits."""

    pos: int  # index into the evaluated entry list
    id: str
    label: int
    views: int
    probs: np.ndarray  # (C,) float64: mean of the views' softmax, or softmax of their mean logits
    view_top1: int
    view_top5: int

    def to_obj(self) -> dict[str, Any]:
        return {"pos": self.pos, "id": self.id, "label": self.label, "views": self.views,
                "probs": self.probs, "view_top1": self.view_top1, "view_top5": self.view_top5}

    @classmethod
    def from_obj(cls, d: dict[str, Any]) -> "VideoScore":
        return cls(**d)


def rank_positions(n: int, rank: int, world_size: int) -> list[int]:
    """Positions ``rank, rank + W, ...`` of ``n`` items: a partition with no padding."""
    return list(range(rank, n, world_size))


def inference_autocast(device: str | torch.device) -> Any:
    """bf16 autocast for inference on CUDA (tensor-core 3D convolutions, half the activation memory); a no-op
    on the CPU, where the reference numbers are float32."""
    if torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def score_videos(model: torch.nn.Module, manifest: Manifest, entries: Sequence[VideoEntry], positions: Sequence[int],
                 *, clip_len: int, input_size: int, clips: int, crops: int, chunk: int, device: str,
                 workers: int = 0, desc: str = "evaluate", progress: bool = True,
                 aggregate: str = "softmax") -> list[VideoScore]:
    """Run every view of ``entries[p]`` for ``p`` in ``positions`` through ``model`` (eval mode).

    ``aggregate``: ``"softmax"`` averages the views' probabilities, ``"logits"`` their logits
    (then a softmax makes the video's ``probs``); see the module docstring.
    """
    if aggregate not in ("softmax", "logits"):
        raise ValueError(f"score_videos: aggregate must be 'softmax' or 'logits', got {aggregate!r}")
    sub = [entries[p] for p in positions]
    ds = ViewChunks(manifest, sub, clip_len, input_size, clips, crops, chunk)
    # own generator: scoring must not advance the global RNG (exact resume of finetuning)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                        worker_init_fn=DieWithParent() if workers else None,  # no orphans after a SIGKILL
                        generator=torch.Generator().manual_seed(0))
    was_training = model.training
    model.eval()
    sums: dict[int, torch.Tensor] = {}
    seen: dict[int, list[int]] = {}
    hits: dict[int, list[int]] = {}
    try:
        with Progress(len(sub) * ds.views_per_video, desc, "view", enabled=progress) as bar:
            for pos, first, views in loader:
                pos, first = int(pos), int(first)
                label = sub[pos].label
                with inference_autocast(device):
                    logits = model(views.to(device, non_blocking=True)).float().cpu()
                probs = torch.softmax(logits, dim=1)
                summed = (logits if aggregate == "logits" else probs).double().sum(0)
                sums[pos] = sums.get(pos, torch.zeros(probs.shape[1], dtype=torch.float64)) + summed
                seen.setdefault(pos, []).extend(range(first, first + len(probs)))
                lab = torch.full((len(probs),), label, dtype=torch.long)
                h = hits.setdefault(pos, [0, 0])
                h[0] += int(topk_correct(probs, lab, 1).sum())
                h[1] += int(topk_correct(probs, lab, 5).sum())
                bar.update(len(probs))
    finally:
        model.train(was_training)
    out = []
    for pos in sorted(sums):
        views_seen = seen[pos]
        if sorted(views_seen) != list(range(ds.views_per_video)):
            raise StageError(f"video {sub[pos].id}: views {sorted(views_seen)} were run, expected "
                             f"0..{ds.views_per_video - 1} once each")
        e = sub[pos]
        mean = sums[pos] / len(views_seen)
        video_probs = torch.softmax(mean, dim=0) if aggregate == "logits" else mean
        out.append(VideoScore(positions[pos], e.id, e.label, len(views_seen), video_probs.numpy(),
                              hits[pos][0], hits[pos][1]))
    return out


def gather_scores(local: list[VideoScore]) -> list[VideoScore]:
    """Every rank's scores, flattened in rank order (a copy of the local list in one process)."""
    parts = all_gather_objects([s.to_obj() for s in local])
    return [VideoScore.from_obj(d) for part in parts for d in part]


def check_gathered(scores: Sequence[VideoScore], entries: Sequence[VideoEntry],
                   views_per_video: int) -> list[VideoScore]:
    """Scores sorted by position, after checking each video appears once with ``views_per_video`` views."""
    ids = [e.id for e in entries]
    by_pos: dict[int, VideoScore] = {}
    problems: list[str] = []
    for s in scores:
        if s.pos in by_pos:
            problems.append(f"video {s.id!r} (position {s.pos}) appears more than once")
            continue
        if not 0 <= s.pos < len(entries) or ids[s.pos] != s.id:
            problems.append(f"video {s.id!r} at position {s.pos} is not in the evaluated split")
            continue
        if s.views != views_per_video:
            problems.append(f"video {s.id!r} has {s.views} views, expected {views_per_video}")
        by_pos[s.pos] = s
    missing = [ids[p] for p in range(len(entries)) if p not in by_pos]
    if missing:
        problems.append(f"{len(missing)} videos have no predictions (first: {missing[:5]})")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise StageError(f"gathered evaluation results are inconsistent: {shown}")
    return [by_pos[p] for p in range(len(entries))]


def summarise(scores: Sequence[VideoScore], classes: Sequence[str]) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """(metrics, video probability matrix (V, C), confusion matrix) from checked scores."""
    c = len(classes)
    probs = torch.from_numpy(np.stack([s.probs for s in scores])) if scores else torch.zeros(0, c, dtype=torch.float64)
    labels = torch.tensor([s.label for s in scores], dtype=torch.long)
    acc = topk_accuracy(probs, labels, (1, 5))
    preds = topk_indices(probs, 1)[:, 0].numpy() if len(scores) else np.zeros(0, np.int64)
    cm = confusion_matrix(preds, labels.numpy(), c)
    pc = per_class_accuracy(preds, labels.numpy(), c)
    views = sum(s.views for s in scores)
    metrics = {
        "num_videos": len(scores),
        "num_views": views,
        "video_top1": acc[1],
        "video_top5": acc[5],
        "clip_top1": sum(s.view_top1 for s in scores) / views if views else 0.0,
        "clip_top5": sum(s.view_top5 for s in scores) / views if views else 0.0,
        "mean_class_accuracy": mean_class_accuracy(pc),
        "per_class": {name: pc[i] for i, name in enumerate(classes)},
        "per_class_count": {name: int(cm[i].sum()) for i, name in enumerate(classes)},
        "top5_k": min(5, c),
    }
    return metrics, probs.numpy(), cm


def _prediction_lines(scores: Sequence[VideoScore], classes: Sequence[str]) -> list[str]:
    lines = []
    for s in scores:
        order = topk_indices(torch.from_numpy(s.probs)[None], 5)[0].tolist()
        lines.append(json.dumps({"id": s.id, "label": s.label, "label_name": classes[s.label], "pred": order[0],
                                 "pred_name": classes[order[0]], "top5": order, "views": s.views,
                                 "probs": [float(p) for p in s.probs]}))
    return lines


def evaluate(manifest_dir: Path, finetune_dir: Path, out_dir: Path, cfg: Any, *, dist: DistInfo,
             split: str = "test") -> dict[str, Any]:
    """Test ``finetune_dir/classifier.pt`` on the manifest's ``split`` with N clips × M crops per video.

    Writes (rank 0) predictions.jsonl, metrics.json, confusion.csv, confusion.png into ``out_dir``
    and returns the metrics (keys video_top1, video_top5, clip_top1, clip_top5, num_videos,
    per_class, ...; accuracies are fractions in [0, 1]).
    """
    out_dir = Path(out_dir)
    manifest = load_manifest(Path(manifest_dir))
    entries = manifest.by_split(split)
    if not entries:
        raise StageError(f"manifest {manifest_dir} has no videos in split {split!r}")
    unlabelled = [e.id for e in entries if not 0 <= e.label < len(manifest.classes)]
    if unlabelled:
        raise StageError(f"manifest {manifest_dir}: {len(unlabelled)} {split!r} videos have no valid label "
                         f"(first: {unlabelled[:3]}); cannot score them")
    device = stage_device(cfg.device, dist)
    model, info = load_classifier(Path(finetune_dir) / "classifier.pt", device)
    if list(info["classes"]) != list(manifest.classes):
        raise StageError(f"{finetune_dir}/classifier.pt was trained on classes {info['classes'][:5]}... "
                         f"but manifest {manifest_dir} has {manifest.classes[:5]}... "
                         f"({len(manifest.classes)} classes)")
    views = cfg.clips * cfg.crops
    protocol = (info.get("protocol") or {}).get("name")
    aggregate = view_aggregation(protocol)
    local = score_videos(model, manifest, entries, rank_positions(len(entries), dist.rank, dist.world_size),
                         clip_len=info["clip_len"], input_size=info["input_size"], clips=cfg.clips, crops=cfg.crops,
                         chunk=cfg.chunk, device=device, workers=cfg.workers, desc=f"evaluate {split}",
                         progress=dist.is_main, aggregate=aggregate)
    scores = check_gathered(gather_scores(local), entries, views)
    metrics, _, cm = summarise(scores, manifest.classes)
    metrics = {"split": split, "clips": cfg.clips, "crops": cfg.crops, "views_per_video": views,
               "clip_len": info["clip_len"], "input_size": info["input_size"],
               "selected_on": info.get("selected_on"), "selected_epoch": info.get("selected_epoch"),
               "protocol": protocol, "aggregate": aggregate,
               "test_selected": info.get("selected_on") == "test",
               "clip_level_note": "clip_top1/clip_top5 count every view (clip x crop) as its own prediction",
               **metrics}
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "predictions.jsonl").write_text("\n".join(_prediction_lines(scores, manifest.classes)) + "\n",
                                                   encoding="utf-8")
        write_confusion_csv(out_dir / "confusion.csv", cm, manifest.classes)
        write_confusion_png(out_dir / "confusion.png", cm, manifest.classes)
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        log.info("%s: %d videos x %d views: video top-1 %.2f%%, top-5 %.2f%%; clip-level top-1 %.2f%%, top-5 %.2f%%",
                 split, metrics["num_videos"], views, 100 * metrics["video_top1"], 100 * metrics["video_top5"],
                 100 * metrics["clip_top1"], 100 * metrics["clip_top5"])
    return metrics
