"""Each loss against a direct evaluation of its equation (explicit loops, float64 math)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from student.losses import avid_loss, kd_loss, rsp_loss


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def test_kd_loss_matches_eq4_loops():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 2, 4, generator=gen)
    teacher = torch.softmax(torch.randn(2, 3, 2, 4, generator=gen) * 2, dim=1)
    lg, tp = logits.double().numpy(), teacher.double().numpy()
    total = 0.0
    B, C, H, W = lg.shape
    for b in range(B):
        for i in range(H):
            for j in range(W):
                z = sum(math.exp(lg[b, c, i, j]) for c in range(C))
                for c in range(C):
                    total -= tp[b, c, i, j] * math.log(math.exp(lg[b, c, i, j]) / z)
    expected = total / (B * H * W)
    assert kd_loss(logits, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_loss_is_minimal_at_the_teacher_and_equals_its_entropy_there():
    gen = torch.Generator().manual_seed(1)
    teacher = torch.softmax(torch.randn(3, 5, 4, 4, generator=gen), dim=1)
    entropy = -(teacher * teacher.log()).sum(1).mean()
    at_teacher = kd_loss(teacher.log(), teacher)
    assert at_teacher.item() == pytest.approx(entropy.item(), rel=1e-5)
    assert kd_loss(teacher.log() + 0.3 * torch.randn(3, 5, 4, 4, generator=gen), teacher) > at_teacher
    # half-precision targets (the cache stores float16) are promoted, not truncated
    assert kd_loss(teacher.log(), teacher.half()).dtype == torch.float32


def test_kd_loss_rejects_misaligned_shapes():
    with pytest.raises(ValueError, match="same"):
        kd_loss(torch.zeros(1, 7, 28, 28), torch.zeros(1, 7, 14, 14))


def test_rsp_loss_matches_margin_ranking_equation():
    gen = torch.Generator().manual_seed(2)
    q, kp, kn = (torch.randn(6, 4, generator=gen) for _ in range(3))
    kp[0] = q[0] * 3.0          # s_pos = 1/τ, well beyond the margin: hinge inactive
    kn[1] = q[1]                # s_neg = 1/τ: large loss
    tau, margin = 0.5, 2.0
    losses, hits = [], []
    for n in range(6):
        a, p, m = (_unit(t[n].double().numpy()) for t in (q, kp, kn))
        s_pos, s_neg = float(a @ p) / tau, float(a @ m) / tau
        losses.append(max(0.0, margin - (s_pos - s_neg)))
        hits.append(s_pos > s_neg)
    res = rsp_loss(q, kp, kn, tau=tau, margin=margin)
    assert res.loss.item() == pytest.approx(sum(losses) / 6, rel=1e-5)
    assert res.acc.item() == pytest.approx(sum(hits) / 6)
    assert losses[1] > 0 and 0 in [round(v, 6) for v in losses]  # both hinge regimes exercised
    assert 0 < sum(hits) < 6


def test_rsp_loss_is_differentiable_and_pushes_the_right_way():
    q = torch.tensor([[1.0, 0.0]], requires_grad=True)
    res = rsp_loss(q, torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, -1.0]]), tau=1.0, margin=2.0)
    res.loss.backward()
    # s_pos - s_neg = 0 < margin; raising q's second coordinate moves q towards k_pos
    assert q.grad[0, 1] < 0


def test_avid_loss_matches_two_infonce_terms():
    gen = torch.Generator().manual_seed(3)
    N, D, K, tau = 3, 5, 7, 0.2
    q, kp, kn = (torch.randn(N, D, generator=gen) for _ in range(3))
    kp[0] = q[0]  # an easy positive
    queue = torch.nn.functional.normalize(torch.randn(K, D, generator=gen), dim=1)

    def info_nce(keys):
        total, hits = 0.0, 0
        for n in range(N):
            a, k = _unit(q[n].double().numpy()), _unit(keys[n].double().numpy())
            pos = math.exp(float(a @ k) / tau)
            negs = [math.exp(float(a @ queue[j].double().numpy()) / tau) for j in range(K)]
            total -= math.log(pos / (pos + sum(negs)))
            hits += pos > max(negs)
        return total / N, hits / N

    ce1, acc1 = info_nce(kp)
    ce2, acc2 = info_nce(kn)
    res = avid_loss(q, kp, kn, queue, tau=tau)
    assert res.loss.item() == pytest.approx(ce1 + ce2, rel=1e-5)
    assert res.acc_pos.item() == pytest.approx(acc1)
    assert res.acc_neg.item() == pytest.approx(acc2)
    assert acc1 > 0


def test_avid_loss_rejects_a_queue_of_the_wrong_width():
    with pytest.raises(ValueError, match="queue must be"):
        avid_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(4, 8))
