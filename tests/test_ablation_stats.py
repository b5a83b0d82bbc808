"""The ablation's statistics (bench/ablation_synthetic.py): paired differences to scratch with 95 % t-intervals."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def ablation():
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("ablation_synthetic", BENCH / "ablation_synthetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_t_interval_matches_the_textbook() -> None:
    from pipeline.core.stats import mean_interval  # the interval the ablation's paired differences use

    m, lo, hi = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])  # type: ignore[misc]
    # mean 3, sd sqrt(2.5), t_{0.975,4} = 2.776: half-width 2.776 * 1.5811 / sqrt(5) = 1.963
    assert m == 3.0 and lo == pytest.approx(3 - 1.963, abs=1e-3) and hi == pytest.approx(3 + 1.963, abs=1e-3)
    assert mean_interval([1.0]) is None


def test_summary_pairs_by_seed_and_flags_significance(ablation) -> None:
    runs = []
    for seed, (s, f) in enumerate([(50, 55), (40, 46), (60, 64), (45, 52), (55, 59)]):
        runs.append({"variant": "scratch", "seed": seed, "top1": s, "top1_swapped": s - 20, "drop": 20.0,
                     "human_focus": 0.2})
        runs.append({"variant": "full", "seed": seed, "top1": f, "top1_swapped": f - 20 + (seed % 2) * 2 - 1,
                     "drop": 21.0 - (seed % 2) * 2, "human_focus": 0.2, "heldout_rsp_acc": 0.9,
                     "untrained_rsp_acc": 0.5})
    summary = ablation.summarise(runs, ["scratch", "full"])
    full = summary["full"]
    d = full["top1_minus_scratch"]
    assert d["n"] == 5 and d["mean"] == pytest.approx(5.2) and d["significant"]
    assert d["ci95"][0] > 0
    assert not full["human_focus_minus_scratch"]["significant"]       # identical: interval [0, 0]
    assert not full["drop_minus_scratch"]["significant"]
    assert full["heldout_rsp_acc_mean"] == 0.9 and full["untrained_rsp_acc_mean"] == 0.5
    rows = ablation.table_rows(summary)
    assert rows[1]["Δ in-dist vs scratch [95% CI]"].endswith("*")
    # a seed without its scratch run is not paired
    summary = ablation.summarise(runs + [{"variant": "full", "seed": 9, "top1": 99.0}], ["scratch", "full"])
    assert summary["full"]["top1_minus_scratch"]["n"] == 5


def test_paired_compares_any_two_variants_by_seed_only(ablation) -> None:
    """full − w/o KD: seeds missing from either side are left out; a one-seed difference has no interval."""
    runs = [{"variant": "wo_kd", "seed": 0, "top1": 50.0}, {"variant": "wo_kd", "seed": 1, "top1": 40.0},
            {"variant": "full", "seed": 0, "top1": 60.0}, {"variant": "full", "seed": 1, "top1": 52.0},
            {"variant": "full", "seed": 2, "top1": 99.0}, {"variant": "wo_kd", "seed": 3, "top1": 0.0}]
    d = ablation.paired(runs, "full", "wo_kd", "top1")
    assert d["n"] == 2 and d["mean"] == pytest.approx(11.0)
    # differences 10 and 12: sd sqrt(2), t_{0.975,1} = 12.706: half-width 12.706 * 1.4142 / sqrt(2) = 12.706
    assert d["ci95"] == pytest.approx([11.0 - 12.706, 11.0 + 12.706], abs=1e-3) and not d["significant"]
    one = ablation.paired(runs[:3], "full", "wo_kd", "top1")
    assert one["n"] == 1 and one["mean"] == pytest.approx(10.0) and one["ci95"] is None and not one["significant"]
    assert ablation.paired(runs, "full", "scratch", "top1") is None


def test_ablation_heldout_finds_each_variant_and_seed_by_its_saved_config(tmp_path: Path) -> None:
    """bench/ablation_heldout.py picks the pretraining folder whose saved config is the run's (variant, seed),
    ignoring keys a run built before them lacks, and refuses when none matches."""
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("ablation_heldout", BENCH / "ablation_heldout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from pipeline.core.config import dump_toml

    def built(name: str, variant: str, seed: int, drop_views: bool = False) -> Path:
        d = tmp_path / name
        d.mkdir()
        text = dump_toml(module.run_config(variant, seed, []))
        if drop_views:  # a run built before pretrain.heldout_views existed
            text = "\n".join(line for line in text.splitlines() if not line.startswith("heldout_views"))
        (d / "config.toml").write_text(text)
        (d / "student.pt").write_bytes(b"")
        return d

    full0, full1 = built("a", "full", 0, drop_views=True), built("b", "full", 1)
    kd0, wo0 = built("c", "kd_only", 0), built("d", "wo_kd", 0)
    assert module.find_pretrain_dir(tmp_path, module.run_config("full", 0, [])) == full0
    assert module.find_pretrain_dir(tmp_path, module.run_config("full", 1, [])) == full1
    assert module.find_pretrain_dir(tmp_path, module.run_config("kd_only", 0, [])) == kd0
    assert module.find_pretrain_dir(tmp_path, module.run_config("wo_kd", 0, [])) == wo0
    with pytest.raises(SystemExit, match="matches seed 2"):
        module.find_pretrain_dir(tmp_path, module.run_config("full", 2, []))


def test_ablation_heldout_pairs_two_result_files_by_seed(tmp_path: Path) -> None:
    import json

    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location("ablation_heldout", BENCH / "ablation_heldout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def result(name: str, variant: str, values: dict[int, float]) -> Path:
        path = tmp_path / name
        runs = [{"variant": variant, "seed": s, "trained": {"avid_top1": v, "kd_person_iou": None}}
                for s, v in values.items()]
        path.write_text(json.dumps({"figures": {"runs": runs}}))
        return path

    a = result("a.json", "full", {0: 0.10, 1: 0.12, 2: 0.08, 3: 0.5})
    b = result("b.json", "full", {0: 0.03, 1: 0.03, 2: 0.03, 9: 0.0})  # seeds 3 and 9 have no partner
    (row,) = module.paired_runs(a, "full", b, "full")                   # kd_person_iou: no values, no row
    half = 4.303 * 0.02 / 3 ** 0.5                                       # sd of (0.07, 0.09, 0.05) = 0.02
    assert row["figure"] == "avid_top1" and row["seeds"] == 3 and row["a − b"] == 0.07
    assert row["95 %"] == f"[{0.07 - half:+.4f}, {0.07 + half:+.4f}]"
