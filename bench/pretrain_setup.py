"""The pretraining data and held-out set of a built work directory, for benches that train the student
outside the pipeline's stages (rsp_optimizer.py, avid_diagnosis.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pipeline.core.config import load_config
from pipeline.core.distributed import DistInfo
from pipeline.stages import StageGraph
from student.pretext_eval import HeldoutSet, build_heldout_set, heldout_entries
from student.pretrain import _load_data


def load_pretrain_data(work: Path, overrides: list[str]) -> tuple[Any, Any]:
    """(config, pretraining data) for ``overrides`` on the default config; refuses an unbuilt work directory."""
    cfg = load_config(overrides=overrides)
    graph = StageGraph(cfg, work)
    manifest_dir = graph.manifest(cfg.pretrain.dataset).out_dir(work)
    cache_dir = graph.teacher_cache().out_dir(work)
    for d in (manifest_dir, cache_dir):
        if not (d / "stage.json").exists():
            raise SystemExit(f"{d} is not built: run `pipeline --work-dir {work} teacher-cache --build-upstream`")
    return cfg, _load_data(manifest_dir, cache_dir, cfg.model, cfg.pretrain, cfg.clips, DistInfo(),
                           torch.device("cpu"))


def heldout_set(cfg: Any, data: Any) -> HeldoutSet:
    """The pretrain stage's held-out videos (student/pretext_eval.py), decoded and cropped once."""
    entries = heldout_entries(data.manifest, cfg.clips.splits, cfg.pretrain.heldout_videos)
    return build_heldout_set(data.manifest, entries, clip_len=cfg.clips.clip_len, speeds=cfg.clips.speeds,
                             input_size=cfg.model.input_size, crop_area=cfg.pretrain.crop_area,
                             views=cfg.pretrain.heldout_views)
