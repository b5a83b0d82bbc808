"""The transcode stage's contract on every real clip: same frame count, frame i = source frame i resized
(to codec error), seek-read = forward read; resumable after a kill, sharded, corrupt inputs reported.

Codec-error bound, against the source frame resized with cv2.INTER_AREA to the copy's size: every
frame's mean absolute difference <= 6 grey levels and PSNR >= 26 dB, and the clip's mean PSNR >= 30 dB
(measured with FFmpeg's MJPEG at its default quality: worst frame 33-39 dB on the UCF101, HMDB51 and
Kinetics clips, 27.2 dB on other/mmaction2_demo_spatiotemporal_det.mp4, whose detailed 6 fps frames
no MJPEG quality setting lifts above 27.7 dB). Beyond the bound, frame i of the copy must be closer
to source frame i than to source frame i+1 wherever those two differ clearly (MAD > 8), and, summed
over every pair of neighbours that differ at all (MAD > 1), the copy must match the source better
unshifted than shifted by one frame either way: an off-by-one fails even on near-static clips.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_manifests.clip_plan import build_clip_plan
from data_manifests.manifest import Manifest, VideoEntry, load_manifest, write_manifest
from data_manifests.transcode import (FAILED_FILE, TranscodeSpec, assigned_videos, build_transcode, output_size,
                                      transcode_video)
from data_manifests import video as V
from pipeline.core.distributed import DistInfo
from pipeline.core.errors import StageError

from test_video import CLIPS

MAX_MAD, MIN_PSNR, MIN_MEAN_PSNR, MOVING = 6.0, 26.0, 30.0, 8.0
SPEC = TranscodeSpec(short_side=128)
REPO = Path(__file__).resolve().parents[1]


def _frames(path: Path):
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        while True:
            ok, f = cap.read()
            if not ok:
                return
            yield f
    finally:
        cap.release()


@pytest.fixture(scope="module")
def copies(shared_data, tmp_path_factory) -> dict[str, tuple[Path, Path, dict]]:
    """Every real clip transcoded once: rel -> (source, copy, transcode_video's record)."""
    out = tmp_path_factory.mktemp("copies")
    result = {}
    for rel in CLIPS:
        src = shared_data / "videos" / rel
        dst = out / (rel + ".avi")
        result[rel] = (src, dst, transcode_video(src, dst, SPEC))
    return result


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b).mean())


@pytest.mark.slow
@pytest.mark.parametrize("rel", CLIPS)
def test_copy_has_every_frame_resized(copies, rel):
    src, dst, rec = copies[rel]
    n_src = V.count_frames(src)
    assert V.count_frames(dst) == n_src == rec["frames"]
    w, h = rec["width"], rec["height"]
    assert min(w, h) <= 128 and w % 2 == 0 and h % 2 == 0
    psnrs: list[float] = []
    # summed over neighbours that differ at all: copy i-1 vs source i-1 / source i, copy i vs source i / i-1
    own_prev = ahead = own_next = behind = 0.0
    prev_copy = prev_ref = None
    for i, (s, c) in enumerate(zip(_frames(src), _frames(dst))):
        ref = cv2.resize(s, (w, h), interpolation=cv2.INTER_AREA) if s.shape[:2] != (h, w) else s
        d = c.astype(np.float32) - ref
        assert _mad(c, ref) <= MAX_MAD, f"{rel} frame {i}: mean abs diff {_mad(c, ref):.2f} > {MAX_MAD}"
        psnrs.append(10 * np.log10(255.0 ** 2 / max(float((d ** 2).mean()), 1e-9)))
        if prev_copy is not None and _mad(prev_ref, ref) > 1.0:
            own_prev, ahead = own_prev + _mad(prev_copy, prev_ref), ahead + _mad(prev_copy, ref)
            own_next, behind = own_next + _mad(c, ref), behind + _mad(c, prev_ref)
            if _mad(prev_ref, ref) > MOVING:
                assert _mad(prev_copy, prev_ref) < _mad(prev_copy, ref), \
                    f"{rel}: copy frame {i - 1} looks like source {i}"
        prev_copy, prev_ref = c, ref
    assert len(psnrs) == n_src
    assert min(psnrs) >= MIN_PSNR, f"{rel}: worst frame PSNR {min(psnrs):.1f} dB < {MIN_PSNR}"
    assert np.mean(psnrs) >= MIN_MEAN_PSNR, f"{rel}: mean PSNR {np.mean(psnrs):.1f} dB < {MIN_MEAN_PSNR}"
    assert own_prev < ahead and own_next < behind, f"{rel}: the copy matches the source shifted by one frame " \
        f"at least as well as unshifted ({own_prev:.1f} vs {ahead:.1f}, {own_next:.1f} vs {behind:.1f})"


def _windows(n: int, rng: np.random.Generator) -> list[list[int]]:
    """Index sets like a pretraining item's (three windows, speeds 1 and 2), plus edge cases."""
    out = [[0], [n - 1], list(range(n)), [n - 1, 0, n // 2, n // 2]]
    for _ in range(6):
        a, b = (int(x) for x in rng.integers(0, n, 2))
        out.append(sorted({min(n - 1, max(0, a - 8 + k)) for k in range(16)}
                          | {min(n - 1, max(0, b - 16 + 2 * k)) for k in range(16)}))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("rel", CLIPS)
def test_seek_read_equals_forward_read(copies, rel, monkeypatch):
    src, dst, rec = copies[rel]
    with V.open_video(dst) as cap:
        assert V.is_seekable(dst, cap), "the copy must be an intra-only AVI"
    with V.open_video(src) as cap:
        assert not V.is_seekable(src, cap), "no real source is intra-only: they keep forward decoding"
    seeks = []
    real_seek = V._seek
    monkeypatch.setattr(V, "_seek", lambda cap, path, t: (seeks.append(t), real_seek(cap, path, t)))
    rng = np.random.default_rng(len(rel))
    for idx in _windows(rec["frames"], rng):
        fast = V.read_frames(dst, idx)
        slow = V.read_frames(dst, idx, seek=False)
        assert np.array_equal(fast, slow), f"{rel}: seek-read differs from forward read at {idx[:4]}..."
    if rec["frames"] > V.MIN_SEEK_GAP + 1:
        assert seeks, f"{rel}: the reader never seeks in the copy"


@pytest.mark.slow
def test_seek_past_the_end_names_the_frame(copies):
    _, dst, rec = copies["kinetics400/using_segway/R6llTwEh07w.mp4"]
    with pytest.raises(V.VideoDecodeError, match=f"frame {rec['frames'] + 40} does not decode"):
        V.read_frames(dst, [1, rec["frames"] + 40])


@pytest.mark.slow
def test_mp4v_copies_keep_every_frame_and_are_read_forward(shared_data, tmp_path):
    """The smaller-on-disk option: a GOP codec, so the reader must not seek in it."""
    for rel in ("hmdb51/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi", "other/mmaction2_rawvideo_part_0.mp4"):
        src = shared_data / "videos" / rel
        rec = transcode_video(src, tmp_path / (Path(rel).name + ".avi"), TranscodeSpec(codec="mp4v"))
        dst = tmp_path / (Path(rel).name + ".avi")
        assert V.count_frames(dst) == V.count_frames(src) == rec["frames"]
        with V.open_video(dst) as cap:
            assert not V.is_seekable(dst, cap)
        last = rec["frames"] - 1
        got = V.read_frames(dst, [last], bgr=True)[0]
        ref = cv2.resize(V.read_frames(src, [last], bgr=True)[0], (rec["width"], rec["height"]),
                         interpolation=cv2.INTER_AREA)
        assert np.abs(got.astype(np.float32) - ref).mean() <= MAX_MAD


def test_output_size_keeps_aspect_even_and_never_upscales():
    assert output_size(340, 256, 128) == (170, 128)
    assert output_size(1920, 1080, 128) == (228, 128)
    assert output_size(560, 240, 128) == (298, 128)
    assert output_size(100, 80, 128) == (100, 80)
    with pytest.raises(ValueError, match="transcode.codec"):
        TranscodeSpec(codec="h265")


# ------------------------------------------------------------------------------------------------
# The stage: resumable, sharded, corrupt inputs reported
# ------------------------------------------------------------------------------------------------

SMALL_SET = ["hmdb51/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi", "other/mmaction2_rawvideo_part_0.mp4",
             "hmdb51/wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi", "kinetics400/using_segway/SOX5yA1l24A.mp4",
             "ucf101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi", "kinetics400/using_segway/R6llTwEh07w.mp4"]


def _manifest(shared_data: Path, out: Path, rels: list[str], extra: list[VideoEntry] = ()) -> Path:
    entries = []
    for k, rel in enumerate(rels):
        info = V.probe_video(shared_data / "videos" / rel)
        entries.append(VideoEntry(id=f"v{k}", path=rel, label=0, split="train", frames=info.frames, fps=info.fps,
                                  width=info.width, height=info.height))
    write_manifest(out, Manifest("t", shared_data / "videos", ["c"], entries + list(extra)), [])
    return out


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted((d / "videos").rglob("*")) if p.is_file()}


def _run_killed(man: Path, out: Path) -> int:
    """Start build_transcode in a child process, SIGKILL it once the first copy exists; the number of
    copies left behind."""
    code = ("import sys; from pathlib import Path; from data_manifests.transcode import build_transcode, TranscodeSpec;"
            "from pipeline.core.distributed import DistInfo;"
            "build_transcode(Path(sys.argv[1]), Path(sys.argv[2]), TranscodeSpec(), dist=DistInfo(), progress=False)")
    child = subprocess.Popen([sys.executable, "-c", code, str(man), str(out)], cwd=REPO)
    deadline = time.time() + 60
    while time.time() < deadline and child.poll() is None:
        if any(p.suffix == ".avi" and not p.name.startswith(".") for p in (out / "videos").rglob("*")) \
                if (out / "videos").is_dir() else False:
            break
        time.sleep(0.005)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return sum(1 for p in (out / "videos").rglob("*.avi") if not p.name.startswith("."))


@pytest.mark.slow
def test_killed_transcode_resumes_identical(shared_data, tmp_path):
    man = _manifest(shared_data, tmp_path / "m", SMALL_SET)
    whole = tmp_path / "whole"
    s = build_transcode(man, whole, SPEC, dist=DistInfo(), progress=False)
    assert s["complete"] and s["failed"] == 0 and s["copied"] == len(SMALL_SET)
    killed = tmp_path / "killed"
    left = _run_killed(man, killed)
    assert 0 < left < len(SMALL_SET), f"the kill must land mid-way ({left} of {len(SMALL_SET)} copies)"
    r = build_transcode(man, killed, SPEC, dist=DistInfo(), progress=False)
    assert r["complete"] and r["copied_now"] == len(SMALL_SET) - left
    assert _tree(killed) == _tree(whole), "a resumed transcode must end byte-identical to an uninterrupted one"
    a, b = load_manifest(whole), load_manifest(killed)
    assert [e for e in a.entries] == [e for e in b.entries]
    orig = load_manifest(man)
    plan = lambda m: [(c.clip_id, c.frame) for c in build_clip_plan(m, 8, 32, ["train"])]  # noqa: E731
    assert plan(a) == plan(orig), "the copies' clip plan (the teacher cache's keys) must equal the original's"
    for e in a.entries:
        assert V.count_frames(a.abspath(e)) == e.frames


@pytest.mark.slow
def test_sharded_jobs_and_corrupt_input(shared_data, tmp_path):
    bad = tmp_path / "src" / "broken.avi"
    bad.parent.mkdir()
    bad.write_bytes(b"RIFF not a video at all" * 50)
    extra = [VideoEntry(id="bad", path=str(bad), label=0, split="train", frames=40, fps=25.0, width=320, height=240)]
    man = _manifest(shared_data, tmp_path / "m", SMALL_SET[:3], extra)
    out = tmp_path / "t"
    assert assigned_videos(4, DistInfo(), 1, 2) == [1, 3]
    assert assigned_videos(4, DistInfo(rank=1, world_size=2), 0, 2) == [2]
    first = build_transcode(man, out, SPEC, dist=DistInfo(), shard_index=0, num_shards=2, progress=False)
    assert first["complete"] is False and first["videos_missing"] == 2
    with pytest.raises(StageError, match="broken.avi"):  # a failed copy: the stage is not done
        build_transcode(man, out, SPEC, dist=DistInfo(), shard_index=1, num_shards=2, progress=False)
    failed = [json.loads(line) for line in (out / FAILED_FILE).read_text().splitlines()]
    assert [f["id"] for f in failed] == ["bad"] and "broken.avi" in failed[0]["error"]
    assert not (out / "meta.json").exists()


def test_stage_wiring_follows_the_config(tmp_path):
    from pipeline.core.config import ConfigError, load_config
    from pipeline.stages import StageGraph

    def keys(cfg):
        g = StageGraph(cfg, tmp_path)
        return [u.key for u in g.pretrain().upstream], [u.key for u in g.finetune().upstream], \
            [u.key for u in g.teacher_cache().upstream], [s.key for s in g.run_stages()]

    pre, fin, tc, run = keys(load_config())
    assert load_config().transcode.enabled is False and not any(k.startswith("transcode") for k in pre + fin + run)
    pre, fin, tc, run = keys(load_config(None, ["transcode.enabled=true"]))
    assert pre[0] == "transcode:kinetics400" and fin[0] == "transcode:hmdb51"
    assert tc == ["manifest:kinetics400"], "the teacher keeps reading the originals"
    for cfg_file in sorted((REPO / "configs").glob("real_*.toml")):
        assert load_config(cfg_file).transcode.enabled, f"{cfg_file.name} should turn transcode on"
    with pytest.raises(ConfigError, match="transcode.short_side"):
        load_config(None, ["transcode.short_side=4"])
