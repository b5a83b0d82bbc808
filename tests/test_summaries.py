"""Every stage command ends with a short human summary (not a JSON dump); ``--json`` keeps the
machine-readable form."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.summary import SUMMARIES, summary_lines
from tiny_pipeline import invoke, pretrained_work


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return pretrained_work(tmp_path_factory)


def _tail(output: str, n: int) -> list[str]:
    return [line for line in output.splitlines() if line.strip()][-n:]


def test_finetune_ends_with_readable_summaries(work: Path):
    out = invoke(work, "finetune", "--dataset", "hmdb51", "--build-upstream").output
    assert "{" not in out.split("finetune hmdb51-split1:")[-1].split("|")[0]  # no JSON dump after the path
    assert "final train loss" in out and "kept epoch 1" in out
    summary = [line for line in out.splitlines() if line.startswith("  ") and "video-level top-1" in line]
    assert summary, out
    tail = _tail(out, 6)
    assert any("hmdb51" in line and "|" in line for line in tail)  # the results row closes the command


def test_retrieval_on_hmdb51_ends_with_recall_line(work: Path):
    out = invoke(work, "retrieval", "--dataset", "hmdb51", "--build-upstream").output
    head, body = _tail(out, 3)[0], _tail(out, 2)
    assert head.startswith("retrieval hmdb51-split1: ") and "built in" in head
    assert "test videos query" in body[0] and "hmdb51" in body[0]
    assert body[1].startswith("  R@1 ") and "R@5" in body[1] and "%" in body[1]
    assert "{" not in out


def test_json_flag_keeps_the_machine_readable_summary(work: Path):
    out = invoke(work, "retrieval", "--dataset", "hmdb51", "--json").output  # already built: reused
    text = out[out.index("{"):]
    assert set(json.loads(text)["recall"]) >= {"R@1", "R@5"}


@pytest.mark.parametrize("kind", sorted(SUMMARIES))
def test_every_kind_survives_an_empty_or_old_record(kind: str):
    lines = summary_lines({"stage": kind, "name": "x", "summary": {}, "timings": {"build_s": 1.25}}, Path("/w"))
    assert lines[0] == f"{kind} x: /w (built in 1.2 s)"
    assert all("None" not in line for line in lines)


def test_pretrain_and_teacher_headlines():
    pre = summary_lines({"stage": "pretrain", "name": "k", "summary": {
        "epochs": 2, "steps": 10, "videos": 5, "clips": 9, "global_batch": 4, "device": "cpu", "clips_per_s": 3.2,
        "final": {"loss": 1.5, "loss_kd": 0.75, "loss_rsp": 0.5}}}, Path("/p"))
    assert "final loss 1.500 (kd 0.750, rsp 0.500)" in pre[2]
    tc = summary_lines({"stage": "teacher-cache", "name": "k", "summary": {
        "clips_computed": 40, "teacher": "schp", "labels": "lip", "map_size": 64, "shards": 3, "failed": 0}},
        Path("/t"))
    assert tc[1].startswith("  40 teacher maps written (schp teacher")


def test_every_accuracy_and_recall_is_stated_beside_chance():
    ev = summary_lines({"stage": "evaluate", "name": "e", "summary": {
        "num_videos": 30, "views_per_video": 4, "video_top1": 0.5, "video_top5": 0.9, "clip_top1": 0.4,
        "clip_top5": 0.8, "mean_class_accuracy": 0.45, "per_class": {f"c{i}": 0.5 for i in range(10)}}}, Path("/e"))
    assert "video-level top-1 50.0% (chance 10.0%), top-5 90.0% (chance 50.0%)" in ev[1]
    assert "mean class accuracy 45.0% (chance 10.0%)" in ev[2]
    ret = summary_lines({"stage": "retrieval", "name": "r", "summary": {
        "recall": {"R@1": 0.1, "R@5": 0.4}, "chance": {"R@1": 0.1, "R@5": 0.41}}}, Path("/r"))
    assert ret[2] == "  R@1 10.0% (chance 10.0%), R@5 40.0% (chance 41.0%)"
    lp = summary_lines({"stage": "linear-probe", "name": "l", "summary": {
        "num_classes": 10, "chance_top1": 0.1, "chance_top5": 0.5, "top1": 0.3, "top5": 0.7, "train_top1": 0.6,
        "heldout_top1": 0.35, "weight_decay": 1.0, "weight_decay_chosen_on": "held-out 76 of the 380 train videos"}},
        Path("/l"))
    assert lp[2] == "  weight decay 1.0 chosen on held-out 76 of the 380 train videos"
    assert lp[3] == "  video-level top-1 30.0% (chance 10.0%), top-5 70.0% (chance 50.0%) (train top-1 60.0%, " \
                    "held-out top-1 35.0%)"


def test_pretrain_summary_states_heldout_figures_with_errors_and_the_paired_gain():
    trained = {"rsp_acc": 0.857, "rsp_acc_se": 0.008, "avid_top1": 0.05, "avid_top1_se": 0.005, "avid_gallery": 140,
               "avid_chance": 0.007143, "heldout_views": 8, "kd_person_iou": 0.61, "kd_part_miou": 0.22}
    untrained = {**trained, "rsp_acc": 0.529, "avid_top1": 0.024, "avid_top1_se": 0.004, "kd_person_iou": 0.11}
    gain = {"avid_top1": {"mean": 0.026, "low": 0.015, "high": 0.037, "views": 8}}
    lines = summary_lines({"stage": "pretrain", "name": "k", "summary": {
        "epochs": 2, "steps": 10, "videos": 5, "clips": 9, "global_batch": 4, "device": "cpu", "clips_per_s": 3.2,
        "final": {"loss": 1.5}, "heldout": trained, "heldout_untrained": untrained, "heldout_gain": gain}}, Path("/p"))
    held = next(x for x in lines if "held-out videos" in x)
    assert "A-VID top-1 0.050 ± 0.005 (untrained 0.024 ± 0.004) of 140" in held and "8 views per video" in held
    assert lines[-1].strip() == ("trained − untrained, paired over 8 views (95 % interval): "
                                 "A-VID top-1 +0.026 [+0.015, +0.037]")


def test_results_table_lists_the_heldout_pretext_figures_beside_the_untrained_network(tmp_path: Path) -> None:
    import json
    from types import SimpleNamespace

    from pipeline.results import pretext_rows, render_pretext_table

    trained = {"rsp_acc": 0.857, "rsp_acc_se": 0.008, "avid_top1": 0.05, "avid_top1_se": 0.005, "avid_gallery": 140,
               "avid_chance": 1 / 140, "heldout_views": 8, "kd_person_iou": 0.612, "kd_part_miou": None}
    untrained = {**trained, "rsp_acc": 0.529, "avid_top1": 0.024, "avid_top1_se": 0.004, "kd_person_iou": 0.107}
    (tmp_path / "stage.json").write_text(json.dumps({"summary": {
        "heldout": trained, "heldout_untrained": untrained,
        "heldout_gain": {"avid_top1": {"mean": 0.0259, "low": 0.0065, "high": 0.0453, "views": 8}}}}))
    pre = SimpleNamespace(kind="pretrain", name="kinetics400", out_dir=lambda work: tmp_path)
    other = SimpleNamespace(kind="finetune", name="x", out_dir=lambda work: tmp_path)
    rows = pretext_rows(tmp_path, [pre, other])
    assert [r["figure"].split(":")[0] for r in rows] == ["RSP", "A-VID", "KD"]  # part mIoU not measured: no row
    table = render_pretext_table(rows).splitlines()
    assert table[3] == ("| kinetics400 | 140 × 8 | A-VID: own key retrieved, top-1 of 140 (chance 0.007) | "
                        "0.024 ± 0.004 | 0.050 ± 0.005 | +0.026 [+0.006, +0.045] |")
    assert table[4].endswith("| 0.107 | 0.612 | - |")
