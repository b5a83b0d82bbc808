"""Teacher-cache shard format, verifier and reader: round trip, corruption, crop/flip alignment."""
from __future__ import annotations

import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.core.errors import TeacherCacheError
from teacher.cache_format import (ShardMeta, finalize_shard, shard_failures, shard_is_current, shard_name, temp_name,
                                  verify_shard, write_shard)
from teacher.cache_reader import TeacherCache, lr_swap_permutation, resample_boxes

LABELS3 = ("Background", "Head", "Torso")


def _meta(labels=LABELS3, size=16, fp="f" * 64) -> ShardMeta:
    return ShardMeta(fingerprint=fp, teacher="test", label_set="test", labels=tuple(labels), map_size=size,
                     checkpoint_sha256="c" * 64)


def _softmax_maps(n: int, c: int, s: int, seed: int = 0) -> np.ndarray:
    logits = torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed)) * 3
    return logits.softmax(1).numpy()


def _one_shard_cache(tmp_path: Path, maps: np.ndarray, labels=LABELS3, ids=None) -> TeacherCache:
    ids = ids or [f"v{i}@{i}" for i in range(len(maps))]
    write_shard(tmp_path / shard_name(0), _meta(labels, maps.shape[-1]), ids, list(range(len(ids))), maps)
    return TeacherCache(tmp_path)


# ---------------------------------------------------------------------------------------------
# writer / verifier
# ---------------------------------------------------------------------------------------------

def test_round_trip_with_invalid_row(tmp_path):
    maps = _softmax_maps(5, 3, 16)
    ids = [f"vid{i}@{10 * i}" for i in range(5)]
    valid = [True, True, False, True, True]
    errors = ["", "", "VideoDecodeError: frame 20 of vid2.avi", "", ""]
    path = tmp_path / shard_name(0)
    write_shard(path, _meta(), ids, [10 * i for i in range(5)], maps, valid, errors)
    verify_shard(path, expected_ids=ids, fingerprint="f" * 64)
    assert shard_is_current(path, "f" * 64, ids)
    assert not shard_is_current(path, "0" * 64, ids)
    assert shard_failures(path) == [{"clip_id": "vid2@20", "frame": 20, "row": 2,
                                     "error": "VideoDecodeError: frame 20 of vid2.avi"}]
    with h5py.File(path) as f:
        assert f["maps"].chunks == (1, 3, 16, 16)
        assert f["maps"].compression == "lzf" and f["maps"].fletcher32
        assert f["maps"].dtype == np.float16
        assert list(f["frames"][...]) == [0, 10, 20, 30, 40]
        assert f.attrs["checkpoint_sha256"] == "c" * 64
        assert np.all(f["maps"][2] == 0)

    cache = TeacherCache(tmp_path)
    assert cache.labels == list(LABELS3) and cache.num_classes == 3 and cache.map_size == 16
    assert len(cache) == 4 and cache.has("vid1@10") and not cache.has("vid2@20") and not cache.has("nope@1")
    np.testing.assert_array_equal(cache.map("vid3@30"), maps[3].astype(np.float16).astype(np.float32))
    with pytest.raises(KeyError, match="vid2@20"):
        cache.map("vid2@20")


def test_verifier_rejects_bad_sums_nan_and_wrong_ids(tmp_path):
    ids = [f"v@{i}" for i in range(4)]
    good = _softmax_maps(4, 3, 8)

    bad_sum = good.copy()
    bad_sum[1] *= 0.5
    p = tmp_path / "sum.h5"
    write_shard(p, _meta(size=8), ids, range(4), bad_sum)
    with pytest.raises(TeacherCacheError, match=r"sum\.h5.*row 1 \(v@1\).*per-pixel class sums"):
        verify_shard(p)

    nan = good.copy()
    nan[2, 0, 3, 3] = np.nan
    p = tmp_path / "nan.h5"
    write_shard(p, _meta(size=8), ids, range(4), nan)
    with pytest.raises(TeacherCacheError, match=r"nan\.h5.*row 2 has non-finite"):
        verify_shard(p)

    p = tmp_path / "ids.h5"
    write_shard(p, _meta(size=8), ids, range(4), good)
    verify_shard(p, expected_ids=ids)
    with pytest.raises(TeacherCacheError, match=r"ids\.h5.*row 2 is 'v@2', the clip plan has 'w@2'"):
        verify_shard(p, expected_ids=["v@0", "v@1", "w@2", "v@3"])
    with pytest.raises(TeacherCacheError, match="4 clip ids, the clip plan has 3"):
        verify_shard(p, expected_ids=ids[:3])
    with pytest.raises(TeacherCacheError, match="fingerprint"):
        verify_shard(p, fingerprint="0" * 64)

    p = tmp_path / "garbage.h5"
    p.write_bytes(b"not hdf5 at all")
    with pytest.raises(TeacherCacheError, match=r"garbage\.h5.*cannot be opened"):
        verify_shard(p)


def test_verifier_catches_flipped_bytes_via_checksum(tmp_path):
    ids = [f"v@{i}" for i in range(3)]
    p = tmp_path / "bits.h5"
    write_shard(p, _meta(size=8), ids, range(3), _softmax_maps(3, 3, 8))
    with h5py.File(p) as f:
        info = f["maps"].id.get_chunk_info(1)
    raw = bytearray(p.read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    p.write_bytes(bytes(raw))
    verify_shard(p, full=False)  # cheap check reads no maps
    with pytest.raises(TeacherCacheError, match=r"bits\.h5: rows 0\.\.2 cannot be read"):
        verify_shard(p)


def test_unfinished_writes_and_temp_files_are_never_complete(tmp_path):
    ids = ["a@0", "b@0"]
    tmp = tmp_path / temp_name(0)
    write_shard(tmp, _meta(size=8), ids, [0, 0], _softmax_maps(2, 3, 8))
    # only a temp file: the reader sees no cache at all
    with pytest.raises(TeacherCacheError, match="no shard-"):
        TeacherCache(tmp_path)
    # a writer that stopped before writing every row leaves rows that fail verification
    from teacher.cache_format import ShardWriter
    half = tmp_path / "half.h5"
    with ShardWriter(half, _meta(size=8), ids, [0, 0]) as w:
        w.write(0, _softmax_maps(1, 3, 8))
    assert shard_failures(half)[0]["error"] == "not written"
    # finalize verifies then renames; a bad temp file is not renamed
    bad = tmp_path / temp_name(1)
    bad_maps = _softmax_maps(2, 3, 8)
    bad_maps[0] = 0.2
    write_shard(bad, _meta(size=8), ["c@0", "d@0"], [0, 0], bad_maps)
    with pytest.raises(TeacherCacheError):
        finalize_shard(bad, tmp_path / shard_name(1), expected_ids=["c@0", "d@0"], fingerprint="f" * 64)
    assert not (tmp_path / shard_name(1)).exists() and bad.exists()
    finalize_shard(tmp, tmp_path / shard_name(0), expected_ids=ids, fingerprint="f" * 64)
    cache = TeacherCache(tmp_path)
    assert cache.clip_ids() == ["a@0", "b@0"] and not cache.has("c@0")


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------

def test_half_split_box_and_flip(tmp_path):
    s = 16
    m = np.zeros((1, 3, s, s), np.float32)
    m[0, 1, :, : s // 2] = 1
    m[0, 2, :, s // 2:] = 1
    cache = _one_shard_cache(tmp_path, m)
    t = cache.target("v0@0", (0.25, 0.0, 0.75, 1.0), False, (8, 8))
    assert t.shape == (3, 8, 8) and t.dtype == torch.float32
    # output column j samples map x = (0.25 + (j+0.5)/8 * 0.5) * 16 - 0.5 = 3.5 + j + 0.5: exactly pixel 4 + j
    assert torch.equal(t.argmax(0), torch.tensor([[1] * 4 + [2] * 4] * 8))
    assert torch.allclose(t.max(0).values, torch.ones(8, 8))
    tf = cache.target("v0@0", (0.25, 0.0, 0.75, 1.0), True, (8, 8))
    assert torch.equal(tf.argmax(0), torch.tensor([[2] * 4 + [1] * 4] * 8))
    torch.testing.assert_close(tf, t.flip(-1))
    # a box inside the left half is all class 1, at any output size, non-square too
    t = cache.target("v0@0", (0.0, 0.2, 0.45, 0.9), True, (5, 11))
    assert t.shape == (3, 5, 11) and bool((t.argmax(0) == 1).all())
    torch.testing.assert_close(t.sum(0), torch.ones(5, 11))


def test_gradient_map_encodes_sample_position(tmp_path):
    """p0 = x (pixel-centre normalised) in the map: the target's p0 must be the sampled x exactly."""
    s = 32
    centres = (np.arange(s) + 0.5) / s
    m = np.zeros((2, 3, s, s), np.float32)
    m[0, 0] = centres[None, :] * 0.5           # x / 2   (stays exact in bilinear interpolation)
    m[0, 1] = 0.5 - m[0, 0]
    m[0, 2] = 0.5
    m[1, 0] = centres[:, None] * 0.5           # y / 2
    m[1, 1] = 0.5 - m[1, 0]
    m[1, 2] = 0.5
    cache = _one_shard_cache(tmp_path, m, ids=["gx@0", "gy@0"])
    box = (0.1, 0.3, 0.8, 0.95)
    h, w = 7, 9
    xs = box[0] + (np.arange(w) + 0.5) / w * (box[2] - box[0])
    ys = box[1] + (np.arange(h) + 0.5) / h * (box[3] - box[1])
    tx = cache.target("gx@0", box, False, (h, w))[0].numpy()
    np.testing.assert_allclose(tx, np.broadcast_to(xs / 2, (h, w)), atol=1e-3)  # float16 storage
    np.testing.assert_allclose(cache.target("gx@0", box, True, (h, w))[0].numpy(),
                               np.broadcast_to(xs[::-1] / 2, (h, w)), atol=1e-3)
    ty = cache.target("gy@0", box, True, (h, w))[0].numpy()
    np.testing.assert_allclose(ty, np.broadcast_to((ys / 2)[:, None], (h, w)), atol=1e-3)
    # the batched form is the same as one at a time
    batch = cache.targets(["gx@0", "gy@0"], [box, box], [False, True], (h, w))
    torch.testing.assert_close(batch[0], cache.target("gx@0", box, False, (h, w)))
    torch.testing.assert_close(batch[1], cache.target("gy@0", box, True, (h, w)))


def _mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@pytest.mark.parametrize("box_px,flip", [((20, 15, 120, 105), False), ((20, 15, 120, 105), True),
                                          ((13, 7, 141, 113), True), ((35, 25, 90, 70), False)])
def test_frame_crop_and_map_crop_agree(tmp_path, box_px, flip):
    """A rectangle marked in a frame and in its map lands on the same target pixels (±1)."""
    fh, fw, s = 120, 160, 40
    frame = np.zeros((fh, fw), np.uint8)
    frame[30:60, 40:80] = 255                    # rows 30..59, cols 40..79 → normalised [0.25,0.5]×[0.25,0.5]
    m = np.zeros((1, 2, s, s), np.float32)
    m[0, 1, 10:20, 10:20] = 1                    # the same normalised square in a 40×40 map
    m[0, 0] = 1 - m[0, 1]
    cache = _one_shard_cache(tmp_path, m, labels=("Background", "Person"))
    x0, y0, x1, y1 = box_px
    out_h, out_w = 28, 28
    crop = cv2.resize(frame[y0:y1, x0:x1], (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    if flip:
        crop = crop[:, ::-1]
    box = (x0 / fw, y0 / fh, x1 / fw, y1 / fh)
    t = cache.target("v0@0", box, flip, (out_h, out_w))
    a = _mask_bbox(crop > 127)
    b = _mask_bbox((t[1] > 0.5).numpy())
    assert all(abs(i - j) <= 1 for i, j in zip(a, b)), (a, b)
    # the soft values agree too, not only the thresholded edges
    assert np.abs(crop / 255.0 - t[1].numpy()).mean() < 0.05


def test_flip_swaps_left_right_channels(tmp_path):
    labels = ("Background", "Left-arm", "Right-arm", "Face")
    assert lr_swap_permutation(labels) == [0, 2, 1, 3]
    m = np.zeros((1, 4, 8, 8), np.float32)
    m[0, 1, :, :4] = 1    # a "Left-arm" on the left of the frame
    m[0, 0, :, 4:] = 1
    cache = _one_shard_cache(tmp_path, m, labels=labels)
    t = cache.target("v0@0", (0, 0, 1, 1), True, (8, 8))
    # mirrored: the arm is on the right and, seen in the mirrored image, it is a right arm
    assert bool((t.argmax(0)[:, 4:] == 2).all()) and bool((t.argmax(0)[:, :4] == 0).all())
    plain = TeacherCache(tmp_path, swap_lr=False).target("v0@0", (0, 0, 1, 1), True, (8, 8))
    assert bool((plain.argmax(0)[:, 4:] == 1).all())


def test_resample_boxes_renormalises():
    maps = torch.rand(2, 3, 8, 8)
    out = resample_boxes(maps, [(0, 0, 1, 1), (0.2, 0.1, 0.6, 0.7)], 5, [False, True])
    torch.testing.assert_close(out.sum(1), torch.ones(2, 5, 5))


# ---------------------------------------------------------------------------------------------
# laziness, pickling, DataLoader workers
# ---------------------------------------------------------------------------------------------

class _Targets(Dataset):
    def __init__(self, cache: TeacherCache, ids: list[str]) -> None:
        self.cache, self.ids = cache, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.cache.target(self.ids[i], (0.1, 0.1, 0.9, 0.9), bool(i % 2), (6, 6))


def test_lazy_picklable_and_fork_safe(tmp_path):
    maps = _softmax_maps(6, 3, 8, seed=3)
    ids = [f"v{i}@0" for i in range(6)]
    write_shard(tmp_path / shard_name(0), _meta(size=8), ids[:3], [0] * 3, maps[:3])
    write_shard(tmp_path / shard_name(1), _meta(size=8), ids[3:], [0] * 3, maps[3:], shard_index=1, first_clip=3)
    cache = TeacherCache(tmp_path)
    assert not cache._files and cache._keys is None  # nothing read at construction
    expected = torch.stack([_Targets(cache, ids)[i] for i in range(6)])
    assert len(cache._files) == 2  # opened in this process on first access
    clone = pickle.loads(pickle.dumps(cache))
    assert not clone._files
    torch.testing.assert_close(clone.target(ids[4], (0.1, 0.1, 0.9, 0.9), False, (6, 6)), expected[4])
    loader = DataLoader(_Targets(cache, ids), batch_size=2, num_workers=2)  # forked after the parent opened files
    torch.testing.assert_close(torch.cat(list(loader)), expected)
    cache.close()
    # at most max_open handles per process, least recently used closed first
    small = TeacherCache(tmp_path, max_open=1)
    for i in (0, 4, 1):
        torch.testing.assert_close(_Targets(small, ids)[i], expected[i])
        assert list(small._files) == [0 if i < 3 else 1]


def test_mixed_shards_are_rejected(tmp_path):
    write_shard(tmp_path / shard_name(0), _meta(size=8), ["a@0"], [0], _softmax_maps(1, 3, 8))
    write_shard(tmp_path / shard_name(1), _meta(size=8, fp="e" * 64), ["b@0"], [0], _softmax_maps(1, 3, 8))
    with pytest.raises(TeacherCacheError, match="shard-00001.h5 was written with a different fingerprint"):
        TeacherCache(tmp_path).has("a@0")
