"""Student pretraining step time: cached teacher targets vs the SCHP teacher run inside the step, and KD's cost.

One step = ``PretrainModel`` forward (query through the student, both keys through the momentum
encoder) + backward + SGD step, at a small width on CPU. Three variants, interleaved step by step
(A B C, C B A, …) after one warm-up step each:

- ``cached``: the KD target is a tensor the loader already cut from the HDF5 cache (the design);
- ``online_teacher``: a design without a cache runs SCHP inside the step, on the query's middle
  frame of each clip (full frame, BGR uint8, decode not counted) at the teacher's configured input
  size, then cuts the map with the clip's crop box and flip (``resample_boxes``);
- ``no_kd``: ``kd = false`` ("w/o KD": no h_h, no decoder, no KD loss), for KD's overhead.

    .venv/bin/python bench/train_step.py [--quick] [--input-size 112] [--frames 16] [--batch 4]
                                         [--width 0.25] [--teacher-input-size 473] [--steps 3]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from student.optim import build_sgd, scaled_lr  # noqa: E402
from student.pretrain import amp_dtype  # noqa: E402
from student.pretrain_model import PretrainModel  # noqa: E402
from teacher.backends import resolve_amp  # noqa: E402
from teacher.cache_reader import lr_swap_permutation, resample_boxes  # noqa: E402
from teacher.checkpoint import load_schp  # noqa: E402
from teacher.labels import LABEL_SETS  # noqa: E402
from teacher.preprocess import parse_frames  # noqa: E402

NUM_PARTS = 20  # LIP, the SCHP checkpoint's label set


def teacher_frames(batch: int) -> tuple[list[np.ndarray], str]:
    """Full-resolution BGR middle frames: from a real UCF101 clip when present, else random 320×240."""
    clips = common.real_clips()
    if clips:
        from data_manifests.video import read_frames

        path = clips[0]
        return list(read_frames(path, [40 + 10 * i for i in range(batch)], bgr=True)), str(
            path.relative_to(common.SHARED))
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(batch)], "random 320x240"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input-size", type=int, default=112)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--backbone", default="c3d", choices=("c3d", "r2plus1d", "r3d18"))
    ap.add_argument("--teacher-input-size", type=int, default=473, help="SCHP input (LIP's own 473)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="smoke run: 64² input, 8 frames, teacher 129², 1 step")
    ap.add_argument("--out", type=Path, default=common.RESULTS / "train_step.json")
    args = ap.parse_args()
    if args.quick:
        args.input_size, args.frames, args.teacher_input_size, args.steps = 64, 8, 129, 1

    torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    parse = args.input_size // 4
    frames, frames_src = teacher_frames(args.batch)
    settings = dict(device=str(device), backbone=args.backbone, width=args.width, input_size=args.input_size,
                    frames=args.frames, batch_size=args.batch, parse_size=parse, num_parts=NUM_PARTS,
                    teacher_input_size=args.teacher_input_size, teacher_map_size=64, teacher_frames=frames_src,
                    teacher_frame_size=list(frames[0].shape[:2]), timed_steps=args.steps, torch_threads=args.threads,
                    queue_size=16384, quick=args.quick)
    bench = common.Bench("train_step", "pretraining step: cached targets vs online SCHP teacher; KD overhead",
                         settings)

    torch.manual_seed(0)
    kw = dict(backbone=args.backbone, width=args.width, split_after=3, num_parts=NUM_PARTS, parse_size=parse)
    models = {"kd": PretrainModel(kd=True, **kw).to(device).train(),
              "no_kd": PretrainModel(kd=False, **kw).to(device).train()}
    lr = scaled_lr(0.1, args.batch)
    opts = {k: build_sgd(m.student, lr) for k, m in models.items()}
    dtype = amp_dtype("auto", device)
    ckpt = common.random_schp_checkpoint(common.work_dir("schp") / "random_lip20_seed0.pth")
    schp = load_schp(ckpt, "lip", device)
    teacher_amp = resolve_amp("auto", device)
    perm = lr_swap_permutation(LABEL_SETS["lip"])

    g = torch.Generator().manual_seed(0)
    shape = (args.batch, 3, args.frames, args.input_size, args.input_size)
    q, kp, kn = (torch.randn(shape, generator=g).to(device) for _ in range(3))
    cached_target = torch.softmax(torch.randn(args.batch, NUM_PARTS, parse, parse, generator=g), 1).to(device)
    boxes = torch.tensor([[0.1, 0.05, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0], [0.3, 0.2, 0.9, 0.7], [0.2, 0.1, 0.6, 0.8]]
                         * ((args.batch + 3) // 4))[: args.batch]
    flips = [bool(i % 2) for i in range(args.batch)]
    teacher_s: list[float] = []

    def step(model_key: str, target: torch.Tensor | None) -> None:
        m, opt = models[model_key], opts[model_key]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = m(q, kp, kn, target)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    def online() -> None:
        t = time.perf_counter()
        maps = parse_frames(schp, frames, args.teacher_input_size, 64, amp_dtype=teacher_amp)
        target = resample_boxes(maps.to(device), boxes, parse, flips, perm).clone()
        common.sync()
        teacher_s.append(time.perf_counter() - t)
        step("kd", target)

    fns = {"cached": lambda: step("kd", cached_target), "online_teacher": online, "no_kd": lambda: step("no_kd", None)}
    times = common.interleave(fns, rounds=args.steps, warmup=1)
    teacher_s = teacher_s[1:]  # drop the warm-up call

    med = {k: common.stats(v)["median"] for k, v in times.items()}
    figures = {
        "step_seconds": {k: {kk: round(vv, 4) for kk, vv in common.stats(v).items()} for k, v in times.items()},
        "teacher_inside_step_seconds": {k: round(v, 4) for k, v in common.stats(teacher_s).items()},
        "ratio_online_over_cached": common.ratio(med["online_teacher"], med["cached"]),
        "ratio_kd_over_no_kd": common.ratio(med["cached"], med["no_kd"]),
        "kd_overhead_pct": round(100 * (med["cached"] / med["no_kd"] - 1), 1),
        "clips_per_s": {k: round(args.batch / v, 3) for k, v in med.items()},
        "params": {k: sum(p.numel() for p in m.student.parameters()) for k, m in models.items()},
        "teacher_params": sum(p.numel() for p in schp.parameters()),
    }
    rows = [{"variant": k, "median s/step": med[k], "min s": min(times[k]), "clips/s": args.batch / med[k],
             "vs cached": med[k] / med["cached"]} for k in times]
    common.print_table(rows, title=f"\npretraining step, {args.backbone} x{args.width}, batch {args.batch} x "
                                   f"{args.frames}x{args.input_size}², teacher {args.teacher_input_size}²")
    print(f"  teacher alone inside the online step: median {figures['teacher_inside_step_seconds']['median']:.3f} s; "
          f"online/cached {figures['ratio_online_over_cached']}x; KD overhead {figures['kd_overhead_pct']} %")
    notes = ["online_teacher runs SCHP on one full frame per clip (the query's middle frame) at the teacher's input "
             "size with the backend's amp setting; decoding that frame is not counted",
             "ratios are of medians of interleaved steps"]
    bench.write(figures, args.out, notes)


if __name__ == "__main__":
    main()
