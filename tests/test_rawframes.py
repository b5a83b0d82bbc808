"""Frame-folder datasets (kind "rawframes") and out-of-context test sets (SCUBA, scene-swapped, Mimetics).

Fixtures are generated here in the released layouts: SCUBA's frame folders (``frame000001.jpg``)
with MMAction2 list files, the demo's scene-swapped copy (``frame000001.png``), and a Mimetics
video list (Kinetics CSV columns, no split column, labels named by Kinetics class).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from data_manifests.builders import build_manifest
from data_manifests.formats.rawframes import read_class_list
from data_manifests.frames import check_template, frame_source, parse_source
from data_manifests.transcode import TranscodeSpec, copy_relpath, transcode_video
from data_manifests.video import VideoDecodeError, count_frames, probe_video, read_frames
from pipeline.cli import main
from pipeline.core.config import ConfigError, default_toml_text, dump_toml, from_dict, load_config
from pipeline.core.errors import DataError
from student.out_of_context import _compare, restricted_accuracy, restricted_top1

PARENT = ["brush_hair", "cartwheel", "catch", "wave"]  # a parent dataset's classes (HMDB51-style)


def _frames(n: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` BGR frames whose pixels say which frame they are (and noise, so none are alike)."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 200, (n, h, w, 3), dtype=np.uint8)
    out[:, :4, :4] = np.arange(n, dtype=np.uint8)[:, None, None, None] * 5
    return out


def write_folder(folder: Path, frames: np.ndarray, template: str, start: int = 1) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        assert cv2.imwrite(str(folder / template.format(start + i)), f)


def scuba_fixture(root: Path) -> dict[str, tuple[int, int]]:
    """SCUBA layout: <class>/<video>/frame000001.jpg; list lists/<...>_split1.txt; returns {id: (frames, label)}."""
    videos = {"brush_hair/v_brush_0": (6, 0), "cartwheel/v_cart_0": (9, 1), "wave/v_wave_0": (5, 3),
              "wave/v_wave_1": (7, 3)}
    for k, (folder, (n, _)) in enumerate(videos.items()):
        write_folder(root / "frames" / folder, _frames(n, seed=k), "frame{:06d}.jpg")
    (root / "lists").mkdir(parents=True)
    lines = [f"{folder} {n} {label}" for folder, (n, label) in videos.items()]
    (root / "lists" / "scuba_places365_test_split1.txt").write_text("\n".join(lines) + "\n")
    return {folder.split("/")[1]: v for folder, v in videos.items()}


def _build(root: Path, template: str = "frame{:06d}.jpg", **kw):
    return build_manifest("rawframes", root / "frames", [root / "lists" / "scuba_places365_test_split{split}.txt"], 1,
                          classes=PARENT, format_options={"filename_tmpl": template, "fps": 25.0}, workers=1,
                          progress=False, **kw)


# ------------------------------------------------------------------ the format

def test_scuba_layout_frame_counts_labels_and_classes_exact(tmp_path: Path):
    want = scuba_fixture(tmp_path)
    manifest, rejected = _build(tmp_path)
    assert rejected == []
    assert manifest.classes == PARENT
    got = {e.id: (e.frames, e.label) for e in manifest.entries}
    assert got == want
    e = manifest.entries[1]
    assert (e.path, e.split, e.width, e.height, e.fps) == ("cartwheel/v_cart_0/frame{:06d}.jpg@1", "test", 32, 24, 25.0)


def test_frame_source_reads_frame_exact(tmp_path: Path):
    scuba_fixture(tmp_path)
    manifest, _ = _build(tmp_path)
    e = manifest.entries[1]
    src = manifest.abspath(e)
    got = read_frames(src, [8, 0, 8, 3])
    files = [tmp_path / "frames" / "cartwheel" / "v_cart_0" / f"frame{i + 1:06d}.jpg" for i in (8, 0, 8, 3)]
    want = np.stack([cv2.imread(str(f))[..., ::-1] for f in files])
    np.testing.assert_array_equal(got, want)
    third = cv2.imread(str(files[3].with_name("frame000003.jpg")))
    np.testing.assert_array_equal(read_frames(src, [2], bgr=True)[0], third)
    assert count_frames(src) == 9 and probe_video(src).frames == 9
    with pytest.raises(VideoDecodeError, match=r"frame000010\.jpg: frame 9 is missing"):
        read_frames(src, [9])


def test_missing_or_corrupt_frames_are_reported_and_the_rest_indexed(tmp_path: Path):
    scuba_fixture(tmp_path)
    frames = tmp_path / "frames"
    (frames / "brush_hair/v_brush_0/frame000004.jpg").unlink()                       # a frame missing
    (frames / "cartwheel/v_cart_0/frame000002.jpg").write_bytes(b"not a picture")    # a frame corrupt
    cut = frames / "wave/v_wave_0/frame000005.jpg"
    cut.write_bytes(cut.read_bytes()[:-2])                                           # the last frame cut short
    manifest, rejected = _build(tmp_path)
    assert [e.id for e in manifest.entries] == ["v_wave_1"]
    assert manifest.entries[0].frames == 7
    by_id = {r["id"]: r for r in rejected}
    assert {k: r["reason"] for k, r in by_id.items()} == {"v_brush_0": "bad_frames", "v_cart_0": "bad_frames",
                                                           "v_wave_0": "bad_frames"}
    assert "frame000004.jpg: frame 3 is missing (no such file); the list says 6 frames" in by_id["v_brush_0"]["detail"]
    assert "frame000002.jpg: frame 1 does not decode" in by_id["v_cart_0"]["detail"]
    # this OpenCV refuses a JPEG without its end marker; another would fill the rows grey: "cut short"
    assert re.search(r"frame000005.jpg: frame 4 (does not decode|is cut short)", by_id["v_wave_0"]["detail"])


def test_missing_folder_and_more_frames_than_listed(tmp_path: Path):
    scuba_fixture(tmp_path)
    lst = tmp_path / "lists" / "scuba_places365_test_split1.txt"
    lst.write_text(lst.read_text() + "catch/not_there 4 2\n")
    write_folder(tmp_path / "frames" / "wave" / "v_wave_1", _frames(3, seed=9), "frame{:06d}.jpg", start=8)  # 10 files
    manifest, rejected = _build(tmp_path, allow_missing=True)
    assert [(r["id"], r["reason"]) for r in rejected] == [("not_there", "missing")]
    assert {e.id: e.frames for e in manifest.entries}["v_wave_1"] == 7  # the list says 7: frames 8-10 unused


def test_offset_start_index_and_template(tmp_path: Path):
    root = tmp_path / "frames"
    write_folder(root / "a" / "vid", _frames(10), "img_{:05}.png", start=0)
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "train.txt").write_text("a/vid 3 4 1\n")  # with offset: frames 3..6
    manifest, rejected = build_manifest("rawframes", root, [tmp_path / "lists" / "train.txt"], classes=["x", "y"],
                                        format_options={"filename_tmpl": "img_{:05}.png", "start_index": 0},
                                        workers=1, progress=False)
    (e,) = manifest.entries
    assert (e.frames, e.label, e.split, e.path) == (4, 1, "train", "a/vid/img_{:05}.png@3")
    np.testing.assert_array_equal(read_frames(manifest.abspath(e), [0, 3], bgr=True), _frames(10)[[3, 6]])


def test_list_and_template_errors_name_the_file(tmp_path: Path):
    scuba_fixture(tmp_path)
    lst = tmp_path / "lists" / "scuba_places365_test_split1.txt"
    lst.write_text("wave/v_wave_0 5 4\n")
    with pytest.raises(DataError, match=r"scuba_places365_test_split1.txt:1: label 4 is outside the 4 classes"):
        _build(tmp_path)
    lst.write_text("wave/v_wave_0 five 3\n")
    with pytest.raises(DataError, match=r"split1.txt:1: frame count 'five' is not a non-negative integer"):
        _build(tmp_path)
    with pytest.raises(DataError, match="labels need class names"):
        build_manifest("rawframes", tmp_path / "frames", [lst], workers=1, progress=False)
    for bad in ("frame.jpg", "f{}_{}.jpg", "sub/f{:03d}.jpg", "f{:s}.jpg"):
        with pytest.raises(ConfigError):
            check_template(bad)
    assert parse_source("a/b/video.avi") is None
    assert parse_source(frame_source("a/b", "x{:04d}.jpg", 2)).file(3) == Path("a/b/x0005.jpg")


def test_class_lists(tmp_path: Path):
    names = tmp_path / "names.txt"
    names.write_text("brush_hair\ncartwheel\n")
    assert read_class_list(names) == ["brush_hair", "cartwheel"]
    ind = tmp_path / "classInd.txt"
    ind.write_text("2 Basketball\r\n1 ApplyEyeMakeup\r\n")
    assert read_class_list(ind) == ["ApplyEyeMakeup", "Basketball"]
    ind.write_text("1 A\n3 B\n")
    with pytest.raises(ValueError, match="class indices"):
        read_class_list(ind)


def test_sources_of_a_frame_folder_manifest_notice_a_changed_frame(tmp_path: Path):
    """sources.jsonl (pipeline/completeness.py) hashes a frame folder's files: a replaced frame is noticed."""
    from data_manifests.manifest import write_manifest
    from pipeline.completeness import verify_sources, write_sources

    scuba_fixture(tmp_path)
    manifest, rejected = _build(tmp_path)
    out = tmp_path / "manifest"
    write_manifest(out, manifest, rejected)
    write_sources(out, manifest.root, [e.path for e in manifest.entries], workers=1)
    assert verify_sources(out) == []
    frame = tmp_path / "frames" / "wave" / "v_wave_1" / "frame000003.jpg"
    assert cv2.imwrite(str(frame), _frames(1, seed=9)[0])
    problems = verify_sources(out)
    assert len(problems) == 1 and "v_wave_1" in problems[0][0] and "content changed" in problems[0][1]


def test_transcode_copies_a_frame_folder(tmp_path: Path):
    scuba_fixture(tmp_path)
    manifest, _ = _build(tmp_path)
    e = manifest.entries[0]
    assert copy_relpath(e, "mjpeg") == "brush_hair/v_brush_0.avi"
    dst = tmp_path / "copy.avi"
    rec = transcode_video(manifest.abspath(e), dst, TranscodeSpec(short_side=24, codec="mjpeg"),
                          expected_frames=e.frames, fps=e.fps)
    assert rec["frames"] == 6 and count_frames(dst) == 6 and rec["source_bytes"] > 0
    from data_manifests.manifest import load_manifest, write_manifest
    from data_manifests.transcode import build_transcode
    from pipeline.core.distributed import DistInfo

    write_manifest(tmp_path / "manifest", manifest, [])
    summary = build_transcode(tmp_path / "manifest", tmp_path / "tc", TranscodeSpec(short_side=24, codec="mjpeg"),
                              dist=DistInfo(), workers=1, progress=False)
    copies = load_manifest(tmp_path / "tc")
    assert summary["copied"] == 4 and summary["failed"] == 0 and summary["source_bytes"] > 0
    assert [(c.id, c.frames, c.path) for c in copies.entries][0] == ("v_brush_0", 6, "brush_hair/v_brush_0.avi")
    assert read_frames(copies.abspath(copies.entries[1]), [8]).shape == (1, 24, 32, 3)


# ------------------------------------------------------------------ Mimetics: a video list mapped to Kinetics

def test_mimetics_list_maps_names_to_parent_indices(tmp_path: Path):
    kinetics = ["archery", "bowling", "dribbling basketball", "playing guitar", "surfing water"]
    root = tmp_path / "videos"
    root.mkdir()
    rows = [("playing guitar", "AAAAAAAAAAA", 0, 10), ("dribbling basketball", "BBBBBBBBBBB", 5, 15),
            ("bowling", "CCCCCCCCCCC", 1, 11)]
    for k, (_, yt, s, e) in enumerate(rows):
        writer = cv2.VideoWriter(str(root / f"{yt}_{s:06d}_{e:06d}.avi"), cv2.CAP_FFMPEG,
                                 cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
        for f in _frames(4 + k, seed=k):
            writer.write(f)
        writer.release()
    csv = tmp_path / "mimetics_v1.0.csv"
    csv.write_text("label,youtube_id,time_start,time_end\n"
                   + "".join(f'"{lab}",{yt},{s},{e}\n' for lab, yt, s, e in rows))
    manifest, rejected = build_manifest("kinetics400", root, [csv], classes=kinetics, workers=1, progress=False,
                                        format_options={"default_split": "test"})
    assert rejected == [] and manifest.classes == kinetics
    assert [(e.id, e.label, e.split, e.frames) for e in manifest.entries] == [
        ("AAAAAAAAAAA_000000_000010", 3, "test", 4), ("BBBBBBBBBBB_000005_000015", 2, "test", 5),
        ("CCCCCCCCCCC_000001_000011", 1, "test", 6)]
    csv.write_text('label,youtube_id,time_start,time_end\n"miming a kite",DDDDDDDDDDD,0,10\n')
    with pytest.raises(DataError, match="label 'miming a kite' is not in the class list"):
        build_manifest("kinetics400", root, [csv], classes=kinetics, workers=1, progress=False,
                       format_options={"default_split": "test"})


def test_restricted_top1_takes_the_argmax_over_the_covered_classes():
    scores = torch.tensor([[0.0, 9.0, 1.0, 2.0],    # label 2: 9.0 is class 1, outside {2, 3} -> predicts 3: wrong
                           [5.0, 0.0, 3.0, 1.0],    # label 2: within {2, 3}, 3.0 wins: right
                           [0.0, 0.0, 0.0, 1.0],    # label 3: right
                           [9.0, 0.0, 0.0, 0.0]])   # label 0: not covered, not counted
    labels = torch.tensor([2, 2, 3, 0])
    assert restricted_top1(scores, labels, [2, 3]) == (pytest.approx(2 / 3), 3)
    assert restricted_top1(scores, labels, [0, 1, 2, 3]) == (pytest.approx(2 / 4), 4)  # rows 2 and 3
    assert restricted_accuracy(scores, labels, [2, 3]) == (pytest.approx(2 / 3), 1.0, 3)  # top-5 of 2 classes: all


def test_the_drop_is_in_distribution_minus_test_set_in_points():
    s = _compare({"x": 1}, "scuba", top1=0.25, in_dist_top1=0.75)
    assert (s["x"], s["test_set"], s["test_set_top1"], s["in_distribution_top1"], s["drop_points"]) == (
        1, "scuba", 0.25, 0.75, 50.0)


# ------------------------------------------------------------------ config

def test_test_sets_in_the_config(tmp_path: Path):
    raw = {"datasets": {"hmdb51": {"kind": "hmdb51", "root": "/v", "annotations": ["/s"], "split": 2,
                                   "test_sets": {"scuba": {"kind": "rawframes", "root": "/f",
                                                           "annotations": ["/l/test_split{split}.txt"],
                                                           "filename_tmpl": "frame{:06d}.jpg"}}}},
           "pretrain": {"dataset": "hmdb51"}, "finetune": {"dataset": "hmdb51"}}
    cfg = from_dict(raw)
    ts = cfg.dataset("hmdb51.scuba")
    assert (ts.kind, ts.split, ts.parent, ts.filename_tmpl) == ("rawframes", 2, "hmdb51", "frame{:06d}.jpg")
    assert "test_sets" not in vars(cfg.dataset("hmdb51"))
    with pytest.raises(ConfigError, match="no test set 'scubaa'.*known: scuba"):
        cfg.dataset("hmdb51.scubaa")
    with pytest.raises(ConfigError, match=r"test_sets.scuba: unknown key 'rot'"):
        from_dict({"datasets": {"hmdb51": {"test_sets": {"scuba": {"rot": "/f"}}}}})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert load_config(path).test_sets == cfg.test_sets


def test_demo_config_declares_the_scene_swapped_set():
    cfg = load_config()
    ts = cfg.dataset("hmdb51.scene_swapped")
    assert (ts.kind, ts.root, ts.parent, ts.filename_tmpl, ts.start_index) == (
        "rawframes", "synthetic:hmdb51_scene_swapped/frames", "hmdb51", "frame{:06d}.png", 1)
    assert ts.annotations == ["synthetic:hmdb51_scene_swapped/lists/test_split{split}.txt"]
    assert "[datasets.hmdb51.test_sets.scene_swapped]" in default_toml_text()


# ------------------------------------------------------------------ end to end: videos vs their frames

CLASSES = ["cartwheel", "soccer_juggling", "wave"]
CLIPS = [("cartwheel", "hmdb51/cartwheel/Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", "train"),
         ("soccer_juggling", "ucf101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi", "train"),
         ("soccer_juggling", "ucf101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi", "test"),
         ("wave", "hmdb51/wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi", "train"),
         ("wave", "hmdb51/wave/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi", "train"),
         ("wave", "hmdb51/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi", "test")]

CONFIG = """
[datasets.vid]
kind = "hmdb51"
root = "{root}/videos"
annotations = ["{root}/splits"]
workers = 1
[datasets.vid.test_sets.frames]
kind = "rawframes"
root = "{root}/frames"
annotations = ["{root}/lists/test_split{{split}}.txt"]
filename_tmpl = "img_{{:05}}.png"
[datasets.frm]
kind = "rawframes"
root = "{root}/frames"
annotations = ["{root}/lists/train_split{{split}}.txt", "{root}/lists/test_split{{split}}.txt"]
classes = "{root}/lists/classes.txt"
filename_tmpl = "img_{{:05}}.png"
workers = 1
[model]
backbone = "c3d"
width = 0.125
input_size = 32
parse_size = 8
[clips]
clip_len = 8
[pretrain]
dataset = "vid"
[finetune]
dataset = "vid"
from_scratch = true
protocol = "custom"
epochs = 1
batch_size = 2
lr = 0.01
schedule = "cosine"
select_on = "last"
workers = 0
device = "cpu"
[evaluate]
clips = 2
workers = 0
device = "cpu"
"""


def _copy_as_frames(shared: Path, root: Path) -> None:
    """The clips as an HMDB51-style video dataset and, decoded once and written losslessly as PNG,
    as a frame-folder dataset with MMAction2 lists in the same order."""
    (root / "splits").mkdir(parents=True)
    (root / "lists").mkdir()
    lists: dict[str, list[str]] = {"train": [], "test": []}
    for cls in CLASSES:
        lines = []
        for c, rel, split in CLIPS:
            if c != cls:
                continue
            src = shared / "videos" / rel
            (root / "videos" / cls).mkdir(parents=True, exist_ok=True)
            (root / "videos" / cls / src.name).symlink_to(src)
            lines.append(f"{src.name} {1 if split == 'train' else 2}")
            frames = read_frames(src, range(count_frames(src)), bgr=True)
            write_folder(root / "frames" / cls / src.stem, frames, "img_{:05}.png")
            lists[split].append(f"{cls}/{src.stem} {len(frames)} {CLASSES.index(cls)}")
        (root / "splits" / f"{cls}_test_split1.txt").write_text("\n".join(lines) + "\n")
    for split, lines in lists.items():
        (root / "lists" / f"{split}_split1.txt").write_text("\n".join(lines) + "\n")
    (root / "lists" / "classes.txt").write_text("\n".join(CLASSES) + "\n")


def _predictions(out: str) -> list[dict]:
    folder = next(Path(line.split(": ", 1)[1].split(" (built", 1)[0]) for line in out.splitlines()
                  if line.startswith("evaluate ") and ": /" in line)
    return [json.loads(x) for x in (folder / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_frame_folder_copy_predicts_exactly_as_the_videos(tmp_path: Path, shared_data: Path):
    """Finetune + evaluate on the videos and on their PNG frames give the same predictions; the frames
    as an out-of-context test set of the videos' classifier drop 0 points."""
    root = tmp_path / "data"
    _copy_as_frames(shared_data, root)
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(root=root))

    def run(*args: str) -> str:
        result = CliRunner().invoke(main, ["--work-dir", str(tmp_path / "work"), "--config", str(config), *args],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    from_videos = _predictions(run("finetune", "--dataset", "vid", "--build-upstream"))
    from_frames = _predictions(run("finetune", "--dataset", "frm", "--build-upstream"))
    assert [p["id"] for p in from_videos] == ["v_SoccerJuggling_g24_c01", "TrumanShow_wave_f_nm_np1_fr_med_26"]
    assert [(p["id"], p["label"], p["pred"]) for p in from_frames] == [(p["id"], p["label"], p["pred"])
                                                                       for p in from_videos]
    np.testing.assert_allclose([p["probs"] for p in from_frames], [p["probs"] for p in from_videos], rtol=0, atol=1e-6)

    out = run("evaluate", "--dataset", "vid", "--test-set", "frames", "--build-upstream")
    assert "test set frames: top-1" in out and "drop 0.0 points" in out, out
    assert [(p["id"], p["pred"]) for p in _predictions(out)] == [(p["id"], p["pred"]) for p in from_videos]


# ------------------------------------------------------------------ end to end on the synthetic demo

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    from tiny_pipeline import pretrained_work

    return pretrained_work(tmp_path_factory)


def _synthetic_root(work: Path) -> Path:
    (root,) = [p for p in (work / "synthetic" / "default").iterdir() if (p / "stage.json").is_file()]
    return root


def test_demo_scene_swapped_set_and_mimetics_style_probe(work: Path, tmp_path: Path):
    """The demo config's scene_swapped test set, in the layout the generator writes (here filled with the
    test videos' own frames, so the drop is exactly 0), and a Mimetics-style Kinetics list scored by the
    Kinetics linear probe restricted to its classes (here the val videos of two classes: drop 0)."""
    from data_manifests.manifest import load_manifest
    from tiny_pipeline import invoke, stage_folder

    syn = _synthetic_root(work)
    out = invoke(work, "finetune", "--dataset", "hmdb51", "--build-upstream").output
    hmdb = load_manifest(next((work / "manifest" / "hmdb51").glob("*/meta.json")).parent)
    swapped = syn / "hmdb51_scene_swapped"
    (swapped / "lists").mkdir(parents=True, exist_ok=True)
    lines = []
    for e in hmdb.by_split("test"):
        frames = read_frames(hmdb.abspath(e), range(e.frames), bgr=True)
        write_folder(swapped / "frames" / e.id, frames, "frame{:06d}.png")
        lines.append(f"{e.id} {e.frames} {e.label}")
    (swapped / "lists" / "test_split1.txt").write_text("\n".join(lines) + "\n")
    out = invoke(work, "evaluate", "--dataset", "hmdb51", "--test-set", "scene_swapped", "--build-upstream").output
    assert "test set scene_swapped: top-1" in out and "drop 0.0 points" in out, out
    metrics = json.loads((stage_folder(out, "evaluate") / "metrics.json").read_text())
    assert metrics["test_set_top1"] == metrics["in_distribution_top1"] and metrics["num_videos"] == len(lines)
    top1 = f"{100 * metrics['test_set_top1']:.1f}"
    assert f"| hmdb51 | 1 | scene_swapped | finetuned | {len(lines)} | {top1} | {top1} | 0.0 |" in out, out
    run = invoke(work, "run", sets=('evaluate.test_sets=["scene_swapped"]',)).output  # joins the results table
    assert "Out-of-context test sets" in run and "| scene_swapped | finetuned |" in (work / "results.md").read_text()

    rows = [r.split(",") for r in (syn / "kinetics" / "annotations" / "val.csv").read_text().splitlines()[1:]]
    two = sorted({r[0] for r in rows})[:2]
    csv = tmp_path / "mimetics_v1.0.csv"
    csv.write_text("label,youtube_id,time_start,time_end\n" + "".join(",".join(r[:4]) + "\n" for r in rows
                                                                     if r[0] in two))
    sets = ("datasets.kinetics400.test_sets.mimetics.kind=kinetics400",
            "datasets.kinetics400.test_sets.mimetics.root=synthetic:kinetics/videos",
            f"datasets.kinetics400.test_sets.mimetics.annotations=['{csv}']")
    out = invoke(work, "linear-probe", "--dataset", "kinetics400", "--test-set", "mimetics", "--build-upstream",
                 sets=sets).output
    summary = json.loads((stage_folder(out, "linear-probe") / "linear_probe.json").read_text())
    assert summary["classes_covered"] == 2 and summary["num_test"] == sum(r[0] in two for r in rows)
    assert summary["test_set_top1"] == summary["in_distribution_top1"] and summary["drop_points"] == 0.0
    assert "over the 2 classes it covers" in out and "drop 0.0 points" in out
    out = invoke(work, "sweep", "--protocol", "linear-probe", "--dataset", "kinetics400", "--splits", "1", "--seeds",
                 "0", "--test-set", "mimetics", sets=sets).output
    assert "linear-probe on kinetics400 test set mimetics" in out and "| in-distribution top-1 | drop (points) |" in out
    assert "| 1 | 1 |" in out and out.rstrip().endswith("| 0.0 |") and "±" not in out, out  # one run: no spread
    def planned(*extra: str) -> str:
        return invoke(work, "sweep", "--protocol", "linear-probe", "--dataset", "kinetics400", "--splits", "1",
                      "--seeds", "0", "--dry-run", *extra, sets=sets).output.strip().splitlines()[-1]

    # the dry run plans the test-set stages too (its manifest and the scoring stage, all built above)
    done = int(re.search(r"(\d+) already done", planned()).group(1))
    assert planned("--test-set", "mimetics") == f"0 stages to build, {done + 2} already done; " \
        + planned().split("; ", 1)[1]
