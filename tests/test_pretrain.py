"""Pretraining loop: exact checkpoints and resume, schedules, signals, and a two-process DDP run.

Tiny everything (C3D at width 1/16, 32² input, 8-frame clips, 8×8 parsing, queue 32, batch 4)
on videos written with OpenCV into a temporary folder, a real manifest and a real HDF5 cache.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import socket
import multiprocessing as mp
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data_manifests.clip_plan import build_clip_plan
from data_manifests.manifest import Manifest, VideoEntry, write_manifest
from data_manifests.video import count_frames
from pipeline.core.config import ClipsConfig, ConfigError, ModelConfig, PretrainConfig, load_config
from pipeline.core.distributed import DistInfo
from pipeline.core.errors import CheckpointError
from student.checkpointing import (GracefulStop, TrainingInterrupted, capture_rng, load_checkpoint, restore_rng,
                                   save_checkpoint)
from student.optim import build_adamw, build_sgd, cosine_schedule, current_lr, multistep_schedule, scaled_lr
from student.pretrain import StepInfo, amp_dtype, build_pretrain_model, init_from_checkpoint, pretrain
from teacher.cache_format import ShardMeta, shard_name, write_shard

VIDEOS, FRAMES, VW, VH = 8, 24, 40, 32
LABELS = ("Background", "Head", "Body")

MODEL = ModelConfig(backbone="c3d", width=0.0625, split_after=3, input_size=32, parse_size=8, kd=True, proj_dim=16)
CLIPS = ClipsConfig(anchors_per_video=3, clip_len=8, speeds=[1, 2], splits=["train"])
CFG = PretrainConfig(dataset="toy", epochs=2, batch_size=4, lr=0.1, queue_size=32, seed=7, workers=0,
                     deterministic=True, amp="off", device="cpu", log_interval=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and far faster when other processes share the cores
    (OpenMP threads spin-wait and collapse under oversubscription)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """8 short videos, their manifest and a teacher cache of random softmax maps for every anchor."""
    base = tmp_path_factory.mktemp("pretrain_toy")
    root = base / "videos"
    root.mkdir()
    rng = np.random.default_rng(0)
    entries = []
    for v in range(VIDEOS):
        path = root / f"clip{v}.avi"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (VW, VH))
        background = rng.integers(0, 256, (VH, VW, 3), dtype=np.uint8)
        for t in range(FRAMES):
            frame = background.copy()
            x = (3 * t + 5 * v) % (VW - 8)
            frame[8:20, x:x + 8] = (40 * v) % 256
            writer.write(frame)
        writer.release()
        entries.append(VideoEntry(id=f"clip{v}", path=path.name, label=0, split="train",
                                  frames=count_frames(path), fps=25.0, width=VW, height=VH))
    manifest = Manifest(dataset="toy", root=root, classes=["act"], entries=entries)
    manifest_dir = base / "manifest"
    write_manifest(manifest_dir, manifest, [])
    plan = build_clip_plan(manifest, CLIPS.anchors_per_video, CLIPS.span, CLIPS.splits)
    cache_dir = base / "cache"
    cache_dir.mkdir()
    logits = torch.from_numpy(rng.normal(size=(len(plan), len(LABELS), 8, 8)).astype(np.float32))
    meta = ShardMeta(fingerprint="test", teacher="rendered", label_set="toy", labels=LABELS, map_size=8)
    write_shard(cache_dir / shard_name(0), meta, [c.clip_id for c in plan], [c.frame for c in plan],
                torch.softmax(logits, dim=1).numpy())
    return {"manifest": manifest_dir, "cache": cache_dir, "base": base}


def tensors_equal(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (recursing into nested dicts/lists)."""
    bad = []

    def walk(x, y, key):
        if isinstance(x, torch.Tensor):
            if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)):
                bad.append(key)
        elif isinstance(x, dict):
            if set(x) != set(y):
                bad.append(f"{key} (keys)")
            for k in x:
                if k in y:
                    walk(x[k], y[k], f"{key}.{k}")
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                bad.append(f"{key} (len)")
            for i, (u, v) in enumerate(zip(x, y)):
                walk(u, v, f"{key}[{i}]")
        elif x != y:
            bad.append(key)

    walk(a, b, "")
    return bad


# ---------------------------------------------------------------------------------------------
# optim
# ---------------------------------------------------------------------------------------------

def test_lr_scaling_and_cosine_schedule_are_closed_form_and_resumable() -> None:
    assert scaled_lr(0.1, 64) == pytest.approx(0.1)
    assert scaled_lr(0.05, 4 * 32) == pytest.approx(0.1)
    net = torch.nn.Linear(3, 2)
    opt = build_sgd(net, lr=0.2, momentum=0.9, weight_decay=1e-4)
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["weight_decay"] == 1e-4
    sched = cosine_schedule(opt, total_steps=10)
    lrs = [current_lr(opt)]
    for _ in range(10):
        opt.step()
        sched.step()
        lrs.append(current_lr(opt))
    expected = [0.2 * (1e-3 + (1 - 1e-3) * 0.5 * (1 + math.cos(math.pi * k / 10))) for k in range(11)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] == pytest.approx(0.2 / 1000)
    # A scheduler restored from a mid-run state dict continues with the same values.
    opt2 = build_sgd(torch.nn.Linear(3, 2), lr=0.2)
    sched2 = cosine_schedule(opt2, total_steps=10)
    ref = cosine_schedule(build_sgd(torch.nn.Linear(3, 2), lr=0.2), total_steps=10)
    for _ in range(4):
        ref.optimizer.step()
        ref.step()
    state = ref.state_dict()
    sched2.load_state_dict(state)
    opt2.param_groups[0]["lr"] = ref.optimizer.param_groups[0]["lr"]
    for k in range(4, 10):
        opt2.step()
        sched2.step()
        assert current_lr(opt2) == pytest.approx(expected[k + 1], rel=1e-12)
    ms = multistep_schedule(build_sgd(torch.nn.Linear(3, 2), lr=1.0), [2, 4], gamma=0.1)
    got = []
    for _ in range(5):
        got.append(current_lr(ms.optimizer))
        ms.optimizer.step()
        ms.step()
    assert got == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])


@pytest.mark.parametrize("build", [build_sgd, build_adamw])
def test_slow_modules_train_at_a_fraction_of_the_rate_through_the_schedule(build) -> None:
    """pretrain.slow_modules / slow_lr_ratio: the named student modules' parameters (each once, even where
    h_h is h_c) get lr × ratio at every step of the cosine schedule; the rest, the first group, lr."""
    from student.model import MultiTaskStudent

    torch.manual_seed(0)
    student = MultiTaskStudent("c3d", width=0.125, task_dependent=False)
    opt = build(student, 0.2, slow_modules=["h_h", "h_c", "g_a"], slow_lr_ratio=0.1)
    rest, slow = opt.param_groups
    slow_ids = {id(q) for m in (student.h_c, student.g_a) for q in m.parameters()}
    assert {id(q) for q in slow["params"]} == slow_ids and len(slow["params"]) == len(slow_ids)
    assert {id(q) for q in rest["params"]} == {id(q) for q in student.parameters()} - slow_ids
    sched = cosine_schedule(opt, total_steps=4)
    for _ in range(4):
        assert slow["lr"] == pytest.approx(0.1 * rest["lr"], rel=1e-12) and rest["lr"] == current_lr(opt)
        opt.step()
        sched.step()
    assert [len(g["params"]) for g in build(student, 0.2).param_groups] == [len(list(student.parameters()))]
    with pytest.raises(ValueError, match="slow module 'g_h' is not a module"):
        build(MultiTaskStudent("c3d", width=0.125, kd=False), 0.2, slow_modules=["g_h"])


def test_phased_schedule_runs_the_last_group_at_another_rate_until_its_start() -> None:
    from student.optim import phased_cosine_schedule

    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}], lr=0.2)
    sched = phased_cosine_schedule(opt, total_steps=6, start_step=2, last_group_before=10.0)
    ratios = []
    for _ in range(6):
        ratios.append(opt.param_groups[1]["lr"] / opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert ratios == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1, 0.1])
    assert opt.param_groups[0]["lr"] == pytest.approx(0.2 * 1e-3)  # the cosine's end, as cosine_schedule


def test_avid_starts_at_its_epoch_with_the_slow_group(toy, tmp_path: Path) -> None:
    """pretrain.avid_start_epoch = 1: in epoch 0 the loss has no A-VID term and h_c, g_a run at the full rate; from
    epoch 1 on, A-VID at lambda_a and the slow group at lr × ratio."""
    cfg = dataclasses.replace(CFG, lambda_a=0.5, slow_modules=["h_c", "g_a"], slow_lr_ratio=0.1, avid_start_epoch=1)
    seen: list[tuple[int, float]] = []
    run(toy, tmp_path, cfg, on_step=lambda info: seen.append((info.epoch, info.model.lambda_a)))
    assert seen == [(0, 0.0), (0, 0.0), (1, 0.5), (1, 0.5)]
    steps = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in steps if r.get("event") == "step"]
    for r in steps:
        avid = 0.5 * r["loss_avid"] if r["epoch"] >= 1 else 0.0
        assert r["loss"] == pytest.approx(cfg.lambda_kd * r["loss_kd"] + cfg.lambda_m * r["loss_rsp"] + avid, rel=1e-5)
        assert r["loss_avid"] > 0

    def stop_after_1(info: StepInfo) -> None:
        if info.global_step == 1:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):  # inside epoch 0: the slow group still at the full rate
        run(toy, tmp_path / "early", cfg, on_step=stop_after_1)
    rest, slow = load_checkpoint(tmp_path / "early" / "checkpoints" / "last.pt")["optimizer"]["param_groups"]
    assert slow["lr"] == pytest.approx(rest["lr"]) and rest["lr"] < scaled_lr(cfg.lr, cfg.batch_size)
    with pytest.raises(ValueError, match="needs pretrain.slow_lr_ratio > 0"):  # a library call, past load_config
        run(toy, tmp_path / "frozen", dataclasses.replace(cfg, slow_lr_ratio=0.0))
    with pytest.raises(ConfigError, match="avid_start_epoch 16 must be below pretrain.epochs 16"):
        load_config(overrides=["pretrain.avid_start_epoch=16"])
    with pytest.raises(ConfigError, match="needs pretrain.slow_lr_ratio > 0"):
        load_config(overrides=["pretrain.avid_start_epoch=2", "pretrain.slow_modules=['h_c']",
                               "pretrain.slow_lr_ratio=0"])


def test_slow_modules_are_checked_where_the_config_is_read() -> None:
    cfg = load_config(overrides=["pretrain.slow_modules=['h_c', 'g_a']", "pretrain.slow_lr_ratio=0.1"])
    assert cfg.pretrain.slow_modules == ["h_c", "g_a"] and cfg.pretrain.slow_lr_ratio == 0.1
    with pytest.raises(ConfigError, match=r"slow_modules \['g_x'\] are not student modules"):
        load_config(overrides=["pretrain.slow_modules=['g_x']"])
    with pytest.raises(ConfigError, match="model.kd = false"):
        load_config(overrides=["pretrain.slow_modules=['g_h']", "model.kd=false"])


# ---------------------------------------------------------------------------------------------
# checkpointing
# ---------------------------------------------------------------------------------------------

def test_checkpoint_round_trip_is_exact_including_rng(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = build_sgd(net, lr=0.1)
    sched = cosine_schedule(opt, 5)
    net(torch.randn(6, 4)).sum().backward()
    opt.step()
    sched.step()
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    random.random(), np.random.rand(), torch.rand(1), np.random.randn()  # advance, incl. numpy's cached gauss
    state = {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
             "scaler": torch.amp.GradScaler("cuda", enabled=False).state_dict(), "epoch": 1, "step": 7,
             "rng": capture_rng(), "config": {"a": [1, 2.5], "b": "x", "c": None}}
    path = save_checkpoint(tmp_path / "ck" / "last.pt", state)
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # no temp file left behind
    draws = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3))
    loaded = load_checkpoint(path)  # weights_only=True inside
    assert tensors_equal(state, loaded) == []
    restore_rng(loaded["rng"])
    again = (random.random(), np.random.rand(3).tolist(), np.random.randn(), torch.rand(3))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])
    # Overwriting is atomic (old file replaced in one rename); garbage is a clear error.
    save_checkpoint(path, {"epoch": 2})
    assert load_checkpoint(path) == {"epoch": 2}
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_graceful_stop_turns_signals_into_a_flag() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with GracefulStop() as stop:
        assert not stop.requested
        signal.raise_signal(signal.SIGTERM)
        assert stop.requested and stop.signal_name == "SIGTERM"
        assert stop.agreed() is True
    assert signal.getsignal(signal.SIGTERM) is before
    with GracefulStop() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C breaks out for real
            signal.raise_signal(signal.SIGINT)


# ---------------------------------------------------------------------------------------------
# the loop: exact resume
# ---------------------------------------------------------------------------------------------

def run(toy, out: Path, cfg: PretrainConfig = CFG, model: ModelConfig = MODEL, on_step=None) -> dict:
    return pretrain(toy["manifest"], toy["cache"] if model.kd else None, out, model, cfg, CLIPS,
                    dist=DistInfo(device="cpu"), on_step=on_step)


def test_interrupted_and_resumed_run_ends_with_identical_state(toy, tmp_path: Path) -> None:
    full = run(toy, tmp_path / "full")
    assert full["steps"] == 4 and full["steps_per_epoch"] == 2 and full["resumed_from"] is None
    assert full["num_parts"] == 3 and full["label_names"] == list(LABELS)
    assert set(full["final"]) >= {"loss", "loss_kd", "loss_rsp", "loss_avid", "acc_rsp"}

    def sigterm_after_3(info: StepInfo) -> None:
        if info.global_step == 3:
            signal.raise_signal(signal.SIGTERM)

    out = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted, match="SIGTERM") as exc:
        run(toy, out, on_step=sigterm_after_3)
    assert exc.value.step == 3 and exc.value.epoch == 1
    mid = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (mid["epoch"], mid["step_in_epoch"], mid["global_step"]) == (1, 1, 3)
    assert not (out / "student.pt").exists()
    resumed = run(toy, out)
    assert resumed["resumed_from"] == {"epoch": 1, "step_in_epoch": 1, "global_step": 3}
    assert resumed["steps"] == 4 and resumed["steps_this_run"] == 1

    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(out / "checkpoints" / "last.pt")
    assert any(k.startswith("key_encoder.") for k in a["model"]) and "queue.queue" in a["model"]
    for part in ("model", "optimizer", "scheduler", "rng"):
        assert tensors_equal(a[part], b[part]) == [], part
    assert ((a["epoch"], a["step_in_epoch"], a["global_step"]) == (b["epoch"], b["step_in_epoch"], b["global_step"])
            == (2, 0, 4))
    # The queue has been written by the run (ptr moved 4 steps × 4 keys = 16 rows).
    assert int(a["model"]["queue.ptr"]) == 16
    sa = torch.load(tmp_path / "full" / "student.pt", weights_only=True)
    sb = torch.load(out / "student.pt", weights_only=True)
    assert tensors_equal(sa["state_dict"], sb["state_dict"]) == []
    assert sa["model_config"] == dataclasses.asdict(MODEL) and sa["num_parts"] == 3
    assert sa["label_names"] == list(LABELS)
    assert not any(k.startswith(("key_encoder", "queue")) for k in sa["state_dict"])
    assert set(sa["state_dict"]) == {k[len("student."):] for k in a["model"] if k.startswith("student.")}
    # Metrics: JSONL with step records carrying every loss, the lr and the rate.
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r.get("event") == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert {"loss", "loss_kd", "loss_rsp", "loss_avid", "acc_avid_pos", "lr", "clips_per_s"} <= set(steps[0])
    assert any(r.get("event") == "interrupted" for r in records)
    # Rerunning a finished run trains nothing more and rewrites the same weights.
    again = run(toy, out)
    assert again["steps_this_run"] == 0 and again["steps"] == 4


@pytest.mark.parametrize("augment_device", ["cpu", "gpu"])
def test_avid_own_colour_and_slow_modules_resume_exactly(toy, tmp_path: Path, augment_device: str) -> None:
    """The A-VID key (an extra clip per item), the slow parameter group, the A-VID gradient projection and an
    A-VID phase that starts at epoch 1 (the run is interrupted inside it) go through an interrupted and resumed
    run to the same state as an uninterrupted one; a changed ratio or projection refuses to resume."""
    cfg = dataclasses.replace(CFG, shared_colour=True, avid_own_colour=True, slow_modules=["h_c", "g_a"],
                              slow_lr_ratio=0.1, avid_projection=True, avid_start_epoch=1,
                              augment_device=augment_device)
    run(toy, tmp_path / "full", cfg)

    def sigterm_after_3(info: StepInfo) -> None:
        if info.global_step == 3:
            signal.raise_signal(signal.SIGTERM)

    with pytest.raises(TrainingInterrupted):
        run(toy, tmp_path / "resumed", cfg, on_step=sigterm_after_3)
    run(toy, tmp_path / "resumed", cfg)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for part in ("model", "optimizer", "scheduler", "rng"):
        assert tensors_equal(a[part], b[part]) == [], part
    end = scaled_lr(cfg.lr, cfg.batch_size) * 1e-3  # the cosine's last step
    assert [g["lr"] for g in a["optimizer"]["param_groups"]] == pytest.approx([end, 0.1 * end])
    with pytest.raises(CheckpointError, match="slow_lr_ratio"):
        run(toy, tmp_path / "resumed", dataclasses.replace(cfg, slow_lr_ratio=0.5))
    with pytest.raises(CheckpointError, match="avid_projection"):
        run(toy, tmp_path / "resumed", dataclasses.replace(cfg, avid_projection=False))


def test_resume_refuses_a_checkpoint_from_another_configuration(toy, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, epochs=1, max_steps_per_epoch=1)
    run(toy, tmp_path, cfg)
    with pytest.raises(CheckpointError, match="different configuration"):
        run(toy, tmp_path, dataclasses.replace(cfg, lr=0.2))


def test_kd_off_trains_without_a_cache(toy, tmp_path: Path) -> None:
    model = dataclasses.replace(MODEL, kd=False)
    cfg = dataclasses.replace(CFG, epochs=1, max_steps_per_epoch=1)
    summary = run(toy, tmp_path, cfg, model)
    assert summary["steps"] == 1 and summary["final"]["loss_kd"] == 0.0 and summary["num_parts"] == 0
    student = torch.load(tmp_path / "student.pt", weights_only=True)
    assert not any(k.startswith(("g_h.", "h_h.")) for k in student["state_dict"])


def test_init_from_loads_encoders_and_resets_the_key_encoder(tmp_path: Path) -> None:
    torch.manual_seed(1)
    src = build_pretrain_model(MODEL, CFG, num_parts=3)
    save_checkpoint(tmp_path / "student.pt", {"model_config": dataclasses.asdict(MODEL), "num_parts": 3,
                                              "state_dict": src.student.state_dict()})
    torch.manual_seed(2)
    dst = build_pretrain_model(MODEL, CFG, num_parts=3)
    init_from_checkpoint(dst, str(tmp_path / "student.pt"))
    for name in ("f_l", "h_h", "h_c"):
        assert tensors_equal(getattr(src.student, name).state_dict(), getattr(dst.student, name).state_dict()) == []
    for name in ("f_l", "h_c", "g_m", "g_a"):  # key encoder = the (loaded) query encoder
        assert tensors_equal(getattr(dst.student, name).state_dict(), getattr(dst.key_encoder, name).state_dict()) == []
    with pytest.raises(CheckpointError, match="init_from"):
        init_from_checkpoint(dst, str(tmp_path / "missing.pt"))


def test_amp_choice_per_device() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        amp_dtype("fp16", cpu)
    assert amp_dtype("fp16", torch.device("cuda", 0)) is torch.float16
    assert amp_dtype("off", torch.device("cuda", 0)) is None


# ---------------------------------------------------------------------------------------------
# two-process DDP (gloo)
# ---------------------------------------------------------------------------------------------

def _ddp_worker(rank: int, port: str, toy: dict, out: Path, results: Path, cfg: PretrainConfig) -> None:
    """One rank, in a forked child: spy on the gather whose result the model enqueues, train, save what it saw."""
    import student.pretrain_model as pmod
    from pipeline.core.distributed import cleanup, init_distributed

    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port})
    torch.set_num_threads(1)
    record: dict = {"local": [], "gathered": [], "queue": [], "ids": [], "ptr": []}
    real_gather = pmod.all_gather_tensor

    def spy(t: torch.Tensor) -> torch.Tensor:
        gathered = real_gather(t)
        record["local"].append(t.detach().clone())
        record["gathered"].append(gathered.detach().clone())
        return gathered

    pmod.all_gather_tensor = spy
    holder = {}

    def on_step(info: StepInfo) -> None:
        holder["model"] = info.model
        record["queue"].append(info.model.queue.queue.detach().clone())
        record["ids"].append(info.model.queue.ids.detach().clone())
        record["ptr"].append(int(info.model.queue.ptr))

    dist = init_distributed("cpu")
    record["summary"] = pretrain(toy["manifest"], toy["cache"], out, MODEL, cfg, CLIPS, dist=dist, on_step=on_step)
    record["state"] = {k: v.detach().clone() for k, v in holder["model"].state_dict().items()}
    cleanup()
    torch.save(record, results / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_queue_gets_keys_from_both_ranks(toy, tmp_path: Path) -> None:
    cfg = dataclasses.replace(CFG, epochs=1, batch_size=2, deterministic=False)
    out = tmp_path / "out"
    port = str(_free_port())
    # Forked children reuse this process's imports (a fresh interpreter spends seconds importing torch).
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_ddp_worker, args=(rank, port, toy, out, tmp_path, cfg)) for rank in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("DDP workers timed out")
    assert [p.exitcode for p in procs] == [0, 0], "a DDP worker failed (its traceback is in the captured stderr)"
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["summary"]["world_size"] == 2 and r0["summary"]["global_batch"] == 4
    steps = r0["summary"]["steps"]
    assert steps == 2 == len(r0["gathered"]) == len(r1["gathered"])
    b = cfg.batch_size
    for k in range(steps):
        # one gather per step: each rank's keys with its clips' video ids as a last column
        both = torch.cat([r0["local"][k], r1["local"][k]])
        assert r0["local"][k].shape == (b, MODEL.proj_dim + 1)
        assert not torch.allclose(r0["local"][k], r1["local"][k])  # different videos on each rank
        assert torch.equal(r0["gathered"][k], both) and torch.equal(r1["gathered"][k], both)
        ids = both[:, -1].long()
        assert (ids >= 0).all() and len(set(ids.tolist())) == 2 * b  # the two ranks' distinct videos
        # Every rank's queue holds the keys (and video ids) of BOTH ranks, in rank order, at the same rows.
        start = (k * 2 * b) % cfg.queue_size
        for r in (r0, r1):
            assert r["ptr"][k] == (start + 2 * b) % cfg.queue_size
            assert torch.equal(r["queue"][k][start:start + 2 * b], both[:, :-1])
            assert torch.equal(r["ids"][k][start:start + 2 * b], ids)
        assert torch.equal(r0["queue"][k], r1["queue"][k])
    # Model weights (incl. key encoder and queue) stay identical across ranks; rank 0 saved them.
    assert tensors_equal(r0["state"], r1["state"]) == []
    ck = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert tensors_equal(ck["model"], r1["state"]) == []
    assert (out / "student.pt").is_file()


class _FlatTeacher:
    """A teacher for the held-out maps: every pixel background."""

    def loader(self, path, frames):
        return np.zeros((len(frames), VH, VW), np.uint8)

    def maps(self, batch):
        m = torch.zeros(len(batch), len(LABELS), 8, 8)
        m[:, 0] = 1
        return m


def test_heldout_records_untrained_then_trained(toy, tmp_path: Path) -> None:
    """Videos outside clips.splits are measured before the first step and after training, never trained on."""
    from data_manifests.manifest import load_manifest

    m = load_manifest(toy["manifest"])
    entries = [dataclasses.replace(e, split="val") if i >= 5 else e for i, e in enumerate(m.entries)]
    write_manifest(tmp_path / "manifest", Manifest(dataset="toy", root=m.root, classes=m.classes, entries=entries), [])
    cfg = dataclasses.replace(CFG, heldout_videos=8, heldout_every=1, epochs=2)
    summary = pretrain(tmp_path / "manifest", toy["cache"], tmp_path / "out", MODEL, cfg, CLIPS, dist=DistInfo(),
                       teacher=_FlatTeacher())
    rows = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    held = [r for r in rows if r["event"] == "heldout"]
    assert [(r["epoch"], r["step"]) for r in held] == [(0, 0), (1, 1), (2, 2)]
    assert all(r["avid_gallery"] == 3 and r["avid_chance"] == pytest.approx(1 / 3) for r in held)
    assert held[0]["kd_person_iou"] is not None
    assert summary["videos"] == 5
    assert summary["heldout_untrained"]["step"] == 0 and summary["heldout"]["step"] == 2
    assert summary["heldout"]["rsp_acc"] == held[-1]["rsp_acc"]
