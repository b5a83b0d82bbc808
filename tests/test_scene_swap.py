"""The scene-bias knob and the scene-swapped HMDB51-style test set (data_manifests/synthetic/scene_swap.py)."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_manifests.synthetic import generate_synthetic
from data_manifests.synthetic.actions import DEFAULT_CLASSES
from data_manifests.synthetic.generate import INDEX_FILE
from data_manifests.synthetic.layouts import hmdb_scene, plan_hmdb51
from data_manifests.synthetic.masks import load_part_masks
from data_manifests.synthetic.scene_swap import SWAPPED_DIR, swapped_scene
from data_manifests.synthetic.spec import SyntheticSpec

SPEC = SyntheticSpec(seed=4, classes=DEFAULT_CLASSES[:3], kinetics_per_class=0, ucf_per_class=0, hmdb_per_class=4,
                     frames=8, size=(64, 64), scene_bias=1.0)


@pytest.fixture(scope="module")
def biased(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("scene")
    return root, generate_synthetic(root, SPEC, workers=1, progress=False)


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


def test_scene_goes_with_the_class_with_probability_p() -> None:
    for p in (0.0, 0.3, 0.9):
        spec = SyntheticSpec(classes=DEFAULT_CLASSES[:5], hmdb_per_class=200, scene_bias=p)
        scenes = [(cls, hmdb_scene(spec, cls, i)) for cls in spec.classes for i in range(200)]
        if p == 0:
            assert all(s == "" for _, s in scenes)
            assert all(v.job.place_seed is None for v in plan_hmdb51(SyntheticSpec(hmdb_per_class=2)))
            continue
        own = np.mean([s == c for c, s in scenes])
        assert abs(own - p) < 0.05, (p, own)
        assert {s for _, s in scenes} == set(spec.classes)


def test_swapped_set_layout_and_labels(biased) -> None:
    root, summary = biased
    index = json.loads((root / INDEX_FILE).read_text())
    hmdb = {Path(r["path"]).stem: r for r in index["videos"] if r["dataset"] == "hmdb51"}
    assert all(r["scene"] == r["class"] for r in hmdb.values())           # p = 1: every video in its class's place
    classes = sorted(SPEC.classes)
    for split in (1, 2, 3):
        lines = (root / SWAPPED_DIR / "lists" / f"test_split{split}.txt").read_text().splitlines()
        flagged = []
        for f in (root / "hmdb51" / "splits").glob(f"*_test_split{split}.txt"):
            flagged += [ln.split()[0][:-4] for ln in f.read_text().splitlines() if ln.split()[1] == "2"]
        assert sorted(ln.split()[0] for ln in lines) == sorted(flagged)
        for ln in lines:
            vid, n, label = ln.split()
            assert classes[int(label)] == hmdb[vid]["class"] and int(n) == SPEC.frames
            pngs = sorted((root / SWAPPED_DIR / "frames" / vid).glob("*.png"))
            assert [p.name for p in pngs] == [f"frame{t:06d}.png" for t in range(1, SPEC.frames + 1)]
    assert summary[SWAPPED_DIR]["videos"] == len(list((root / SWAPPED_DIR / "frames").iterdir()))


def test_swapped_copy_changes_the_background_only(biased) -> None:
    root, _ = biased
    lines = (root / SWAPPED_DIR / "lists" / "test_split1.txt").read_text().splitlines()
    person_diff, background_diff = [], []
    for ln in lines:
        vid = ln.split()[0]
        video = next((root / "hmdb51" / "videos").rglob(f"{vid}.avi"))
        original = _decode(video).astype(np.float32)
        swapped = np.stack([cv2.imread(str(p)) for p in sorted((root / SWAPPED_DIR / "frames" / vid).glob("*.png"))])
        person = load_part_masks(video, range(SPEC.frames)) > 0
        inner = np.stack([cv2.erode(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0 for m in person])
        diff = np.abs(original - swapped.astype(np.float32)).mean(-1)
        person_diff.append(diff[inner].mean())
        background_diff.append(diff[~person].mean())
    assert np.mean(person_diff) < 8 < np.mean(background_diff), (person_diff, background_diff)


def test_swapped_scene_is_always_another_class() -> None:
    for pv in plan_hmdb51(SyntheticSpec(classes=DEFAULT_CLASSES[:4], hmdb_per_class=20, scene_bias=0.5)):
        assert swapped_scene(SPEC, pv) != pv.cls
