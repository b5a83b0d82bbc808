"""The teacher-cache stage on real clips: shards, resume, failures, job arrays, torchrun, backends, show."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections import OrderedDict
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from data_manifests.manifest import Manifest, VideoEntry, write_manifest
from pipeline.core.config import ClipsConfig, TeacherConfig
from pipeline.core.distributed import DistInfo
from teacher import cache_stage
from pipeline.core.errors import TeacherCacheError
from teacher.cache_format import SUM_TOLERANCE, shard_name, temp_name, verify_shard
from teacher.cache_reader import TeacherCache
from teacher.cache_stage import _AnchorInputs, assigned_shards, build_teacher_cache

REPO = Path(__file__).resolve().parents[1]
FP = "0123456789abcdef" * 4

# (relative path, decodable frames, width, height) — measured, see data/PROVENANCE.md
REAL_CLIPS = [
    ("hmdb51/cartwheel/Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", 83, 320, 240),
    ("hmdb51/wave/RATRACE_wave_f_nm_np1_fr_goo_37.avi", 72, 560, 240),
    ("hmdb51/wave/SchoolRulesHowTheyHelpUs_wave_f_nm_np1_ba_med_0.avi", 74, 320, 240),
    ("hmdb51/wave/TrumanShow_wave_f_nm_np1_fr_med_26.avi", 48, 432, 240),
    ("ucf101/SoccerJuggling/v_SoccerJuggling_g23_c01.avi", 240, 320, 240),
    ("ucf101/SoccerJuggling/v_SoccerJuggling_g24_c01.avi", 251, 320, 240),
    ("kinetics400/using_segway/R6llTwEh07w.mp4", 303, 340, 256),
    ("kinetics400/using_segway/SOX5yA1l24A.mp4", 332, 340, 256),
]
TRUNCATED = "broken/v_SoccerJuggling_g24_c01_truncated.avi"
MISSING = "broken/gone.avi"


def _random_schp_checkpoint(path: Path, num_classes: int = 20, seed: int = 0) -> Path:
    """SCHP weights in the released layout ({"state_dict": module.* keys}), random but non-trivial."""
    from teacher.schp import build_schp

    with torch.device("meta"):  # shapes only: no seconds spent initialising 66 M parameters
        shapes = {k: t.shape for k, t in build_schp(num_classes).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    state = OrderedDict()
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            continue
        if len(shape) == 4:  # He-scaled, uniform (cheaper to draw than normal)
            a = (6.0 / (shape[1] * shape[2] * shape[3])) ** 0.5
            v = torch.empty(shape).uniform_(-a, a, generator=g)
        elif key.endswith("running_var"):
            v = torch.rand(shape, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            v = torch.randn(shape, generator=g) * 0.1
        else:  # norm weights with ~30 % negative signs (the |w| + eps rule matters)
            v = torch.where(torch.rand(shape, generator=g) < 0.3, -1.0, 1.0) * (torch.rand(shape, generator=g) + 0.5)
        state["module." + key] = v
    torch.save({"state_dict": state}, path)
    return path


@pytest.fixture(autouse=True)
def _one_thread():
    """ResNet-101 on tiny inputs: one intra-op thread is as fast and does not stall on a busy machine."""
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def real_setup(shared_data, tmp_path_factory):
    """A manifest over 8 real clips (linked, not copied), a truncated copy and a missing file; a checkpoint."""
    base = tmp_path_factory.mktemp("teacher_cache")
    root = base / "videos"
    entries = []
    for i, (rel, frames, w, h) in enumerate(REAL_CLIPS):
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(shared_data / "videos" / rel)
        entries.append(VideoEntry(id=Path(rel).stem, path=rel, label=i % 3, split="train", frames=frames,
                                  fps=30.0, width=w, height=h))
    (root / "broken").mkdir()
    data = (shared_data / "videos" / REAL_CLIPS[5][0]).read_bytes()
    (root / TRUNCATED).write_bytes(data[: len(data) // 4])  # the anchor (frame 125) is past the cut
    entries.insert(3, VideoEntry(id="truncated", path=TRUNCATED, label=0, split="train", frames=251, fps=30.0,
                                 width=320, height=240))
    entries.append(VideoEntry(id="gone", path=MISSING, label=1, split="train", frames=50, fps=30.0,
                              width=320, height=240))
    entries.append(VideoEntry(id="testonly", path=REAL_CLIPS[0][0], label=0, split="test", frames=83, fps=30.0,
                              width=320, height=240))  # not in the plan (splits = train)
    manifest_dir = base / "manifest"
    write_manifest(manifest_dir, Manifest("folder", root, ["a", "b", "c"], entries), [])
    ckpt = _random_schp_checkpoint(base / "random_lip.pth")
    return {"base": base, "manifest": manifest_dir, "ckpt": ckpt}


def _teacher(ckpt: Path, **kw) -> TeacherConfig:
    cfg = dict(backend="schp", checkpoint=str(ckpt), labels="lip", input_size=33, map_size=16, shard_size=3,
               batch_size=2, workers=0, device="cpu", amp="off")  # fp32: auto is bf16 on CPUs with native bf16
    cfg.update(kw)
    return TeacherConfig(**cfg)


CLIPS = ClipsConfig(anchors_per_video=1, clip_len=4, speeds=[1], splits=["train"])


def _read_cache(out_dir: Path) -> dict[str, tuple[np.ndarray, bool]]:
    res = {}
    for p in sorted(out_dir.glob("shard-*.h5")):
        with h5py.File(p) as f:
            for cid, m, v in zip(f["clip_ids"].asstr()[...], f["maps"][...], f["valid"][...]):
                res[str(cid)] = (m.astype(np.float32), bool(v))
    return res


@pytest.fixture(scope="module")
def reference(real_setup):
    """One uninterrupted single-process run (2 DataLoader workers)."""
    out = real_setup["base"] / "reference"
    torch.set_num_threads(1)
    summary = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"], workers=2), CLIPS,
                                  dist=DistInfo(), fingerprint=FP, checkpoint_sha256="ab" * 32)
    return {"out": out, "summary": summary, "maps": _read_cache(out)}


@pytest.fixture
def shared_backend(monkeypatch):
    """Load the SCHP teacher once for the tests that run the stage several times (loading costs seconds)."""
    made = {}
    real = cache_stage.make_backend

    def cached(*args, **kw):
        key = json.dumps([args, kw], sort_keys=True, default=str)
        if key not in made:
            made[key] = real(*args, **kw)
        return made[key]

    monkeypatch.setattr(cache_stage, "make_backend", cached)
    return made


def test_assigned_shards_round_robin():
    assert assigned_shards(7, DistInfo()) == list(range(7))
    assert assigned_shards(7, DistInfo(rank=1, world_size=3)) == [1, 4]
    assert assigned_shards(7, DistInfo(), shard_index=1, num_shards=2) == [1, 3, 5]
    assert assigned_shards(7, DistInfo(rank=1, world_size=2), shard_index=0, num_shards=2) == [2, 6]
    with pytest.raises(ValueError, match="go together"):
        assigned_shards(7, DistInfo(), shard_index=1)
    with pytest.raises(ValueError, match="must be in"):
        assigned_shards(7, DistInfo(), shard_index=2, num_shards=2)


def test_real_clips_shards_verify_and_failures_are_recorded(reference, real_setup):
    out, s = reference["out"], reference["summary"]
    assert s["complete"] is True
    assert (s["clips"], s["shards"], s["failed"], s["valid_clips"]) == (10, 4, 2, 8)
    assert s["shards_built"] == 4 and s["clips_computed"] == 10 and s["clips_per_s"] > 0
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [shard_name(i) for i in range(4)]
    assert not list(out.glob(".*.tmp"))
    failed = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert [(f["clip_id"], f["path"], f["shard"]) for f in failed] == [
        ("truncated@125", TRUNCATED, 1), ("gone@25", MISSING, 3)]
    assert "VideoDecodeError" in failed[0]["error"] and "frame" in failed[0]["error"]
    assert str(out) not in json.dumps(s)
    ids = []
    for i in range(4):
        verify_shard(out / shard_name(i), fingerprint=FP)
        with h5py.File(out / shard_name(i)) as f:
            assert f["maps"].shape[1:] == (20, 16, 16) and f.attrs["teacher"] == "schp"
            assert f.attrs["checkpoint_sha256"] == "ab" * 32 and f.attrs["label_set"] == "lip"
            ids += list(f["clip_ids"].asstr()[...])
            m = f["maps"][...].astype(np.float32)
            v = f["valid"][...]
            assert np.abs(m[v].sum(1) - 1).max(initial=0) <= SUM_TOLERANCE
            assert np.all(m[~v] == 0)
    assert ids[3] == "truncated@125" and ids[-1] == "gone@25" and len(ids) == 10
    # the anchor is the clip plan's: anchor_frames(83, 1, 4) == [41]
    assert ids[0] == "Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6@41"
    # random weights still give non-trivial maps (not uniform)
    m, _ = reference["maps"][ids[0]]
    assert m.max() > 0.2
    cache = TeacherCache(out)
    assert len(cache) == 8 and not cache.has("truncated@125") and cache.has(ids[0])
    assert cache.num_classes == 20 and cache.labels[14] == "Left-arm"
    assert cache.target(ids[0], (0.1, 0.2, 0.7, 0.9), True, (28, 28)).shape == (20, 28, 28)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["shard"] for r in metrics if r["event"] == "shard"] == [0, 1, 2, 3]
    assert metrics[-1]["event"] == "summary" and metrics[-1]["complete"] is True


def test_killed_run_resumes_without_recomputing(reference, real_setup, monkeypatch, shared_backend):
    out = real_setup["base"] / "killed"
    opened = []
    real_writer = cache_stage.ShardWriter

    class DyingWriter(real_writer):
        def __init__(self, path, *a, **kw):
            super().__init__(path, *a, **kw)
            opened.append(Path(path).name)
            if len(opened) == 2:  # killed after shard 0 is done, with shard 1's temp file just created
                self.close()
                raise KeyboardInterrupt("killed")

    monkeypatch.setattr(cache_stage, "ShardWriter", DyingWriter)
    with pytest.raises(KeyboardInterrupt):
        build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, dist=DistInfo(),
                            fingerprint=FP, checkpoint_sha256="ab" * 32)
    monkeypatch.setattr(cache_stage, "ShardWriter", real_writer)
    assert [p.name for p in out.glob("shard-*.h5")] == [shard_name(0)]
    assert (out / temp_name(1)).exists()
    assert TeacherCache(out).clip_ids() == sorted(c for c in list(reference["maps"])[:3])  # temp file unseen
    st = os.stat(out / shard_name(0))

    s = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, dist=DistInfo(),
                            fingerprint=FP, checkpoint_sha256="ab" * 32)
    assert s["complete"] and s["shards_built"] == 3 and s["clips_computed"] == 7 and s["failed"] == 2
    st2 = os.stat(out / shard_name(0))
    assert (st2.st_ino, st2.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not (out / temp_name(1)).exists()
    got = _read_cache(out)
    assert list(got) == list(reference["maps"])
    for cid, (m, v) in reference["maps"].items():
        assert got[cid][1] == v
        np.testing.assert_array_equal(got[cid][0], m)  # same batches, same weights: identical
    assert (out / "failed.jsonl").read_text() == (reference["out"] / "failed.jsonl").read_text()

    # a third run has nothing to do and touches nothing
    s = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, dist=DistInfo(),
                            fingerprint=FP, checkpoint_sha256="ab" * 32)
    assert s["complete"] and s["shards_built"] == 0 and s["clips_computed"] == 0
    # a finished shard whose attributes no longer match (other inputs) is rebuilt, not trusted
    with h5py.File(out / shard_name(3), "a") as f:  # (shard 3 holds only the missing video: no inference)
        f.attrs["fingerprint"] = "f" * 64
    s = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, dist=DistInfo(),
                            fingerprint=FP, checkpoint_sha256="ab" * 32)
    assert s["complete"] and s["shards_built"] == 1 and s["clips_computed"] == 1
    # damaged bytes pass the cheap rerun check but not the final full verification: removed, then rebuilt
    with h5py.File(out / shard_name(3)) as f:
        info = f["maps"].id.get_chunk_info(0)
    raw = bytearray((out / shard_name(3)).read_bytes())
    raw[info.byte_offset + info.size // 2] ^= 0xFF
    (out / shard_name(3)).write_bytes(bytes(raw))
    with pytest.raises(TeacherCacheError, match=r"1 shard\(s\) failed verification.*shard-00003.h5.*checksum"):
        build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, dist=DistInfo(),
                            fingerprint=FP, checkpoint_sha256="ab" * 32)
    assert not (out / shard_name(3)).exists()
    s = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, dist=DistInfo(),
                            fingerprint=FP, checkpoint_sha256="ab" * 32)
    assert s["complete"] and s["shards_built"] == 1 and s["failed"] == 2
    got = _read_cache(out)
    for cid, (m, _v) in reference["maps"].items():
        np.testing.assert_array_equal(got[cid][0], m)


def test_job_array_matches_single_run(reference, real_setup, shared_backend):
    out = real_setup["base"] / "array"
    kw = dict(dist=DistInfo(), fingerprint=FP, checkpoint_sha256="ab" * 32)
    s0 = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS,
                             shard_index=0, num_shards=2, **kw)
    assert s0["complete"] is False and s0["shards_missing"] == 2 and s0["shards_built"] == 2
    assert sorted(p.name for p in out.glob("shard-*.h5")) == [shard_name(0), shard_name(2)]
    assert not (out / "failed.jsonl").exists()
    s1 = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"], batch_size=3), CLIPS,
                             shard_index=1, num_shards=2, **kw)
    assert s1["complete"] is True and s1["shards_built"] == 2  # the last job finds every shard and finishes
    s = build_teacher_cache(real_setup["manifest"], out, _teacher(real_setup["ckpt"]), CLIPS, **kw)
    assert s["complete"] is True and s["shards_built"] == 0 and s["failed"] == 2 and s["clips"] == 10
    got = _read_cache(out)
    assert list(got) == list(reference["maps"])
    for cid, (m, v) in reference["maps"].items():
        assert got[cid][1] == v
        np.testing.assert_allclose(got[cid][0], m, atol=1e-3)
    assert (out / "failed.jsonl").read_text() == (reference["out"] / "failed.jsonl").read_text()


TORCHRUN_SCRIPT = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipeline.core.config import ClipsConfig, TeacherConfig
from pipeline.core.distributed import init_distributed, cleanup
from teacher.cache_stage import build_teacher_cache
args = json.loads(sys.argv[1])
dist = init_distributed("cpu")
s = build_teacher_cache(Path(args["manifest"]), Path(args["out"]), TeacherConfig(**args["teacher"]),
                        ClipsConfig(**args["clips"]), dist=dist, fingerprint=args["fp"], checkpoint_sha256="ab" * 32)
print("SUMMARY " + json.dumps({"rank": dist.rank, **s}))
cleanup()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(reference, real_setup, tmp_path):
    out = real_setup["base"] / "torchrun"
    script = tmp_path / "run_cache.py"
    script.write_text(textwrap.dedent(TORCHRUN_SCRIPT))
    teacher = _teacher(real_setup["ckpt"]).__dict__
    args = json.dumps({"manifest": str(real_setup["manifest"]), "out": str(out), "teacher": teacher,
                       "clips": CLIPS.__dict__, "fp": FP})
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_so, se) in zip(procs, outs):
        assert p.returncode == 0, se[-3000:]
    summaries = [json.loads(next(line for line in so.splitlines() if line.startswith("SUMMARY "))[8:])
                 for so, _ in outs]
    for s in summaries:
        assert s["complete"] is True and s["shards_built"] == 4 and s["clips_computed"] == 10 and s["failed"] == 2
    # each rank built its own shards: 0 and 2 on rank 0, 1 and 3 on rank 1
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["shard"], r["rank"]) for r in metrics if r["event"] == "shard"] == [(0, 0), (2, 0)]
    got = _read_cache(out)
    assert list(got) == list(reference["maps"])
    for cid, (m, v) in reference["maps"].items():
        assert got[cid][1] == v
        np.testing.assert_allclose(got[cid][0], m, atol=1e-3)
    assert (out / "failed.jsonl").read_text() == (reference["out"] / "failed.jsonl").read_text()


def test_truncated_video_fails_only_the_anchors_past_the_cut(real_setup):
    from teacher.backends import load_frames_bgr

    root = real_setup["base"] / "videos"
    ds = _AnchorInputs([cache_stage._Group(0, 0, 0, (5, 10, 200))], [str(root / TRUNCATED)], load_frames_bgr)
    g, inputs, errors = ds[0]
    assert [x is not None for x in inputs] == [True, True, False]
    assert errors[:2] == ["", ""] and errors[2].startswith("VideoDecodeError")
    full = load_frames_bgr(root / REAL_CLIPS[5][0], [5, 10])
    np.testing.assert_array_equal(np.stack(inputs[:2]), full)


def test_teacher_show_writes_png(reference, real_setup, tmp_path):
    from teacher.show import show_clip

    cid = "v_SoccerJuggling_g23_c01@120"
    assert TeacherCache(reference["out"]).has(cid)
    png = show_clip(reference["out"], real_setup["manifest"], cid, tmp_path / "show" / "clip.png")
    img = cv2.imread(str(png))
    assert img is not None and img.shape[1] == 2 * 320 + 4 and img.shape[0] > 240
    with pytest.raises(KeyError, match="truncated@125"):
        show_clip(reference["out"], real_setup["manifest"], "truncated@125", tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------
# rendered backend on a tiny synthetic dataset
# ---------------------------------------------------------------------------------------------

def test_rendered_backend_matches_part_masks(tmp_path):
    from data_manifests.builders import build_manifest
    from data_manifests.synthetic import SyntheticSpec, generate_synthetic, load_part_masks
    from data_manifests.clip_plan import build_clip_plan

    spec = SyntheticSpec(classes=("wave", "jump"), kinetics_per_class=2, ucf_per_class=0, hmdb_per_class=0,
                         frames=24, size=(64, 48))
    generate_synthetic(tmp_path / "syn", spec, progress=False)
    kin = tmp_path / "syn" / "kinetics"
    manifest, rejected = build_manifest("kinetics400", kin / "videos", kin / "annotations", workers=1,
                                        progress=False)
    write_manifest(tmp_path / "manifest", manifest, rejected)
    clips = ClipsConfig(anchors_per_video=3, clip_len=4, speeds=[1, 2], splits=["train", "val"])
    teacher = TeacherConfig(backend="rendered", map_size=24, shard_size=4, batch_size=3, workers=1, softness=0.5)
    out = tmp_path / "cache"
    s = build_teacher_cache(tmp_path / "manifest", out, teacher, clips, dist=DistInfo(), fingerprint=FP)
    plan = build_clip_plan(manifest, 3, clips.span, clips.splits)
    assert s["complete"] and s["failed"] == 0 and s["clips"] == len(plan) == 3 * len(manifest.entries)
    cache = TeacherCache(out)
    assert cache.labels[0] == "Background" and cache.num_classes == 7
    agree = []
    for c in plan:
        mask = load_part_masks(manifest.abspath(manifest.entries[c.video_index]), [c.frame])[0]
        small = cv2.resize(mask, (24, 24), interpolation=cv2.INTER_NEAREST)
        agree.append((cache.map(c.clip_id).argmax(0) == small).mean())
    assert np.mean(agree) > 0.8, agree
