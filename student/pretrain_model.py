"""The full pretraining forward: query and key clips → the loss dict (paper Eq. 7).

    L = λ_k·L_KL(g_h(z_h(query)), teacher) + λ_m·L_m(RSP) + λ_a·L_a(A-VID)

Per step (``forward``):
  1. the query clip runs through the student (f_l, h_h → g_h, h_c → g_m, g_a); the KD branch runs
     on the query clip only;
  2. only in training mode: the key encoder moves towards the query encoder
     (θ_k ← mθ_k + (1−m)θ_q), before it encodes this step's keys, as MoCo and RSPNet do;
  3. the positive key (same speed as the query, another window of the same video) and the
     negative key (that key window at the other speed) run through the key encoder under
     no_grad, with shuffle-BN;
  4. the losses are computed (in float32, outside autocast) against a detached copy of the
     queue, leaving out queue rows of the query's own video when video ids are given;
  5. only in training mode: the other-speed keys' A-VID embeddings and their video ids
     (gathered from every rank) are enqueued, as RSPNet fills its queue.
With an A-VID key (``key_avid``: the positive key's window and crop with its own colour draw, for
``pretrain.avid_own_colour``), A-VID takes it for both of its positives and it is the key enqueued;
RSP keeps key_pos and key_neg. One more key-encoder pass per step.
With ``avid_projection`` the heads read z_c through ``student.grad_surgery.split_projected``: per sample,
the A-VID gradient loses its component along the RSP gradient where they conflict.
The update in 2 reads only the query encoder's current weights, so a resumed checkpoint replays
exactly. ``eval()`` computes the same losses and changes no state.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.core.distributed import all_gather_tensor
from student.grad_surgery import split_projected
from student.losses import avid_loss, kd_loss, rsp_loss
from student.model import MultiTaskStudent
from student.moco import KeyQueue, MomentumEncoder, batch_shuffle_ddp, batch_unshuffle_ddp


class PretrainModel(nn.Module):
    """Student + momentum key encoder + key queue; ``state_dict`` holds all three."""

    def __init__(self, backbone: str = "c3d", width: float = 1.0, split_after: int = 3, num_parts: int = 7,
                 parse_size: int = 28, kd: bool = True, task_dependent: bool = True, proj_dim: int = 128,
                 decoder_channels: int | None = None, queue_size: int = 16384, momentum: float = 0.999,
                 tau: float = 0.07, margin: float = 2.0, lambda_kd: float = 1.0, lambda_m: float = 1.0,
                 lambda_a: float = 1.0, exclude_same_video: bool = True, decoder_upscale: int = 1,
                 avid_projection: bool = False) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"PretrainModel: momentum must be in [0, 1], got {momentum}")
        self.student = MultiTaskStudent(backbone, width, split_after, num_parts, parse_size, kd, task_dependent,
                                        proj_dim, decoder_channels, decoder_upscale)
        s = self.student
        self.key_encoder = MomentumEncoder(s.f_l, s.h_c, s.g_m, s.g_a)
        self.queue = KeyQueue(proj_dim, queue_size)
        self.momentum, self.tau, self.margin = momentum, tau, margin
        self.exclude_same_video = exclude_same_video
        self.avid_projection = avid_projection
        self.lambda_kd, self.lambda_m, self.lambda_a = lambda_kd, lambda_m, lambda_a

    @property
    def kd(self) -> bool:
        return self.student.kd

    @torch.no_grad()
    def _keys(self, clips: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(emb_m, emb_a) of key clips from the key encoder, with shuffle-BN."""
        shuffled, idx_unshuffle = batch_shuffle_ddp(clips)
        emb_m, emb_a = self.key_encoder(shuffled)
        return batch_unshuffle_ddp(emb_m, idx_unshuffle), batch_unshuffle_ddp(emb_a, idx_unshuffle)

    def forward(self, query: torch.Tensor, key_pos: torch.Tensor, key_neg: torch.Tensor,
                teacher_target: torch.Tensor | None = None,
                video_ids: torch.Tensor | None = None,
                key_avid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Clips (B, 3, T, H, W); ``teacher_target`` (B, num_parts, S, S) probabilities already cut and
        resampled to the decoder's S (required when kd, ignored otherwise); ``video_ids`` (B,) the
        clips' video indices: queued with the keys and, with ``exclude_same_video``, used to leave a
        query's own video out of its A-VID negatives; ``key_avid`` (B, 3, T, H, W) the A-VID key, when
        it is not key_pos (see the module docstring).

        Returns ``loss`` (differentiable) and detached ``loss_kd`` (0 without KD), ``loss_rsp``,
        ``loss_avid``, ``acc_rsp``, ``acc_avid_pos``, ``acc_avid_neg``.
        """
        clips = {"query": query, "key_pos": key_pos, "key_neg": key_neg,
                 **({} if key_avid is None else {"key_avid": key_avid})}
        if len({c.shape for c in clips.values()}) > 1:
            raise ValueError("PretrainModel: " + ", ".join(f"{n} {tuple(c.shape)}" for n, c in clips.items())
                             + " must have the same shape")
        if self.kd and teacher_target is None:
            raise ValueError("PretrainModel: kd=True needs teacher_target (B, num_parts, S, S)")
        out = self.student(query)
        if self.avid_projection:  # the heads again, on copies of z_c whose backward projects A-VID off RSP
            z_m, z_a = split_projected(out["z_c"])  # type: ignore[arg-type]
            out["emb_m"], out["emb_a"] = self.student.g_m(z_m), self.student.g_a(z_a)
        if self.training:  # MoCo's order: the key encoder moves towards the query encoder, then encodes
            s = self.student
            self.key_encoder.update(s.f_l, s.h_c, s.g_m, s.g_a, self.momentum)
        kp_m, kp_a = self._keys(key_pos)
        kn_m, kn_a = self._keys(key_neg)
        if key_avid is not None:  # A-VID's own-colour key is both of its positives
            kp_a = kn_a = self._keys(key_avid)[1]
        queue, queue_ids = self.queue.snapshot()
        exclude = self.exclude_same_video and video_ids is not None

        # Losses outside autocast: under bf16 the InfoNCE matmul against the 16k-key queue would run in bf16.
        with torch.autocast(query.device.type, enabled=False):
            if self.kd:
                loss_kd = kd_loss(out["parse_logits"], teacher_target)  # type: ignore[arg-type]
            else:
                loss_kd = query.new_zeros((), dtype=torch.float32)
            rsp = rsp_loss(out["emb_m"], kp_m, kn_m, self.tau, self.margin)  # type: ignore[arg-type]
            avid = avid_loss(out["emb_a"], kp_a, kn_a, queue, self.tau,  # type: ignore[arg-type]
                             query_ids=video_ids if exclude else None, queue_ids=queue_ids if exclude else None)
        loss = self.lambda_kd * loss_kd + self.lambda_m * rsp.loss + self.lambda_a * avid.loss

        if self.training:  # the other-speed (or A-VID) keys of every rank join the queue (as RSPNet fills it)
            with torch.no_grad():
                ids = video_ids if video_ids is not None else torch.full((kn_a.shape[0],), -1, device=kn_a.device)
                # one collective for keys and ids: video ids below 2**24 are exact in float32
                rows = all_gather_tensor(torch.cat([kn_a.float(), ids.view(-1, 1).float()], dim=1).contiguous())
                self.queue.enqueue(rows[:, :-1], rows[:, -1].round().long())
        return dict(loss=loss, loss_kd=loss_kd.detach(), loss_rsp=rsp.loss.detach(), loss_avid=avid.loss.detach(),
                    acc_rsp=rsp.acc, acc_avid_pos=avid.acc_pos, acc_avid_neg=avid.acc_neg)
