"""Each run figure rendered from a small metrics file: axes, labels, legends, chance lines, PNG + SVG."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.figures import (ablation_figure, finetune_figure, parsing_figure, pretrain_figure, read_records,
                              t_interval, write_pretrain_figure)


def _pretrain_records(heldout: bool) -> list[dict]:
    rows: list[dict] = [{"event": "start", "step": 0, "queue_size": 127}]
    if heldout:
        rows.append({"event": "heldout", "epoch": 0, "step": 0, "rsp_acc": 0.5, "avid_top1": 0.02, "avid_gallery": 50,
                     "avid_chance": 0.02, "kd_person_iou": 0.1, "kd_part_miou": 0.05})
    for s in range(1, 11):
        rows.append({"event": "step", "epoch": 0, "step": s, "lr": 0.1 / s, "loss": 10.0 - s * 0.2,
                     "loss_kd": 0.7 - 0.01 * s, "loss_rsp": 2.0 - 0.05 * s, "loss_avid": 9.0 - 0.1 * s,
                     "acc_rsp": 0.5 + 0.02 * s, "acc_avid_pos": 0.01 * s, "acc_avid_neg": 0.005 * s})
    if heldout:
        rows.append({"event": "heldout", "epoch": 1, "step": 10, "rsp_acc": 0.7, "avid_top1": 0.3, "avid_gallery": 50,
                     "avid_chance": 0.02, "kd_person_iou": 0.6, "kd_part_miou": 0.4})
    return rows


def _axes_by_title(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_title()}


def _legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_pretrain_figure_puts_each_loss_on_its_own_axis_and_draws_chance_and_heldout(tmp_path: Path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _pretrain_records(heldout=True)))
    fig = pretrain_figure(read_records(path))
    fig.canvas.draw()  # final limits (shared or autoscaled axes settle when drawn)
    axes = _axes_by_title(fig)
    for title in ("KD loss (soft cross-entropy)", "RSP loss (margin ranking)", "A-VID loss (InfoNCE)"):
        ax = axes[title]
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "loss"
        (line,) = ax.get_lines()
        lo, hi = ax.get_ylim()  # the axis fits this loss alone (A-VID 9 would flatten KD 0.7)
        assert lo <= min(line.get_ydata()) and max(line.get_ydata()) <= hi and hi - lo < 2.0
    acc = axes["pretext accuracies"]
    assert acc.get_ylabel() == "accuracy (fraction)"
    legend = _legend_texts(acc)
    assert "RSP chance (0.5)" in legend and "A-VID training chance 1/(K+1), K=127" in legend
    assert "RSP, held-out videos" in legend and "A-VID held-out chance 1/N, N=50" in legend
    chance = [ln for ln in acc.get_lines() if ln.get_label() == "RSP chance (0.5)"][0]
    assert list(chance.get_ydata()) == [0.5, 0.5]
    held = [ln for ln in acc.get_lines() if ln.get_label() == "A-VID top-1, held-out videos"][0]
    assert list(held.get_xdata()) == [0.0, 10.0] and list(held.get_ydata()) == [0.02, 0.3]
    kd = axes["student parsing vs teacher, held-out videos"]
    assert _legend_texts(kd) == ["person IoU", "part mIoU"] and kd.get_ylabel() == "IoU (fraction)"
    written = write_pretrain_figure(path, tmp_path / "out" / "pretrain_curves")
    assert [p.name for p in written] == ["pretrain_curves.png", "pretrain_curves.svg"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and b"<svg" in written[1].read_bytes()[:500]


def test_pretrain_figure_without_heldout_records_draws_no_heldout_marks():
    fig = pretrain_figure(_pretrain_records(heldout=False))
    axes = _axes_by_title(fig)
    assert "student parsing vs teacher, held-out videos" not in axes
    assert not any("held-out" in t for t in _legend_texts(axes["pretext accuracies"]))


def test_finetune_figure_has_heldout_curve_and_chance():
    rows = [{"kind": "step", "epoch": 1, "step": 5, "global_step": s, "loss": 2.3 - 0.1 * s, "lr": 0.1}
            for s in range(1, 6)]
    rows += [{"kind": "epoch", "epoch": e, "global_step": 5 * e, "train_loss": 2.0 / e, "train_top1": 0.2 * e,
              "val_top1": 0.15 * e} for e in (1, 2, 3)]
    fig = finetune_figure(rows, num_classes=10, test=(3, 0.4))
    axes = _axes_by_title(fig)
    acc = axes["finetuning top-1"]
    assert acc.get_xlabel() == "epoch" and acc.get_ylabel() == "top-1 (fraction)"
    assert _legend_texts(acc) == ["train (augmented clips)", "held-out val videos",
                                  "test videos, video-level (evaluate)", "chance 1/10"]
    val = [ln for ln in acc.get_lines() if ln.get_label() == "held-out val videos"][0]
    assert list(val.get_ydata()) == pytest.approx([0.15, 0.3, 0.45])
    loss = axes["finetuning loss"]
    assert loss.get_ylabel() == "cross-entropy (nats)" and "uniform prediction, ln 10" in _legend_texts(loss)


def test_parsing_figure_has_a_legend_of_parts():
    pal = np.array([[0, 0, 0], [128, 0, 0], [0, 128, 0]], np.uint8)
    lab = np.zeros((8, 8), np.int64)
    lab[2:6, 2:6] = 1
    fig = parsing_figure([(np.zeros((8, 8, 3), np.uint8), lab, lab.T)], ["Background", "Head", "Torso"], pal)
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["Background", "Head", "Torso"]
    assert [ax.get_title() for ax in fig.axes[:3]] == ["frame", "teacher (SCHP / rendered)", "student decoder"]


def test_t_interval_matches_the_textbook():
    mean, half = t_interval([1.0, 2.0, 3.0])  # s = 1, n = 3: t_{0.975,2} = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / np.sqrt(3), rel=1e-4)
    assert t_interval([5.0]) == (5.0, None)


def test_ablation_figure_bars_intervals_and_files(tmp_path: Path):
    rows = [{"variant": "scratch", "seed": s, "top1": v} for s, v in enumerate((20.0, 22.0, 24.0))]
    rows += [{"variant": "full", "seed": s, "top1": v} for s, v in enumerate((30.0, 33.0, 36.0))]
    rows += [{"variant": "ti", "seed": 0, "top1": 28.0}]
    written = ablation_figure(rows, tmp_path / "ablation", labels={"full": "full model"},
                              ylabels={"top1": "top-1 (%)"}, chance={"top1": 10.0})
    assert [p.name for p in written] == ["ablation.png", "ablation.svg"] and all(p.stat().st_size for p in written)
    import matplotlib.image

    assert matplotlib.image.imread(written[0]).shape[2] in (3, 4)


def test_ablation_panel_values():
    from pipeline.core.plotting import new_figure
    from pipeline.figures import _ablation_panel

    rows = [{"variant": "a", "top1": v} for v in (1.0, 2.0, 3.0)] + [{"variant": "b", "top1": 5.0}]
    ax = new_figure(4, 3).add_subplot()
    _ablation_panel(ax, rows, ["a", "b"], "top1", {"b": "B"})
    heights = [p.get_height() for p in ax.patches]
    assert heights == [2.0, 5.0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "B"]
    caps = [c for c in ax.containers if getattr(c, "errorbar", None) is not None and c.errorbar is not None]
    assert len(caps) == 1  # b has one seed: no interval
    (err_a,) = caps[0].errorbar.lines[2]
    seg = err_a.get_segments()[0]
    assert seg[1][1] - seg[0][1] == pytest.approx(2 * 4.303 / np.sqrt(3), rel=1e-4)


def test_confusion_figure_labels_colour_bar_and_counts(tmp_path: Path):
    from student.confusion_png import confusion_figure, write_confusion_png

    cm = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 4]])
    fig = confusion_figure(cm, ["run", "jump", "wave"])
    ax, bar = fig.axes
    assert ax.get_xlabel() == "predicted class" and ax.get_ylabel() == "true class"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["run", "jump", "wave"]
    assert bar.get_ylabel() == "share of the true class's videos"
    assert ax.get_images()[0].get_array()[1, 2] == 0.5  # row-normalised: 2 of class jump's 4 videos
    assert sorted(t.get_text() for t in ax.texts) == ["1", "2", "2", "3", "4"]  # counts, zero cells blank
    png = write_confusion_png(tmp_path / "confusion.png", cm, ["run", "jump", "wave"])
    assert png.is_file() and png.with_suffix(".svg").is_file()


def test_long_curves_get_a_moving_mean_beside_the_raw_records():
    from pipeline.figures import _smooth

    smooth, window = _smooth([0.0, 10.0] * 50)  # 100 records: window 4
    assert window == 4 and len(smooth) == 100 and all(abs(v - 5.0) < 1e-9 for v in smooth[2:-2])
    assert _smooth([1.0, 2.0, 3.0]) == ([1.0, 2.0, 3.0], 1)
    rows = [{"event": "step", "step": s, "loss_kd": float(s % 2), "acc_rsp": 0.5} for s in range(1, 101)]
    axes = _axes_by_title(pretrain_figure(rows))
    labels = [ln.get_label() for ln in axes["KD loss (soft cross-entropy)"].get_lines()]
    assert labels[1] == "training batches (mean of 4 records)"


def test_run_report_writes_png_and_svg_from_finished_stage_folders(tmp_path: Path):
    from pipeline.core.config import load_config
    from pipeline.report import write_run_report

    pre, ft, ev = tmp_path / "pre", tmp_path / "ft", tmp_path / "ev"
    for folder in (pre, ft, ev):
        folder.mkdir()
    (pre / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _pretrain_records(heldout=False)))
    (ft / "metrics.jsonl").write_text(json.dumps({"kind": "epoch", "epoch": 1, "global_step": 4, "train_loss": 2.0,
                                                  "train_top1": 0.3}) + "\n")
    (ft / "stage.json").write_text(json.dumps({"summary": {"num_classes": 4, "selected_epoch": 1}}))
    (ev / "stage.json").write_text(json.dumps({"summary": {"video_top1": 0.5}}))
    written = write_run_report(tmp_path / "work", load_config(overrides=["model.kd=false"]),
                               {"pretrain": pre, "finetune": ft, "evaluate": ev})
    assert [p.name for p in written] == ["pretrain_curves.png", "pretrain_curves.svg", "finetune_curves.png",
                                         "finetune_curves.svg"]
    assert all(p.parent == tmp_path / "work" / "report" and p.stat().st_size > 1000 for p in written)


def test_pretrain_figure_draws_the_heldout_standard_errors_when_measured_over_views():
    rows = _pretrain_records(heldout=True)
    for r in rows:
        if r.get("event") == "heldout":
            r.update(heldout_views=8, avid_top1_se=0.01 if r["step"] == 0 else 0.05, rsp_acc_se=0.02)
    fig = pretrain_figure(rows)
    acc = _axes_by_title(fig)["pretext accuracies"]
    assert "A-VID top-1, held-out videos (± s.e. over 8 views)" in _legend_texts(acc)
    spans = sorted(tuple(np.round(seg[:, 1], 4)) for coll in acc.collections for seg in coll.get_segments())
    assert (0.01, 0.03) in spans and (0.25, 0.35) in spans  # A-VID 0.02 ± 0.01 and 0.3 ± 0.05
    assert not any("s.e." in t for t in _legend_texts(_axes_by_title(pretrain_figure(
        _pretrain_records(heldout=True)))["pretext accuracies"]))
