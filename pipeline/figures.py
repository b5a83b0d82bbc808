"""The run's figures, drawn with matplotlib from finished stage records (PNG + SVG beside each).

- :func:`pretrain_figure`: each loss on its own panel (A-VID ~9, RSP ~2 and KD ~0.7 would flatten
  each other on one axis), the pretext accuracies of the training batches with their chance lines
  (RSP 0.5, A-VID 1/(K+1) for a queue of K), the held-out pretext records (``event: "heldout"``:
  RSP accuracy and A-VID top-1 on videos never pretrained on, with chance 1/N for a gallery of N) as
  markers, a KD panel (person IoU, part mIoU against the teacher) when those records exist, and the
  learning rate.
- :func:`finetune_figure`: the training loss per logged step; train top-1 per epoch, the held-out
  top-1 per epoch (``val_top1`` / ``test_top1``, recorded when ``finetune.select_on`` is val or
  test), the evaluate stage's video-level test top-1 at the kept epoch, and chance 1/C.
- :func:`parsing_figure`: frame | teacher | student rows with a legend of the body parts.
- :func:`ablation_figure`: per-variant bars (mean over seeds) with 95 % t-intervals and the seeds.

Records read here are those of ``metrics.jsonl`` (student/pretrain.py, student/finetune.py).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from pipeline.core.plotting import new_figure, no_data, save_figure
from pipeline.core.stats import t_interval

LOSSES = (("loss_kd", "KD loss (soft cross-entropy)"), ("loss_rsp", "RSP loss (margin ranking)"),
          ("loss_avid", "A-VID loss (InfoNCE)"), ("loss", "total loss (weighted sum)"))
RSP_CHANCE = 0.5


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a metrics file ([] when it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _xy(rows: Sequence[Mapping[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(float(r[x]), float(r[y])) for r in rows if isinstance(r.get(y), (int, float)) and x in r]
    return [p[0] for p in pts], [p[1] for p in pts]


SMOOTH_POINTS = 25  # a curve of more records than this also gets a moving mean over len/25 records


def _smooth(ys: Sequence[float]) -> tuple[list[float], int]:
    """(centred moving mean, window); window 1 (no smoothing) for short curves."""
    window = max(1, len(ys) // SMOOTH_POINTS)
    if window == 1:
        return list(ys), 1
    kernel = np.ones(window) / window
    padded = np.pad(np.asarray(ys, dtype=float), (window // 2, window - 1 - window // 2), mode="edge")
    return list(np.convolve(padded, kernel, mode="valid")), window


def _curve(ax: Any, xs: Sequence[float], ys: Sequence[float], colour: str, label: str) -> None:
    """The per-record curve, faint under its moving mean when there are many records (per-step logging)."""
    smooth, window = _smooth(ys)
    if window == 1:
        ax.plot(xs, ys, lw=1.2, color=colour, label=label)
        return
    ax.plot(xs, ys, lw=0.6, color=colour, alpha=0.3)
    ax.plot(xs, smooth, lw=1.5, color=colour, label=f"{label} (mean of {window} records)")


def _loss_panel(ax: Any, steps: Sequence[Mapping[str, Any]], key: str, title: str) -> None:
    xs, ys = _xy(steps, "step", key)
    if not xs:
        no_data(ax, key)
        ax.set_title(title)
        return
    _curve(ax, xs, ys, "C0", "training batches")
    ax.set_title(title)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)


def _accuracy_panel(ax: Any, steps: Sequence[Mapping[str, Any]], held: Sequence[Mapping[str, Any]],
                    queue_size: int | None) -> None:
    colours = {"rsp": "C0", "pos": "C1", "neg": "C2"}
    for key, label, c in (("acc_rsp", "RSP, training batches", colours["rsp"]),
                          ("acc_avid_pos", "A-VID same speed, training", colours["pos"]),
                          ("acc_avid_neg", "A-VID other speed, training", colours["neg"])):
        xs, ys = _xy(steps, "step", key)
        if xs:
            _curve(ax, xs, ys, c, label)
    ax.axhline(RSP_CHANCE, color=colours["rsp"], ls="--", lw=0.9, label="RSP chance (0.5)")
    if queue_size:
        ax.axhline(1.0 / (queue_size + 1), color=colours["pos"], ls=":", lw=0.9,
                   label=f"A-VID training chance 1/(K+1), K={queue_size}")
    if held:
        views = int(held[-1].get("heldout_views") or 1)
        bars = f" (± s.e. over {views} views)" if views > 1 else ""
        for key, marker, colour, label in (("rsp_acc", "o", colours["rsp"], "RSP, held-out videos"),
                                           ("avid_top1", "s", colours["pos"], "A-VID top-1, held-out videos")):
            xs, ys = _xy(held, "step", key)
            ax.plot(xs, ys, marker, color=colour, mec="black", ms=6, label=label + bars)
            errs = [float(r.get(f"{key}_se") or 0.0) for r in held if isinstance(r.get(key), (int, float))]
            if any(errs):
                ax.errorbar(xs, ys, yerr=errs, fmt="none", ecolor="black", capsize=3, lw=0.9)
        chances = [float(r["avid_chance"]) for r in held if isinstance(r.get("avid_chance"), (int, float))]
        if chances:
            gallery = held[-1].get("avid_gallery", "N")
            ax.axhline(chances[-1], color="C3", ls="-.", lw=0.9, label=f"A-VID held-out chance 1/N, N={gallery}")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("pretext accuracies")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("accuracy (fraction)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)


def _kd_panel(ax: Any, held: Sequence[Mapping[str, Any]]) -> None:
    for key, label, marker in (("kd_person_iou", "person IoU", "o"), ("kd_part_miou", "part mIoU", "s")):
        xs, ys = _xy(held, "step", key)
        if xs:
            ax.plot(xs, ys, marker=marker, lw=1.0, label=label)
    ax.set_ylim(0.0, 1.02)
    ax.set_title("student parsing vs teacher, held-out videos")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("IoU (fraction)")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)


def pretrain_figure(records: Sequence[Mapping[str, Any]]) -> Figure:
    """The pretraining figure from the records of its ``metrics.jsonl``."""
    steps = [r for r in records if r.get("event") == "step"]
    held = [r for r in records if r.get("event") == "heldout"]
    start = next((r for r in records if r.get("event") == "start"), {})
    has_kd = any(isinstance(r.get(k), (int, float)) for r in held for k in ("kd_person_iou", "kd_part_miou"))
    bottom = ["acc", "acc", "kd" if has_kd else "lr", "lr" if has_kd else "."]
    fig = new_figure(13.0, 7.0)
    mosaic: Any = [[k for k, _ in LOSSES], bottom]
    axes = fig.subplot_mosaic(mosaic)
    for key, title in LOSSES:
        _loss_panel(axes[key], steps, key, title)
    queue = start.get("queue_size")
    _accuracy_panel(axes["acc"], steps, held, int(queue) if isinstance(queue, (int, float)) else None)
    if has_kd:
        _kd_panel(axes["kd"], held)
    xs, ys = _xy(steps, "step", "lr")
    if xs:
        axes["lr"].plot(xs, ys, color="0.3", lw=1.2)
        axes["lr"].set_ylabel("learning rate")
        axes["lr"].set_xlabel("optimizer step")
        axes["lr"].ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
        axes["lr"].grid(alpha=0.3)
    else:
        no_data(axes["lr"], "learning rate")
    axes["lr"].set_title("learning rate")
    fig.suptitle("pretraining (training-batch curves are diagnostics; held-out markers are evidence)")
    return fig


def finetune_figure(records: Sequence[Mapping[str, Any]], num_classes: int | None = None,
                    test: tuple[int, float] | None = None) -> Figure:
    """The finetuning figure from the records of its ``metrics.jsonl`` (``kind``: step / epoch);
    ``test`` = (kept epoch, video-level test top-1 of the evaluate stage) adds that point."""
    steps = [r for r in records if r.get("kind") == "step"]
    epochs = [r for r in records if r.get("kind") == "epoch"]
    fig = new_figure(10.0, 3.6)
    loss_ax, acc_ax = fig.subplots(1, 2)
    xs, ys = _xy(steps, "global_step", "loss")
    ex, ey = _xy(epochs, "global_step", "train_loss")
    if xs or ex:
        if xs:
            loss_ax.plot(xs, ys, lw=1.0, alpha=0.7, label="training batch")
        if ex:
            loss_ax.plot(ex, ey, "o-", lw=1.2, label="epoch mean")
        if num_classes:
            loss_ax.axhline(math.log(num_classes), color="0.4", ls="--", lw=0.9,
                            label=f"uniform prediction, ln {num_classes}")
        loss_ax.set_xlabel("optimizer step")
        loss_ax.set_ylabel("cross-entropy (nats)")
        loss_ax.grid(alpha=0.3)
        loss_ax.legend(frameon=False)
    else:
        no_data(loss_ax, "loss")
    loss_ax.set_title("finetuning loss")
    acc_ax.set_title("finetuning top-1")
    if epochs:
        x, y = _xy(epochs, "epoch", "train_top1")
        acc_ax.plot(x, y, "o-", label="train (augmented clips)")
        for key, label in (("val_top1", "held-out val videos"), ("test_top1", "test videos (used for selection)")):
            x, y = _xy(epochs, "epoch", key)
            if x:
                acc_ax.plot(x, y, "s-", label=label)
        if test is not None:
            acc_ax.plot([test[0]], [test[1]], "*", color="C3", ms=12, mec="black",
                        label="test videos, video-level (evaluate)")
        if num_classes:
            acc_ax.axhline(1.0 / num_classes, color="0.4", ls="--", lw=0.9, label=f"chance 1/{num_classes}")
        acc_ax.set_ylim(0.0, 1.02)
        acc_ax.set_xlabel("epoch")
        acc_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        acc_ax.set_ylabel("top-1 (fraction)")
        acc_ax.grid(alpha=0.3)
        acc_ax.legend(frameon=False)
    else:
        no_data(acc_ax, "epoch")
    return fig


def parsing_figure(rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], label_names: Sequence[str],
                   palette: np.ndarray, titles: Sequence[str] | None = None) -> Figure:
    """One row per clip: (RGB frame, teacher label map, student label map), parts coloured by
    ``palette`` (n, 3 uint8 RGB) and named in a legend; label maps are (h, w) int arrays."""
    n = max(len(rows), 1)
    fig = new_figure(7.5, 2.2 * n + 0.6)
    axes = np.atleast_2d(fig.subplots(n, 3, squeeze=False))
    for i, (frame, teacher, student) in enumerate(rows):
        for j, (img, head) in enumerate(((frame, "frame"), (palette[teacher], "teacher (SCHP / rendered)"),
                                         (palette[student], "student decoder"))):
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest", extent=(0, 1, 1, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(head)
        if titles:
            axes[i, 0].set_ylabel(titles[i], fontsize=7)
    if not rows:
        for ax in axes.ravel():
            no_data(ax, "held-out video")
    handles = [Patch(facecolor=palette[k] / 255.0, edgecolor="0.5", label=name) for k, name in enumerate(label_names)]
    fig.legend(handles=handles, loc="outside right center", frameon=False, title="body part")
    return fig


def ablation_figure(rows: Iterable[Mapping[str, Any]], out_stem: Path | str, *, metrics: Sequence[str] = ("top1",),
                    labels: Mapping[str, str] | None = None, ylabels: Mapping[str, str] | None = None,
                    chance: Mapping[str, float] | None = None) -> list[Path]:
    """Bars of the mean over seeds per variant with 95 % t-intervals, each seed's value as a dot.

    ``rows``: one mapping per (variant, seed) run, e.g. ``{"variant": "full", "seed": 0, "top1": 41.2,
    "top5": 80.1}``: ``variant`` names the bar (order of first appearance), ``seed`` is informative,
    each key of ``metrics`` is a number (runs without it are left out of that panel). ``labels`` maps a
    variant to its display name, ``ylabels`` a metric to its axis title (unit included), ``chance``
    a metric to its chance level (a dashed line). With one seed a bar has no interval ("n=1").
    Writes ``out_stem.png`` and ``out_stem.svg``; returns their paths.
    """
    rows = list(rows)
    variants = list(dict.fromkeys(str(r["variant"]) for r in rows))
    if not variants:
        raise ValueError("ablation_figure: no rows")
    labels, ylabels, chance = labels or {}, ylabels or {}, chance or {}
    fig = new_figure(max(3.0, 0.9 * len(variants) + 1.5) * len(metrics), 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(metrics), squeeze=False)[0])
    for ax, metric in zip(axes, metrics):
        _ablation_panel(ax, rows, variants, metric, labels)
        if metric in chance:
            ax.axhline(chance[metric], color="0.3", ls="--", lw=0.9, label=f"chance ({chance[metric]:.3g})")
            ax.legend(frameon=False, loc="best")
        ax.set_ylabel(ylabels.get(metric, metric))
        ax.set_title(f"{metric}: mean over seeds, 95% interval")
    return save_figure(fig, Path(out_stem))


def _ablation_panel(ax: Any, rows: Sequence[Mapping[str, Any]], variants: Sequence[str], metric: str,
                    labels: Mapping[str, str]) -> None:
    for i, name in enumerate(variants):
        vals = [float(r[metric]) for r in rows if str(r["variant"]) == name and isinstance(r.get(metric), (int, float))]
        if not vals:
            continue
        mean, half = t_interval(vals)
        ax.bar(i, mean, width=0.6, color=f"C{i % 10}", alpha=0.75,
               yerr=None if half is None else half, capsize=5, error_kw={"lw": 1.2})
        jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else [0.0]
        ax.plot([i + j for j in jitter], vals, "o", color="black", ms=3.5, zorder=3)
        ax.annotate(f"n={len(vals)}", (i, 0), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7,
                    color="white" if mean > 0 else "black")
    ax.set_xticks(range(len(variants)), [labels.get(v, v) for v in variants], rotation=20, ha="right")
    ax.set_xlabel("variant")
    ax.grid(axis="y", alpha=0.3)


def write_pretrain_figure(metrics_path: Path, out_stem: Path) -> list[Path]:
    return save_figure(pretrain_figure(read_records(metrics_path)), out_stem)


def write_finetune_figure(metrics_path: Path, out_stem: Path, num_classes: int | None = None,
                          test: tuple[int, float] | None = None) -> list[Path]:
    return save_figure(finetune_figure(read_records(metrics_path), num_classes, test), out_stem)


__all__ = ["ablation_figure", "finetune_figure", "parsing_figure", "pretrain_figure", "read_records", "t_interval",
           "write_finetune_figure", "write_pretrain_figure"]
