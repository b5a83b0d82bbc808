"""Issue 24: no stage is "done" with bad or missing outputs; ``--verify`` reads videos.

Transcode failures (unreadable source, full disk) leave the stage not done and are retried; a
zero-byte copy is never taken for a finished one; the completeness check at "mark done" refuses
empty or undecodable videos; ``status --verify`` decodes videos and hashes their bytes; content
changes that keep size and mtime are caught. Videos are tiny generated all-intra AVIs.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
from pathlib import Path

import pytest

from data_manifests.manifest import load_manifest
from data_manifests.transcode import FAILED_FILE, TranscodeSpec, build_transcode
from pipeline import completeness
from pipeline.core.config import load_config
from pipeline.core.distributed import DistInfo
from pipeline.core.errors import DiskFullError, StageError
from pipeline.stage import BuildResult, Stage, run_stage, verify_stage
from tiny_videos import class_frames, make_dataset, write_video

SPEC = TranscodeSpec(short_side=32)


def _transcode_stage(manifest_dir: Path) -> Stage:
    def build(ctx):
        return BuildResult.of_summary(build_transcode(manifest_dir, ctx.out_dir, SPEC, dist=ctx.dist, progress=False))

    return Stage(kind="transcode", name="tiny", version=1, semantic={"short_side": 32}, upstream=[], build=build)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """A manifest of 6 tiny MJPG videos (12 frames, 40 × 48)."""
    return make_dataset(tmp_path, classes=3, train_per_class=1, test_per_class=1)


def _copies(out: Path) -> list[Path]:
    return sorted(p for p in (out / "videos").rglob("*.avi") if not p.name.startswith("."))


# ------------------------------------------------------------------------------------ defect 1
def test_1_failed_copy_leaves_the_stage_not_done_and_the_rerun_retries_it(tiny: Path, tmp_path: Path):
    work = tmp_path / "work"
    stage = _transcode_stage(tiny)
    src = load_manifest(tiny)
    victim = src.abspath(src.entries[2])
    good = victim.read_bytes()
    victim.write_bytes(b"\0" * len(good))  # unreadable now (as after a bad disk or a chmod)
    with pytest.raises(StageError, match=r"1 of 6 videos could not be copied.*" + victim.name):
        run_stage(stage, work, load_config(), dist=DistInfo())
    assert not stage.is_done(work)
    listed = (stage.partial_dir(work) / FAILED_FILE).read_text().splitlines()
    assert len(listed) == 1 and victim.name in listed[0]
    victim.write_bytes(good)  # the cause is fixed: the failure must be retried, not remembered
    out = run_stage(stage, work, load_config(), dist=DistInfo())
    assert stage.is_done(work) and len(_copies(out)) == 6
    assert json.loads((out / "transcode.json").read_text())["failed"] == 0


def _fsize_limit(limit: int):
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return lambda: (resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard)), signal.signal(signal.SIGXFSZ, previous))


def test_1_12_full_disk_stops_the_transcode_naming_the_copy(tiny: Path, tmp_path: Path):
    out = tmp_path / "t"
    restore = _fsize_limit(2048)
    try:
        with pytest.raises(DiskFullError, match=r"\.avi: no space left"):
            build_transcode(tiny, out, SPEC, dist=DistInfo(), progress=False)
    finally:
        restore()
    assert not _copies(out) and not list((out / "failed").glob("*.json")) if (out / "failed").exists() else True
    summary = build_transcode(tiny, out, SPEC, dist=DistInfo(), progress=False)  # space is back
    assert summary["complete"] and summary["copied"] == 6


def test_12_atomic_write_on_a_full_disk_names_its_file(tmp_path: Path):
    from pipeline.core.files import atomic_write_text

    restore = _fsize_limit(1024)
    try:
        with pytest.raises(OSError) as info:
            atomic_write_text(tmp_path / "failed.jsonl", "x" * 4096)
    finally:
        restore()
    assert info.value.filename == str(tmp_path / "failed.jsonl")


# ------------------------------------------------------------------------------------ defect 3
def test_3_zero_byte_copy_is_not_a_finished_copy(tiny: Path, tmp_path: Path):
    out = tmp_path / "t"
    build_transcode(tiny, out, SPEC, dist=DistInfo(), progress=False)
    first = _copies(out)[0]
    first.write_bytes(b"")
    (out / "meta.json").unlink()
    summary = build_transcode(tiny, out, SPEC, dist=DistInfo(), progress=False)
    assert summary["copied_now"] == 1 and first.stat().st_size > 0


def test_3_a_stage_is_not_marked_done_with_an_empty_or_undecodable_video(tmp_path: Path):
    work = tmp_path / "work"

    def build(ctx):
        write_video(ctx.out_dir / "ok.avi", class_frames(0, 4, 1))
        (ctx.out_dir / "empty.avi").write_bytes(b"")
        (ctx.out_dir / "noise.avi").write_bytes(os.urandom(3000))
        (ctx.out_dir / "empty.txt").write_text("")  # an empty listing is fine
        return BuildResult({})

    stage = Stage(kind="videos", name="x", version=1, semantic={}, upstream=[], build=build)
    with pytest.raises(StageError, match=r"2 output file\(s\) incomplete.*empty\.avi"):
        run_stage(stage, work, load_config(), dist=DistInfo())
    assert not stage.is_done(work)
    left = {p.name for p in stage.partial_dir(work).iterdir()}
    assert "ok.avi" in left and not {"empty.avi", "noise.avi"} & left, "bad files go, so a resume rebuilds them"


# ------------------------------------------------------------------------------------ defect 4
def test_4_verify_decodes_videos_and_hashes_their_bytes(tiny: Path, tmp_path: Path):
    work = tmp_path / "work"
    stage = _transcode_stage(tiny)
    out = run_stage(stage, work, load_config(), dist=DistInfo())
    record = json.loads((out / "stage.json").read_text())["outputs"]
    rel = sorted(r for r in record if r.endswith(".avi"))[0]
    assert record[rel]["frames"] == 12 and "sha256" in record[rel]
    assert verify_stage(stage, work, repair=False) == []
    data = bytearray((out / rel).read_bytes())
    data[len(data) // 2] ^= 0xFF  # a bit flip: same size, same mtime
    st = (out / rel).stat()
    (out / rel).write_bytes(bytes(data))
    os.utime(out / rel, ns=(st.st_atime_ns, st.st_mtime_ns))
    problems = verify_stage(stage, work)
    assert [p[0] for p in problems] == [rel] and "checksum" in problems[0][1]
    assert not stage.is_done(work)
    again = run_stage(stage, work, load_config(), dist=DistInfo())
    assert (again / rel).read_bytes() != bytes(data) and verify_stage(stage, work, repair=False) == []


def test_4_verify_compares_the_decoded_frame_count(tmp_path: Path):
    path = tmp_path / "v.avi"
    write_video(path, class_frames(1, 12, 3))
    assert completeness.verify_video(path, {"frames": 12}) is None
    assert completeness.verify_video(path, {"frames": 13}) == "decodes 12 frames, 13 when built"
    path.write_bytes(b"RIFF" + os.urandom(500))
    assert "not a decodable video" in completeness.verify_video(path, {"frames": 12})


# ------------------------------------------------------------------------------------ defect 5
def test_5_transcode_output_is_relocatable(tiny: Path, tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_transcode(tiny, a, SPEC, dist=DistInfo(), progress=False)
    assert json.loads((a / "meta.json").read_text())["root"] == "videos"
    shutil.copytree(a, b)
    shutil.rmtree(a)
    m = load_manifest(b)
    assert m.root == b / "videos" and all(m.abspath(e).is_file() for e in m.entries)


# ------------------------------------------------------------------------------------ defect 8
def test_8_an_edit_that_keeps_the_size_is_damage(tiny: Path, tmp_path: Path):
    from pipeline.stage import stage_status

    work = tmp_path / "work"
    stage = _transcode_stage(tiny)
    out = run_stage(stage, work, load_config(), dist=DistInfo())
    listing = out / "manifest.jsonl"
    text = listing.read_text()
    listing.write_text(text.replace('"label": 1', '"label": 2', 1))  # same size, new mtime
    st = stage_status(stage, work)
    assert st.state == "damaged" and any("content changed" in r for r in st.reasons)


def test_8_verify_sees_a_source_replaced_with_same_name_size_and_mtime(tiny: Path, tmp_path: Path):
    man = load_manifest(tiny)
    completeness.write_sources(tiny, man.root, [e.path for e in man.entries])
    assert completeness.verify_sources(tiny) == []
    a, b = man.abspath(man.entries[0]), man.abspath(man.entries[1])
    st = a.stat()
    other = b.read_bytes()
    other = other[:st.st_size] + b"\0" * max(0, st.st_size - len(other))
    a.write_bytes(other)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert a.stat().st_size == st.st_size and a.stat().st_mtime_ns == st.st_mtime_ns
    (problem,) = completeness.verify_sources(tiny)
    assert a.name in problem[0] and "content changed" in problem[1]

