"""Held-out pretext figures of a finished pretraining stage, beside the untrained network's.

Pretraining writes these itself (``heldout`` records of its metrics.jsonl); this script measures
them for a stage built before that existed, or with another number of held-out videos. It uses the
same code (student/pretext_eval.py): the run's student.pt loaded whole, and the untrained network
as pretraining initialises it for the same seed.

    python bench/heldout_eval.py --work /tmp/w [--set key=value ...] [--videos 140] [--views 8]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

from data_manifests.manifest import load_manifest  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402
from student.artifacts import load_pretrained_student  # noqa: E402
from student.pretext_eval import (HeldoutSet, _forward, build_heldout_set, describe,  # noqa: E402
                                  evaluate_pretext, heldout_entries, teacher_for_heldout)
from student.pretrain import build_pretrain_model, seed_all  # noqa: E402


def kd_cross_entropy(student: torch.nn.Module, hs: HeldoutSet) -> float:
    """The KD loss (soft cross-entropy, Eq. 4) of ``student`` on the held-out whole frames, its logits
    upsampled to the teacher's map size."""
    with torch.no_grad():
        logits = _forward(student.eval(), hs.whole, torch.device("cpu"), 32, contextlib.nullcontext)["parse_logits"]
    assert hs.teacher is not None
    t = hs.teacher.float()
    up = F.interpolate(logits, size=t.shape[-2:], mode="bilinear", align_corners=False)
    return float(-(t * F.log_softmax(up, dim=1)).sum(1).mean())


def kd_floor(hs: HeldoutSet) -> dict[str, float]:
    """Reference points for the KD loss on the held-out frames: the teacher's own entropy (the floor), the
    cross-entropy of the held-out mean map (a per-pixel prior that sees no pixels) and of the class prior."""
    assert hs.teacher is not None
    t = hs.teacher.float()

    def ce(p: torch.Tensor) -> float:
        return float(-(t * torch.log(p.clamp_min(1e-8))).sum(1).mean())
    return {"teacher_entropy": round(ce(t), 4), "ce_pixel_prior": round(ce(t.mean(0, keepdim=True)), 4),
            "ce_class_prior": round(ce(t.mean((0, 2, 3), keepdim=True)), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--pretrain-dir", type=Path, default=None, help="a pretraining stage folder (default: the "
                    "config's, in --work)")
    ap.add_argument("--manifest-dir", type=Path, default=None, help="its manifest folder (default: the config's)")
    ap.add_argument("--videos", type=int, default=0, help="held-out videos (default: pretrain.heldout_videos)")
    ap.add_argument("--views", type=int, default=0, help="items per video (default: pretrain.heldout_views)")
    args = ap.parse_args()
    cfg = load_config(overrides=args.overrides)
    graph = StageGraph(cfg, args.work)
    pretrain_dir = args.pretrain_dir or graph.pretrain().out_dir(args.work)
    manifest = load_manifest(args.manifest_dir or graph.manifest(cfg.pretrain.dataset).out_dir(args.work))
    entries = heldout_entries(manifest, cfg.clips.splits, args.videos or cfg.pretrain.heldout_videos)
    teacher = teacher_for_heldout(cfg.teacher, "cpu") if cfg.model.kd else None
    hs = build_heldout_set(manifest, entries, clip_len=cfg.clips.clip_len, speeds=cfg.clips.speeds,
                           input_size=cfg.model.input_size, crop_area=cfg.pretrain.crop_area, teacher=teacher,
                           views=args.views or cfg.pretrain.heldout_views)
    trained, meta = load_pretrained_student(pretrain_dir)
    seed_all(cfg.pretrain.seed)
    untrained = build_pretrain_model(cfg.model, cfg.pretrain, int(meta.get("num_parts", 7))).student
    figures = {"trained": evaluate_pretext(trained, hs), "untrained": evaluate_pretext(untrained, hs)}
    print(f"trained:   {describe(figures['trained'])}\nuntrained: {describe(figures['untrained'])}")
    out: dict[str, Any] = {"pretrain_dir": str(pretrain_dir), "videos": len(hs), "views": hs.views, **figures}
    if hs.teacher is not None:
        out["kd_loss"] = {"trained": round(kd_cross_entropy(trained, hs), 4),
                          "untrained": round(kd_cross_entropy(untrained, hs), 4), **kd_floor(hs)}
        print("KD loss on the held-out whole frames (nats):", out["kd_loss"])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
