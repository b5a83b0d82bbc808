"""``pipeline sweep``: one evaluation protocol over the official splits and several seeds.

Numbers in video self-supervised learning often do not reproduce because one paper reports split 1,
another the mean of three splits, one clip-level, another video-level accuracy, one seed or the
best of several. A sweep runs every (split, seed) as an ordinary stage (cached, so rerunning a sweep
with one more seed builds only the new runs), then reports VIDEO-LEVEL top-1 / top-5 as mean ± std
per split (over seeds) and overall (over every split × seed run; sample std, n - 1).

Protocols: ``finetune`` (finetune + multi-view evaluate; seed key ``finetune.seed``) and
``linear-probe`` (frozen features + logistic regression, which is deterministic given the encoder, so
its seeds vary ``pretrain.seed`` by default: the randomness that a linear probe does have).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.core.config import Config, ConfigError, toml_value
from pipeline.stages import StageGraph

PROTOCOLS = ("finetune", "linear-probe")
DEFAULT_SEED_KEY = {"finetune": "finetune.seed", "linear-probe": "pretrain.seed"}


@dataclass
class Run:
    """One (split, seed) result, video-level."""

    split: int
    seed: int
    top1: float
    top5: float
    path: str
    in_distribution_top1: float | None = None  # a test-set run (--test-set): the same model's own test split


@dataclass
class SweepResult:
    protocol: str
    dataset: str
    seed_key: str
    runs: list[Run]
    per_split: dict[int, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    level: str = "video"
    test_set: str = ""  # an out-of-context test set of the dataset (student/out_of_context.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_split"] = {str(k): v for k, v in self.per_split.items()}
        return d


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0.0 for one value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(runs: Sequence[Run]) -> tuple[dict[int, dict[str, float]], dict[str, float]]:
    """Per split (over seeds) and overall (over all runs) mean ± std of top-1 / top-5, in fractions."""
    def stats(rs: Sequence[Run]) -> dict[str, float]:
        m1, s1 = mean_std([r.top1 for r in rs])
        m5, s5 = mean_std([r.top5 for r in rs])
        out = {"top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5, "runs": len(rs)}
        if rs and all(r.in_distribution_top1 is not None for r in rs):  # test-set runs: the drop, paired per run
            out["in_top1_mean"], out["in_top1_std"] = mean_std([float(r.in_distribution_top1 or 0) for r in rs])
            out["drop_mean"], out["drop_std"] = mean_std([float(r.in_distribution_top1 or 0) - r.top1 for r in rs])
        return out

    splits = sorted({r.split for r in runs})
    return {s: stats([r for r in runs if r.split == s]) for s in splits}, stats(runs)


def run_overrides(protocol: str, dataset: str, split: int, seed_key: str, seed: int) -> list[str]:
    """The ``--set`` items that make one (split, seed) run of ``protocol``."""
    section = "finetune" if protocol == "finetune" else "linear_probe"
    return [f"{section}.dataset={toml_value(dataset)}", f"datasets.{dataset}.split={split}", f"{seed_key}={seed}"]


def run_sweep(make_config: Callable[[list[str]], Config], work: Path, protocol: str, dataset: str,
              splits: Sequence[int], seeds: Sequence[int], seed_key: str | None,
              build: Callable[[Config, Any], Path | None], test_set: str | None = None) -> SweepResult:
    """Build (or reuse) every (split, seed) run through ``build(cfg, stage)`` and aggregate them.

    ``make_config(extra_overrides)`` gives the validated config of one run; ``build`` runs a stage with
    its upstream and returns its folder. ``test_set``: score each run's model on that out-of-context
    test set of the dataset instead (its top-1 beside the in-distribution top-1 and the drop).
    """
    from pipeline.stage import read_record

    if protocol not in PROTOCOLS:
        raise ConfigError(f"sweep --protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    seed_key = seed_key or DEFAULT_SEED_KEY[protocol]
    runs: list[Run] = []
    for split in splits:
        for seed in seeds:
            cfg = make_config(run_overrides(protocol, dataset, split, seed_key, seed))
            graph = StageGraph(cfg, work)
            if test_set:
                stage = (graph.evaluate_test_set(test_set) if protocol == "finetune"
                         else graph.linear_probe_test_set(test_set))
            else:
                stage = graph.evaluate() if protocol == "finetune" else graph.linear_probe()
            out = build(cfg, stage)
            if out is None:  # a dry run
                continue
            s = read_record(out).get("summary", {})
            top1, top5 = (s["video_top1"], s["video_top5"]) if protocol == "finetune" else (s["top1"], s["top5"])
            in_dist = s.get("in_distribution_top1") if test_set else None
            runs.append(Run(split=split, seed=seed, top1=float(top1), top5=float(top5), path=str(out),
                            in_distribution_top1=None if in_dist is None else float(in_dist)))
    result = SweepResult(protocol=protocol, dataset=dataset, seed_key=seed_key, runs=runs, test_set=test_set or "")
    if runs:
        result.per_split, result.overall = aggregate(runs)
    return result


def _pm(stats: dict[str, float], key: str) -> str:
    return f"{100 * stats[f'{key}_mean']:.1f} ± {100 * stats[f'{key}_std']:.1f}"


def table_lines(result: SweepResult) -> list[str]:
    """A Markdown table: one row per split and an overall row (percent, mean ± std)."""
    on = f"{result.dataset} test set {result.test_set}" if result.test_set else result.dataset
    lines = [f"{result.protocol} on {on}, video-level, seeds vary {result.seed_key}",
             "", "| split | runs | top-1 | top-5 |", "|---|---:|---:|---:|"]
    extra = bool(result.overall) and "drop_mean" in result.overall
    if extra:  # test-set runs: the in-distribution top-1 and the drop (points), mean ± std over runs
        lines[2:] = ["| split | runs | top-1 | top-5 | in-distribution top-1 | drop (points) |",
                     "|---|---:|---:|---:|---:|---:|"]

    def row(name: Any, st: dict[str, float]) -> str:
        cells = [str(name), str(st["runs"]), _pm(st, "top1"), _pm(st, "top5")]
        if extra:
            cells += [_pm(st, "in_top1"), _pm(st, "drop")]
        return "| " + " | ".join(cells) + " |"

    lines += [row(split, st) for split, st in result.per_split.items()]
    if result.overall:
        lines.append(row("all", result.overall))
    return lines


def write_sweep(result: SweepResult, work: Path) -> Path:
    """``WORK/sweeps/<protocol>-<dataset>.json`` (+ ``.md``): the last sweep of that protocol and dataset."""
    folder = Path(work) / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{result.protocol}-{result.dataset}" + (f"-{result.test_set}" if result.test_set else "")
                     + ".json")
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text("\n".join(table_lines(result)) + "\n", encoding="utf-8")
    return path


__all__ = ["PROTOCOLS", "Run", "SweepResult", "aggregate", "mean_std", "run_sweep", "table_lines", "write_sweep"]
