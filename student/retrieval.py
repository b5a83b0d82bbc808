"""Nearest-neighbour video retrieval with the pretrained representation (no finetuning).

UCF101 protocol (RSPNet, reference/FACTS.md): every test video queries the train videos. A video's
feature is the student's representation [GAP(z_h) || GAP(z_c)] averaged over ``cfg.clips``
evenly spaced clips (starts round(linspace(0, n - clip_len, clips)), centre crop after resizing the
short side to input_size: the test views of ``finetune_data``). Distance is cosine; R@k counts a
query as a hit when any of its k nearest train videos shares its label (k clamped to the gallery
size; ties in similarity: lower gallery index first). Under torchrun videos are split across ranks
(r, r + W, ...), features are gathered and checked, and rank 0 writes ``retrieval.json``.
"""
from __future__ import annotations

import json
import logging
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
from student.evaluate import inference_autocast
from student.artifacts import pretrained_student, read_pretrained_file, resolve_clip_len
from student.finetune_data import ViewChunks
from student.metrics import recall_at_k
from student.model import MultiTaskStudent, load_encoders

log = logging.getLogger(__name__)

RSPNET_C3D_REFERENCE = {"source": "RSPNet C3D, UCF101 split 1 (reference/FACTS.md); fractions, RSPNet prints percent",
                        "recall": {"R@1": 0.360, "R@5": 0.567, "R@10": 0.665, "R@20": 0.763, "R@50": 0.877}}


@torch.no_grad()
def video_features(encoder: MultiTaskStudent, manifest: Manifest, entries: Sequence[VideoEntry],
                   positions: Sequence[int], *, clip_len: int, input_size: int, clips: int, device: str,
                   workers: int = 0, progress: bool = True, desc: str = "features") -> dict[int, np.ndarray]:
    """{position: mean representation over ``clips`` centre-crop clips} (float64) for ``positions``."""
    sub = [entries[p] for p in positions]
    ds = ViewChunks(manifest, sub, clip_len, input_size, clips, 1, clips)
    loader = DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers,
                        worker_init_fn=DieWithParent() if workers else None,  # no orphans after a SIGKILL
                        generator=torch.Generator().manual_seed(0))
    encoder.eval()
    out: dict[int, np.ndarray] = {}
    with Progress(len(sub), desc, "video", enabled=progress) as bar:
        for pos, first, views in loader:
            if int(first) != 0 or len(views) != clips:
                last = int(first) + len(views) - 1
                raise StageError(f"video {sub[int(pos)].id}: got views {int(first)}..{last}, "
                                 f"expected all {clips} at once")
            with inference_autocast(device):
                feats = encoder.representation(views.to(device, non_blocking=True)).double().mean(0)
            out[positions[int(pos)]] = feats.cpu().numpy()
            bar.update(1)
    return out


def gather_features(local: dict[int, np.ndarray], entries: Sequence[VideoEntry], what: str) -> torch.Tensor:
    """(N, D) features of every entry, from every rank; refuses duplicates and gaps."""
    merged: dict[int, np.ndarray] = {}
    for part in all_gather_objects(local):
        for pos, f in part.items():
            if pos in merged:
                raise StageError(f"{what} video {entries[pos].id!r} was computed by more than one rank")
            merged[pos] = f
    missing = [entries[p].id for p in range(len(entries)) if p not in merged]
    if missing:
        raise StageError(f"{len(missing)} {what} videos have no feature (first: {missing[:5]})")
    return torch.from_numpy(np.stack([merged[p] for p in range(len(entries))]))


def load_student(pretrain_dir: Path, device: str) -> tuple[MultiTaskStudent, dict[str, Any]]:
    """The pretrained student (encoders loaded strictly) and its checkpoint metadata."""
    ckpt = read_pretrained_file(Path(pretrain_dir) / "student.pt")
    student = pretrained_student(ckpt)
    try:
        load_encoders(student, ckpt)
    except ValueError as err:
        raise StageError(f"{pretrain_dir}/student.pt does not fit its own model_config: {err}") from None
    return student.to(device).eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def retrieval(manifest_dir: Path, pretrain_dir: Path, out_dir: Path, cfg: Any, *, dist: DistInfo,
              clip_len: int | None = None) -> dict[str, Any]:
    """Test videos query train videos with the pretrained representation; writes retrieval.json.

    Returns {"recall": {"R@k": fraction, ...}, "num_queries", "num_gallery", ...}. ``clip_len``
    defaults to student.pt's / the pretraining config's (see ``finetune.resolve_clip_len``).
    """
    manifest_dir, out_dir = Path(manifest_dir), Path(out_dir)
    manifest = load_manifest(manifest_dir)
    queries, gallery = manifest.by_split("test"), manifest.by_split("train")
    for what, entries in (("test (query)", queries), ("train (gallery)", gallery)):
        if not entries:
            raise StageError(f"manifest {manifest_dir} has no {what} videos")
        bad = [e.id for e in entries if e.label < 0]
        if bad:
            raise StageError(f"manifest {manifest_dir}: {len(bad)} {what} videos have no label (first: {bad[:3]})")
    device = stage_device(cfg.device, dist)
    student, meta = load_student(Path(pretrain_dir), device)
    clip_len, clip_len_from = resolve_clip_len(clip_len, meta, Path(pretrain_dir))
    input_size = int(meta["model_config"].get("input_size", 112))
    feats = {}
    for what, entries in (("query", queries), ("gallery", gallery)):
        mine = list(range(dist.rank, len(entries), dist.world_size))
        local = video_features(student, manifest, entries, mine, clip_len=clip_len, input_size=input_size,
                               clips=cfg.clips, device=device, workers=cfg.workers, progress=dist.is_main,
                               desc=f"retrieval {what}")
        feats[what] = gather_features(local, entries, what)
    ks = [int(k) for k in cfg.ks]
    rec = recall_at_k(feats["query"], [e.label for e in queries], feats["gallery"], [e.label for e in gallery], ks)
    result = {
        "dataset": manifest.dataset, "queries": "test", "gallery": "train",
        "num_queries": len(queries), "num_gallery": len(gallery), "clips": cfg.clips, "clip_len": clip_len,
        "clip_len_from": clip_len_from, "input_size": input_size, "feature_dim": int(feats["query"].shape[1]),
        "distance": "cosine", "ks": ks, "ks_effective": [min(k, len(gallery)) for k in ks],
        "recall": {f"R@{k}": rec[k] for k in ks},
        # RSPNet reports retrieval on UCF101 split 1 only: a reference beside another dataset's figures misleads
        "reference": RSPNET_C3D_REFERENCE if manifest.dataset == "ucf101" else None,
    }
    if dist.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        log.info("retrieval (%d test queries, %d train videos): %s", len(queries), len(gallery),
                 ", ".join(f"{k} {100 * v:.1f}%" for k, v in result["recall"].items()))
    return result
