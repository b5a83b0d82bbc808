"""Linear probe on frozen features, and the splits × seeds sweep: the maths on constructed data,
then both commands on the tiny synthetic demo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline.core.config import load_config
from pipeline.sweep import Run, SweepResult, aggregate, plan_lines, run_overrides, run_sweep, table_lines
from student.linear_probe import fit_logistic, standardise
from tiny_pipeline import invoke, pretrained_work, stage_folder


def _blobs(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g, dtype=torch.float64) * 4
    y = torch.arange(n) % classes
    return centres[y] + torch.randn(n, dim, generator=g, dtype=torch.float64), y


def test_logistic_regression_separates_blobs_and_is_deterministic():
    x, y = _blobs(120, 4, 6, 0)
    xt, yt = _blobs(40, 4, 6, 0)  # same centres, new noise
    x, xt = standardise(x, xt)
    layer, fit = fit_logistic(x, y, 4, weight_decay=1e-3, max_iter=200)
    again, _ = fit_logistic(x, y, 4, weight_decay=1e-3, max_iter=200)
    assert torch.equal(layer.weight, again.weight)  # zero init, full batch: no seed involved
    assert (layer(xt).argmax(1) == yt).double().mean() > 0.95
    assert fit["iterations"] > 1 and fit["train_loss"] < 0.2
    # the L2 penalty is applied: a strong one shrinks the weights
    strong, _ = fit_logistic(x, y, 4, weight_decay=10.0, max_iter=200)
    assert strong.weight.norm() < 0.5 * layer.weight.norm()


def test_weight_decay_is_chosen_on_held_out_train_videos():
    """Few videos, many noise dimensions: the weakest penalty fits the noise; the held-out choice is stronger."""
    from student.finetune import stratified_holdout
    from student.linear_probe import choose_weight_decay

    x, y = _blobs(60, 3, 2, 1)
    x = torch.cat([x * 0.3, torch.randn(60, 80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)], 1)
    entries = [type("E", (), {"label": int(v)})() for v in y]
    fit, held = stratified_holdout(entries, 0.25, 0)
    assert len(held) == 15 and not set(fit) & set(held)
    grid = [1e-4, 1e-2, 1.0, 100.0]
    chosen, search = choose_weight_decay(x, y, fit, held, 3, grid, 300)
    assert [r["weight_decay"] for r in search] == grid
    best = max(r["heldout_top1"] for r in search)
    assert chosen in grid and next(r for r in search if r["weight_decay"] == chosen)["heldout_top1"] == best
    weakest = search[0]
    assert weakest["fit_top1"] == 1.0 and weakest["heldout_top1"] < best  # overfits, and the search sees it
    assert chosen > 1e-4


def test_standardise_uses_train_statistics_only():
    train = torch.tensor([[0.0, 5.0], [2.0, 5.0]], dtype=torch.float64)
    test = torch.tensor([[4.0, 7.0]], dtype=torch.float64)
    a, b = standardise(train, test)
    assert torch.allclose(a.mean(0), torch.zeros(2, dtype=torch.float64))
    assert b.tolist() == [[3.0, 2.0]]  # constant train column: std 1, not a division by zero


def test_aggregate_mean_and_sample_std():
    runs = [Run(1, 0, 0.5, 0.9, ""), Run(1, 1, 0.7, 1.0, ""), Run(2, 0, 0.6, 0.8, "")]
    per_split, overall = aggregate(runs)
    assert per_split[1]["top1_mean"] == pytest.approx(0.6) and per_split[1]["top1_std"] == pytest.approx(0.141421, 1e-4)
    assert per_split[2]["top1_std"] is None and overall["runs"] == 3  # one run: no spread
    single = SweepResult("finetune", "hmdb51", "finetune.seed", runs[2:], *aggregate(runs[2:]))
    assert table_lines(single)[-1] == "| all | 1 | 60.0 | 80.0 |"  # not "± 0.0"
    assert overall["top1_mean"] == pytest.approx(0.6) and overall["top1_std"] == pytest.approx(0.1)


def test_finetune_sweep_reads_video_level_evaluate_results(tmp_path: Path):
    """Each (split, seed) gets its own config; the evaluate stage's VIDEO-level numbers are used."""
    seen = []

    def fake_build(cfg, stage):
        seen.append((stage.kind, cfg.dataset("hmdb51").split, cfg.finetune.seed))
        out = tmp_path / f"{len(seen)}"
        out.mkdir()
        (out / "stage.json").write_text(json.dumps({"stage": "evaluate", "name": "x", "summary": {
            "video_top1": 0.25 * cfg.finetune.seed, "video_top5": 1.0, "clip_top1": 0.0}}))
        return out

    result = run_sweep(lambda extra: load_config(None, extra), tmp_path, "finetune", "hmdb51", [1, 3], [0, 2],
                       None, fake_build)
    assert seen == [("evaluate", 1, 0), ("evaluate", 1, 2), ("evaluate", 3, 0), ("evaluate", 3, 2)]
    assert result.overall["top1_mean"] == pytest.approx(0.25) and result.seed_key == "finetune.seed"
    assert "| all | 4 | 25.0 ± 28.9 | 100.0 ± 0.0 |" in table_lines(result)
    assert run_overrides("linear-probe", "ucf101", 2, "pretrain.seed", 7) == [
        'linear_probe.dataset="ucf101"', "datasets.ucf101.split=2", "pretrain.seed=7"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return pretrained_work(tmp_path_factory)


def test_linear_probe_command_on_the_synthetic_demo(work: Path):
    out = invoke(work, "linear-probe", "--dataset", "hmdb51", "--build-upstream",
                 sets=("linear_probe.heldout_fraction=0.5",)).output
    folder = stage_folder(out, "linear-probe")
    res = json.loads((folder / "linear_probe.json").read_text())
    assert (res["num_train"], res["num_test"], res["num_classes"]) == (20, 10, 10)
    assert res["feature_dim"] == 2 * 64 and res["level"].startswith("video")  # [z_h || z_c] at width 0.125
    assert 0.0 <= res["top1"] <= res["top5"] <= 1.0 and res["train_top1"] > 0.5
    # the penalty was chosen on held-out TRAIN videos (20 train videos, 2 per class: 1 per class held out)
    assert res["num_heldout"] == 10 and "held-out 10 of the 20 train videos" in res["weight_decay_chosen_on"]
    assert res["weight_decay"] in [r["weight_decay"] for r in res["weight_decay_search"]]
    assert res["heldout_top1"] == max(r["heldout_top1"] for r in res["weight_decay_search"])
    assert res["chance_top1"] == 0.1 and res["chance_top5"] == 0.5
    preds = (folder / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 10
    assert f"video-level top-1 {100 * res['top1']:.1f}%" in out.splitlines()[-1]


def test_sweep_dry_run_lists_each_distinct_stage_once_with_count_and_estimate(work: Path):
    out = invoke(work, "sweep", "--protocol", "linear-probe", "--dataset", "hmdb51", "--splits", "1", "--splits", "2",
                 "--splits", "3", "--seeds", "0", "--seeds", "1", "--dry-run").output
    lines = [line for line in out.splitlines() if line.startswith("would build ")]
    assert len(lines) == len(set(lines))
    assert sum(line.startswith("would build linear-probe:hmdb51-split") for line in lines) == 6  # 3 splits x 2 seeds
    assert sum(line.startswith("would build pretrain:") for line in lines) == 1  # seed 0 is built, seed 1 is not
    assert 2 <= sum(line.startswith("would build manifest:hmdb51") for line in lines) <= 3  # one per split
    assert not any("manifest:kinetics400" in line or "teacher-cache" in line for line in lines)  # done, shared
    pre = next(line for line in lines if line.startswith("would build pretrain:"))
    assert "new variant: config pretrain.seed: 0 -> 1" in pre and ", ~" in pre  # not "stale"; timed from seed 0's build
    total = out.splitlines()[-1]
    assert total.startswith(f"{len(lines)} stages to build, ") and "min from recorded stage timings" in total
    assert not (work / "sweeps" / "linear-probe-hmdb51.json").exists()


def test_plan_lines_without_timings():
    from pipeline.sweep import PlannedStage

    lines = plan_lines([PlannedStage("manifest:x", "?", "missing", [], None)], 3)
    assert lines == ["would build manifest:x [?] (missing)",
                     "1 stages to build, 3 already done; no recorded timings to estimate from"]


def test_sweep_over_three_splits_and_two_seeds(work: Path):
    out = invoke(work, "sweep", "--protocol", "linear-probe", "--dataset", "hmdb51", "--splits", "1", "--splits", "2",
                 "--splits", "3", "--seeds", "0", "--seeds", "1").output
    data = json.loads((work / "sweeps" / "linear-probe-hmdb51.json").read_text())
    assert [(r["split"], r["seed"]) for r in data["runs"]] == [(s, e) for s in (1, 2, 3) for e in (0, 1)]
    assert data["seed_key"] == "pretrain.seed" and data["level"] == "video"
    assert len({r["path"] for r in data["runs"]}) == 6  # every (split, seed) its own stage output
    assert set(data["per_split"]) == {"1", "2", "3"} and data["overall"]["runs"] == 6
    lines = out.splitlines()
    assert lines[-1].startswith("| all | 6 | ") and "±" in lines[-1]
    assert sum(line.startswith(("| 1 |", "| 2 |", "| 3 |")) for line in lines) == 3
