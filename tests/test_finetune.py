"""Finetuning: protocol presets, clip sampling / views, held-out split, exact resume, outputs."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipeline.core.config import FinetuneConfig
from pipeline.core.distributed import DistInfo
from student.checkpointing import TrainingInterrupted, load_checkpoint
from pipeline.core.errors import TrainingError
from student.finetune import finetune, load_classifier, stratified_holdout
from student.finetune_data import (TrainClips, consecutive_frames, multi_views, random_resized_box, view_crop_boxes,
                                   view_starts, IMAGENET_MEAN, IMAGENET_STD)
from pipeline.core.errors import ConfigError
from student.protocols import resolve_protocol
from tiny_videos import CLIP_LEN, make_dataset, tiny_model_config, write_student

DIST = DistInfo()


# ------------------------------------------------------------------ protocols

@pytest.mark.parametrize("backbone,dataset,batch,lr,schedule,milestones,epochs", [
    ("c3d", "ucf101", 20, 0.005, "cosine", [], 30),
    ("c3d", "hmdb51", 6, 0.005, "step", [50, 70, 90], 100),
    ("r2plus1d", "ucf101", 8, 0.1, "cosine", [], 30),
    ("r2plus1d", "hmdb51", 16, 0.1, "cosine", [], 30),
])
def test_rspnet_presets_match_facts(backbone, dataset, batch, lr, schedule, milestones, epochs):
    p = resolve_protocol(FinetuneConfig(dataset=dataset, protocol="rspnet"), backbone)
    assert (p.batch_size, p.lr, p.schedule, list(p.milestones), p.epochs) == (batch, lr, schedule, milestones, epochs)
    assert (p.momentum, p.weight_decay, p.overrides) == (0.9, 1e-4, ())
    assert p.name == f"rspnet:{backbone}/{dataset}"
    # the paper's protocol (also "auto"): the same preset, 100 epochs for all four
    for name in ("paper", "auto", f"paper:{backbone}/{dataset}"):
        q = resolve_protocol(FinetuneConfig(dataset=dataset, protocol=name), backbone)
        assert (q.batch_size, q.lr, q.schedule, list(q.milestones), q.epochs) == (batch, lr, schedule, milestones, 100)
        assert (q.name, q.overrides) == (f"paper:{backbone}/{dataset}", ())


def test_protocol_overrides_custom_and_errors():
    p = resolve_protocol(FinetuneConfig(dataset="hmdb51", epochs=3), "c3d")
    assert (p.epochs, p.batch_size, p.milestones, p.overrides) == (3, 6, (50, 70, 90), ("epochs",))
    p = resolve_protocol(FinetuneConfig(dataset="ucf101", protocol="c3d/hmdb51"), "r3d18")
    assert p.name == "rspnet:c3d/hmdb51"
    c = resolve_protocol(FinetuneConfig(protocol="custom", epochs=2, batch_size=4, lr=0.01, schedule="cosine"), "r3d18")
    assert (c.epochs, c.batch_size, c.lr, c.schedule) == (2, 4, 0.01, "cosine")
    with pytest.raises(ConfigError, match="finetune.lr, finetune.schedule"):
        resolve_protocol(FinetuneConfig(protocol="custom", epochs=2, batch_size=4), "c3d")
    with pytest.raises(ConfigError, match="milestones"):
        resolve_protocol(FinetuneConfig(protocol="custom", epochs=2, batch_size=4, lr=0.1, schedule="step"), "c3d")
    with pytest.raises(ConfigError, match="no finetuning preset for backbone 'r3d18'"):
        resolve_protocol(FinetuneConfig(dataset="ucf101"), "r3d18")


# ------------------------------------------------------------------ clips and views

def _fake_source(n: int, h: int, w: int):
    """Frame t has red = t·10 everywhere and green = column index (to see which crop was cut)."""
    frames = np.zeros((n, h, w, 3), np.uint8)
    for t in range(n):
        frames[t, :, :, 0] = 10 * t
    frames[:, :, :, 1] = np.arange(w, dtype=np.uint8)[None, None, :]
    calls = []

    def source(indices):
        calls.append(list(indices))
        return frames[list(indices)]
    return source, calls


def _denorm(x: torch.Tensor) -> np.ndarray:
    """(3, T, H, W) normalised -> (T, H, W, 3) in 0..255."""
    a = x.numpy().transpose(1, 2, 3, 0) * IMAGENET_STD + IMAGENET_MEAN
    return a * 255


def test_view_starts_and_clip_indices():
    assert view_starts(100, 16, 10) == [0, 9, 19, 28, 37, 47, 56, 65, 75, 84]
    assert view_starts(5, 2, 3) == [0, 2, 3]  # linspace 0, 1.5, 3: half rounds up
    assert view_starts(10, 16, 3) == [0, 0, 0]
    assert consecutive_frames(8, 4, 10) == [8, 9, 9, 9]


def test_multi_views_frames_and_three_crops():
    source, calls = _fake_source(n=20, h=40, w=80)
    v = multi_views(source, 20, clip_len=4, input_size=32, clips=3, crops=3)
    assert v.shape == (9, 3, 4, 32, 32)
    frames = _denorm(v[0].unsqueeze(0)[0])
    starts = view_starts(20, 4, 3)  # [0, 8, 16]
    for view in range(9):
        red = _denorm(v[view])[..., 0].mean(axis=(1, 2))
        np.testing.assert_allclose(red, [10 * (starts[view // 3] + t) for t in range(4)], atol=1.0)
    # short side 40 -> 32: width 80 -> 64; crops at x = 0, 16, 32 of the resized frame -> source columns x / 0.8
    green_left = [_denorm(v[k])[0, :, 0, 1].mean() for k in range(3)]
    np.testing.assert_allclose(green_left, [0, 20, 40], atol=1.5)
    assert frames.shape == (4, 32, 32, 3)
    assert view_crop_boxes(64, 32, 32, 3) == [(0, 0, 32, 32), (0, 16, 32, 48), (0, 32, 32, 64)]  # portrait
    # a chunk of views decodes only the frames of its clips
    calls.clear()
    part = multi_views(source, 20, 4, 32, 3, 3, views=[6, 7])
    assert part.shape == (2, 3, 4, 32, 32) and calls == [[16, 17, 18, 19]]
    torch.testing.assert_close(part, v[6:8])


def test_random_resized_box_area_and_train_clip_determinism(tmp_path):
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"finetune.crop_area must be \[min, max\]"):
        TrainClips(None, [], 4, 32, (0.5, 0.2), 0)
    rng = np.random.default_rng(0)
    fracs = []
    for _ in range(200):
        x0, y0, x1, y1 = random_resized_box(120, 160, (0.25, 1.0), rng)
        assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 120
        fracs.append((x1 - x0) * (y1 - y0) / (120 * 160))
    assert min(fracs) >= 0.24 and max(fracs) <= 1.0 and np.mean(fracs) > 0.4
    man_dir = make_dataset(tmp_path, classes=2, train_per_class=1, test_per_class=0, frames=10)
    from data_manifests.manifest import load_manifest

    man = load_manifest(man_dir)
    ds = TrainClips(man, man.entries, CLIP_LEN, 32, (0.25, 1.0), seed=3)
    a, la = ds[1]
    assert a.shape == (3, CLIP_LEN, 32, 32) and la == 1
    torch.testing.assert_close(ds[1][0], a, rtol=0, atol=0)
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], a)


def test_stratified_holdout_is_per_class_and_deterministic():
    from data_manifests.manifest import VideoEntry

    entries = [VideoEntry(f"v{i}", f"v{i}.avi", i % 3, "train", 10, 25.0, 8, 8) for i in range(30)]
    train, held = stratified_holdout(entries, 0.2, seed=5)
    assert sorted(train + held) == list(range(30))
    assert [sum(entries[i].label == c for i in held) for c in range(3)] == [2, 2, 2]
    assert stratified_holdout(entries, 0.2, seed=5) == (train, held)
    assert stratified_holdout(entries, 0.2, seed=6)[1] != held
    assert stratified_holdout(entries[:6], 0.1, seed=0)[1] == []  # 0.2 per class rounds to 0


# ------------------------------------------------------------------ the training loop

def _cfg(**kw) -> FinetuneConfig:
    base = dict(dataset="tiny", protocol="custom", epochs=2, batch_size=2, lr=0.05, schedule="step", milestones=[1],
                val_fraction=0.25, select_on="val", deterministic=True, workers=0, device="cpu", log_interval=1)
    return FinetuneConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ft")
    man = make_dataset(tmp, classes=3, train_per_class=3, test_per_class=1, frames=10)
    mc = tiny_model_config()
    write_student(tmp / "pretrain", mc, seed=1)
    return tmp, man, mc


def _weights(path):
    return load_checkpoint(path)


def test_resume_is_exact_on_cpu(tiny, tmp_path):
    _, man, mc = tiny
    pre = tiny[0] / "pretrain"
    cfg = _cfg()
    ref = finetune(man, pre, tmp_path / "ref", mc, cfg, dist=DIST, clip_len=CLIP_LEN)
    # 9 train videos, 3 held out (round(0.75) = 1 per class) -> 6 train, batch 2 -> 3 steps per epoch
    assert (ref["num_train"], ref["num_val"], ref["steps_per_epoch"], ref["global_steps"]) == (6, 3, 3, 6)
    out = tmp_path / "resumed"
    with pytest.raises(TrainingInterrupted) as info:
        finetune(man, pre, out, mc, cfg, dist=DIST, clip_len=CLIP_LEN, stop_after_steps=2)  # mid epoch 1
    assert (info.value.epoch, info.value.step) == (1, 2)
    with pytest.raises(TrainingInterrupted):
        finetune(man, pre, out, mc, cfg, dist=DIST, clip_len=CLIP_LEN, stop_after_steps=1)  # last step of epoch 1
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    res = finetune(man, pre, out, mc, cfg, dist=DIST, clip_len=CLIP_LEN)
    assert res["resumed_from"] == {"epoch": 2, "step": 0}
    a, b = _weights(tmp_path / "ref" / "checkpoints" / "last.pt"), _weights(out / "checkpoints" / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    assert a["scheduler"] == b["scheduler"]
    ca, cb = _weights(tmp_path / "ref" / "classifier.pt"), _weights(out / "classifier.pt")
    assert ((ca["selected_epoch"], ca["selected_on"]) == (cb["selected_epoch"], cb["selected_on"])
            == (ref["selected_epoch"], "val"))
    for k in ca["state_dict"]:
        assert torch.equal(ca["state_dict"][k], cb["state_dict"][k]), k
    # one best-epoch file is kept; metrics.jsonl has one epoch record per epoch
    assert [p.name for p in (out / "checkpoints").glob("best-e*.pt")] == [f"best-e{ref['selected_epoch']:04d}.pt"]
    # the interrupted epoch's train loss covers all its steps (partial sums carried in last.pt)
    ep_resumed = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ep_ref = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    pick = lambda recs: [(r["epoch"], r["train_loss"], r["train_top1"]) for r in recs if r["kind"] == "epoch"]
    assert pick(ep_resumed) == pick(ep_ref)
    recs = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    ep = [r for r in recs if r["kind"] == "epoch"]
    assert [r["epoch"] for r in ep] == [1, 2] and all("val_top1" in r for r in ep)
    best = max(ep, key=lambda r: (r["val_top1"], -r["epoch"]))
    assert (best["epoch"], best["val_top1"]) == (ref["selected_epoch"], ref["val_acc"])
    # lr schedule: milestone at epoch 1 -> 0.05 for the 3 steps of epoch 1, then 0.005
    steps = [r for r in recs if r["kind"] == "step"]
    assert [round(r["lr"], 6) for r in steps] == [0.05, 0.05, 0.05, 0.005, 0.005, 0.005]


def test_classifier_file_and_fallbacks(tiny, tmp_path):
    _, man, mc = tiny
    pre = tiny[0] / "pretrain"
    # val_fraction 0 -> nothing held out -> falls back to the last epoch, and says so
    s = finetune(man, pre, tmp_path / "a", mc, _cfg(epochs=1, val_fraction=0.0), dist=DIST, clip_len=CLIP_LEN,
                 max_steps_per_epoch=1)
    assert (s["selected_on"], s["requested_select_on"], s["selected_epoch"], s["num_val"]) == ("last", "val", 1, 0)
    assert "fell back" in s["select_note"]
    model, info = load_classifier(tmp_path / "a" / "classifier.pt")
    assert (info["selected_on"], info["clip_len"], info["num_classes"], info["classes"]) == \
        ("last", CLIP_LEN, 3, ["class0", "class1", "class2"])
    assert model.fc.out_features == 3 and model.fc.in_features == 2 * model.out_channels
    # pretrained encoders are loaded (f_l equals student.pt's before training moves it: lr 0 check)
    s0 = finetune(man, pre, tmp_path / "lr0", mc, _cfg(epochs=1, lr=1e-12, select_on="last"), dist=DIST,
                  clip_len=CLIP_LEN, max_steps_per_epoch=1)
    student = torch.load(pre / "student.pt", weights_only=True)["state_dict"]
    clf = load_checkpoint(tmp_path / "lr0" / "classifier.pt")["state_dict"]
    w = "f_l.conv1.0.weight"
    if w not in clf:
        w = next(k for k in clf if k.startswith("f_l.") and k.endswith("weight"))
    torch.testing.assert_close(clf[w], student[w], rtol=1e-6, atol=1e-9)
    assert s0["from_scratch"] is False
    # select on test: explicit, and reported
    t = finetune(man, pre, tmp_path / "t", mc, _cfg(epochs=1, select_on="test"), dist=DIST, clip_len=CLIP_LEN,
                 max_steps_per_epoch=1)
    assert t["selected_on"] == "test" and "TEST" in t["select_note"] and t["num_val"] == 0
    assert load_checkpoint(tmp_path / "t" / "classifier.pt")["selected_on"] == "test"


def test_pretrained_model_config_must_agree(tiny, tmp_path):
    _, man, mc = tiny
    other = dataclasses.replace(mc, task_dependent=False)
    with pytest.raises(TrainingError, match="task_dependent: pretrained True vs config False"):
        finetune(man, tiny[0] / "pretrain", tmp_path / "x", other, _cfg(), dist=DIST, clip_len=CLIP_LEN)
    # from scratch ignores the pretraining folder entirely
    s = finetune(man, None, tmp_path / "scratch", other, _cfg(epochs=1, select_on="last", from_scratch=True),
                 dist=DIST, clip_len=CLIP_LEN, max_steps_per_epoch=1)
    assert s["from_scratch"] is True
    _, info = load_classifier(tmp_path / "scratch" / "classifier.pt")
    assert info["model_config"]["task_dependent"] is False


CHILD = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, sys.argv[4])
from pipeline.core.config import FinetuneConfig
from pipeline.core.distributed import cleanup, init_distributed
from student.finetune import finetune
from tiny_videos import CLIP_LEN, tiny_model_config
man, pre, out = map(Path, sys.argv[1:4])
cfg = FinetuneConfig(dataset="tiny", protocol="custom", epochs=2, batch_size=2, lr=0.05, schedule="cosine",
                     val_fraction=0.25, select_on="val", workers=0, device="cpu", log_interval=1)
d = init_distributed("cpu")
s = finetune(man, pre, out, tiny_model_config(), cfg, dist=d, clip_len=CLIP_LEN)
(out / f"summary-rank{d.rank}.json").write_text(json.dumps(s))
cleanup()
"""


@pytest.mark.slow
def test_two_process_gloo_finetune_agrees_across_ranks(tiny, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    from student.finetune import _select_score, stratified_holdout
    from data_manifests.manifest import load_manifest

    tmp, man, mc = tiny
    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    env = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, str(man), str(tmp / "pretrain"), str(out),
                               str(repo / "tests")], cwd=repo, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    logs = [p.communicate(timeout=180)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)
    s0, s1 = (json.loads((out / f"summary-rank{r}.json").read_text()) for r in range(2))
    assert s0 == s1 and s0["world_size"] == 2 and s0["selected_on"] == "val"
    # 6 training videos over 2 ranks, batch 2 per rank: 3 each -> batches of 2 and 1 (no drop: tiny data)
    assert (s0["num_train"], s0["num_val"], s0["steps_per_epoch"], s0["global_steps"]) == (6, 3, 2, 4)
    # the gathered held-out accuracy equals a single-process re-scoring of the kept classifier
    model, info = load_classifier(out / "classifier.pt")
    manifest = load_manifest(man)
    train = manifest.by_split("train")
    held = [train[i] for i in stratified_holdout(train, 0.25, 0)[1]]
    acc = _select_score(model, manifest, held, clip_len=CLIP_LEN, input_size=32, device="cpu", workers=0, dist=DIST)
    assert acc == s0["val_acc"] == info["selected_acc"]


def test_epoch_selector_keeps_the_earlier_of_equal_epochs_and_prunes_strays(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import student.finetune as ft

    scores = iter([0.5, 0.5, 0.75])
    monkeypatch.setattr(ft, "_select_score", lambda *a, **k: next(scores))
    plan = SimpleNamespace(select_on="val", manifest=None, select_entries=[], clip_len=4, select_note="", num_val=1,
                           proto=SimpleNamespace(name="custom", epochs=3))
    sel = ft.EpochSelector(plan, SimpleNamespace(input_size=32), SimpleNamespace(workers=0, select_on="val"), DIST,
                           "cpu", tmp_path)
    net = torch.nn.Linear(2, 2)
    record: dict = {}
    assert sel.select(net, 0, record) is None and record == {"val_top1": 0.5}
    assert sel.select(net, 1, {}) is None and sel.best == {"epoch": 1, "acc": 0.5}, "a tie keeps the earlier epoch"
    assert sel.select(net, 2, {}) == 1 and sel.best == {"epoch": 3, "acc": 0.75}
    sel.delete_best(1)
    (tmp_path / "best-e0002.pt").write_bytes(b"")  # left by a crash between best-e*.pt and last.pt
    sel.prune_stray_bests()
    assert sorted(p.name for p in tmp_path.glob("best-e*.pt")) == ["best-e0003.pt"]
    state, epoch, acc = sel.chosen(net)
    assert (epoch, acc) == (3, 0.75) and state.keys() == net.state_dict().keys()
    assert sel.summary(epoch, acc)["val_acc"] == 0.75 and sel.summary(epoch, acc)["test_acc_used_for_selection"] is None
