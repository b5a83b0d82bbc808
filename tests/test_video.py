"""Frame-exact reading on every real clip in shared data: random access == full sequential decode."""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from data_manifests.video import VideoDecodeError, VideoInfo, count_frames, open_video, probe_video, read_frames

# Every clip of shared/data/videos (PROVENANCE.md); test_all_real_clips_listed keeps this complete.
CLIPS = [
    "hmdb51/cartwheel/Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi",
    "hmdb51/wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi",
    "hmdb51/wave/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi",
    "hmdb51/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi",
    "kinetics400/using_segway/R6llTwEh07w.mp4",
    "kinetics400/using_segway/SOX5yA1l24A.mp4",
    "kinetics400/using_segway/WUzgd7C1pWA.mp4",
    "other/mmaction2_demo.mp4",
    "other/mmaction2_demo_skeleton.mp4",
    "other/mmaction2_demo_spatiotemporal_det.mp4",
    "other/mmaction2_ntu_sample.avi",
    "other/mmaction2_rawvideo_part_0.mp4",
    "other/mmaction2_test.avi",
    "other/mmaction2_test.mp4",
    "other/mmaction2_test_video_structuralize.mp4",
    "ucf101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi",
    "ucf101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi",
]
HMDB_CARTWHEEL = "hmdb51/cartwheel/Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"  # header 84, decodes 83
SMALL = "other/mmaction2_rawvideo_part_0.mp4"  # 32 frames, 340x256


def _clip(shared_data: Path, rel: str) -> Path:
    return shared_data / "videos" / rel


def _sequential(path: Path, keep: set[int]) -> tuple[int, dict[int, np.ndarray]]:
    """Plain OpenCV read() of the whole video (no reader code of ours): frame count + kept BGR frames."""
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    kept, n = {}, 0
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if n in keep:
                kept[n] = frame.copy()
            n += 1
    finally:
        cap.release()
    return n, kept


def test_all_real_clips_listed(shared_data):
    on_disk = sorted(p.relative_to(shared_data / "videos").as_posix()
                     for p in (shared_data / "videos").rglob("*") if p.suffix in (".avi", ".mp4"))
    assert on_disk == CLIPS


@pytest.mark.parametrize("rel", CLIPS)
def test_random_access_equals_sequential_decode(shared_data, rel):
    path = _clip(shared_data, rel)
    props = json.loads((shared_data / "videos" / "video_properties.json").read_text())[f"videos/{rel}"]
    n_expected = props["cv_decoded_frames"]
    big = props["cv_wh"][0] * props["cv_wh"][1] > 1_000_000
    rng = np.random.default_rng(zlib.crc32(rel.encode()))
    k = 4 if big else 12
    idx = [int(i) for i in rng.integers(0, n_expected, k)] + [n_expected - 1, 0]
    idx = idx + idx[:2]  # duplicates, unsorted
    rng.shuffle(idx)

    n, seq = _sequential(path, set(idx))
    assert n == n_expected  # the full sequential decode agrees with the provenance table

    got = read_frames(path, idx)
    assert got.dtype == np.uint8 and got.shape == (len(idx), *seq[0].shape)
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(got[j], cv2.cvtColor(seq[i], cv2.COLOR_BGR2RGB), err_msg=f"{rel} frame {i}")
    # one frame per call, as a teacher or a DataLoader asking for single anchors would
    for i in sorted(set(idx))[: (2 if big else 5)]:
        np.testing.assert_array_equal(read_frames(path, [i], bgr=True)[0], seq[i], err_msg=f"{rel} frame {i}")


@pytest.mark.parametrize("rel", [HMDB_CARTWHEEL, "other/mmaction2_demo_skeleton.mp4",
                                 "other/mmaction2_demo_spatiotemporal_det.mp4",
                                 "kinetics400/using_segway/SOX5yA1l24A.mp4"])
def test_probe_matches_provenance(shared_data, rel):
    props = json.loads((shared_data / "videos" / "video_properties.json").read_text())[f"videos/{rel}"]
    info = probe_video(_clip(shared_data, rel))
    assert info == VideoInfo(frames=props["cv_decoded_frames"], fps=pytest.approx(props["cv_fps"], abs=1e-3),
                             width=props["cv_wh"][0], height=props["cv_wh"][1])


def test_header_overcount_hmdb(shared_data):
    path = _clip(shared_data, HMDB_CARTWHEEL)
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    header = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    assert (header, count_frames(path)) == (84, 83)
    assert read_frames(path, [82]).shape == (1, 240, 320, 3)
    with pytest.raises(VideoDecodeError) as err:
        read_frames(path, [3, 83])
    assert err.value.index == 83 and "Turnk_r_Pippi" in str(err.value) and "83" in str(err.value)


def test_rgb_bgr_duplicates_and_empty(shared_data):
    path = _clip(shared_data, SMALL)
    rgb = read_frames(path, [5, 1, 5])
    bgr = read_frames(path, [5, 1, 5], bgr=True)
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])
    np.testing.assert_array_equal(rgb[0], rgb[2])
    assert not np.array_equal(rgb[0], rgb[1])
    assert read_frames(path, []).shape == (0, 256, 340, 3)
    assert read_frames(path, np.array([31])).shape == (1, 256, 340, 3)  # numpy ints accepted
    with pytest.raises(ValueError, match="negative"):
        read_frames(path, [-1])


def test_errors_name_the_file(tmp_path):
    with pytest.raises(VideoDecodeError, match="nope.mp4: file does not exist"):
        read_frames(tmp_path / "nope.mp4", [0])
    text = tmp_path / "notes.mp4"
    text.write_text("not a video\n")
    with pytest.raises(VideoDecodeError, match="notes.mp4: OpenCV/FFmpeg cannot open"):
        probe_video(text)
    with pytest.raises(VideoDecodeError, match="notes.mp4"):
        count_frames(text)


def test_capture_released_even_on_error(shared_data):
    path = _clip(shared_data, SMALL)
    fd_dir = Path("/proc/self/fd")
    if not fd_dir.is_dir():
        pytest.skip("needs /proc")
    read_frames(path, [0])  # warm up lazily opened libraries
    before = len(os.listdir(fd_dir))
    for _ in range(8):
        read_frames(path, [2])
        with pytest.raises(VideoDecodeError):
            read_frames(path, [32])
    assert len(os.listdir(fd_dir)) == before


class _FramesDataset:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        frames = read_frames(self.path, [i, 10])
        with open_video(self.path) as cap:
            threads = cap.get(cv2.CAP_PROP_N_THREADS)
        return int(frames.astype(np.int64).sum()), threads


def test_threads_capped_in_dataloader_workers(shared_data):
    """Worker captures decode with one FFmpeg thread, and a forked worker does not hang.

    The parent first starts torch's and OpenCV's thread pools: that is the state in which
    cv2.setNumThreads() inside a forked worker deadlocks, which the reader must not do.
    """
    import torch
    from torch.utils.data import DataLoader

    path = _clip(shared_data, SMALL)
    big = np.zeros((1080, 1920, 3), np.uint8)
    cv2.resize(cv2.cvtColor(big, cv2.COLOR_BGR2RGB), (960, 540))  # OpenCV pool running
    (torch.ones(300, 300) @ torch.ones(300, 300)).sum()  # torch pool running
    main_threads = cv2.getNumThreads()
    direct = [int(read_frames(path, [i, 10]).astype(np.int64).sum()) for i in range(2)]
    with open_video(path) as cap:
        assert cap.get(cv2.CAP_PROP_N_THREADS) != 1 or os.cpu_count() == 1  # FFmpeg default here
    out = list(DataLoader(_FramesDataset(path), batch_size=None, num_workers=1, timeout=60))
    assert [int(s) for s, _ in out] == direct
    assert [t for _, t in out] == [1.0, 1.0]
    assert cv2.getNumThreads() == main_threads  # OpenCV's process-wide pool is left alone
