"""Out-of-context test sets: the same classes without the scene that usually goes with them.

SCUBA / SCUFO (the HMDB51 / UCF101 / Kinetics-400 test videos with the actor pasted onto other
backgrounds) and the synthetic demo's scene-swapped copy are scored with the classifier finetuned on
the original dataset and split, by the same multi-view protocol as its in-distribution test
(:func:`evaluate_test_set`). Mimetics (mimed actions of 50 Kinetics-400 classes) is scored with the
linear probe fitted on Kinetics-400 features, its 400-way scores restricted to the classes the test
set covers (:func:`linear_probe_test_set`). Both report the test set's top-1 beside the
in-distribution top-1 (over the same classes) and the drop between them, in points: a model that
recognises the actor, not the scene, drops less.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from data_manifests.manifest import load_manifest
from pipeline.core.distributed import DistInfo
from pipeline.core.errors import StageError
from pipeline.core.runtime import stage_device
from student.artifacts import resolve_clip_len
from student.evaluate import evaluate
from student.linear_probe import PROBE_HEAD, _features, _labelled
from student.metrics import topk_accuracy
from student.retrieval import load_student

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise StageError(f"{path} is missing: rebuild that stage (--force)")
    return json.loads(path.read_text(encoding="utf-8"))


def _compare(summary: dict[str, Any], test_set: str, top1: float, in_dist_top1: float) -> dict[str, Any]:
    """The test set's figures beside the in-distribution ones (fractions; drop in points of %)."""
    return {**summary, "test_set": test_set, "test_set_top1": top1, "in_distribution_top1": in_dist_top1,
            "drop_points": 100.0 * (in_dist_top1 - top1)}


def evaluate_test_set(test_manifest_dir: Path, finetune_dir: Path, in_dist_dir: Path, out_dir: Path, cfg: Any, *,
                      dist: DistInfo, test_set: str) -> dict[str, Any]:
    """Multi-view test of ``finetune_dir/classifier.pt`` on a test set's "test" videos; the summary
    (and metrics.json) add the in-distribution top-1 of ``in_dist_dir`` (the evaluate stage of the
    same classifier) and the drop."""
    metrics = evaluate(Path(test_manifest_dir), Path(finetune_dir), Path(out_dir), cfg, dist=dist)
    in_dist = _read_json(Path(in_dist_dir) / "metrics.json")
    out = _compare(metrics, test_set, metrics["video_top1"], float(in_dist["video_top1"]))
    out["in_distribution_videos"] = in_dist.get("num_videos")
    if dist.is_main:
        (Path(out_dir) / "metrics.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n",
                                                    encoding="utf-8")
        log.info("%s: top-1 %.1f%% (in-distribution %.1f%%, drop %.1f points)", test_set, 100 * out["test_set_top1"],
                 100 * out["in_distribution_top1"], out["drop_points"])
    return out


def restricted_accuracy(scores: torch.Tensor, labels: torch.Tensor, keep: Sequence[int]) -> tuple[float, float, int]:
    """(top-1, top-5, videos) over the videos labelled with a class of ``keep``, the ranking taken over
    ``keep`` only (a head trained on more classes, scored on a test set covering some of them)."""
    keep_t = torch.tensor(sorted(keep), dtype=torch.long)
    mask = torch.isin(labels, keep_t)
    if not bool(mask.any()):
        return 0.0, 0.0, 0
    sub = scores[mask][:, keep_t]
    remap = {int(c): i for i, c in enumerate(keep_t)}
    y = torch.tensor([remap[int(v)] for v in labels[mask]], dtype=torch.long)
    acc = topk_accuracy(sub, y, (1, min(5, len(keep_t))))
    return acc[1], acc[min(5, len(keep_t))], int(mask.sum())


def restricted_top1(scores: torch.Tensor, labels: torch.Tensor, keep: Sequence[int]) -> tuple[float, int]:
    """(top-1, videos) of :func:`restricted_accuracy`."""
    top1, _, n = restricted_accuracy(scores, labels, keep)
    return top1, n


def linear_probe_test_set(test_manifest_dir: Path, probe_dir: Path, pretrain_dir: Path, out_dir: Path, cfg: Any, *,
                          dist: DistInfo, test_set: str, clip_len: int | None = None) -> dict[str, Any]:
    """Score a test set's "test" videos with the linear probe of ``probe_dir`` (fitted on the parent
    dataset's frozen features), restricted to the classes the test set covers; the in-distribution
    top-1 is the probe's own test split restricted the same way."""
    test_manifest_dir, out_dir = Path(test_manifest_dir), Path(out_dir)
    manifest = load_manifest(test_manifest_dir)
    test = manifest.by_split("test")
    _labelled(test_manifest_dir, "test", test)
    head_path = Path(probe_dir) / PROBE_HEAD
    if not head_path.is_file():
        raise StageError(f"{head_path} is missing: rebuild the linear probe (pipeline linear-probe --force)")
    head = torch.load(head_path, map_location="cpu", weights_only=True)
    if list(head["classes"]) != list(manifest.classes):
        raise StageError(f"{test_manifest_dir}: its classes differ from the linear probe's ({head_path}); "
                                f"give the test set the probe's dataset as parent")
    device = stage_device(cfg.device, dist)
    student, meta = load_student(Path(pretrain_dir), device)
    clip_len, _ = resolve_clip_len(clip_len, meta, Path(pretrain_dir))
    input_size = int(meta["model_config"].get("input_size", 112))
    x = _features(student, manifest, test, "test", dist=dist, clip_len=clip_len, input_size=input_size, cfg=cfg,
                  device=device)
    layer = torch.nn.Linear(x.shape[1], len(manifest.classes), dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(head["weight"])
        layer.bias.copy_(head["bias"])
        scores = layer((x - head["mean"]) / head["std"])
    labels = torch.tensor([e.label for e in test])
    covered = sorted({e.label for e in test})
    top1, top5, n = restricted_accuracy(scores, labels, covered)
    in_top1, in_n = restricted_top1(head["test_scores"], head["test_labels"], covered)
    summary = _compare({"dataset": manifest.dataset, "num_test": n, "top1": top1, "top5": top5,
                        "classes_covered": len(covered), "num_classes": len(manifest.classes),
                        "in_distribution_videos": in_n,
                        "top1_all_classes": topk_accuracy(scores, labels, (1,))[1], "clips": cfg.clips,
                        "level": f"video (features averaged over {cfg.clips} clips)"}, test_set, top1, in_top1)
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "linear_probe.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        preds = scores[:, torch.tensor(covered)].argmax(1).tolist()
        lines = [json.dumps({"id": e.id, "label": e.label, "pred": covered[p]}) for e, p in zip(test, preds)]
        (out_dir / "predictions.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        log.info("%s: top-1 %.1f%% over its %d classes (in-distribution %.1f%%, drop %.1f points)", test_set,
                 100 * top1, len(covered), 100 * in_top1, summary["drop_points"])
    return summary
