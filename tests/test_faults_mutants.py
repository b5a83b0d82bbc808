"""Fast tests for the behaviours that a mutation run (issue 24) found no test reaching, or only slow ones.

Each test names the planted bug it kills. Videos are short generated all-intra (MJPG) AVIs whose
frame ``i`` is a flat grey of level ``8 + 3 i``, so any frame shift is a large, exact difference.
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from data_manifests import video as V
from data_manifests.transcode import TranscodeError, TranscodeSpec, transcode_video
from pipeline.core import code_digest
from pipeline.core.distributed import DistInfo
from tiny_videos import write_video

N = 80  # well over MIN_SEEK_GAP: the reader seeks in it


def _code(i: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame ``i``: its 8 bits as 2 rows × 4 columns of black (0) or white (1) blocks."""
    frame = np.zeros((h, w, 3), np.uint8)
    for bit in range(8):
        if i >> bit & 1:
            r, c = divmod(bit, 4)
            frame[r * h // 2:(r + 1) * h // 2, c * w // 4:(c + 1) * w // 4] = 255
    return frame


@pytest.fixture(scope="module")
def ramp(tmp_path_factory) -> Path:
    """An all-intra AVI of 80 frames (48 × 64), frame i showing i in binary."""
    path = tmp_path_factory.mktemp("ramp") / "ramp.avi"
    write_video(path, np.stack([_code(i) for i in range(N)]))
    return path


def _frame_of(frame: np.ndarray) -> int:
    """Which source frame a decoded frame (any size) shows: the bits read at the block centres."""
    h, w = frame.shape[:2]
    bits = [frame[int((r + 0.5) * h / 2), int((c + 0.5) * w / 4)].mean() > 128 for r in (0, 1) for c in range(4)]
    return sum(1 << k for k, b in enumerate(bits) if b)


# ---------------------------------------------------------------- mutant: a copy shifted by one frame
def test_transcoded_copy_keeps_every_frame_index(ramp: Path, tmp_path: Path):
    dst = tmp_path / "copy.avi"
    rec = transcode_video(ramp, dst, TranscodeSpec(short_side=16), expected_frames=N)
    frames = V.read_frames(dst, list(range(N)), seek=False)
    assert rec["frames"] == N and [_frame_of(f) for f in frames] == list(range(N))


# ---------------------------------------------------------------- mutant: the frame-count check skipped
def test_transcode_refuses_a_source_that_no_longer_decodes_the_manifests_count(ramp: Path, tmp_path: Path):
    dst = tmp_path / "copy.avi"
    with pytest.raises(TranscodeError, match=f"{N} frames decode, the manifest says {N + 1}"):
        transcode_video(ramp, dst, TranscodeSpec(short_side=16), expected_frames=N + 1)
    assert not dst.exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- mutant: a seek landing on the frame before
def test_seek_lands_on_the_target_frame(ramp: Path, monkeypatch):
    seeks: list[int] = []
    real = V._seek
    monkeypatch.setattr(V, "_seek", lambda cap, path, t: (seeks.append(t), real(cap, path, t)))
    idx = [75, 1, 40, 40, 0, 79, 12, 66]
    got = V.read_frames(ramp, idx)
    assert seeks, "an all-intra AVI must be read by seeking"
    assert [_frame_of(f) for f in got] == idx
    assert np.array_equal(got, V.read_frames(ramp, idx, seek=False))


# ---------------------------------------------------------------- mutant: same-video exclusion not wired
def test_video_ids_travel_through_the_model_to_the_avid_loss(monkeypatch):
    import student.pretrain_model as PM

    seen: list[tuple] = []
    real = PM.avid_loss

    def spy(*args, query_ids=None, queue_ids=None, **kw):
        seen.append((query_ids, queue_ids))
        return real(*args, query_ids=query_ids, queue_ids=queue_ids, **kw)

    monkeypatch.setattr(PM, "avid_loss", spy)
    torch.manual_seed(0)
    model = PM.PretrainModel(backbone="r2plus1d", width=0.125, kd=False, proj_dim=8, queue_size=8).train()
    clips = torch.randn(3, 3, 3, 4, 32, 32)  # (query, key+, key-) × batch 3
    ids = torch.tensor([5, 6, 7])
    model(clips[0], clips[1], clips[2], video_ids=ids)
    model(clips[0], clips[1], clips[2], video_ids=ids)  # the queue now holds keys of videos 5, 6, 7
    q, k = seen[-1]
    assert torch.equal(q, ids) and set(k[k >= 0].tolist()) == {5, 6, 7}
    off = PM.PretrainModel(backbone="r2plus1d", width=0.125, kd=False, proj_dim=8, queue_size=8,
                           exclude_same_video=False).train()
    off(clips[0], clips[1], clips[2], video_ids=ids)
    assert seen[-1] == (None, None)


# ---------------------------------------------------------------- mutant: relative imports in __init__ too high
def test_code_digest_resolves_relative_imports_in_a_package_init(tmp_path: Path):
    pkg = tmp_path / "student" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "student" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .impl import f\nfrom . import other\n")
    (pkg / "impl.py").write_text("def f():\n    return 1\n")
    (pkg / "other.py").write_text("")
    files = {p.relative_to(tmp_path).as_posix() for p in code_digest.source_files(["student.sub"], tmp_path)}
    assert {"student/sub/impl.py", "student/sub/other.py"} <= files
    real = {p.relative_to(code_digest.PROJECT_ROOT).as_posix()
            for p in code_digest.source_files(["teacher.cache_stage"])}
    assert {"data_manifests/synthetic/masks.py", "data_manifests/synthetic/figure.py"} <= real


# ---------------------------------------------------------------- mutant: human_focus.py not in evaluate's code
def test_editing_human_focus_makes_evaluate_stale(tmp_path: Path):
    from pipeline.core.config import load_config
    from pipeline.stages import StageGraph

    stage = StageGraph(load_config(), tmp_path).evaluate()
    assert "student/human_focus.py" in code_digest.code_digests(stage.code)


# ---------------------------------------------------------------- mutant: a body part dropped from the person
def test_human_focus_counts_every_body_part_as_the_person(tmp_path: Path, monkeypatch):
    import student.human_focus as HF
    from data_manifests.synthetic.masks import mask_path_for, save_part_masks

    t, h, w = 8, 28, 32
    video = tmp_path / "v.avi"
    write_video(video, np.full((t, h, w, 3), 90, np.uint8))
    masks = np.zeros((t, h, w), np.uint8)
    for part in range(1, 7):  # Pascal-Person-Part ids 1..6, one band of rows each; rows 24.. background
        masks[:, 4 * (part - 1):4 * part] = part
    save_part_masks(mask_path_for(video), masks)
    for part in range(0, 7):
        heat = (masks == part).astype(np.float32)
        monkeypatch.setattr(HF, "clip_cam", lambda model, clip, size, heat=heat: (heat[:size[0]], 0, None))
        share = HF.human_focus(None, [video], clip_len=t, input_size=16)["human_focus"]
        assert share == (0.0 if part == 0 else 1.0), f"part {part}: CAM share on the person {share}"


# ---------------------------------------------------------------- mutant: finetune ignores weight decay
def test_finetune_uses_the_configured_weight_decay(tmp_path: Path):
    from pipeline.core.config import FinetuneConfig
    from student.checkpointing import TrainingInterrupted, load_checkpoint
    from student.finetune import finetune
    from tiny_videos import CLIP_LEN, make_dataset, tiny_model_config, write_student

    man = make_dataset(tmp_path, classes=2, train_per_class=2, test_per_class=1, frames=8)
    mc = tiny_model_config()
    write_student(tmp_path / "pretrain", mc, seed=1)
    cfg = FinetuneConfig(dataset="tiny", protocol="custom", epochs=1, batch_size=2, lr=0.05, schedule="cosine",
                         weight_decay=0.0375, val_fraction=0.0, deterministic=True, workers=0, device="cpu")
    with pytest.raises(TrainingInterrupted):
        finetune(man, tmp_path / "pretrain", tmp_path / "ft", mc, cfg, dist=DistInfo(), clip_len=CLIP_LEN,
                 stop_after_steps=1)
    groups = load_checkpoint(tmp_path / "ft" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert groups and all(g["weight_decay"] == 0.0375 for g in groups)


# ---------------------------------------------------------------- mutant: global batch ignores world size
def test_global_batch_counts_every_rank():
    from pipeline.core.config import ModelConfig, PretrainConfig
    from student.optim import scaled_lr
    from student.pretrain import _build

    cfg = PretrainConfig(batch_size=4, lr=0.1, queue_size=50)
    data = SimpleNamespace(label_names=["a"] * 7, dataset=list(range(100)), total_steps=10)
    model = ModelConfig(backbone="r2plus1d", width=0.125, proj_dim=8)
    net = _build(model, cfg, data, DistInfo(rank=1, world_size=3), torch.device("cpu"))
    assert net.global_batch == 12
    assert net.base_lr == pytest.approx(scaled_lr(0.1, 12))
    assert net.optimizer.param_groups[0]["lr"] == pytest.approx(scaled_lr(0.1, 12))
    assert net.pm.queue.size == 48, "the queue is trimmed to a multiple of the global batch (50 -> 48)"


# ---------------------------------------------------------------- pretrain.optimizer = "adamw"
def test_adamw_uses_the_lr_as_given_and_decoupled_weight_decay():
    """The demo's optimizer: AdamW over the student's parameters at pretrain.lr (no linear scaling),
    weight_decay as AdamW's decoupled decay; "sgd" stays RSPNet's scaled momentum SGD."""
    from pipeline.core.config import ModelConfig, PretrainConfig
    from student.pretrain import _build

    data = SimpleNamespace(label_names=["a"] * 7, dataset=list(range(100)), total_steps=10)
    model = ModelConfig(backbone="r2plus1d", width=0.125, proj_dim=8)
    cfg = PretrainConfig(batch_size=4, lr=0.003, weight_decay=0.05, queue_size=48, optimizer="adamw")
    net = _build(model, cfg, data, DistInfo(rank=0, world_size=3), torch.device("cpu"))
    assert isinstance(net.optimizer, torch.optim.AdamW)
    assert net.base_lr == pytest.approx(0.003) and net.optimizer.param_groups[0]["lr"] == pytest.approx(0.003)
    assert net.optimizer.param_groups[0]["weight_decay"] == 0.05
    student_params = {id(p) for p in net.pm.student.parameters()}
    assert {id(p) for g in net.optimizer.param_groups for p in g["params"]} == student_params
    sgd = _build(model, PretrainConfig(batch_size=4, lr=0.1, queue_size=48), data, DistInfo(rank=0, world_size=3),
                 torch.device("cpu"))
    assert type(sgd.optimizer) is torch.optim.SGD


def test_pretrain_optimizer_is_validated_at_the_edge():
    from pipeline.core.config import load_config
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="optimizer"):
        load_config(None, ["pretrain.optimizer=adam"])
