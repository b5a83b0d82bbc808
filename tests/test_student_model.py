"""MultiTaskStudent, its ablations, the finetune classifier, MoCo pieces and the pretraining forward."""
from __future__ import annotations

import copy
import pytest
import torch
import torch.multiprocessing as mp

from student.backbones import build_backbone
from student.heads import ParsingDecoder
from student.model import ClassifierModel, MultiTaskStudent, load_encoders, load_rspnet_heads
from student.moco import KeyQueue, MomentumEncoder, batch_shuffle_ddp, batch_unshuffle_ddp, momentum_update
from student.pretrain_model import PretrainModel

W = 0.125          # 64 output channels
C = 64


def _clips(b: int, seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.randn(b, 3, 8, size, size, generator=torch.Generator().manual_seed(seed))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _target(b: int, parts: int = 7, size: int = 28) -> torch.Tensor:
    return torch.softmax(torch.randn(b, parts, size, size, generator=torch.Generator().manual_seed(9)), dim=1)


# ---------------------------------------------------------------- student and ablations

@pytest.mark.parametrize("backbone", ["c3d", "r2plus1d", "r3d18"])
def test_forward_outputs_and_representation(backbone):
    torch.manual_seed(0)
    s = MultiTaskStudent(backbone, width=W, num_parts=5, parse_size=16).eval()
    x = _clips(2)
    with torch.no_grad():
        out = s(x)
        rep = s.representation(x)
    assert out["parse_logits"].shape == (2, 5, 16, 16)
    assert out["emb_m"].shape == out["emb_a"].shape == (2, 128)
    torch.testing.assert_close(out["emb_a"].norm(dim=1), torch.ones(2))
    assert out["z_h"].shape == out["z_c"].shape and out["z_c"].shape[1] == C
    assert s.feature_dim == 2 * C and rep.shape == (2, 2 * C)
    torch.testing.assert_close(rep, torch.cat([out["z_h"].mean((2, 3, 4)), out["z_c"].mean((2, 3, 4))], 1))
    assert not torch.allclose(rep[:, :C], rep[:, C:])  # two distinct encoders


def test_ablation_structure_and_parameter_counts():
    torch.manual_seed(0)
    full = MultiTaskStudent("c3d", width=0.25)
    ti = MultiTaskStudent("c3d", width=0.25, task_dependent=False)
    no_kd = MultiTaskStudent("c3d", width=0.25, kd=False)
    no_kd_ti = MultiTaskStudent("c3d", width=0.25, kd=False, task_dependent=False)
    high, dec = _count(full.h_c), _count(full.g_h)
    # full: two distinct instances of the high part
    assert full.h_h is not full.h_c
    assert not {id(p) for p in full.h_h.parameters()} & {id(p) for p in full.h_c.parameters()}
    # TI: the same module, counted once, registered once
    assert ti.h_h is ti.h_c and ti.highs() == [ti.h_c]
    assert not any(k.startswith("h_h.") for k in ti.state_dict())
    assert _count(full) - _count(ti) == high
    # w/o KD: no h_h, no decoder, representation = GAP(z_c) of 512*width
    assert no_kd.h_h is None and no_kd.g_h is None
    assert not any(n.startswith(("h_h.", "g_h.")) for n, _ in no_kd.named_parameters())
    assert _count(full) - _count(no_kd) == high + dec
    assert _count(ti) - _count(no_kd_ti) == dec and _count(no_kd) == _count(no_kd_ti)
    assert no_kd.feature_dim == ti.feature_dim == 512 * 0.25 and full.feature_dim == 2 * 128
    x = _clips(2)
    out = no_kd.eval()(x)
    assert out["z_h"] is None and out["parse_logits"] is None
    with torch.no_grad():
        torch.testing.assert_close(no_kd.representation(x), out["z_c"].mean((2, 3, 4)))
        out_ti = ti.eval()(x)
        assert out_ti["z_h"] is out_ti["z_c"]
        assert ti.representation(x).shape == (2, 128)  # TI: GAP(z) once, not twice


def test_decoder_averages_time_and_upsamples():
    torch.manual_seed(0)
    dec = ParsingDecoder(16, num_parts=4, parse_size=12).eval()
    z = torch.randn(2, 16, 3, 3, 3)
    y = dec(z)
    assert y.shape == (2, 4, 12, 12)
    torch.testing.assert_close(dec(z.flip(2)), y)                       # order of time is irrelevant
    torch.testing.assert_close(dec(z.mean(2, keepdim=True).expand_as(z)), y, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- finetune classifier

def test_classifier_shares_encoders_drops_heads_and_gives_cams():
    torch.manual_seed(0)
    s = MultiTaskStudent("c3d", width=W)
    clf = ClassifierModel(s, num_classes=5).eval()
    assert clf.f_l is s.f_l and clf.h_h is s.h_h and clf.h_c is s.h_c
    assert not any(n.startswith("g_") for n, _ in clf.named_parameters())
    assert clf.fc.in_features == 2 * C
    x = _clips(3, size=48)  # 3×3 maps: a CAM with spatial extent
    with torch.no_grad():
        logits = clf(x)
        maps, logits2 = clf.features_and_logits(x)
        cams, logits3 = clf.class_activation_maps(x, classes=torch.tensor([0, 4, 2]))
    torch.testing.assert_close(logits, clf.fc(s.representation(x)))
    torch.testing.assert_close(logits2, logits)
    assert len(maps) == len(cams) == 2 and cams[0].shape == maps[0].shape[:1] + maps[0].shape[2:]
    # CAM averaged over positions, summed over branches, plus bias = the class logit
    per_class = sum(c.mean(dim=(1, 2, 3)) for c in cams) + clf.fc.bias[[0, 4, 2]]
    torch.testing.assert_close(per_class, logits3[torch.arange(3), [0, 4, 2]], rtol=1e-4, atol=1e-5)
    ti = ClassifierModel(MultiTaskStudent("c3d", width=W, task_dependent=False), 3)
    assert ti.fc.in_features == C and len(ti.cam_weights()) == 1


def test_from_pretrained_reads_a_pretraining_checkpoint(tmp_path):
    torch.manual_seed(0)
    kw = dict(backbone="c3d", width=W)
    pm = PretrainModel(**kw, queue_size=32)
    path = tmp_path / "pretrain.pt"
    torch.save({"model": pm.state_dict(), "epoch": 3}, path)
    torch.manual_seed(1)
    clf = ClassifierModel.from_pretrained(path, num_classes=4, **kw)
    for name in ("f_l", "h_h", "h_c"):
        for (k, a), b in zip(getattr(clf, name).state_dict().items(), getattr(pm.student, name).state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    # DDP-wrapped and bare student state dicts load too
    s2 = MultiTaskStudent(**kw)
    ignored = load_encoders(s2, {f"module.{k}": v for k, v in pm.state_dict().items()})
    assert torch.equal(s2.h_h.conv5b.weight, pm.student.h_h.conv5b.weight)
    assert any(k.startswith("g_m.") for k in ignored) and not any(k.startswith("key_encoder") for k in ignored)
    # a task-dependent checkpoint does not silently load into a TI model
    with pytest.raises(ValueError, match=r"unexpected .*h_h\."):
        ClassifierModel.from_pretrained(path, 4, **kw, task_dependent=False)


def test_rspnet_release_loads_into_every_encoder_and_heads():
    torch.manual_seed(0)
    src = build_backbone("r2plus1d", W)
    model = {"encoder_q.encoder." + k: torch.randn_like(v.float()).to(v.dtype) for k, v in src.state_dict().items()}
    model.update({"encoder_q.fc1.2.weight": torch.randn(128, C), "encoder_q.fc1.2.bias": torch.randn(128),
                  "encoder_q.fc2.2.weight": torch.randn(128, C), "encoder_q.fc2.2.bias": torch.randn(128)})
    s = MultiTaskStudent("r2plus1d", width=W)
    load_encoders(s, {"model": model})
    load_rspnet_heads(s, {"model": model})
    assert torch.equal(s.f_l.conv1.spatial_conv.weight, model["encoder_q.encoder.conv1.spatial_conv.weight"])
    for h in (s.h_h, s.h_c):
        assert torch.equal(h.conv5.block1.conv2.temporal_conv.weight,
                           model["encoder_q.encoder.conv5.block1.conv2.temporal_conv.weight"])
    assert torch.equal(s.g_a[2].weight, model["encoder_q.fc1.2.weight"])
    assert torch.equal(s.g_m[2].bias, model["encoder_q.fc2.2.bias"])


# ---------------------------------------------------------------- MoCo pieces

def test_momentum_update_formula_params_only_buffers_copied():
    torch.manual_seed(0)
    q = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    k = copy.deepcopy(q)
    for p in k.parameters():
        p.data.normal_()
    q[1].running_mean.fill_(0.7)
    before = [p.clone() for p in k.parameters()]
    momentum_update([q], [k], 0.9)
    for pk, pq, pb in zip(k.parameters(), q.parameters(), before):
        torch.testing.assert_close(pk, 0.9 * pb + 0.1 * pq)
    assert torch.equal(k[1].running_mean, torch.full((2,), 0.7))


def test_momentum_encoder_is_a_frozen_copy_of_the_contrastive_path():
    torch.manual_seed(0)
    s = MultiTaskStudent("c3d", width=W, kd=False).eval()
    k = MomentumEncoder(s.f_l, s.h_c, s.g_m, s.g_a).eval()
    assert not {id(p) for p in k.parameters()} & {id(p) for p in s.parameters()}
    assert all(not p.requires_grad for p in k.parameters())
    x = _clips(2)
    with torch.no_grad():
        out = s(x)
        emb_m, emb_a = k(x)
    torch.testing.assert_close(emb_m, out["emb_m"])
    torch.testing.assert_close(emb_a, out["emb_a"])
    with torch.no_grad():
        for p in s.parameters():
            p.add_(1.0)
    k.update(s.f_l, s.h_c, s.g_m, s.g_a, m=0.0)  # m = 0: the key encoder becomes the query encoder
    assert all(torch.equal(a, b) for a, b in zip(k.g_a.parameters(), s.g_a.parameters()))


def test_key_queue_wraps_around():
    torch.manual_seed(0)
    qu = KeyQueue(dim=2, size=5)
    torch.testing.assert_close(qu.queue.norm(dim=1), torch.ones(5))
    rows = torch.arange(24, dtype=torch.float32).view(12, 2)
    qu.enqueue(rows[:3])
    qu.enqueue(rows[3:6])                       # wraps: rows 3,4 at slots 3,4; row 5 at slot 0
    assert int(qu.ptr) == 1
    assert torch.equal(qu.queue, rows[[5, 1, 2, 3, 4]])
    qu.enqueue(rows[6:12])                      # more than size: the last 5, as if written one by one
    assert int(qu.ptr) == (1 + 6) % 5
    expected = torch.empty(5, 2)
    for i in range(6, 12):
        expected[(1 + i - 6) % 5] = rows[i]
    assert torch.equal(qu.queue, expected)
    assert set(qu.state_dict()) == {"queue", "ids", "ptr"}
    assert qu.ids.tolist() == [-1] * 5  # enqueued without ids


def test_shuffle_unshuffle_single_process_roundtrip():
    torch.manual_seed(0)
    x = torch.arange(6.0).view(6, 1)
    shuffled, idx = batch_shuffle_ddp(x)
    assert sorted(shuffled.flatten().tolist()) == x.flatten().tolist()
    assert torch.equal(batch_unshuffle_ddp(shuffled, idx), x)


# ---------------------------------------------------------------- pretraining forward

def test_pretrain_step_losses_momentum_update_and_queue():
    torch.manual_seed(0)
    m = PretrainModel("c3d", width=W, queue_size=10, momentum=0.9, lambda_kd=0.5, lambda_m=2.0, lambda_a=3.0)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    assert all(not p.requires_grad for p in m.key_encoder.parameters())
    assert all(p.requires_grad for p in m.student.parameters())
    # key encoder starts as an exact copy of (f_l, h_c, g_m, g_a)
    assert all(torch.equal(a, b) for a, b in zip(m.key_encoder.h_c.parameters(), m.student.h_c.parameters()))
    k0 = [p.detach().clone() for p in m.key_encoder.f_l.parameters()]
    k_ref = copy.deepcopy(m.key_encoder)
    for p in m.student.f_l.parameters():       # make q and k differ so the formula is visible
        p.data.add_(0.01)
    q0 = [p.detach().clone() for p in m.student.f_l.parameters()]
    B = 4
    query, kpos, kneg = _clips(B, 1), _clips(B, 2), _clips(B, 3)
    out = m(query, kpos, kneg, _target(B))
    assert set(out) == {"loss", "loss_kd", "loss_rsp", "loss_avid", "acc_rsp", "acc_avid_pos", "acc_avid_neg"}
    expected_loss = 0.5 * out["loss_kd"] + 2.0 * out["loss_rsp"] + 3.0 * out["loss_avid"]
    torch.testing.assert_close(out["loss"].detach(), expected_loss)
    # momentum update in forward: k1 = m*k0 + (1-m)*q
    for pk, a, b in zip(m.key_encoder.f_l.parameters(), k0, q0):
        torch.testing.assert_close(pk, 0.9 * a + 0.1 * b)
    k1 = [p.detach().clone() for p in m.key_encoder.parameters()]
    # MoCo's order: the keys (and so the queue) come from the key encoder AFTER this step's update
    with torch.no_grad():
        _, expected = copy.deepcopy(m.key_encoder)(kneg)
        _, stale = k_ref(kneg)
    assert not torch.allclose(m.queue.queue[:B], stale, atol=1e-4)
    assert int(m.queue.ptr) == B
    torch.testing.assert_close(m.queue.queue[:B], expected, rtol=1e-4, atol=1e-5)
    # backward + step: every trainable parameter got a gradient (DDP without find_unused_parameters),
    # the key encoder got none and did not move
    opt.zero_grad()
    out["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    opt.step()
    assert all(p.grad is None for p in m.key_encoder.parameters())
    assert all(torch.equal(a, b) for a, b in zip(m.key_encoder.parameters(), k1))
    assert {"key_encoder.g_a.2.weight", "queue.queue", "queue.ptr"} <= set(m.state_dict())


@pytest.mark.parametrize("kw", [dict(task_dependent=False), dict(kd=False)])
def test_pretrain_ablations_use_every_parameter(kw):
    torch.manual_seed(0)
    m = PretrainModel("r2plus1d", width=W, queue_size=8, **kw)
    out = m(_clips(2, 1), _clips(2, 2), _clips(2, 3), None if kw.get("kd") is False else _target(2))
    out["loss"].backward()
    assert [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None] == []
    if kw.get("kd") is False:
        assert out["loss_kd"].item() == 0.0
        torch.testing.assert_close(out["loss"].detach(), out["loss_rsp"] + out["loss_avid"])


def test_eval_mode_changes_no_state():
    torch.manual_seed(0)
    m = PretrainModel("c3d", width=W, queue_size=8, kd=False).eval()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m(_clips(2, 1), _clips(2, 2), _clips(2, 3))
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="teacher_target"):
        PretrainModel("c3d", width=W, queue_size=8)(_clips(2), _clips(2), _clips(2))


# ---------------------------------------------------------------- two processes (gloo)

def _ddp_steps(rank: int, queue_out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    # shuffle-BN: every rank gets back exactly its own rows
    x = torch.arange(4.0).view(4, 1) + 10 * rank
    shuffled, idx = batch_shuffle_ddp(x)
    assert torch.equal(batch_unshuffle_ddp(shuffled, idx), x)
    torch.manual_seed(0)  # same init on every rank
    model = DDP(PretrainModel("c3d", width=W, queue_size=6, kd=False))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    clip = lambda seed: torch.randn(2, 3, 8, 16, 16, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    for step in range(2):  # per-rank data
        out = model(clip(10 * rank + step), clip(50 + 10 * rank + step), clip(90 + 10 * rank + step))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    inner = model.module
    torch.save({"queue": inner.queue.queue, "ptr": inner.queue.ptr, "key": inner.key_encoder.g_a[2].weight,
                "query": inner.student.g_a[2].weight.detach()}, f"{queue_out}.{rank}")


def _ddp_worker(rank: int, world: int, store: str, queue_out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        _ddp_steps(rank, queue_out)  # DDP objects are gone before the group is destroyed
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_share_one_queue(tmp_path):
    world = 2
    out = str(tmp_path / "q")
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "store"), out), nprocs=world, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in range(world))
    assert int(r0["ptr"]) == int(r1["ptr"]) == (2 * 2 * world) % 6   # 2 steps × 2 keys × 2 ranks
    assert torch.equal(r0["queue"], r1["queue"]) and torch.equal(r0["key"], r1["key"])
    assert torch.equal(r0["query"], r1["query"])  # gradients were all-reduced


def test_queue_keeps_video_ids_and_same_video_keys_are_not_negatives():
    from student.losses import avid_loss

    qu = KeyQueue(dim=4, size=6)
    keys = torch.nn.functional.normalize(torch.randn(4, 4), dim=1)
    qu.enqueue(keys, torch.tensor([7, 8, 9, 7]))
    assert qu.ids.tolist() == [7, 8, 9, 7, -1, -1]
    queue, ids = qu.snapshot()
    q = keys[:1].clone()                      # a query identical to its own video's queued keys (7)
    k = torch.nn.functional.normalize(q + 0.3 * torch.randn(1, 4), dim=1)
    plain = avid_loss(q, k, k, queue, 0.07)
    masked = avid_loss(q, k, k, queue, 0.07, query_ids=torch.tensor([7]), queue_ids=ids)
    assert plain.acc_pos.item() == 0.0            # its own video's key beats the positive
    assert masked.acc_pos.item() == 1.0           # ... unless same-video rows are left out
    assert masked.loss.item() < plain.loss.item()
    # by hand: the masked loss equals the plain loss over the queue without rows 0 and 3
    by_hand = avid_loss(q, k, k, queue[[1, 2, 4, 5]], 0.07)
    torch.testing.assert_close(masked.loss, by_hand.loss)
    # ids -1 (initial random rows) are always negatives, whatever the query's id
    masked_neg1 = avid_loss(q, k, k, queue, 0.07, query_ids=torch.tensor([-1]), queue_ids=ids)
    torch.testing.assert_close(masked_neg1.loss, plain.loss)


def test_pretrain_forward_enqueues_video_ids_and_queue_is_trimmed_to_the_batch():
    from student.moco import trimmed_queue_size

    assert trimmed_queue_size(100, 16) == 96 and trimmed_queue_size(512, 16) == 512
    from pipeline.core.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrain.queue_size = 8"):  # a user's setting: one line, no traceback
        trimmed_queue_size(8, 16)
    torch.manual_seed(0)
    m = PretrainModel("c3d", width=W, queue_size=8, kd=False)
    m(_clips(2, 1), _clips(2, 2), _clips(2, 3), None, torch.tensor([4, 11]))
    assert m.queue.ids.tolist()[:2] == [4, 11] and int(m.queue.ptr) == 2


def test_queue_size_not_well_below_the_videos_is_warned(caplog):
    import logging

    from student.pretrain import warn_queue_size

    with caplog.at_level(logging.WARNING, logger="student.pretrain"):
        warn_queue_size(128, 420, True)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="student.pretrain"):
        warn_queue_size(512, 150, False)
    (record,) = caplog.records
    assert "3.4 keys of its own video" in record.getMessage() and "exclude_same_video" in record.getMessage()


def test_avid_key_is_both_avid_positives_and_the_key_enqueued_while_rsp_keeps_its_keys():
    """pretrain.avid_own_colour: A-VID = ce(k_a) + ce(k_a) on the A-VID key through the key encoder, RSP unchanged,
    the A-VID key joins the queue; without it the other-speed key does."""
    from student.losses import avid_loss, rsp_loss

    torch.manual_seed(0)
    m = PretrainModel("c3d", width=W, queue_size=8, momentum=0.9, kd=False)
    q, kp, kn, ka = _clips(2, 1), _clips(2, 2), _clips(2, 3), _clips(2, 4)
    ids = torch.tensor([3, 5])
    rows = torch.nn.functional.normalize(torch.randn(8, 128, generator=torch.Generator().manual_seed(5)), dim=1)
    m.queue.enqueue(rows, torch.arange(8))
    m.eval()  # no momentum update, no enqueue: the same state for both calls and the reference
    with torch.no_grad():
        plain, own = m(q, kp, kn, None, ids), m(q, kp, kn, None, ids, key_avid=ka)
        out = m.student(q)
        kp_m, _ = m.key_encoder(kp)
        kn_m, _ = m.key_encoder(kn)
        _, ka_a = m.key_encoder(ka)
        queue, queue_ids = m.queue.snapshot()
        rsp = rsp_loss(out["emb_m"], kp_m, kn_m, m.tau, m.margin)
        avid = avid_loss(out["emb_a"], ka_a, ka_a, queue, m.tau, query_ids=ids, queue_ids=queue_ids)
    torch.testing.assert_close(own["loss_rsp"], plain["loss_rsp"])
    torch.testing.assert_close(own["loss_rsp"], rsp.loss)
    torch.testing.assert_close(own["loss_avid"], avid.loss)
    assert not torch.allclose(own["loss_avid"], plain["loss_avid"])
    m.train()
    m.momentum = 1.0  # keep the key encoder where it is, so the enqueued rows can be recomputed
    m(q, kp, kn, None, ids, key_avid=ka)
    with torch.no_grad():
        _, ka_a = m.key_encoder(ka)
    torch.testing.assert_close(m.queue.queue[:2], ka_a, rtol=1e-4, atol=1e-5)  # the queue had wrapped to row 0
    with pytest.raises(ValueError, match=r"key_avid \(2, 3, 4, 16, 16\) must have the same shape"):
        m(q, kp, kn, None, ids, key_avid=_clips(2, 4)[:, :, :4])


def test_project_conflicting_removes_the_conflicting_component_per_sample_only():
    from student.grad_surgery import project_conflicting, split_projected

    against = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [1.0, 1.0, 0.0]])
    grad = torch.tensor([[-1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, -2.0, 3.0], [0.0, 0.0, 1.0]])
    torch.testing.assert_close(project_conflicting(grad, against),
                               torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0]]))
    z = torch.randn(4, 3, requires_grad=True)
    z_m, z_a = split_projected(z)
    torch.testing.assert_close(z_m, z)
    torch.testing.assert_close(z_a, z)
    ((z_m * against).sum() + (z_a * grad).sum()).backward()
    torch.testing.assert_close(z.grad, against + project_conflicting(grad, against))


def test_avid_projection_changes_only_what_reaches_the_contrastive_encoder():
    """pretrain.avid_projection: same losses and head gradients; h_c gets ∂RSP/∂z_c + the projected ∂A-VID/∂z_c,
    backpropagated, which differs from the plain sum."""
    torch.manual_seed(0)
    plain = PretrainModel("c3d", width=W, queue_size=8, momentum=0.9, kd=False, lambda_a=0.5).eval()
    proj = copy.deepcopy(plain)
    proj.avid_projection = True
    q, kp, kn = _clips(4, 1), _clips(4, 2), _clips(4, 3)
    with torch.no_grad():  # keys of other clips: as close to the query as its positives, so A-VID has a gradient
        rows = plain.key_encoder(_clips(8, 7))[1]
    for m in (plain, proj):
        m.queue.enqueue(rows, torch.arange(8))
    a, b = plain(q, kp, kn), proj(q, kp, kn)
    for k in ("loss", "loss_rsp", "loss_avid"):
        torch.testing.assert_close(a[k], b[k])
    a["loss"].backward()
    b["loss"].backward()
    for head in ("g_m", "g_a"):
        for (n, pa), pb in zip(getattr(plain.student, head).named_parameters(),
                               getattr(proj.student, head).parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, msg=f"{head}.{n}")
    # the reference: per-task gradients on z_c, projected by hand, backpropagated into a fresh copy's h_c
    ref = copy.deepcopy(plain)
    ref.zero_grad(set_to_none=True)
    from student.losses import avid_loss, rsp_loss
    out = ref.student(q)
    z_c = out["z_c"]
    with torch.no_grad():
        kp_m, kp_a = ref.key_encoder(kp)
        kn_m, kn_a = ref.key_encoder(kn)
    queue, _ = ref.queue.snapshot()
    rsp = rsp_loss(ref.student.g_m(z_c), kp_m, kn_m, ref.tau, ref.margin).loss * ref.lambda_m
    avid = avid_loss(ref.student.g_a(z_c), kp_a, kn_a, queue, ref.tau).loss * ref.lambda_a
    (g_m,) = torch.autograd.grad(rsp, z_c, retain_graph=True)
    (g_a,) = torch.autograd.grad(avid, z_c, retain_graph=True)
    conflicting = ((g_m * g_a).flatten(1).sum(1) < 0).sum()
    assert conflicting > 0, "the fixture must have a conflicting sample for the test to mean anything"
    z_c.backward(g_m + project_conflicting_ref(g_a, g_m))
    change = []
    for (n, pr), pb, pa in zip(ref.student.h_c.named_parameters(), proj.student.h_c.parameters(),
                               plain.student.h_c.parameters()):
        torch.testing.assert_close(pb.grad, pr.grad, rtol=1e-4, atol=1e-9, msg=f"h_c.{n}")
        change.append(float((pa.grad - pb.grad).norm() / pa.grad.norm()))
    assert max(change) > 1e-3, change


def project_conflicting_ref(grad: torch.Tensor, against: torch.Tensor) -> torch.Tensor:
    """PCGrad's projection, sample by sample, written out."""
    rows = []
    for g, a in zip(grad, against):
        dot = (g * a).sum()
        rows.append(g - dot / (a * a).sum() * a if dot < 0 else g)
    return torch.stack(rows)
