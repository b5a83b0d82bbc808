"""The synthetic human-action dataset: real video files in the official layouts, exact part masks,
determinism, and the `rendered` teacher's soft maps."""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_manifests.synthetic import (DEFAULT_CLASSES, INDEX_FILE, SyntheticSpec, generate_synthetic,
                                      kinetics_label, load_part_masks, mask_path_for, spec_from_config, ucf_name)
from data_manifests.synthetic.layouts import hmdb_split_flags, plan_dataset, ucf_test_groups
from data_manifests.synthetic.render import OUTLINE_GAIN, Look, VideoJob, render_video
from teacher.rendered import RENDERED_LABELS, rendered_maps

TINY = SyntheticSpec(seed=3, kinetics_per_class=2, ucf_per_class=3, ucf_groups=3, hmdb_per_class=2,
                     frames=16, size=(96, 72))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic")
    summary = generate_synthetic(root, TINY, workers=1, progress=False)
    return root, summary


def _decode(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    cap.release()
    return np.stack(frames)


def _records(root: Path) -> list[dict]:
    return json.loads((root / INDEX_FILE).read_text())["videos"]


def test_summary_counts_and_every_class_everywhere(dataset):
    root, summary = dataset
    n_cls = len(DEFAULT_CLASSES)
    assert summary["videos"] == n_cls * (2 + 3 + 2) == len(_records(root))
    assert summary["frames"] == summary["videos"] * 16
    assert summary["kinetics"] == {"train": n_cls, "val": n_cls}
    for cls in DEFAULT_CLASSES:
        assert len(list((root / "kinetics/videos" / kinetics_label(cls)).glob("*.mp4"))) == 2
        assert len(list((root / "ucf101/videos" / ucf_name(cls)).glob("*.avi"))) == 3
        assert len(list((root / "hmdb51/videos" / cls).glob("*.avi"))) == 2
    # every video has its mask file; nothing temporary is left behind
    for video in [*root.rglob("*.mp4"), *root.rglob("*.avi")]:
        assert mask_path_for(video).is_file(), video
    assert not [p for p in root.rglob(".*") if p.is_file()]
    assert {ucf_name(c) for c in DEFAULT_CLASSES} >= {"Wave", "JumpingJack", "RunInPlace"}


def test_kinetics_csv_official_format_and_unique_ids(dataset):
    root, _ = dataset
    ids = []
    for split in ("train", "val"):
        raw = (root / "kinetics/annotations" / f"{split}.csv").read_bytes().decode()
        assert "\r" not in raw and raw.endswith("\n")
        lines = raw.splitlines()
        assert lines[0] == "label,youtube_id,time_start,time_end,split,is_cc"
        assert any(line.startswith('"jumping jack",') for line in lines[1:])      # spaces -> quoted
        assert any(line.startswith("wave,") for line in lines[1:])               # no space -> bare
        rows = list(csv.DictReader(io.StringIO(raw)))
        assert len(rows) == len(DEFAULT_CLASSES)
        for row in rows:
            assert re.fullmatch(r"[A-Za-z0-9_-]{11}", row["youtube_id"])
            assert row["split"] == split and row["is_cc"] in ("0", "1")
            start, end = int(row["time_start"]), int(row["time_end"])
            assert end - start == 10
            path = root / "kinetics/videos" / row["label"] / f"{row['youtube_id']}_{start:06d}_{end:06d}.mp4"
            assert path.is_file(), path
            ids.append(row["youtube_id"])
    assert len(ids) == len(set(ids)) == 2 * len(DEFAULT_CLASSES)


def test_ucf101_splits_official_format(dataset):
    root, summary = dataset
    splits = root / "ucf101/splits"
    class_ind = (splits / "classInd.txt").read_bytes()
    assert class_ind.count(b"\r\n") == class_ind.count(b"\n") == len(DEFAULT_CLASSES)
    classes = [line.split(" ")[1] for line in class_ind.decode().splitlines()]
    assert classes == sorted(ucf_name(c) for c in DEFAULT_CLASSES)
    assert class_ind.decode().splitlines()[0] == f"1 {classes[0]}"
    label_of = {c: i + 1 for i, c in enumerate(classes)}
    on_disk = {p.relative_to(root / "ucf101/videos").as_posix() for p in (root / "ucf101/videos").rglob("*.avi")}
    held_out = []
    for s in (1, 2, 3):
        train_raw = (splits / f"trainlist0{s}.txt").read_bytes()
        test_raw = (splits / f"testlist0{s}.txt").read_bytes()
        for raw in (train_raw, test_raw):
            assert raw.endswith(b"\r\n") and raw.count(b"\r\n") == raw.count(b"\n")      # CRLF throughout
        train, test = set(), set()
        for line in train_raw.decode().splitlines():
            m = re.fullmatch(r"(\w+)/v_(\w+)_g(\d\d)_c(\d\d)\.avi (\d+)", line)
            assert m and m.group(1) == m.group(2) and int(m.group(5)) == label_of[m.group(1)], line
            train.add(line.split(" ")[0])
        for line in test_raw.decode().splitlines():
            assert re.fullmatch(r"(\w+)/v_\1_g\d\d_c\d\d\.avi", line), line
            test.add(line)
        assert train.isdisjoint(test) and train | test == on_disk
        assert summary["ucf101"][f"split{s}"] == {"train": len(train), "test": len(test)}
        groups = {int(re.search(r"_g(\d\d)_", t).group(1)) for t in test}
        train_groups = {int(re.search(r"_g(\d\d)_", t).group(1)) for t in train}
        assert groups.isdisjoint(train_groups)                      # a group is never split
        held_out.append(groups)
    assert held_out[0] != held_out[1] != held_out[2]
    # the real UCF101 pattern for 25 groups: g01-07, g08-14, g15-21 held out; g22-25 always train
    assert [sorted(ucf_test_groups(25, s)) for s in (1, 2, 3)] == [list(range(1, 8)), list(range(8, 15)),
                                                                    list(range(15, 22))]


def test_hmdb51_splits_official_format(dataset):
    root, _ = dataset
    for cls in DEFAULT_CLASSES:
        names = sorted(p.name for p in (root / "hmdb51/videos" / cls).glob("*.avi"))
        for s in (1, 2, 3):
            raw = (root / "hmdb51/splits" / f"{cls}_test_split{s}.txt").read_bytes().decode()
            assert "\r" not in raw
            lines = raw.split("\n")
            assert lines[-1] == ""
            parsed = [re.fullmatch(r"(\S+\.avi) ([012]) ", line) for line in lines[:-1]]    # trailing space
            assert all(parsed), lines
            assert sorted(m.group(1) for m in parsed) == names
            assert {m.group(2) for m in parsed} == {"1", "2"}          # 2 videos: one train, one test
    # bigger classes: ~70/30 train/test and some unused, like testTrainMulti_7030_splits
    flags = hmdb_split_flags(TINY, "wave", [f"v{i:03d}.avi" for i in range(100)], 1)
    counts = np.bincount(list(flags.values()), minlength=3)
    assert counts.tolist() == [10, 63, 27]
    assert flags != hmdb_split_flags(TINY, "wave", list(flags), 2)     # splits differ


def test_decoded_frames_match_render_and_masks(dataset):
    """Frame count = mask count; decoded pixels = rendered pixels within codec error; every mask
    pixel of part p shows one of p's colours (exactly, before the codec)."""
    root, _ = dataset
    plan = {(pv.dataset, pv.relpath): pv for pv in plan_dataset(TINY)}
    records = _records(root)
    close: dict[int, list[np.ndarray]] = {}
    clothing: list[bool] = []
    for rec in records[::5]:
        video = root / rec["dataset"] / rec["path"]
        frames = _decode(video)
        masks = load_part_masks(video, range(TINY.frames))
        assert frames.shape == (TINY.frames, 72, 96, 3) and masks.shape == (TINY.frames, 72, 96)
        rendered = render_video(plan[(rec["dataset"], rec["path"])].job)
        assert np.array_equal(rendered.masks, masks)
        err = np.abs(frames.astype(np.int16) - rendered.frames).mean()      # MPEG-4 part 2 at ~1 bit/pixel
        shifted = np.abs(frames[:, :, 2:].astype(np.int16) - rendered.frames[:, :, :-2]).mean()
        assert err < 12.0 and err < 0.8 * shifted, (video, err, shifted)
        # before the codec: every figure pixel has its part's colour (or its outline shade), +- noise
        for p, cols in rec["part_palettes_bgr"].items():
            sel = masks == int(p)
            if not sel.any():
                continue
            allowed = np.array(cols + [[int(v * OUTLINE_GAIN) for v in c] for c in cols], dtype=np.int16)
            px = rendered.frames[sel].astype(np.int16)
            dist = np.abs(px[:, None, :] - allowed[None]).max(-1).min(1)
            assert (dist <= 16).mean() > 0.995, (video, p)
        # after the codec (MPEG-4 part 2, 4:2:0 chroma, ~1 bit/pixel, so thin limbs smear): pixels
        # 1 px inside each part still show the rendered colour; head and torso their clothing colour
        for p in range(1, 7):
            inner = np.stack([cv2.erode((m == p).astype(np.uint8), np.ones((3, 3), np.uint8)) for m in masks])
            inner = inner.astype(bool)
            if inner.sum() < 30:
                continue
            dist = np.abs(frames[inner].astype(np.int16) - rendered.frames[inner]).max(-1)
            close.setdefault(p, []).append(dist <= 30)
            if p in (1, 2):
                median = np.median(frames[inner].astype(np.float32), axis=0)
                clothing.append(np.abs(median - rec["part_colors_bgr"][str(p)]).max() <= 20)
        # the figure moves: part masks change over the clip
        assert (masks[1:] != masks[:-1]).mean() > 0.002, video
    assert sorted(close) == [1, 2, 3, 4, 5, 6]
    for p, hits in close.items():
        assert np.concatenate(hits).mean() > 0.85, p
    assert len(clothing) >= 20 and np.mean(clothing) >= 0.9
    # all seven labels occur in the dataset
    assert set(np.unique(load_part_masks(root / records[0]["dataset"] / records[0]["path"], [0]))) <= set(range(7))


def test_determinism_parallel_and_class_independence(dataset, tmp_path):
    """A second run (2 workers, 2 of the classes) gives byte-identical masks and identical frames."""
    root, _ = dataset
    sub = SyntheticSpec(**{**TINY.to_dict(), "classes": ("kick", "jumping_jack"), "size": TINY.size})
    generate_synthetic(tmp_path, sub, workers=2, progress=False)
    recs = _records(tmp_path)
    assert {r["class"] for r in recs} == {"kick", "jumping_jack"} and len(recs) == 14
    for rec in recs[::3]:
        a, b = root / rec["dataset"] / rec["path"], tmp_path / rec["dataset"] / rec["path"]
        assert mask_path_for(a).read_bytes() == mask_path_for(b).read_bytes(), rec["path"]
        assert np.array_equal(_decode(a), _decode(b)), rec["path"]
    # a different seed gives different videos
    other = plan_dataset(SyntheticSpec(**{**sub.to_dict(), "seed": 4, "size": TINY.size}))
    assert [pv.relpath for pv in other] != [pv.relpath for pv in plan_dataset(sub)]


def test_load_part_masks_indexing_and_errors(dataset, tmp_path):
    root, _ = dataset
    video = next((root / "ucf101/videos/Wave").glob("*.avi"))
    with np.load(mask_path_for(video)) as npz:
        full = npz["masks"]
    assert full.dtype == np.uint8 and full.shape == (16, 72, 96) and full.max() <= 6
    assert np.array_equal(load_part_masks(video, [5, 0, 5]), full[[5, 0, 5]])
    with pytest.raises(IndexError, match=re.escape(str(mask_path_for(video)))):
        load_part_masks(video, [16])
    with pytest.raises(FileNotFoundError, match="nothing.parts.npz"):
        load_part_masks(tmp_path / "nothing.avi", [0])


def test_rendered_maps_are_softmax_like_and_follow_the_masks(dataset):
    root, _ = dataset
    masks = np.concatenate([load_part_masks(root / r["dataset"] / r["path"], [0, 8, 15])
                            for r in _records(root)[::4]])
    maps = rendered_maps(masks, num_classes=7, out_size=32, softness=0.5)
    assert maps.shape == (len(masks), 7, 32, 32) and str(maps.dtype) == "torch.float32"
    assert float((maps.sum(1) - 1).abs().max()) < 1e-5 and float(maps.min()) > 0
    small = np.stack([cv2.resize(m, (32, 32), interpolation=cv2.INTER_NEAREST) for m in masks])
    am = maps.argmax(1).numpy()
    assert (am == small).mean() > 0.95
    fg = small > 0
    assert (am[fg] == small[fg]).mean() > 0.7
    assert 0.5 < float(maps.max(1).values.numpy()[fg].mean()) < 0.95        # soft, not one-hot
    assert len(RENDERED_LABELS) == 7 and RENDERED_LABELS[1] == "Head" and RENDERED_LABELS[6] == "Lower Legs"


def test_rendered_maps_exact_cases():
    m = np.zeros((2, 64, 128), np.uint8)
    m[0, :, :64] = 2
    m[1] = 6
    hard = rendered_maps(m, 7, 32, softness=0.0).numpy()
    assert np.array_equal(hard[0, 2, :, :16], np.ones((32, 16), np.float32))
    assert np.array_equal(hard[0, 0, :, 16:], np.ones((32, 16), np.float32))
    assert np.allclose(hard[1, 6], 1.0)
    soft = rendered_maps(m, 7, 32, softness=1.0).numpy()
    assert np.allclose(soft.sum(1), 1.0, atol=1e-6) and soft[1, 6].max() < 1.0
    assert rendered_maps(np.zeros((1, 2, 2), np.uint8), 7, 32, 0.5).shape == (1, 7, 32, 32)    # upsampling
    with pytest.raises(ValueError, match="part ids"):
        rendered_maps(np.full((1, 4, 4), 7, np.uint8), 7, 8, 0.5)
    with pytest.raises(ValueError, match="softness"):
        rendered_maps(m, 7, 8, 2.0)


def test_spec_validation_and_config_mapping():
    with pytest.raises(ValueError, match="unknown action"):
        SyntheticSpec(classes=("wave", "moonwalk"))
    with pytest.raises(ValueError, match="even"):
        SyntheticSpec(size=(97, 72))

    class Section:  # the shape of pipeline.core.config.SyntheticConfig
        seed, frames, width, height, fps = 5, 32, 112, 112, 30
        kinetics_per_class, ucf_per_class, hmdb_per_class, workers = 4, 6, 8, 2

    spec = spec_from_config(Section())
    assert (spec.seed, spec.frames, spec.size, spec.fps) == (5, 32, (112, 112), 30.0)
    assert (spec.kinetics_per_class, spec.ucf_per_class, spec.hmdb_per_class) == (4, 6, 8)
    assert spec.classes == DEFAULT_CLASSES
    # difficulty knobs: spec defaults unless the section carries them
    d = SyntheticSpec()
    assert (spec.figure_scale, spec.max_yaw, spec.limb_thickness, spec.distractors) == \
        (d.figure_scale, d.max_yaw, d.limb_thickness, d.distractors)

    class Harder(Section):
        figure_scale, max_yaw, limb_thickness, distractors = [0.5, 0.6], 80, 1.0, [3, 6]

    hard = spec_from_config(Harder())
    assert (hard.figure_scale, hard.max_yaw, hard.limb_thickness, hard.distractors) == ((0.5, 0.6), 80.0, 1.0, (3, 6))
    assert plan_dataset(hard)[0].job.look == Look((0.5, 0.6), 80.0, 1.0, (3, 6))
    assert SyntheticSpec(**hard.to_dict()) == hard                              # round-trips through JSON types
    for bad, match in (({"figure_scale": (0.9, 0.5)}, "figure_scale"), ({"max_yaw": 120}, "max_yaw"),
                       ({"limb_thickness": 0.1}, "limb_thickness"), ({"distractors": (4, 2)}, "distractors")):
        with pytest.raises(ValueError, match=match):
            SyntheticSpec(**bad)


def test_difficulty_knobs_change_what_is_rendered():
    """Figure height follows figure_scale, max_yaw 0 faces the camera, distractors counts objects,
    limb_thickness widens the limbs: same seeds, one knob changed at a time."""
    def job(**look) -> VideoJob:
        return VideoJob("jumping_jack", (1, 2, 3), (1, 2, 3, 4), 12, 96, 96, 12.0, Look(**look))

    def height(masks: np.ndarray) -> float:        # median over frames of the figure's vertical extent
        rows = [np.flatnonzero((m > 0).any(1)) for m in masks]
        return float(np.median([r[-1] - r[0] + 1 for r in rows if len(r)]))

    base = dict(figure_scale=(0.5, 0.5), max_yaw=30.0, limb_thickness=1.0, distractors=(0, 0))
    small = render_video(job(**base))
    big = render_video(job(**{**base, "figure_scale": (0.8, 0.8)}))
    assert small.info["scale_px"] == 48.0 and big.info["scale_px"] == 76.8
    assert 1.4 < height(big.masks) / height(small.masks) < 1.8
    assert abs(small.info["yaw_deg"]) <= 30.0
    assert render_video(job(**{**base, "max_yaw": 0.0})).info["yaw_deg"] == 0.0
    assert small.info["distractors"] == 0
    assert render_video(job(**{**base, "distractors": (4, 4)})).info["distractors"] == 4
    thick = render_video(job(**{**base, "limb_thickness": 2.0}))
    limbs = lambda m: int(np.isin(m, (3, 4, 5, 6)).sum())       # noqa: E731  (arm and leg parts)
    assert limbs(thick.masks) > 1.3 * limbs(small.masks)


def test_real_manifest_builders_parse_the_layouts(dataset):
    builders = pytest.importorskip("data_manifests.builders")
    root, _ = dataset
    k, rej = builders.build_manifest("kinetics400", root / "kinetics/videos",
                                     [root / "kinetics/annotations/train.csv", root / "kinetics/annotations/val.csv"],
                                     workers=1, progress=False)
    assert not rej and len(k.entries) == 20 and len(k.classes) == 10
    assert {e.split for e in k.entries} == {"train", "val"} and all(e.frames == 16 for e in k.entries)
    assert "jumping jack" in k.classes
    u, rej = builders.build_manifest("ucf101", root / "ucf101/videos", root / "ucf101/splits", split=2,
                                     workers=1, progress=False)
    assert not rej and len(u.entries) == 30 and u.classes == sorted(ucf_name(c) for c in DEFAULT_CLASSES)
    h, rej = builders.build_manifest("hmdb51", root / "hmdb51/videos", root / "hmdb51/splits", split=3,
                                     workers=1, progress=False)
    assert not rej and len(h.entries) == 20 and "jumping_jack" in h.classes
    assert {e.split for e in h.entries} == {"train", "test"}
