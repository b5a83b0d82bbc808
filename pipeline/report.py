"""Pictures of a run, for people rather than parsers: written by `pipeline run` into WORK/report/.

- ``pretrain_curves.png``: every pretraining loss and pretext accuracy against the step, with the
  chance levels (RSP 0.5, A-VID 1/(K+1));
- ``finetune_curves.png``: the finetuning loss against the step and train accuracy per epoch;
- ``parsing.png``: on held-out clips (the pretraining set's ``val`` videos, else the finetuning
  set's test videos), the frame, the teacher's parsing and the pretrained student's decoded
  parsing side by side.

Everything is read from finished stage folders; a stage that is not done is skipped with a note.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from pipeline.core.charts import Panel, draw_panel, tile, write_png

log = logging.getLogger("pipeline")


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def pretrain_curves(metrics_path: Path) -> np.ndarray:
    """Loss and accuracy panels from a pretraining ``metrics.jsonl``."""
    rows = _rows(metrics_path)
    steps = [r for r in rows if r.get("event") == "step"]
    start = next((r for r in rows if r.get("event") == "start"), {})
    x = [r["step"] for r in steps]
    losses = Panel("pretraining losses", series={
        k: (x, [r[k] for r in steps]) for k in ("loss_kd", "loss_rsp", "loss_avid") if steps and k in steps[0]})
    accs = Panel("pretext accuracies", ylim=(0.0, 1.0), series={
        "RSP": (x, [r["acc_rsp"] for r in steps]), "A-VID (same speed)": (x, [r["acc_avid_pos"] for r in steps]),
        "A-VID (other speed)": (x, [r["acc_avid_neg"] for r in steps])} if steps else {})
    accs.hlines["RSP chance"] = 0.5
    if start.get("queue_size"):
        accs.hlines["A-VID chance"] = 1.0 / (int(start["queue_size"]) + 1)
    total = Panel("total loss", series={"loss": (x, [r["loss"] for r in steps])} if steps else {})
    lr = Panel("learning rate", series={"lr": (x, [r["lr"] for r in steps])} if steps else {})
    return tile([draw_panel(p) for p in (losses, accs, total, lr)], cols=2)


def finetune_curves(metrics_path: Path) -> np.ndarray:
    """Loss (per logged step) and accuracy (per epoch) panels from a finetuning ``metrics.jsonl``."""
    rows = _rows(metrics_path)
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    loss = Panel("finetuning loss", series={"train loss": ([r["global_step"] for r in steps],
                                                           [r["loss"] for r in steps])} if steps else {})
    acc_series: dict[str, tuple[list, list]] = {}
    if epochs:
        acc_series["train top-1"] = ([r["epoch"] for r in epochs], [r.get("train_top1", float("nan")) for r in epochs])
        val = [r for r in epochs if "val_top1" in r]
        if val:
            acc_series["held-out top-1"] = ([r["epoch"] for r in val], [r["val_top1"] for r in val])
    acc = Panel("finetuning accuracy", xlabel="epoch", ylim=(0.0, 1.0), series=acc_series)
    return tile([draw_panel(loss), draw_panel(acc)], cols=2)


def _label_image(labels: np.ndarray, size: int, pal: np.ndarray) -> np.ndarray:
    img = pal[labels].astype(np.uint8)
    return cv2.resize(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), (size, size), interpolation=cv2.INTER_NEAREST)


@torch.no_grad()
def parsing_comparison(student: Any, input_size: int, clip_len: int, videos: Sequence[tuple[Path, int]],
                       teacher: Any, tile_size: int = 112) -> np.ndarray:
    """Rows of (frame | teacher parsing | student parsing) for ``videos`` = [(path, num_frames)].

    The student sees the centred clip with each frame squashed to input_size², as the teacher's
    maps cover the whole frame stretched to a square, so the two parsings are in the same coordinates.
    """
    from data_manifests.video import read_frames
    from student.finetune_data import to_tensor
    from teacher.labels import palette

    pal = palette(teacher.num_classes)
    rows = []
    for path, n in videos:
        mid = n // 2
        idx = [min(max(mid - clip_len // 2 + i, 0), n - 1) for i in range(clip_len)]
        frames = read_frames(path, idx)
        small = np.stack([cv2.resize(f, (input_size, input_size), interpolation=cv2.INTER_AREA) for f in frames])
        logits = student(to_tensor(small)[None])["parse_logits"][0]
        t_map = teacher.maps(list(teacher.loader(path, [mid])))[0]
        frame = cv2.resize(cv2.cvtColor(frames[clip_len // 2], cv2.COLOR_RGB2BGR), (tile_size, tile_size))
        rows.append(np.concatenate([frame, _label_image(t_map.argmax(0).numpy(), tile_size, pal),
                                    _label_image(logits.argmax(0).numpy(), tile_size, pal)], axis=1))
    image = np.concatenate(rows, axis=0) if rows else np.full((tile_size, 3 * tile_size, 3), 255, np.uint8)
    header = np.full((18, image.shape[1], 3), 255, np.uint8)
    for k, name in enumerate(("frame", "teacher", "student")):
        cv2.putText(header, name, (k * tile_size + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([header, image], axis=0)


def _held_out_videos(manifest_dirs: Sequence[Path], limit: int) -> list[tuple[Path, int]]:
    """The first manifest's non-training videos, else the next one's test videos (never pretrained on)."""
    from data_manifests.manifest import load_manifest

    for folder in manifest_dirs:
        manifest = load_manifest(folder)
        held = [e for e in manifest.entries if e.split in ("val", "test")]
        if held:
            step = max(len(held) // limit, 1)  # spread over the classes
            return [(manifest.abspath(e), int(e.frames)) for e in held[::step][:limit]]
    return []


def report_student(pretrain_dir: Path) -> Any:
    """The student the pictures show: student.pt loaded whole (decoder included), never only its encoders."""
    from student.artifacts import load_pretrained_student

    return load_pretrained_student(pretrain_dir, "cpu")


def write_run_report(work: Path, cfg: Any, stage_dirs: dict[str, Path], videos: int = 4) -> list[Path]:
    """The PNGs above for the finished stages in ``stage_dirs`` (kind -> folder); returns what was written."""
    out = Path(work) / "report"
    written: list[Path] = []
    if "pretrain" in stage_dirs:
        curves = pretrain_curves(stage_dirs["pretrain"] / "metrics.jsonl")
        written.append(write_png(out / "pretrain_curves.png", curves))
    if "finetune" in stage_dirs:
        curves = finetune_curves(stage_dirs["finetune"] / "metrics.jsonl")
        written.append(write_png(out / "finetune_curves.png", curves))
    manifests = [stage_dirs[k] for k in ("manifest", "manifest-finetune") if k in stage_dirs]
    if "pretrain" in stage_dirs and manifests and cfg.model.kd:
        from teacher.backends import make_backend

        student, _ = report_student(stage_dirs["pretrain"])
        t = cfg.teacher
        teacher = make_backend(t.backend, checkpoint=t.checkpoint, labels=t.labels, map_size=t.map_size,
                               input_size=t.input_size, softness=t.softness)
        held = _held_out_videos(manifests, videos)
        if held:
            image = parsing_comparison(student.eval(), cfg.model.input_size, cfg.clips.clip_len, held, teacher)
            written.append(write_png(out / "parsing.png", image))
    return written


def report_for_run(work: Path, cfg: Any, stages: Sequence[Any]) -> list[Path]:
    """:func:`write_run_report` for the done stages among a run's ``stages`` (rank 0 only; never fatal:
    a picture that cannot be drawn is logged, the run's results stand)."""
    from pipeline.core import distributed
    from pipeline.stage import STAGE_FILE

    if not distributed.current().is_main:
        return []
    dirs: dict[str, Path] = {}
    for st in stages:
        folder = st.out_dir(work)
        if (folder / STAGE_FILE).is_file():
            kind = st.kind
            if kind == "manifest" and st.name != cfg.pretrain.dataset:
                kind = "manifest-finetune" if st.name == cfg.finetune.dataset else ""
            if kind:
                dirs[kind] = folder
    try:
        written = write_run_report(work, cfg, dirs)
    except Exception as exc:  # a report is a convenience: never turn a finished run into a failure
        log.warning("run report: could not draw the pictures (%s: %s)", type(exc).__name__, exc)
        return []
    return written
