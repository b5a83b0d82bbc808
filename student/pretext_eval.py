"""Every pretext task measured on videos the student never trained on (the paper's claims, checked).

Training-batch accuracies (``acc_rsp`` etc. in metrics.jsonl) are diagnostics: the query and the
keys get independent colour jitter and the keys go through the momentum encoder, so they can sit
at chance while the task is learnt. This module measures each task the way a reader would check it:

- held-out videos: the pretraining manifest's videos whose split is not in ``clips.splits`` (the
  synthetic Kinetics ``val`` videos; a real Kinetics ``val``), at most ``pretrain.heldout_videos``,
  spread evenly over the manifest;
- ``pretrain.heldout_views`` items per video, each a pure function of (``heldout_seed``, video position,
  view): a query clip centred on the video's middle frame at speed s (speeds alternate over videos and
  views), a key window at a random start at speed s (positive) and at the other speed (negative); query
  and key each get their own random resized crop and flip (``pretrain.crop_area``), no colour jitter (it
  would hide the signal). View 0 is the item of a one-view run, so more views only add items;
- the query encoder for all three clips (no momentum encoder, no queue), in eval mode;
- RSP: the share of items whose same-speed key is closer (cosine of g_m) than the other-speed key;
- A-VID: top-1 retrieval of the query's own positive key among the positive keys of ALL held-out
  videos in the same view (g_a, cosine), averaged over views; chance is 1 / gallery size (the
  videos, whatever the views). With one view a figure near 0.05 over 140 videos moves by about
  0.02 between item draws, so a small gain over the untrained network cannot be told from the
  draw; ``avid_top1_se`` is the standard error of the mean over views (and ``rsp_acc_se`` RSP's)
  that says how far the figure can be trusted. Here query and key also get RSPNet's colour
  augmentation (jitter 0.4 / 0.4 / 0.4 / 0.4, grayscale 0.2, independent draws, fixed whatever the
  run's [pretrain] colour keys): without it an untrained network already retrieves half of the
  videos by their colours (measured: 0.51 of 128), which would measure nothing;
- KD: the student's parsing of the whole middle frame (the clip squashed to input_size², as the
  teacher's maps cover the whole frame) against the teacher's map of that frame, both at the
  teacher's map resolution: person-vs-background IoU (argmax ≠ 0) and part mIoU (mean IoU over the
  part classes, background excluded, classes absent from both maps skipped), pooled over videos.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F

from data_manifests.clip_plan import clip_indices, window_indices
from data_manifests.manifest import Manifest, VideoEntry
from data_manifests.video import read_frames
from pipeline.core.errors import ConfigError
from pipeline.core.stats import format_estimate, mean_interval
from student.gpu_augment import colour_batch
from student.model import MultiTaskStudent
from student.transforms import (COLOUR_FIELDS, IMAGENET_MEAN, IMAGENET_STD, ClipAugment, ClipAugParams, CropBox,
                                colour_vector)

log = logging.getLogger(__name__)

FrameReader = Callable[..., np.ndarray]
HELDOUT_SEED = 20260  # fixed: the held-out items are the same for every run, seed and variant
FIGURES = ("rsp_acc", "rsp_acc_se", "rsp_acc_views", "avid_top1", "avid_top1_se", "avid_top1_views", "avid_gallery",
           "avid_chance", "heldout_views", "kd_person_iou", "kd_part_miou")
PAIRED = ("rsp_acc", "avid_top1")  # figures measured per view: a trained and an untrained record pair up by view


@dataclass
class HeldoutSet:
    """Prepared inputs of the held-out evaluation for N videos and V views: uint8 clips (N * V, 3, T, s, s),
    video-major (row ``n * V + v`` is view v of video n), and per video the whole frame and its teacher map."""

    video_ids: list[str]
    query: torch.Tensor
    key_pos: torch.Tensor
    key_neg: torch.Tensor
    whole: torch.Tensor  # (N, ...): the middle clip, whole frame squashed to s², for the parsing
    teacher: torch.Tensor | None  # (N, C, M, M) float16 probabilities, whole frame; None without a teacher
    query_colour: torch.Tensor  # (N * V, len(COLOUR_FIELDS)) colour draws for the A-VID query and key
    key_colour: torch.Tensor
    views: int = 1

    def __len__(self) -> int:
        return len(self.video_ids)


def heldout_entries(manifest: Manifest, train_splits: Sequence[str], limit: int) -> list[VideoEntry]:
    """Up to ``limit`` videos never pretrained on (split not in ``train_splits``, not ``unused``), spread
    evenly over the manifest (so over its classes)."""
    held = [e for e in manifest.entries if e.split not in set(train_splits) and e.split != "unused"]
    if limit <= 0 or not held:
        return []
    step = max(len(held) // limit, 1)
    return held[::step][:limit]


def _whole_frame(h: int, w: int) -> ClipAugParams:
    return ClipAugParams(crop=CropBox(0, 0, h, w), flip=False, jitter_order=(), brightness=1.0, contrast=1.0,
                         saturation=1.0, hue=0.0, grayscale=False)


def _view_rngs(seed: int, pos: int, view: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(geometry, colour) generators of one item; view 0 keeps the streams of a one-view run."""
    geometry = np.random.default_rng([seed, pos] if view == 0 else [seed, pos, 2 * view])
    return geometry, np.random.default_rng([seed, pos, 2 * view + 1])


def build_heldout_set(manifest: Manifest, entries: Sequence[VideoEntry], *, clip_len: int, speeds: Sequence[int],
                      input_size: int, crop_area: Sequence[float], teacher: Any | None = None, views: int = 1,
                      seed: int = HELDOUT_SEED, reader: FrameReader = read_frames) -> HeldoutSet:
    """Decode and crop every held-out item once, ``views`` per video (and the teacher's map of each middle
    frame when ``teacher`` is given: a :mod:`teacher.backends` backend); evaluations then only run the network."""
    speeds = sorted(set(int(s) for s in speeds))
    if len(speeds) < 2:
        raise ConfigError(f"held-out RSP needs two distinct clips.speeds, got {list(speeds)}")
    if views < 1:
        raise ConfigError(f"held-out evaluation needs at least one view per video, got views = {views}")
    geometry = ClipAugment(input_size, area=tuple(crop_area), jitter_p=0.0, grayscale_p=0.0)
    colour = ClipAugment(input_size)  # RSPNet's colour recipe (the ClipAugment defaults), for A-VID only
    cols: dict[str, list[torch.Tensor]] = {"query": [], "key_pos": [], "key_neg": [], "whole": []}
    colours: dict[str, list[torch.Tensor]] = {"query": [], "key": []}
    maps: list[torch.Tensor] = []
    for pos, entry in enumerate(entries):
        n = int(entry.frames)
        mid = n // 2
        items = []
        for view in range(views):
            rng, colour_rng = _view_rngs(seed, pos, view)
            speed, other = speeds[(pos + view) % len(speeds)], speeds[(pos + view + 1) % len(speeds)]
            start = int(rng.integers(max(n - clip_len * speeds[-1], 0) + 1))
            items.append((rng, colour_rng, {"query": clip_indices(mid, n, clip_len, speed),
                                            "key_pos": window_indices(start, n, clip_len, speed),
                                            "key_neg": window_indices(start, n, clip_len, other)}))
        whole_idx = clip_indices(mid, n, clip_len, 1)
        wanted = sorted(set(whole_idx).union(*(f for _, _, idx in items for f in idx.values())))
        path = manifest.abspath(entry)
        frames = reader(path, wanted)
        row = {f: i for i, f in enumerate(wanted)}
        h, w = frames.shape[1:3]
        for rng, colour_rng, idx in items:
            q_params, k_params = geometry.sample(h, w, rng), geometry.sample(h, w, rng)
            for name, params in (("query", q_params), ("key_pos", k_params), ("key_neg", k_params)):
                cols[name].append(geometry.geometry(frames[[row[f] for f in idx[name]]], params).clip)
            for name in ("query", "key"):
                colours[name].append(colour_vector(colour.sample(h, w, colour_rng)))
        cols["whole"].append(geometry.geometry(frames[[row[f] for f in whole_idx]], _whole_frame(h, w)).clip)
        if teacher is not None:
            maps.append(teacher.maps(list(teacher.loader(path, [mid])))[0].to(torch.float16))
    stacked = {k: torch.stack(v) if v else torch.empty(0, dtype=torch.uint8) for k, v in cols.items()}
    return HeldoutSet([e.id for e in entries], stacked["query"], stacked["key_pos"], stacked["key_neg"],
                      stacked["whole"], torch.stack(maps) if maps else None,
                      torch.stack(colours["query"]) if entries else torch.empty(0, len(COLOUR_FIELDS)),
                      torch.stack(colours["key"]) if entries else torch.empty(0, len(COLOUR_FIELDS)), views)


def _normalise(x: torch.Tensor, device: torch.device, colour: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, 3, T, H, W) → ImageNet-normalised float32 on ``device`` (after the colour draws, if given)."""
    if colour is not None:
        return colour_batch(x.to(device), colour)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1, 1)
    return (x.to(device).float().div_(255.0) - mean) / std


def _contrastive(student: MultiTaskStudent, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """emb_m and emb_a only (f_l → h_c → g_m, g_a): the RSP and A-VID passes skip the parsing branch,
    which would cost about as much again and is measured once per video on the whole frame."""
    z_c = student.h_c(student.f_l(x))
    return {"emb_m": student.g_m(z_c), "emb_a": student.g_a(z_c)}


def _forward(student: torch.nn.Module, clips: torch.Tensor, device: torch.device, batch: int,
             autocast: Callable[[], Any], colour: torch.Tensor | None = None,
             parsing: bool = True) -> dict[str, torch.Tensor]:
    """emb_m, emb_a (float32) and, with ``parsing``, parse_logits (if any) of ``clips``, in batches, on the CPU."""
    out: dict[str, list[torch.Tensor]] = {"emb_m": [], "emb_a": [], "parse_logits": []}
    for i in range(0, clips.shape[0], batch):
        x = _normalise(clips[i:i + batch], device, None if colour is None else colour[i:i + batch])
        if device.type == "cpu":  # 1.5x faster there (3D max-pooling), embeddings equal to 1e-7 (measured)
            x = x.contiguous(memory_format=torch.channels_last_3d)
        with autocast():
            res = student(x) if parsing else _contrastive(cast(MultiTaskStudent, student), x)
        for k in out:
            if res.get(k) is not None:
                out[k].append(res[k].float().cpu())
    return {k: torch.cat(v) for k, v in out.items() if v}


def rsp_accuracy(q: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor) -> float:
    """Share of rows whose same-speed key is more similar (cosine) to the query than the other-speed key."""
    cos = lambda a, b: (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1)  # noqa: E731
    return float((cos(q, k_pos) > cos(q, k_neg)).float().mean())


def retrieval_top1(q: torch.Tensor, keys: torch.Tensor) -> float:
    """Share of queries whose own key (same row) is the most similar (cosine) of all keys."""
    sim = F.normalize(q, dim=1) @ F.normalize(keys, dim=1).t()
    return float((sim.argmax(dim=1) == torch.arange(q.shape[0])).float().mean())


def parsing_ious(logits: torch.Tensor, teacher: torch.Tensor) -> tuple[float, float]:
    """(person IoU, part mIoU) of student logits (N, C, S, S) against teacher probabilities (N, C, M, M),
    at the teacher's resolution, pooled over all pixels of all maps. Label 0 is background."""
    if logits.shape[:2] != teacher.shape[:2]:
        raise ConfigError(f"held-out parsing: the student predicts {logits.shape[1]} classes, the teacher "
                           f"{teacher.shape[1]}")
    size = teacher.shape[-2:]
    pred = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False).argmax(1)
    true = teacher.float().argmax(1)
    inter = ((pred > 0) & (true > 0)).sum().item()
    union = ((pred > 0) | (true > 0)).sum().item()
    person = inter / union if union else float("nan")
    ious = []
    for c in range(1, teacher.shape[1]):
        u = ((pred == c) | (true == c)).sum().item()
        if u:
            ious.append(((pred == c) & (true == c)).sum().item() / u)
    return person, (float(np.mean(ious)) if ious else float("nan"))


@torch.no_grad()
def evaluate_pretext(student: torch.nn.Module, hs: HeldoutSet, device: torch.device | str = "cpu",
                     batch: int = 32, autocast: Callable[[], Any] | None = None) -> dict[str, Any]:
    """The held-out figures (:data:`FIGURES`) of ``student`` (a MultiTaskStudent); restores its train/eval mode."""
    import contextlib

    device = torch.device(device)
    ac = autocast or contextlib.nullcontext
    was_training = student.training
    student.eval()
    try:
        q, kp, kn = (_forward(student, clips, device, batch, ac, parsing=False)
                     for clips in (hs.query, hs.key_pos, hs.key_neg))
        qa = _forward(student, hs.query, device, batch, ac, hs.query_colour, parsing=False)
        ka = _forward(student, hs.key_pos, device, batch, ac, hs.key_colour, parsing=False)
        whole = _forward(student, hs.whole, device, batch, ac) if hs.teacher is not None else {}
    finally:
        student.train(was_training)
    n, v = len(hs), hs.views
    rsp = [rsp_accuracy(q["emb_m"][i::v], kp["emb_m"][i::v], kn["emb_m"][i::v]) for i in range(v)]
    avid = [retrieval_top1(qa["emb_a"][i::v], ka["emb_a"][i::v]) for i in range(v)]
    out: dict[str, Any] = {
        "rsp_acc": round(float(np.mean(rsp)), 4), "rsp_acc_se": _standard_error(rsp),
        "rsp_acc_views": [round(x, 4) for x in rsp],
        "avid_top1": round(float(np.mean(avid)), 4), "avid_top1_se": _standard_error(avid),
        "avid_top1_views": [round(x, 4) for x in avid], "avid_gallery": n,
        "avid_chance": round(1.0 / n, 6), "heldout_views": v, "kd_person_iou": None, "kd_part_miou": None}
    if hs.teacher is not None and "parse_logits" in whole:
        person, parts = parsing_ious(whole["parse_logits"], hs.teacher)
        out["kd_person_iou"], out["kd_part_miou"] = round(person, 4), round(parts, 4)
    return out


def _standard_error(per_view: Sequence[float]) -> float | None:
    """Standard error of the mean over views (None with one view: nothing to estimate it from)."""
    if len(per_view) < 2:
        return None
    return round(float(np.std(per_view, ddof=1) / np.sqrt(len(per_view))), 4)


def paired_gain(trained: dict[str, Any] | None, untrained: dict[str, Any] | None
                ) -> dict[str, dict[str, float | int]]:
    """Per figure of :data:`PAIRED`: trained − untrained, paired by view (the same held-out items), as
    {"mean", "low", "high", "views"} with the 95 % t-interval of the mean difference; figures without
    two or more views on both sides are left out (one view has no spread to measure)."""
    out: dict[str, dict[str, float | int]] = {}
    for key in PAIRED:
        a, b = (trained or {}).get(f"{key}_views"), (untrained or {}).get(f"{key}_views")
        if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b) or len(a) < 2:
            continue
        mean, low, high = mean_interval([x - y for x, y in zip(a, b)])  # type: ignore[misc]  # len(a) >= 2
        out[key] = {"mean": round(mean, 4), "low": round(low, 4), "high": round(high, 4), "views": len(a)}
    return out


def teacher_for_heldout(teacher_cfg: Any, device: str) -> Any:
    """The teacher backend of ``[teacher]`` (the one that built the cache) for the held-out maps."""
    from teacher.backends import make_backend

    t = teacher_cfg
    return make_backend(t.backend, checkpoint=t.checkpoint, labels=t.labels, map_size=t.map_size,
                        input_size=t.input_size, device=device, amp=getattr(t, "amp", "off"),
                        flip=getattr(t, "flip_test", False), softness=t.softness)


def describe(fig: dict[str, Any]) -> str:
    """One log line of held-out figures."""
    def pm(key: str) -> str:
        return format_estimate(fig, key)
    views = int(fig.get("heldout_views") or 1)
    return (f"RSP {pm('rsp_acc')}, A-VID top-1 {pm('avid_top1')} of {fig.get('avid_gallery')} "
            f"(chance {pm('avid_chance')}{f', {views} views' if views > 1 else ''}), "
            f"KD person IoU {pm('kd_person_iou')}, part mIoU {pm('kd_part_miou')}")


__all__ = ["HeldoutSet", "heldout_entries", "build_heldout_set", "evaluate_pretext",
           "rsp_accuracy", "retrieval_top1", "parsing_ious", "paired_gain", "teacher_for_heldout", "describe",
           "FIGURES", "PAIRED"]
