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


@dataclass
class SweepResult:
    protocol: str
    dataset: str
    seed_key: str
    runs: list[Run]
    per_split: dict[int, dict[str, float]] = field(default_factory=dict)
    overall: dict[str, float] = field(default_factory=dict)
    level: str = "video"

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
        return {"top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5, "runs": len(rs)}

    splits = sorted({r.split for r in runs})
    return {s: stats([r for r in runs if r.split == s]) for s in splits}, stats(runs)


def run_overrides(protocol: str, dataset: str, split: int, seed_key: str, seed: int) -> list[str]:
    """The ``--set`` items that make one (split, seed) run of ``protocol``."""
    section = "finetune" if protocol == "finetune" else "linear_probe"
    return [f"{section}.dataset={toml_value(dataset)}", f"datasets.{dataset}.split={split}", f"{seed_key}={seed}"]


def _duplicates(values: Sequence[int]) -> list[int]:
    return sorted({v for v in values if list(values).count(v) > 1})


def check_arguments(cfg: Config, dataset: str, splits: Sequence[int], seeds: Sequence[int]) -> None:
    """Refuse arguments that would silently mean something else: a dataset the config does not name
    (its ``split`` override would otherwise create a folder dataset rooted at "."), a seed no RNG
    takes, a split or seed given twice (one run counted twice, with a std of 0)."""
    cfg.dataset(dataset)  # ConfigError naming the known datasets
    if not splits or not seeds:
        raise ConfigError("sweep: give at least one --splits and one --seeds value")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad:
        raise ConfigError(f"sweep --seeds {bad[0]}: a seed must be an integer in [0, 2**32)")
    for option, values in (("--splits", splits), ("--seeds", seeds)):
        if dup := _duplicates(values):
            raise ConfigError(f"sweep {option} {dup[0]} is given more than once: each run must be a different "
                              f"one (a repeated run would be counted twice in the mean and std)")


def run_sweep(make_config: Callable[[list[str]], Config], work: Path, protocol: str, dataset: str,
              splits: Sequence[int], seeds: Sequence[int], seed_key: str | None,
              build: Callable[[Config, Any], Path | None]) -> SweepResult:
    """Build (or reuse) every (split, seed) run through ``build(cfg, stage)`` and aggregate them.

    ``make_config(extra_overrides)`` gives the validated config of one run; ``build`` runs a stage with
    its upstream and returns its folder.
    """
    from pipeline.stage import read_record

    if protocol not in PROTOCOLS:
        raise ConfigError(f"sweep --protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    check_arguments(make_config([]), dataset, splits, seeds)
    seed_key = seed_key or DEFAULT_SEED_KEY[protocol]
    runs: list[Run] = []
    for split in splits:
        for seed in seeds:
            cfg = make_config(run_overrides(protocol, dataset, split, seed_key, seed))
            graph = StageGraph(cfg, work)
            stage = graph.evaluate() if protocol == "finetune" else graph.linear_probe()
            out = build(cfg, stage)
            if out is None:  # a dry run
                continue
            s = read_record(out).get("summary", {})
            top1, top5 = (s["video_top1"], s["video_top5"]) if protocol == "finetune" else (s["top1"], s["top5"])
            runs.append(Run(split=split, seed=seed, top1=float(top1), top5=float(top5), path=str(out)))
    result = SweepResult(protocol=protocol, dataset=dataset, seed_key=seed_key, runs=runs)
    if runs:
        result.per_split, result.overall = aggregate(runs)
    return result


def _pm(stats: dict[str, float], key: str) -> str:
    return f"{100 * stats[f'{key}_mean']:.1f} ± {100 * stats[f'{key}_std']:.1f}"


def table_lines(result: SweepResult) -> list[str]:
    """A Markdown table: one row per split and an overall row (percent, mean ± std)."""
    lines = [f"{result.protocol} on {result.dataset}, video-level, seeds vary {result.seed_key}",
             "", "| split | runs | top-1 | top-5 |", "|---|---:|---:|---:|"]
    for split, st in result.per_split.items():
        lines.append(f"| {split} | {st['runs']} | {_pm(st, 'top1')} | {_pm(st, 'top5')} |")
    if result.overall:
        o = result.overall
        lines.append(f"| all | {o['runs']} | {_pm(o, 'top1')} | {_pm(o, 'top5')} |")
    return lines


def write_sweep(result: SweepResult, work: Path) -> Path:
    """``WORK/sweeps/<protocol>-<dataset>.json`` (+ ``.md``): the last sweep of that protocol and dataset."""
    folder = Path(work) / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{result.protocol}-{result.dataset}.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    path.with_suffix(".md").write_text("\n".join(table_lines(result)) + "\n", encoding="utf-8")
    return path


__all__ = ["PROTOCOLS", "Run", "SweepResult", "aggregate", "mean_std", "run_sweep", "table_lines", "write_sweep"]
