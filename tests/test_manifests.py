"""Manifest builders on the real split files and clips; rejection of broken videos; manifest I/O."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from pipeline.core.errors import DataError
from data_manifests.builders import annotation_files, build_manifest, list_video_files, summary
from data_manifests.manifest import Manifest, VideoEntry, load_manifest, load_rejected, write_manifest

HMDB_SPLIT1 = {  # id: (class, split in split 1, decodable frames, width) — PROVENANCE.md
    "RATRACE_wave_f_nm_np1_fr_goo_37": ("wave", "train", 72, 560),
    "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0": ("wave", "unused", 74, 320),
    "TrumanShow_wave_f_nm_np1_fr_med_26": ("wave", "test", 48, 432),
    "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6": ("cartwheel", "train", 83, 320),
}
KINETICS = {"R6llTwEh07w": (0, 10, 303), "SOX5yA1l24A": (299, 309, 332), "WUzgd7C1pWA": (101, 111, 327)}


def _names(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def hmdb(shared_data):
    return build_manifest("hmdb51", shared_data / "videos" / "hmdb51", [shared_data / "splits" / "hmdb51"], 1,
                          allow_missing=True, workers=1, progress=False)


def test_hmdb51_split1(hmdb, shared_data):
    manifest, rejected = hmdb
    classes = sorted(_names(shared_data / "labels" / "hmdb51_label_map_mmaction2.txt"))
    assert len(classes) == 51 and manifest.classes == classes
    got = {e.id: e for e in manifest.entries}
    assert set(got) == set(HMDB_SPLIT1)
    for vid, (cls, split, frames, width) in HMDB_SPLIT1.items():
        e = got[vid]
        assert (e.label, e.split, e.frames, e.width, e.height) == (classes.index(cls), split, frames, width, 240)
        assert e.path == f"{cls}/{vid}.avi" and e.fps == 30.0
        assert manifest.abspath(e).is_file()
    assert len(rejected) == 6766 - 4 and {r["reason"] for r in rejected} == {"missing"}
    assert {"id": "April_09_brush_hair_u_nm_np1_ba_goo_0",
            "path": "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi",
            "reason": "missing"}.items() <= rejected[0].items()
    assert [e.id for e in manifest.by_split("train")] == ["Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6",
                                                          "RATRACE_wave_f_nm_np1_fr_goo_37"]


def test_hmdb51_split3(shared_data):
    manifest, _ = build_manifest("hmdb51", shared_data / "videos" / "hmdb51", shared_data / "splits" / "hmdb51", 3,
                                 allow_missing=True, workers=1, progress=False)
    splits = {e.id: e.split for e in manifest.entries}
    assert splits == {"RATRACE_wave_f_nm_np1_fr_goo_37": "train",
                      "SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0": "train",
                      "TrumanShow_wave_f_nm_np1_fr_med_26": "train",
                      "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6": "test"}


def test_many_missing_is_an_error_naming_the_root(shared_data):
    root = shared_data / "videos" / "hmdb51"
    with pytest.raises(DataError) as err:
        build_manifest("hmdb51", root, [shared_data / "splits" / "hmdb51"], 1, progress=False)
    msg = str(err.value)
    assert "6762 of 6766" in msg and "--root" in msg and str(root) in msg and "allow-missing" in msg


def test_missing_threshold(shared_data, tmp_path):
    ann = tmp_path / "splits"
    ann.mkdir()
    real = [f"{v}.avi" for v, (c, *_) in HMDB_SPLIT1.items() if c == "wave"]
    (ann / "wave_test_split1.txt").write_text("".join(f"{n} 1 \n" for n in real + ["gone_wave_0.avi"]))
    root = shared_data / "videos" / "hmdb51"
    with pytest.raises(DataError, match="1 of 4"):
        build_manifest("hmdb51", root, ann, 1, workers=1, progress=False)
    manifest, rejected = build_manifest("hmdb51", root, ann, 1, workers=1, progress=False, max_missing_fraction=0.25)
    assert manifest.classes == ["wave"] and len(manifest.entries) == 3
    assert rejected == [{"id": "gone_wave_0", "path": "wave/gone_wave_0.avi", "reason": "missing",
                         "detail": rejected[0]["detail"]}]


def test_ucf101_split1(shared_data):
    manifest, rejected = build_manifest("ucf101", shared_data / "videos" / "ucf101",
                                        [shared_data / "splits" / "ucf101"], 1, allow_missing=True, workers=1,
                                        progress=False)
    assert len(manifest.classes) == 101 and manifest.classes[83] == "SoccerJuggling"
    assert [(e.id, e.label, e.split, e.frames) for e in manifest.entries] == [
        ("v_SoccerJuggling_g23_c01", 83, "train", 240), ("v_SoccerJuggling_g24_c01", 83, "train", 251)]
    assert len(rejected) == 9537 + 3783 - 2


def test_ucf101_lf_lists_and_handstand_case(shared_data, tmp_path):
    """LF copies of the CRLF lists parse the same; a 'HandStandPushups' folder is found case-insensitively."""
    ann = tmp_path / "lists"
    ann.mkdir()
    for name in ("classInd.txt", "trainlist01.txt", "testlist01.txt"):
        (ann / name).write_bytes((shared_data / "splits" / "ucf101" / name).read_bytes().replace(b"\r\n", b"\n"))
    root = tmp_path / "videos"
    src = shared_data / "videos" / "ucf101" / "SoccerJuggling"
    (root / "HandStandPushups").mkdir(parents=True)
    (root / "HandStandPushups" / "v_HandStandPushups_g01_c01.avi").symlink_to(src / "v_SoccerJuggling_g23_c01.avi")
    (root / "SoccerJuggling").mkdir()
    (root / "SoccerJuggling" / "v_SoccerJuggling_g24_c01.avi").symlink_to(src / "v_SoccerJuggling_g24_c01.avi")
    assert "HandstandPushups/v_HandStandPushups_g01_c01.avi" in (ann / "testlist01.txt").read_text()
    manifest, _ = build_manifest("ucf101", root, [ann], 1, allow_missing=True, workers=1, progress=False)
    assert manifest.classes[36] == "HandstandPushups"
    assert [(e.id, e.path, e.label, e.split) for e in manifest.entries] == [
        ("v_SoccerJuggling_g24_c01", "SoccerJuggling/v_SoccerJuggling_g24_c01.avi", 83, "train"),
        ("v_HandStandPushups_g01_c01", "HandStandPushups/v_HandStandPushups_g01_c01.avi", 36, "test")]


def test_kinetics_val_csv(shared_data):
    manifest, rejected = build_manifest("kinetics400", shared_data / "videos" / "kinetics400",
                                        [shared_data / "labels" / "kinetics-400_val.csv"], allow_missing=True,
                                        workers=1, progress=False)
    classes = _names(shared_data / "labels" / "kinetics400_label_map.txt")
    assert manifest.classes == sorted(classes) and len(classes) == 400
    label = manifest.classes.index("using segway")
    assert [(e.id, e.path, e.label, e.split, e.frames) for e in manifest.entries] == [
        (f"{y}_{s:06d}_{t:06d}", f"using_segway/{y}.mp4", label, "val", n) for y, (s, t, n) in KINETICS.items()]
    assert len(rejected) == 19906 - 3


def test_kinetics_test_csv_any_depth_and_class_list(shared_data, tmp_path):
    deep = tmp_path / "k400" / "test" / "unknown" / "part1"
    deep.mkdir(parents=True)
    (deep / "--6bJUbfpnQ_000017_000027.mp4").symlink_to(shared_data / "videos/kinetics400/using_segway/R6llTwEh07w.mp4")
    csv = shared_data / "labels" / "kinetics-400_test_head20.csv"
    manifest, rejected = build_manifest("kinetics400", tmp_path / "k400", [csv], allow_missing=True, workers=1,
                                        progress=False)
    assert manifest.classes == []
    assert [(e.id, e.path, e.label, e.split, e.frames) for e in manifest.entries] == [
        ("--6bJUbfpnQ_000017_000027", "test/unknown/part1/--6bJUbfpnQ_000017_000027.mp4", -1, "test", 303)]
    assert len(rejected) == 19
    label_map = shared_data / "labels" / "kinetics400_label_map.txt"
    with_list, _ = build_manifest("kinetics400", tmp_path / "k400", [csv, label_map], allow_missing=True,
                                  workers=1, progress=False)
    assert with_list.classes == _names(label_map) and with_list.entries == manifest.entries


def _empty_video(path: Path) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    writer.release()  # a valid AVI with no frame


def test_broken_videos_are_rejected_and_the_rest_kept(shared_data, tmp_path):
    src = shared_data / "videos"
    root = tmp_path / "classes"
    for cls in ("alpha", "beta"):
        (root / cls).mkdir(parents=True)
    (root / "alpha" / "good.avi").symlink_to(src / "hmdb51/wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi")
    (root / "alpha" / "short.avi").symlink_to(src / "hmdb51/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi")
    mp4 = (src / "kinetics400/using_segway/R6llTwEh07w.mp4").read_bytes()
    (root / "beta" / "truncated.mp4").write_bytes(mp4[: len(mp4) // 3])  # moov atom lost
    avi = (src / "hmdb51/wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi").read_bytes()
    (root / "beta" / "headonly.avi").write_bytes(avi[:2000])
    (root / "beta" / "notes.mp4").write_text("this is not a video\n")
    _empty_video(root / "beta" / "empty.avi")
    (root / "beta" / "good2.avi").symlink_to(src / "other/mmaction2_test.avi")
    manifest, rejected = build_manifest("folder", root, None, min_frames=60, workers=2, progress=False)
    assert manifest.classes == ["alpha", "beta"]
    assert [(e.id, e.label, e.split, e.frames) for e in manifest.entries] == [
        ("good", 0, "train", 72), ("good2", 1, "train", 164)]
    reasons = {r["id"]: r["reason"] for r in rejected}
    assert reasons == {"short": "too_short", "empty": "zero_frames", "headonly": "undecodable",
                       "notes": "undecodable", "truncated": "undecodable"}
    notes = next(r for r in rejected if r["id"] == "notes")
    assert notes["path"] == "beta/notes.mp4" and "notes.mp4" in notes["detail"]
    assert summary(manifest, rejected)[1:3] == [
        "  usable:   train 2, val 0, test 0, unused 0",
        "  rejected: 5 (missing 0, undecodable 3, zero_frames 1, too_short 1)"]


def test_partly_truncated_avi_keeps_its_decodable_frames(shared_data, tmp_path):
    """A cut AVI still opens: its manifest frame count is what decodes, never the header's claim."""
    avi = (shared_data / "videos/other/mmaction2_ntu_sample.avi").read_bytes()
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "cut.avi").write_bytes(avi[: len(avi) // 3])
    manifest, rejected = build_manifest("folder", tmp_path, [], workers=1, progress=False)
    (entry,) = manifest.entries
    assert 0 < entry.frames < 72 and rejected == []


def test_write_and_load_roundtrip(hmdb, tmp_path):
    manifest, rejected = hmdb
    out = tmp_path / "manifest"
    write_manifest(out, manifest, rejected)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "meta.json", "rejected.jsonl"]
    lines = (out / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 4 and list(json.loads(lines[0])) == ["id", "path", "label", "split", "frames", "fps",
                                                              "width", "height"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["dataset"] == "hmdb51" and meta["root"] == str(manifest.root) and meta["classes"] == manifest.classes
    assert meta["counts"]["per_split"] == {"train": 2, "val": 0, "test": 1, "unused": 1}
    assert meta["counts"]["rejected_per_reason"]["missing"] == 6762
    loaded = load_manifest(out)
    assert loaded == manifest
    assert load_rejected(out) == rejected
    moved = load_manifest(out, root=tmp_path)
    assert moved.root == tmp_path and moved.entries == manifest.entries


def test_load_errors_name_the_file(hmdb, tmp_path):
    manifest, rejected = hmdb
    write_manifest(tmp_path, manifest, rejected)
    path = tmp_path / "manifest.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["{broken"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"manifest.jsonl:3: not valid JSON"):
        load_manifest(tmp_path)
    rec = json.loads(lines[0]) | {"split": "training"}
    path.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match="split 'training'"):
        load_manifest(tmp_path)
    with pytest.raises(DataError, match="meta.json"):
        load_manifest(tmp_path / "nowhere")


def test_manifest_invariants():
    e = VideoEntry("a", "x/a.avi", 0, "train", 10, 30.0, 32, 24)
    with pytest.raises(ValueError, match="video id 'a'"):
        Manifest("d", Path("/r"), ["x"], [e, VideoEntry("a", "y/a.avi", 0, "test", 10, 30.0, 32, 24)])
    with pytest.raises(ValueError, match="label 1"):
        Manifest("d", Path("/r"), ["x"], [VideoEntry("b", "x/b.avi", 1, "train", 10, 30.0, 32, 24)])
    with pytest.raises(ValueError, match="unknown split"):
        Manifest("d", Path("/r"), ["x"], [e]).by_split("training")


def test_fingerprint_inputs(shared_data):
    ucf = annotation_files("ucf101", [shared_data / "splits" / "ucf101"], 2)
    assert [p.name for p in ucf] == ["classInd.txt", "trainlist02.txt", "testlist02.txt"]
    hmdb = annotation_files("hmdb51", [shared_data / "splits" / "hmdb51"], 1)
    assert len(hmdb) == 51 and all(p.name.endswith("_test_split1.txt") for p in hmdb)
    csv = shared_data / "labels" / "kinetics-400_val.csv"
    assert annotation_files("kinetics400", [csv], 1) == [csv]
    assert annotation_files("folder", [], 1) == []
    files = list_video_files(shared_data / "videos")
    assert len(files) == 17 and files == sorted(files) and all(f.is_file() for f in files)
    with pytest.raises(ValueError, match="unknown dataset kind"):
        annotation_files("sports1m", [], 1)
