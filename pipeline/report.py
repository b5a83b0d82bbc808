"""Figures of a run, for people rather than parsers: written by `pipeline run` into WORK/report/.

Each figure is drawn with matplotlib (pipeline/figures.py) as a PNG with an SVG beside it:
- ``pretrain_curves``: each pretraining loss on its own panel, the pretext accuracies with their
  chance lines and the held-out pretext records, the KD parsing scores when recorded, the learning rate;
- ``finetune_curves``: the finetuning loss and top-1 per epoch (train; held-out when recorded) with chance;
- ``parsing``: on held-out clips (the pretraining set's ``val`` videos, else the finetuning set's
  test videos), the frame, the teacher's parsing and the pretrained student's decoded parsing, with
  a legend of the body parts.

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

from pipeline.figures import parsing_figure, write_finetune_figure, write_pretrain_figure
from pipeline.core.plotting import save_figure

log = logging.getLogger(__name__)


@torch.no_grad()
def parsing_rows(student: Any, input_size: int, clip_len: int, videos: Sequence[tuple[Path, int]],
                 teacher: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(RGB middle frame, teacher label map, student label map) per video of ``videos`` = [(path, frames)].

    The student sees the centred clip with each frame squashed to input_size², as the teacher's
    maps cover the whole frame stretched to a square, so the two parsings are in the same coordinates.
    """
    from data_manifests.video import read_frames
    from student.finetune_data import to_tensor

    rows = []
    for path, n in videos:
        mid = n // 2
        idx = [min(max(mid - clip_len // 2 + i, 0), n - 1) for i in range(clip_len)]
        frames = read_frames(path, idx)
        small = np.stack([cv2.resize(f, (input_size, input_size), interpolation=cv2.INTER_AREA) for f in frames])
        logits = student(to_tensor(small)[None])["parse_logits"][0]
        t_map = teacher.maps(list(teacher.loader(path, [mid])))[0]
        rows.append((frames[clip_len // 2], t_map.argmax(0).numpy(), logits.argmax(0).numpy()))
    return rows


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


def load_report_student(stage_dirs: dict[str, Path]) -> Any:
    """The pretrained student whose parsing the report shows (eval mode, CPU): student.pt loaded whole
    (decoder included), never only its encoders (those leave the parsing decoder g_h at its random
    initialisation)."""
    from student.artifacts import load_pretrained_student

    student, _ = load_pretrained_student(stage_dirs["pretrain"], "cpu")
    return student


def _summary(stage_dir: Path) -> dict[str, Any]:
    """The summary a finished stage recorded in its stage.json ({} if none)."""
    from pipeline.stage import STAGE_FILE

    path = stage_dir / STAGE_FILE
    return json.loads(path.read_text(encoding="utf-8")).get("summary", {}) if path.is_file() else {}


def _test_point(stage_dirs: dict[str, Path]) -> tuple[int, float] | None:
    """(kept epoch, video-level test top-1) when the evaluate stage of the run is done."""
    if "evaluate" not in stage_dirs or "finetune" not in stage_dirs:
        return None
    epoch, top1 = _summary(stage_dirs["finetune"]).get("selected_epoch"), _summary(stage_dirs["evaluate"]).get(
        "video_top1")
    return (int(epoch), float(top1)) if isinstance(epoch, int) and isinstance(top1, (int, float)) else None


def write_run_report(work: Path, cfg: Any, stage_dirs: dict[str, Path], videos: int = 4) -> list[Path]:
    """The figures above for the finished stages in ``stage_dirs`` (kind -> folder); returns what was written
    (each PNG followed by its SVG)."""
    out = Path(work) / "report"
    written: list[Path] = []
    if "pretrain" in stage_dirs:
        written += write_pretrain_figure(stage_dirs["pretrain"] / "metrics.jsonl", out / "pretrain_curves")
    if "finetune" in stage_dirs:
        classes = _summary(stage_dirs["finetune"]).get("num_classes")
        written += write_finetune_figure(stage_dirs["finetune"] / "metrics.jsonl", out / "finetune_curves",
                                         classes if isinstance(classes, int) else None, _test_point(stage_dirs))
    manifests = [stage_dirs[k] for k in ("manifest", "manifest-finetune") if k in stage_dirs]
    if "pretrain" in stage_dirs and manifests and cfg.model.kd:
        held = _held_out_videos(manifests, videos)
        if held:
            written += _parsing(cfg, load_report_student(stage_dirs), held, out / "parsing")
    return written


def _parsing(cfg: Any, student: Any, held: Sequence[tuple[Path, int]], stem: Path) -> list[Path]:
    from teacher.backends import make_backend
    from teacher.labels import LABEL_SETS, palette

    t = cfg.teacher
    teacher = make_backend(t.backend, checkpoint=t.checkpoint, labels=t.labels, map_size=t.map_size,
                           input_size=t.input_size, softness=t.softness)
    rows = parsing_rows(student, cfg.model.input_size, cfg.clips.clip_len, held, teacher)
    names = LABEL_SETS.get(t.labels, [str(k) for k in range(teacher.num_classes)])
    fig = parsing_figure(rows, names, palette(teacher.num_classes), titles=[p.name for p, _ in held])
    return save_figure(fig, stem)


def report_role(kind: str, name: str, pretrain_dataset: str, finetune_dataset: str) -> str:
    """Which part of the report a stage feeds ("" for none). An out-of-context evaluation
    (``evaluate`` named ``<finetune name>.<test set>``) is not the run's test point: the finetuning
    figure marks the in-distribution test top-1."""
    if kind == "manifest" and name != pretrain_dataset:
        return "manifest-finetune" if name == finetune_dataset else ""
    if kind == "evaluate" and "." in name:
        return ""
    return kind


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
        role = report_role(st.kind, st.name, cfg.pretrain.dataset, cfg.finetune.dataset)
        if role and (folder / STAGE_FILE).is_file():
            dirs[role] = folder
    try:
        written = write_run_report(work, cfg, dirs)
    except Exception as exc:  # a report is a convenience: never turn a finished run into a failure
        log.warning("run report: could not draw the pictures (%s: %s)", type(exc).__name__, exc)
        return []
    return written
