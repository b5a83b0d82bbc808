"""Held-out pretext figures of a finished pretraining stage, beside the untrained network's.

Pretraining writes these itself (``heldout`` records of its metrics.jsonl); this script measures
them for a stage built before that existed, or with another number of held-out videos. It uses the
same code (student/pretext_eval.py): the run's student.pt loaded whole, and the untrained network
as pretraining initialises it for the same seed.

    python bench/heldout_eval.py --work /tmp/w [--set key=value ...] [--videos 140]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402,F401  (puts the repository on sys.path)

from data_manifests.manifest import load_manifest  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402
from student.artifacts import load_pretrained_student  # noqa: E402
from student.pretext_eval import (build_heldout_set, describe, evaluate_pretext, heldout_entries,  # noqa: E402
                                  teacher_for_heldout)
from student.pretrain import build_pretrain_model, seed_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--pretrain-dir", type=Path, default=None, help="a pretraining stage folder (default: the "
                    "config's, in --work)")
    ap.add_argument("--manifest-dir", type=Path, default=None, help="its manifest folder (default: the config's)")
    ap.add_argument("--videos", type=int, default=0, help="held-out videos (default: pretrain.heldout_videos)")
    args = ap.parse_args()
    cfg = load_config(overrides=args.overrides)
    graph = StageGraph(cfg, args.work)
    pretrain_dir = args.pretrain_dir or graph.pretrain().out_dir(args.work)
    manifest = load_manifest(args.manifest_dir or graph.manifest(cfg.pretrain.dataset).out_dir(args.work))
    entries = heldout_entries(manifest, cfg.clips.splits, args.videos or cfg.pretrain.heldout_videos)
    teacher = teacher_for_heldout(cfg.teacher, "cpu") if cfg.model.kd else None
    hs = build_heldout_set(manifest, entries, clip_len=cfg.clips.clip_len, speeds=cfg.clips.speeds,
                           input_size=cfg.model.input_size, crop_area=cfg.pretrain.crop_area, teacher=teacher)
    trained, meta = load_pretrained_student(pretrain_dir)
    seed_all(cfg.pretrain.seed)
    untrained = build_pretrain_model(cfg.model, cfg.pretrain, int(meta.get("num_parts", 7))).student
    out = {"pretrain_dir": str(pretrain_dir), "videos": len(hs),
           "trained": evaluate_pretext(trained, hs), "untrained": evaluate_pretext(untrained, hs)}
    print(f"trained:   {describe(out['trained'])}\nuntrained: {describe(out['untrained'])}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
