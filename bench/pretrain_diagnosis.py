"""Why does (or doesn't) pretraining help finetuning? Numbers from a finished `pipeline run` work directory.

For the pretraining stage of the config (default: the embedded demo) it reports:
  - weights: per encoder part (f_l, h_h, h_c, heads), the norm of the conv/linear weights at the
    pretraining's own initialisation and at its end, and the relative change; whether the weights
    that finetuning starts from equal the pretrained ones (they must: "the weights arrive intact");
  - effective learning rate: for a weight followed by BatchNorm the update's effect scales with
    lr / |w|² (scale invariance), so growing norms silently lower the step size;
  - pretext tasks: first, best and last epoch means of every loss and accuracy (metrics.jsonl),
    against chance (RSP 0.5, A-VID 1/(K+1));
  - queue self-collisions: the expected number of keys of a query's own video in the MoCo queue,
    K / videos (each video enqueues one key per epoch), and whether they are excluded;
  - embedding spread on 32 training clips: mean cosine between different clips' A-VID embeddings
    (1.0 = every clip maps to the same point, i.e. collapse) and the positive/negative gap.

    python bench/pretrain_diagnosis.py --work work           # after `pipeline run` in ./work
    python bench/pretrain_diagnosis.py --work W --set pretrain.lambda_m=0   # another variant's stage
Writes bench/results/pretrain_diagnosis.json and prints tables.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, Bench, print_table  # noqa: E402

from data_manifests.clip_plan import build_clip_plan  # noqa: E402
from data_manifests.manifest import load_manifest  # noqa: E402
from pipeline.core.config import load_config  # noqa: E402
from pipeline.stages import StageGraph  # noqa: E402
from student.finetune import build_classifier  # noqa: E402
from student.pretrain import build_pretrain_model, seed_all  # noqa: E402
from student.pretrain_data import PretrainClipDataset  # noqa: E402

PARTS = ("f_l", "h_h", "h_c", "g_h", "g_m", "g_a")


def weight_table(initial: dict, trained: dict, lr: float) -> list[dict]:
    rows = []
    for part in PARTS:
        keys = [k for k in trained if k.startswith(part + ".") and k.endswith("weight") and trained[k].dim() > 1]
        if not keys:
            continue
        n0 = torch.sqrt(sum((initial[k].double() ** 2).sum() for k in keys)).item()
        n1 = torch.sqrt(sum((trained[k].double() ** 2).sum() for k in keys)).item()
        delta = torch.sqrt(sum(((trained[k].double() - initial[k].double()) ** 2).sum() for k in keys)).item()
        rows.append({"part": part, "tensors": len(keys), "|w| init": round(n0, 3), "|w| end": round(n1, 3),
                     "|Δw| / |w| init": round(delta / n0, 3), "eff. lr end / init": round((n0 / n1) ** 2, 3),
                     "base lr": lr})
    return rows


def pretext_table(rows: list[dict], queue_size: int) -> list[dict]:
    epochs = [r for r in rows if r.get("event") == "epoch"]
    out = []
    for key, chance in (("loss_kd", None), ("loss_rsp", None), ("loss_avid", None), ("acc_rsp", 0.5),
                        ("acc_avid_pos", 1.0 / (queue_size + 1))):
        vals = [r[key] for r in epochs]
        if not vals:
            continue
        best = max(vals) if key.startswith("acc") else min(vals)
        out.append({"metric": key, "first epoch": round(vals[0], 4), "best": round(best, 4),
                    "best epoch": vals.index(best), "last epoch": round(vals[-1], 4),
                    "chance": round(chance, 4) if chance is not None else ""})
    return out


@torch.no_grad()
def embedding_spread(pm, dataset: PretrainClipDataset, n: int = 32) -> dict[str, float]:
    items = [dataset[(0, i, i % 2)] for i in range(min(n, len(dataset)))]
    query = torch.stack([it["query"] for it in items])
    key = torch.stack([it["key_pos"] for it in items])
    pm.train()  # BatchNorm as in pretraining (batch statistics)
    q = F.normalize(pm.student(query)["emb_a"].float(), dim=1)
    _, k = pm.key_encoder(key)
    k = F.normalize(k.float(), dim=1)
    off = ~torch.eye(len(items), dtype=torch.bool)
    return {"query_query_cos": round((q @ q.t())[off].mean().item(), 4),
            "pos_cos": round((q * k).sum(1).mean().item(), 4),
            "neg_cos": round((q @ k.t())[off].mean().item(), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work directory of a finished `pipeline run`")
    ap.add_argument("--config", type=Path, default=None, help="the run's config file (default: the embedded demo)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    ap.add_argument("--out", type=Path, default=RESULTS / "pretrain_diagnosis.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, overrides=args.overrides)
    graph = StageGraph(cfg, args.work)
    pre_dir = graph.pretrain().out_dir(args.work)
    if not (pre_dir / "stage.json").is_file():
        raise SystemExit(f"{pre_dir} is not a finished pretraining stage: run `pipeline run` first (same config)")
    bench = Bench("pretrain_diagnosis", "does pretraining reach finetuning, and what did it learn", {
        "work": str(args.work), "overrides": args.overrides, "pretrain_dir": str(pre_dir)})

    saved = torch.load(pre_dir / "student.pt", map_location="cpu", weights_only=True)
    ckpt = torch.load(pre_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    rows = [json.loads(line) for line in (pre_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    start = next(r for r in rows if r.get("event") == "start")
    seed_all(cfg.pretrain.seed)  # the pretraining's own initialisation, rebuilt exactly
    pm = build_pretrain_model(cfg.model, cfg.pretrain, saved["num_parts"], int(start["global_batch"]))
    initial = {k: v.clone() for k, v in pm.student.state_dict().items()}
    weights = weight_table(initial, saved["state_dict"], float(start["lr"]))
    start_of_finetune = build_classifier(cfg.model, 10, saved).state_dict()
    intact = all(torch.equal(start_of_finetune[k], v) for k, v in saved["state_dict"].items()
                 if k in start_of_finetune)

    manifest = load_manifest(graph.manifest(cfg.pretrain.dataset).out_dir(args.work))
    plan = build_clip_plan(manifest, cfg.clips.anchors_per_video, cfg.clips.span, cfg.clips.splits)
    cache = None
    if cfg.model.kd:
        from teacher.cache_reader import TeacherCache
        cache = TeacherCache(graph.teacher_cache().out_dir(args.work))
    dataset = PretrainClipDataset(manifest, plan, cache, cfg.model, cfg.clips, crop_area=cfg.pretrain.crop_area,
                                  seed=cfg.pretrain.seed)
    spread_init = embedding_spread(pm, dataset)
    pm.load_state_dict(ckpt["model"])
    spread_end = embedding_spread(pm, dataset)
    queue = int(start.get("queue_size") or pm.queue.size)
    videos = int(start["videos"])
    figures = {
        "weights": weights, "finetune_starts_from_pretrained_weights": intact,
        "pretext": pretext_table(rows, queue),
        "queue": {"size": queue, "videos": videos, "own_video_keys_per_query": round(queue / videos, 3),
                  "excluded": cfg.pretrain.exclude_same_video},
        "embedding_spread": {"init": spread_init, "end": spread_end},
    }
    bench.write(figures, out=args.out)
    print_table(weights, title=f"encoder weights: pretraining init vs end; finetuning starts from the pretrained "
                               f"weights: {intact}")
    print_table(figures["pretext"], title="pretext tasks (epoch means)")
    print_table([{"when": w, **spread} for w, spread in (("init", spread_init), ("end", spread_end))],
                title=f"A-VID embeddings on 32 training clips (query-query cos 1.0 = collapse); queue {queue} keys "
                      f"for {videos} videos: {queue / videos:.2f} own-video keys per query "
                      f"({'excluded' if cfg.pretrain.exclude_same_video else 'NOT excluded'})")


if __name__ == "__main__":
    main()
