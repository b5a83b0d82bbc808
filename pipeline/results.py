"""The results table printed at the end of ``pipeline run`` and kept in ``WORK/results.md``."""
from __future__ import annotations

import json
from pathlib import Path

import click

from pipeline.config import Config
from pipeline.fingerprint import atomic_write_text
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
        if st.kind != "evaluate":
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
            "top1": 100.0 * metrics["video_top1"],
            "top5": 100.0 * metrics["video_top5"],
            "paper": f"{paper[0]:.1f} / {paper[1]:.1f}" if paper else "-",
            "videos": metrics.get("num_videos", 0),
        })
    return rows


def _protocol_text(ft: dict, metrics: dict) -> str:
    """e.g. "custom: 6 ep, cosine; 4×1 views; epoch 3 chosen on val"."""
    p = ft.get("protocol", {})
    sched = p.get("schedule", "?") + (f" {p['milestones']}" if p.get("milestones") else "")
    return (f"{p.get('name', '?')}: {p.get('epochs', '?')} ep, {sched}; "
            f"{metrics.get('clips', '?')}×{metrics.get('crops', '?')} views; "
            f"epoch {ft.get('selected_epoch', '?')} chosen on {ft.get('selected_on', '?')}")


def render_table(rows: list[dict]) -> str:
    head = "| dataset | split | backbone | model | protocol | videos | top-1 | top-5 | paper (top-1 / top-5) |"
    sep = "|---|---|---|---|---|---:|---:|---:|---|"
    lines = [head, sep]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['split']} | {r['backbone']} | {r['init']} | {r['protocol']} | "
                     f"{r['videos']} | {r['top1']:.1f} | {r['top5']:.1f} | {r['paper']} |")
    return "\n".join(lines)


def print_results(work: Path, cfg: Config, stages: list[Stage]) -> None:
    rows = results_rows(work, cfg, stages)
    if not rows:
        return
    table = render_table(rows)
    text = ("# Results\n\nVideo-level accuracy (%) on the test split. The paper's figures are for full-scale "
            "Kinetics-400 pretraining and full-width backbones; they are a reference, not a target for "
            "the synthetic demo.\n\n" + table + "\n")
    atomic_write_text(work / "results.md", text)
    click.echo("\n" + table)
    click.echo(f"\n(also in {work / 'results.md'})")
