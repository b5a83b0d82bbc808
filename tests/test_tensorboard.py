"""Optional TensorBoard event files from the same records as metrics.jsonl."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from pipeline.core import tensorboard_log
from pipeline.core.progress import MetricsLog
from tiny_pipeline import invoke, pretrained_work, stage_folder

needs_tb = pytest.mark.skipif(not tensorboard_log.available(),
                              reason='the tensorboard extra is not installed (pip install -e ".[tensorboard]")')


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted((folder / "tensorboard").glob("events.out.tfevents.*"))
    assert files, f"no event file in {folder / 'tensorboard'}"
    acc = EventAccumulator(str(folder / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _only(work: Path, kind: str) -> Path:
    (path,) = [p for p in (work / kind).glob("*/*") if (p / "stage.json").is_file()]
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return pretrained_work(tmp_path_factory)


@needs_tb
def test_tiny_pretraining_writes_loss_scalars_tensorboard_can_read(work: Path):
    pre = sorted((work / "pretrain").glob("*/*/stage.json"))[0].parent
    acc = _events(pre)
    tags = set(acc.Tags()["scalars"])
    assert {"step/loss", "step/loss_kd", "step/loss_rsp", "step/loss_avid", "step/lr", "step/clips_per_s"} <= tags
    steps = [json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("event") == "step"]
    got = [(e.step, e.value) for e in acc.Scalars("step/loss")]
    assert got == [(r["step"], pytest.approx(r["loss"], rel=1e-6)) for r in steps]  # the same records
    # the demo logs every optimizer step (pretrain.log_interval = 1 in the built-in config)
    start = next(json.loads(line) for line in (pre / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("event") == "start")
    assert [r["step"] for r in steps] == list(range(1, start["total_steps"] + 1))


@needs_tb
def test_teacher_maps_image_and_final_figures(work: Path):
    acc = _events(_only(work, "teacher-cache"))
    (img,) = acc.Images("teacher/maps")
    assert img.width == 8 * 16 and img.height == 16  # 8 maps of 16² side by side
    out = invoke(work, "linear-probe", "--dataset", "hmdb51", "--build-upstream").output
    folder = stage_folder(out, "linear-probe")
    final = _events(folder)
    summary = json.loads((folder / "linear_probe.json").read_text())
    assert final.Scalars("final/linear-probe/top1")[0].value == pytest.approx(summary["top1"])


def test_without_the_package_one_hint_and_no_event_files(tmp_path: Path, monkeypatch, caplog):
    monkeypatch.setattr(tensorboard_log, "available", lambda: False)
    monkeypatch.setattr(tensorboard_log, "_hinted", False)
    with caplog.at_level(logging.INFO, logger="pipeline"):
        for name in ("a", "b"):
            with MetricsLog(tmp_path / name / "metrics.jsonl") as m:
                m.write(event="step", step=1, loss=1.0)
    hints = [r.message for r in caplog.records if "TensorBoard" in r.message]
    assert hints == [tensorboard_log.HINT] and 'pip install -e ".[tensorboard]"' in hints[0]
    assert not list(tmp_path.rglob("tensorboard"))
    assert (tmp_path / "a" / "metrics.jsonl").read_text().count("\n") == 1


@needs_tb
def test_turned_off_by_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv(tensorboard_log.ENV, "0")
    with MetricsLog(tmp_path / "metrics.jsonl") as m:
        m.write(event="step", step=1, loss=1.0)
    assert not (tmp_path / "tensorboard").exists()


def test_voc_palette_and_map_strip():
    pal = tensorboard_log.voc_palette(4)
    assert pal.tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0]]
    maps = np.zeros((2, 3, 2, 2), dtype=np.float32)
    maps[0, 1] = 1.0
    maps[1, 2] = 1.0
    strip = tensorboard_log.map_strip(maps)
    assert strip.shape == (2, 4, 3) and strip[0, 0].tolist() == [128, 0, 0] and strip[0, 3].tolist() == [0, 128, 0]


@needs_tb
def test_png_strips_become_images(tmp_path: Path):
    import cv2

    strip = np.zeros((6, 10, 3), dtype=np.uint8)
    strip[:, :5, 2] = 255  # red in BGR
    cv2.imwrite(str(tmp_path / "clip_cam.png"), strip)
    tensorboard_log.log_png_files(tmp_path / "tensorboard", "cam", [tmp_path / "clip_cam.png"])
    (img,) = _events(tmp_path).Images("cam/clip_cam")
    decoded = cv2.imdecode(np.frombuffer(img.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    assert (img.width, img.height) == (10, 6) and decoded[0, 0].tolist() == [0, 0, 255]
