"""Can the student learn relative speed (RSP) in the demo's budget, and with which optimizer?

Trains the pretraining model on the RSP loss ALONE (λ_kd = λ_a = 0) from the demo's initialisation,
on the demo's pretraining clips (a built work directory: ``pipeline teacher-cache``), and measures
held-out RSP (student/pretext_eval.py: 140 Kinetics-style val videos, chance 0.5) every
``--every`` steps. Each setting names the optimizer, its learning rate and where the keys come from:

- ``momentum``: RSPNet's way, keys from the momentum key encoder (``pretrain.moco_momentum``);
- ``query``: all three clips through the query encoder, with gradients (a plain supervised ranker).

Colour augmentation is the run's ``[pretrain]`` keys (``--set`` them; the default here turns colour
jitter and grayscale off, the setting where a ranker is known to learn). The result: momentum SGD
at RSPNet's rate (0.1 × 16 / 64) or 8× it stays at chance over 100 steps; AdamW learns it with
either kind of key (docs/results.md section 4).

    python -m pipeline.cli --work-dir /tmp/w teacher-cache --build-upstream
    python bench/rsp_optimizer.py --work /tmp/w                      # 4 settings × 100 steps, ~8 min
    python bench/rsp_optimizer.py --work /tmp/w --settings momentum:adamw:0.001 --steps 200
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Bench, print_table  # noqa: E402
from pretrain_setup import heldout_set, load_pretrain_data  # noqa: E402

from student.gpu_augment import batch_clips  # noqa: E402
from student.losses import rsp_loss  # noqa: E402
from student.optim import build_adamw, build_sgd  # noqa: E402
from student.pretext_eval import evaluate_pretext  # noqa: E402
from student.pretrain import build_pretrain_model, seed_all  # noqa: E402

DEFAULT_SETTINGS = ["momentum:sgd:0.025", "momentum:sgd:0.2", "momentum:adamw:0.001", "query:adamw:0.001"]
NO_COLOUR = ["pretrain.jitter_p=0", "pretrain.grayscale_p=0"]


def train_rsp(data, cfg, hs, keys: str, optimizer: str, lr: float, steps: int, every: int) -> list[dict]:
    """RSP-only training from the seed's initialisation; held-out RSP at step 0 and every ``every`` steps."""
    seed_all(cfg.pretrain.seed)
    pm = build_pretrain_model(cfg.model, cfg.pretrain, len(data.label_names), cfg.pretrain.batch_size)
    opt = (build_adamw(pm.student, lr, cfg.pretrain.weight_decay) if optimizer == "adamw" else
           build_sgd(pm.student, lr, cfg.pretrain.momentum, cfg.pretrain.weight_decay))
    curve = [{"step": 0, "heldout_rsp": evaluate_pretext(pm.student, hs)["rsp_acc"], "train_acc": None}]
    batches = itertools.chain.from_iterable(iter(data.loader) for _ in range(10 ** 6))
    accs: list[float] = []
    pm.train()
    for step in range(1, steps + 1):
        q, kp, kn = batch_clips(next(batches), torch.device("cpu"), cfg.pretrain.augment_device)
        eq = pm.student(q)["emb_m"]
        if keys == "query":
            ep, en = pm.student(kp)["emb_m"], pm.student(kn)["emb_m"]
        else:
            s = pm.student
            pm.key_encoder.update(s.f_l, s.h_c, s.g_m, s.g_a, pm.momentum)
            ep, en = pm._keys(kp)[0], pm._keys(kn)[0]
        r = rsp_loss(eq, ep, en, pm.tau, pm.margin)
        opt.zero_grad(set_to_none=True)
        r.loss.backward()
        opt.step()
        accs.append(float(r.acc))
        if step % every == 0 or step == steps:
            curve.append({"step": step, "heldout_rsp": evaluate_pretext(pm.student, hs)["rsp_acc"],
                          "train_acc": round(sum(accs[-every:]) / len(accs[-every:]), 4)})
            print(f"  {keys}:{optimizer}:{lr} step {step}: held-out RSP {curve[-1]['heldout_rsp']:.3f}, "
                  f"training-batch {curve[-1]['train_acc']:.3f}", flush=True)
    return curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="a work dir where `pipeline teacher-cache` was built")
    ap.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, help="keys:optimizer:lr (keys: momentum|query)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override (key=value)")
    args = ap.parse_args()
    overrides = NO_COLOUR + ["pretrain.workers=1"] + args.overrides
    cfg, data = load_pretrain_data(args.work, overrides)
    hs = heldout_set(cfg, data)
    bench = Bench("rsp_optimizer", "RSP-only training: held-out RSP accuracy by optimizer and key encoder",
                  {"overrides": overrides, "steps": args.steps, "every": args.every, "heldout_videos": len(hs),
                   "batch_size": cfg.pretrain.batch_size})
    rows, figures = [], {}
    for setting in args.settings:
        keys, optimizer, lr = setting.split(":")
        if keys not in ("momentum", "query") or optimizer not in ("sgd", "adamw"):
            raise SystemExit(f"--settings {setting!r}: expected momentum|query:sgd|adamw:<lr>")
        t0 = time.perf_counter()
        curve = train_rsp(data, cfg, hs, keys, optimizer, float(lr), args.steps, args.every)
        figures[setting] = {"curve": curve, "seconds": round(time.perf_counter() - t0, 1)}
        rows.append({"keys": keys, "optimizer": optimizer, "lr": lr, "untrained": curve[0]["heldout_rsp"],
                     **{f"step {c['step']}": c["heldout_rsp"] for c in curve[1:]}})
        bench.write(figures)
    print_table(rows, title="held-out RSP accuracy (chance 0.5)")
    print(f"wrote {bench.write(figures)}")


if __name__ == "__main__":
    main()
