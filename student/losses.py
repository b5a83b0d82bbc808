"""The three pretraining losses (paper Eq. 4 and 6; RSPNet's RSP and A-VID).

Embeddings are compared by cosine similarity: q and k are L2-normalised here (the heads already
output unit vectors, so this is idempotent for them) and queue rows are assumed unit-norm.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F


class RspResult(NamedTuple):
    loss: torch.Tensor  # scalar, differentiable
    acc: torch.Tensor   # scalar, fraction with s_pos > s_neg (no gradient)


class AvidResult(NamedTuple):
    loss: torch.Tensor     # ce1 + ce2
    acc_pos: torch.Tensor  # top-1 of the same-speed positive against the queue
    acc_neg: torch.Tensor  # top-1 of the other-speed positive against the queue


def kd_loss(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 4, soft cross-entropy against the teacher's parsing:

        L_KL = −1/(B·h·w) Σ_b Σ_{i,j} Σ_c F_t(b,c,i,j) · log softmax_c(logits)(b,c,i,j)

    ``logits`` (B, C, h, w) from g_h; ``teacher_probs`` (B, C, h, w) softmax maps already at the
    logits' resolution. (Named KL in the paper; it differs from KL(F_t‖F_h) by the teacher's
    entropy, a constant, so the gradients are the same.) Computed in float32.
    """
    if logits.shape != teacher_probs.shape:
        raise ValueError(f"kd_loss: logits {tuple(logits.shape)} and teacher_probs {tuple(teacher_probs.shape)} "
                         "must have the same (B, C, h, w) shape")
    logp = F.log_softmax(logits.float(), dim=1)
    return -(teacher_probs.float() * logp).sum(dim=1).mean()


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (F.normalize(a.float(), dim=1) * F.normalize(b.float(), dim=1)).sum(dim=1)


def rsp_loss(q: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor, tau: float = 0.07,
             margin: float = 2.0) -> RspResult:
    """Relative speed perception (RSPNet), paper Eq. 6 L_m, margin ranking on scaled cosines:

        s⁺ = cos(q, k⁺)/τ,  s⁻ = cos(q, k⁻)/τ,  L_m = 1/N Σ_n max(0, γ − (s⁺_n − s⁻_n))

    q (N, D) g_m(query); k⁺ the key clip at the SAME speed; k⁻ the key clip at the other speed.
    Computed directly (RSPNet's MarginRankingLoss call with (N,1) scores and (N,) targets is
    rejected by current PyTorch). ``acc`` = mean(s⁺ > s⁻).
    """
    s_pos = _cos(q, k_pos) / tau
    s_neg = _cos(q, k_neg) / tau
    loss = torch.clamp(margin - (s_pos - s_neg), min=0).mean()
    return RspResult(loss, (s_pos > s_neg).float().mean().detach())


def _info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, tau: float,
              exclude: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    qn = F.normalize(q.float(), dim=1)
    l_pos = (qn * F.normalize(k.float(), dim=1)).sum(dim=1, keepdim=True)
    l_neg = qn @ queue.float().t()
    if exclude is not None:  # (N, K) True where a queue row is not a negative of that query
        l_neg = l_neg.masked_fill(exclude, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / tau
    target = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    acc = (logits[:, 0] > logits[:, 1:].max(dim=1).values).float().mean()
    return F.cross_entropy(logits, target), acc.detach()


def avid_loss(q: torch.Tensor, k_pos: torch.Tensor, k_neg: torch.Tensor, queue: torch.Tensor,
              tau: float = 0.07, query_ids: torch.Tensor | None = None,
              queue_ids: torch.Tensor | None = None) -> AvidResult:
    """Appearance-focused video instance discrimination (RSPNet), paper Eq. 6 L_a, twice:

        ce(k) = −1/N Σ_n log( exp(q_n·k_n/τ) / (exp(q_n·k_n/τ) + Σ_{j=1}^K exp(q_n·Q_j/τ)) )
        L_a = ce(k⁺) + ce(k⁻)

    q (N, D) g_a(query); k⁺ key clip at the same speed, k⁻ the same key window at the other
    speed (both are positives: same video); queue Q (K, D) unit-norm negatives from other
    videos. Pass a detached copy of the live queue (the caller enqueues in place afterwards).
    Accuracies: fraction of rows whose positive beats every queue entry.

    With ``query_ids`` (N,) and ``queue_ids`` (K,) (video ids), queue rows of a query's own video
    are left out of its negatives (their logits set to −inf), so a query is never pushed away
    from its own video; rows with id −1 are always negatives.
    """
    if queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"avid_loss: queue must be (K, {q.shape[1]}), got {tuple(queue.shape)}")
    exclude = None
    if query_ids is not None and queue_ids is not None:
        if queue_ids.shape != (queue.shape[0],) or query_ids.shape != (q.shape[0],):
            raise ValueError(f"avid_loss: query_ids must be ({q.shape[0]},) and queue_ids ({queue.shape[0]},), got "
                             f"{tuple(query_ids.shape)} and {tuple(queue_ids.shape)}")
        exclude = (query_ids.view(-1, 1) == queue_ids.view(1, -1)) & (queue_ids.view(1, -1) >= 0)
    ce1, acc1 = _info_nce(q, k_pos, queue, tau, exclude)
    ce2, acc2 = _info_nce(q, k_neg, queue, tau, exclude)
    return AvidResult(ce1 + ce2, acc1, acc2)
