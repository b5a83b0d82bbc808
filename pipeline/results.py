"""The results table printed at the end of ``pipeline run`` and kept in ``WORK/results.md``.

Every figure says which protocol produced it (finetuning preset, epochs, schedule, test views and
how they were combined) and which selection chose its epoch. Figures whose epoch was chosen on the
test split (``finetune.select_on = "test"``, RSPNet's practice, optimistic) go in their own
"test-selected" columns and never in the default ones, which hold epochs chosen on held-out
training videos or the last epoch.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.core.config import Config
from pipeline.core.files import atomic_write_text
from pipeline.core.stats import format_estimate, format_interval
from pipeline.stage import STAGE_FILE, Stage

# The paper's Table 1 (top-1 / top-5), for reference beside our numbers.
PAPER_TABLE1 = {
    ("c3d", "ucf101"): (80.4, 95.7),
    ("c3d", "hmdb51"): (46.1, 78.4),
    ("r2plus1d", "ucf101"): (81.6, 95.3),
    ("r2plus1d", "hmdb51"): (46.1, 74.8),
}


def results_rows(work: Path, cfg: Config, stages: list[Stage]) -> list[dict]:
    rows = []
    for st in stages:
        if st.kind != "evaluate" or _is_test_set(st):  # test sets: test_set_rows
            continue
        path = st.out_dir(work)
        if not (path / STAGE_FILE).is_file():
            continue
        metrics = json.loads((path / "metrics.json").read_text(encoding="utf-8"))
        ft = next(u for u in st.upstream if u.kind == "finetune")
        ft_summary = json.loads((ft.out_dir(work) / STAGE_FILE).read_text(encoding="utf-8")).get("summary", {})
        dataset = cfg.finetune.dataset
        paper = PAPER_TABLE1.get((cfg.model.backbone, cfg.dataset(dataset).kind))
        rows.append({
            "dataset": dataset,
            "split": cfg.dataset(dataset).split,
            "backbone": f"{cfg.model.backbone} ×{cfg.model.width:g}",
            "init": "scratch" if cfg.finetune.from_scratch else ("full" if cfg.model.kd and cfg.model.task_dependent
                                                                 else "w/o KD" if not cfg.model.kd else "TI"),
            "protocol": _protocol_text(ft_summary, metrics),
            "selection": _selection_text(ft_summary),
            "test_selected": ft_summary.get("selected_on") == "test",
            "top1": 100.0 * metrics["video_top1"],
            "top5": 100.0 * metrics["video_top5"],
            "paper": f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else "-",
            "videos": metrics.get("num_videos", 0),
            "chance": _chance_text(metrics),
        })
    return rows


def _chance_text(metrics: dict) -> str:
    """Top-1 / top-5 of a uniform guess (evaluate's chance_top1 / chance_top5; older records: per-class count)."""
    c1, c5 = metrics.get("chance_top1"), metrics.get("chance_top5")
    classes = len(metrics.get("per_class") or {})
    if c1 is None and classes:
        c1, c5 = 1.0 / classes, min(5, classes) / classes
    return f"{100 * c1:.1f} / {100 * c5:.1f}" if c1 is not None and c5 is not None else "-"


SELECTED_ON = {"val": "held-out train videos", "test": "TEST split", "last": "last epoch"}


def _protocol_text(ft: dict, metrics: dict) -> str:
    """e.g. "paper:c3d/hmdb51: 100 ep, step [50, 70, 90]; 10×1 views, logits averaged"."""
    p = ft.get("protocol", {})
    sched = p.get("schedule", "?") + (f" {p['milestones']}" if p.get("milestones") else "")
    over = f" (overrides: {', '.join(p['overrides'])})" if p.get("overrides") else ""
    return (f"{p.get('name', '?')}: {p.get('epochs', '?')} ep, {sched}{over}; "
            f"{metrics.get('clips', '?')}×{metrics.get('crops', '?')} views, "
            f"{metrics.get('aggregate', 'softmax')} averaged")


def _selection_text(ft: dict) -> str:
    """e.g. "epoch 57 of 100, chosen on held-out train videos"."""
    on = ft.get("selected_on", "?")
    if on == "last":
        return f"last epoch ({ft.get('selected_epoch', '?')})"
    return f"epoch {ft.get('selected_epoch', '?')} of {ft.get('epochs', '?')}, chosen on {SELECTED_ON.get(on, on)}"


def render_table(rows: list[dict]) -> str:
    """Markdown table; a test-selected row fills only the test-selected columns."""
    head = ("| dataset | split | backbone | model | protocol | selection | videos | top-1 | top-5 "
            "| test-selected top-1 | test-selected top-5 | chance (top-1 / top-5) | paper (top-1 / top-5) |")
    sep = "|---|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|"
    lines = [head, sep]
    for r in rows:
        figures = [f"{r['top1']:.1f}", f"{r['top5']:.1f}"]
        default, test = (["-", "-"], figures) if r.get("test_selected") else (figures, ["-", "-"])
        lines.append(f"| {r['dataset']} | {r['split']} | {r['backbone']} | {r['init']} | {r['protocol']} | "
                     f"{r['selection']} | {r['videos']} | {' | '.join(default)} | {' | '.join(test)} | "
                     f"{r.get('chance', '-')} | {r['paper']} |")
    return "\n".join(lines)


def _is_test_set(st: Stage) -> bool:
    return "test_set" in (getattr(st, "semantic", None) or {})


def test_set_rows(work: Path, cfg: Config, stages: list[Stage]) -> list[dict]:
    """One row per finished out-of-context test-set stage (evaluate or linear probe --test-set)."""
    rows = []
    for st in stages:
        if not _is_test_set(st) or not (st.out_dir(work) / STAGE_FILE).is_file():
            continue
        s = json.loads((st.out_dir(work) / STAGE_FILE).read_text(encoding="utf-8")).get("summary", {})
        dataset = cfg.finetune.dataset if st.kind == "evaluate" else cfg.linear_probe.dataset
        rows.append({"dataset": dataset, "split": cfg.dataset(dataset).split, "test_set": s.get("test_set", "?"),
                     "model": "finetuned" if st.kind == "evaluate" else "linear probe",
                     "videos": s.get("num_videos", s.get("num_test", 0)), "top1": 100.0 * s["test_set_top1"],
                     "in_top1": 100.0 * s["in_distribution_top1"], "drop": s["drop_points"]})
    return rows


def render_test_set_table(rows: list[dict]) -> str:
    """Markdown: each out-of-context test set's top-1 beside the same model's in-distribution top-1."""
    lines = ["| dataset | split | test set | model | videos | top-1 | in-distribution top-1 | drop (points) |",
             "|---|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['split']} | {r['test_set']} | {r['model']} | {r['videos']} | {r['top1']:.1f} "
              f"| {r['in_top1']:.1f} | {r['drop']:.1f} |" for r in rows]
    return "\n".join(lines)


PRETEXT_FIGURES = (("rsp_acc", "RSP: same-speed key closer (chance 0.5)"),
                   ("avid_top1", "A-VID: own key retrieved, top-1"),
                   ("kd_person_iou", "KD: person IoU against the teacher"),
                   ("kd_part_miou", "KD: part mIoU against the teacher"))


def pretext_rows(work: Path, stages: list[Stage]) -> list[dict]:
    """One row per held-out pretext figure of every finished pretraining stage (student/pretext_eval.py):
    the untrained network, the pretrained student, and their paired difference when measured over views."""
    rows = []
    for st in stages:
        path = st.out_dir(work) / STAGE_FILE
        if st.kind != "pretrain" or not path.is_file():
            continue
        s = json.loads(path.read_text(encoding="utf-8")).get("summary", {})
        trained, untrained, gain = s.get("heldout") or {}, s.get("heldout_untrained") or {}, s.get("heldout_gain") or {}
        for key, label in PRETEXT_FIGURES:
            if not isinstance(trained.get(key), (int, float)):
                continue
            if key == "avid_top1":
                label += f" of {trained.get('avid_gallery')} (chance {trained.get('avid_chance', 0):.3f})"
            rows.append({"stage": st.name, "videos": trained.get("avid_gallery"),
                         "views": trained.get("heldout_views") or 1, "figure": label,
                         "untrained": format_estimate(untrained, key), "pretrained": format_estimate(trained, key),
                         "gain": format_interval(gain[key]) if key in gain else "-"})
    return rows


def render_pretext_table(rows: list[dict]) -> str:
    """Markdown: the held-out pretext figures, untrained beside pretrained."""
    lines = ["| pretraining | held-out videos × views | figure | untrained | pretrained | "
             "pretrained − untrained (95 %, paired by view) |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['videos']} × {r['views']} | {r['figure']} | {r['untrained']} | "
              f"{r['pretrained']} | {r['gain']} |" for r in rows]
    return "\n".join(lines)


def print_results(work: Path, cfg: Config, stages: list[Stage]) -> None:
    rows = results_rows(work, cfg, stages)
    if not rows:
        return
    table = render_table(rows)
    oc = test_set_rows(work, cfg, stages)
    if oc:  # out-of-context test sets (docs/out-of-context.md)
        table += "\n\nOut-of-context test sets (top-1 %, video level):\n\n" + render_test_set_table(oc)
    pretext = pretext_rows(work, stages)
    if pretext:  # what pretraining learnt, on videos it never trained on
        table += ("\n\nPretext tasks on held-out videos (never pretrained on; ± standard error over views):\n\n"
                  + render_pretext_table(pretext))
    text = ("# Results\n\nVideo-level accuracy (%) on the test split. top-1 / top-5: the epoch was chosen on "
            "held-out training videos (or is the last). test-selected: the epoch was chosen on the test split "
            "itself (finetune.select_on = \"test\", RSPNet's practice), which is optimistic; compare those only "
            "with numbers selected the same way. The paper's figures are for full-scale Kinetics-400 pretraining "
            "and full-width backbones; they are a reference, not a target for the synthetic demo.\n\n"
            + table + "\n")
    atomic_write_text(work / "results.md", text)
    click.echo("\n" + table)
    click.echo(f"\n(also in {work / 'results.md'})")


def echo_table(work: Path, cfg: Config, stages: list[Stage]) -> None:
    """Print the table rows of ``stages`` (e.g. after `pipeline finetune`) without touching results.md."""
    rows = results_rows(work, cfg, stages)
    if rows:
        click.echo("\n" + render_table(rows))
    oc = test_set_rows(work, cfg, stages)
    if oc:
        click.echo("\n" + render_test_set_table(oc))
