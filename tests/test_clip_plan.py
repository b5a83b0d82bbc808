"""The clip plan: exact anchors, clamped clip frames, clip ids, deterministic order."""
from __future__ import annotations

from pathlib import Path

import pytest

from data_manifests.clip_plan import Clip, anchor_frames, build_clip_plan, clip_indices, make_clip_id, parse_clip_id
from data_manifests.manifest import Manifest, VideoEntry


def test_anchor_frames_by_hand():
    # valid anchors [32//2, 100 - 16] = [16, 84]; 8 evenly spaced: 16 + round(k * 68 / 7)
    assert anchor_frames(100, 8, 32) == [16, 26, 35, 45, 55, 65, 74, 84]
    assert anchor_frames(64, 3, 32) == [16, 32, 48]
    assert anchor_frames(100, 1, 32) == [50]
    # odd span: window starts at a - 2 and holds 5 frames -> a in [2, 7]
    assert anchor_frames(10, 2, 5) == [2, 7]


def test_short_and_tight_videos():
    assert anchor_frames(20, 8, 32) == [10]  # shorter than span: centre frame
    assert anchor_frames(31, 8, 32) == [15]
    assert anchor_frames(1, 8, 32) == [0]
    assert anchor_frames(32, 8, 32) == [16]  # exactly one window
    assert anchor_frames(34, 8, 32) == [16, 17, 18]  # fewer valid positions than anchors: all of them


@pytest.mark.parametrize("span", [1, 2, 5, 16, 32])
@pytest.mark.parametrize("k", [1, 2, 3, 8])
def test_anchor_windows_fit(span, k):
    for n in range(1, 120):
        a = anchor_frames(n, k, span)
        assert a == sorted(set(a)) and 1 <= len(a) <= k
        if n < span:
            assert a == [n // 2]
            continue
        lo, hi = span // 2, n - (span - span // 2)
        assert all(0 <= x - span // 2 and x - span // 2 + span <= n for x in a)
        assert len(a) == min(k, hi - lo + 1)
        if k >= 2 and hi > lo:
            assert (a[0], a[-1]) == (lo, hi)


def test_clip_indices():
    assert clip_indices(50, 100, 16, 2) == list(range(34, 66, 2))
    assert clip_indices(50, 100, 16, 1) == list(range(42, 58))
    # centred on the anchor at any speed: the anchor is the (clip_len // 2)-th frame
    for speed in (1, 2, 3):
        assert clip_indices(40, 100, 16, speed)[8] == 40
    assert clip_indices(10, 20, 16, 2) == [0, 0, 0, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 19, 19, 19]
    assert clip_indices(1, 3, 4, 1) == [0, 0, 1, 2]
    assert clip_indices(0, 1, 4, 2) == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        clip_indices(0, 10, 16, 0)


def test_longest_clip_of_every_anchor_stays_inside():
    for n in (32, 33, 57, 100, 303):
        for a in anchor_frames(n, 8, 32):
            for speed in (1, 2):
                idx = clip_indices(a, n, 16, speed)
                assert idx == [a - (16 * speed) // 2 + speed * i for i in range(16)]  # no clamping needed


def _manifest() -> Manifest:
    entries = [VideoEntry("vid_a", "c/a.avi", 0, "train", 100, 30.0, 32, 24),
               VideoEntry("vid_b", "c/b.avi", 0, "test", 64, 30.0, 32, 24),
               VideoEntry("vid_c", "c/c.avi", 1, "train", 20, 30.0, 32, 24)]
    return Manifest("toy", Path("/data"), ["c", "d"], entries)


def test_build_clip_plan():
    m = _manifest()
    plan = build_clip_plan(m, 8, 32, ["train"])
    assert plan[:2] == [Clip("vid_a@16", 0, 16), Clip("vid_a@26", 0, 26)]
    assert [c.clip_id for c in plan] == [f"vid_a@{f}" for f in (16, 26, 35, 45, 55, 65, 74, 84)] + ["vid_c@10"]
    assert plan[-1] == Clip("vid_c@10", 2, 10)  # video_index into the full entries list
    both = build_clip_plan(m, 3, 32, ("test", "train"))
    assert [c.clip_id for c in both] == ["vid_a@16", "vid_a@50", "vid_a@84", "vid_b@16", "vid_b@32", "vid_b@48",
                                         "vid_c@10"]  # manifest order, then frame
    assert build_clip_plan(m, 8, 32, ["train"]) == plan  # deterministic
    assert len({c.clip_id for c in both}) == len(both)
    with pytest.raises(ValueError):
        build_clip_plan(m, 8, 32, ["training"])
    with pytest.raises(ValueError):
        build_clip_plan(m, 8, 32, [])


def test_clip_ids():
    assert make_clip_id("v_SoccerJuggling_g23_c01", 120) == "v_SoccerJuggling_g23_c01@120"
    assert parse_clip_id("--6bJUbfpnQ_000017_000027@5") == ("--6bJUbfpnQ_000017_000027", 5)
    assert parse_clip_id("odd@name@7") == ("odd@name", 7)
    with pytest.raises(ValueError):
        parse_clip_id("no_frame")
