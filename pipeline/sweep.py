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

import difflib
import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from pipeline.core.config import Config, ConfigError, toml_value
from pipeline.stage import Stage
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
    per_split: dict[int, dict[str, Any]] = field(default_factory=dict)
    overall: dict[str, Any] = field(default_factory=dict)
    level: str = "video"
    test_set: str = ""  # an out-of-context test set of the dataset (student/out_of_context.py)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_split"] = {str(k): v for k, v in self.per_split.items()}
        return d


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value: one run has no spread to report)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def aggregate(runs: Sequence[Run]) -> tuple[dict[int, dict[str, Any]], dict[str, Any]]:
    """Per split (over seeds) and overall (over all runs) mean ± std of top-1 / top-5, in fractions."""
    def stats(rs: Sequence[Run]) -> dict[str, Any]:
        m1, s1 = mean_std([r.top1 for r in rs])
        m5, s5 = mean_std([r.top5 for r in rs])
        out: dict[str, Any] = {"top1_mean": m1, "top1_std": s1, "top5_mean": m5, "top5_std": s5, "runs": len(rs)}
        if rs and all(r.in_distribution_top1 is not None for r in rs):  # test-set runs: the drop, paired per run
            out["in_top1_mean"], out["in_top1_std"] = mean_std([float(r.in_distribution_top1 or 0) for r in rs])
            out["drop_mean"], out["drop_std"] = mean_std([float(r.in_distribution_top1 or 0) - r.top1 for r in rs])
        return out

    splits = sorted({r.split for r in runs})
    return {s: stats([r for r in runs if r.split == s]) for s in splits}, stats(runs)


def check_dataset(make_config: Callable[[list[str]], Config], dataset: str) -> None:
    """The sweep's dataset must be a [datasets.<name>] table of the config: a typo would otherwise
    create an empty table through the split override and fail much later."""
    known = list(make_config([]).datasets)
    if dataset not in known:
        close = difflib.get_close_matches(dataset, known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"sweep --dataset {dataset}: no [datasets.{dataset}] table in the config{hint}; "
                          f"known: {', '.join(known) or 'none'}")


def run_overrides(protocol: str, dataset: str, split: int, seed_key: str, seed: int) -> list[str]:
    """The ``--set`` items that make one (split, seed) run of ``protocol``."""
    section = "finetune" if protocol == "finetune" else "linear_probe"
    return [f"{section}.dataset={toml_value(dataset)}", f"datasets.{dataset}.split={split}", f"{seed_key}={seed}"]


def sweep_stage(graph: StageGraph, protocol: str, test_set: str | None = None) -> Stage:
    """The stage one run of the sweep reads: evaluate or linear probe, or their ``test_set`` stage."""
    if test_set:
        return graph.evaluate_test_set(test_set) if protocol == "finetune" else graph.linear_probe_test_set(test_set)
    return graph.evaluate() if protocol == "finetune" else graph.linear_probe()


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
              build: Callable[[Config, Any], Path | None], test_set: str | None = None) -> SweepResult:
    """Build (or reuse) every (split, seed) run through ``build(cfg, stage)`` and aggregate them.

    ``make_config(extra_overrides)`` gives the validated config of one run; ``build`` runs a stage with
    its upstream and returns its folder. ``test_set``: score each run's model on that out-of-context
    test set of the dataset instead (its top-1 beside the in-distribution top-1 and the drop).
    """
    from pipeline.stage import read_record

    if protocol not in PROTOCOLS:
        raise ConfigError(f"sweep --protocol {protocol}: choose one of {', '.join(PROTOCOLS)}")
    check_arguments(make_config([]), dataset, splits, seeds)
    seed_key = seed_key or DEFAULT_SEED_KEY[protocol]
    check_dataset(make_config, dataset)
    runs: list[Run] = []
    for split in splits:
        for seed in seeds:
            cfg = make_config(run_overrides(protocol, dataset, split, seed_key, seed))
            stage = sweep_stage(StageGraph(cfg, work), protocol, test_set)
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


@dataclass
class PlannedStage:
    """One distinct stage a sweep would build."""

    key: str
    fingerprint: str  # 12 hex digits, or "?" while an upstream it hashes is not built
    state: str  # "missing", "new variant" (another config's output exists), "stale" (code/inputs changed)
    reasons: list[str]
    estimate_s: float | None  # the last recorded build time of this stage kind and name (or kind)


def _identity(stage: Any) -> str:
    """A config-only identity (no file hashing), so stages whose upstream is not built yet still dedupe."""
    from pipeline.core.fingerprint import sha256_json

    return sha256_json([stage.kind, stage.name, stage.version, stage.semantic, [_identity(u) for u in stage.upstream]])


def recorded_build_seconds(work: Path, kind: str, name: str) -> float | None:
    """The newest recorded ``timings.build_s`` of ``kind``/``name`` in WORK, else of ``kind`` under any name."""
    def newest(pattern: str) -> float | None:
        best: tuple[float, float] | None = None
        for sj in Path(work).glob(pattern):
            try:
                rec = json.loads(sj.read_text(encoding="utf-8"))
                value = float(rec["timings"]["build_s"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            mtime = sj.stat().st_mtime
            if best is None or mtime > best[0]:
                best = (mtime, value)
        return best[1] if best else None

    return newest(f"{kind}/{name}/*/stage.json") or newest(f"{kind}/*/*/stage.json")


def _state(status: Any) -> tuple[str, list[str]]:
    if status.state == "stale" and all(r.startswith(("config ", "upstream ")) for r in status.reasons):
        return "new variant", [r for r in status.reasons if r.startswith("config ")][:2]
    return status.state, status.reasons[:2]


def plan_sweep(make_config: Callable[[list[str]], Config], work: Path, protocol: str, dataset: str,
               splits: Sequence[int], seeds: Sequence[int], seed_key: str | None,
               test_set: str | None = None) -> tuple[list[PlannedStage], int]:
    """(the distinct stages the sweep would build, in build order; how many of its stages are already done)."""
    from pipeline.stage import stage_status

    seed_key = seed_key or DEFAULT_SEED_KEY[protocol]
    check_dataset(make_config, dataset)
    seen: set[str] = set()
    planned: list[PlannedStage] = []
    done = 0

    def visit(stage: Any) -> None:
        nonlocal done
        ident = _identity(stage)
        if ident in seen:
            return
        seen.add(ident)
        for up in stage.upstream:
            visit(up)
        status = stage_status(stage, work)
        if status.state == "done":
            done += 1
            return
        state, reasons = _state(status)
        fp = status.path.name if status.path is not None else "?"
        planned.append(PlannedStage(stage.key, fp, state, reasons, recorded_build_seconds(work, stage.kind,
                                                                                            stage.name)))

    for split in splits:
        for seed in seeds:
            cfg = make_config(run_overrides(protocol, dataset, split, seed_key, seed))
            visit(sweep_stage(StageGraph(cfg, work), protocol, test_set))
    return planned, done


def plan_lines(planned: Sequence[PlannedStage], done: int) -> list[str]:
    """One line per distinct stage to build, then the count and the time estimate."""
    lines = []
    for p in planned:
        why = f": {'; '.join(p.reasons)}" if p.reasons else ""
        est = f", ~{p.estimate_s:.0f} s" if p.estimate_s is not None else ""
        lines.append(f"would build {p.key} [{p.fingerprint}] ({p.state}{why}{est})")
    timed = [p.estimate_s for p in planned if p.estimate_s is not None]
    total = (f"~{sum(timed) / 60:.1f} min from recorded stage timings" if timed
             else "no recorded timings to estimate from")
    untimed = len(planned) - len(timed)
    lines.append(f"{len(planned)} stages to build, {done} already done; {total}"
                 + (f" ({untimed} stages without a recorded timing not counted)" if timed and untimed else ""))
    return lines


def _pm(stats: dict[str, Any], key: str) -> str:
    """``41.2 ± 3.1`` over several runs; the mean alone for one run (it has no spread)."""
    std = stats[f"{key}_std"]
    return f"{100 * stats[f'{key}_mean']:.1f}" + (f" ± {100 * std:.1f}" if std is not None else "")


def table_lines(result: SweepResult) -> list[str]:
    """A Markdown table: one row per split and an overall row (percent, mean ± sample std; no ± for one run)."""
    on = f"{result.dataset} test set {result.test_set}" if result.test_set else result.dataset
    lines = [f"{result.protocol} on {on}, video-level, seeds vary {result.seed_key}",
             "", "| split | runs | top-1 | top-5 |", "|---|---:|---:|---:|"]
    extra = bool(result.overall) and "drop_mean" in result.overall
    if extra:  # test-set runs: the in-distribution top-1 and the drop (points), mean ± std over runs
        lines[2:] = ["| split | runs | top-1 | top-5 | in-distribution top-1 | drop (points) |",
                     "|---|---:|---:|---:|---:|---:|"]

    def row(name: Any, st: dict[str, Any]) -> str:
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


__all__ = ["PROTOCOLS", "PlannedStage", "Run", "SweepResult", "aggregate", "mean_std", "plan_lines", "plan_sweep",
           "recorded_build_seconds", "run_sweep", "table_lines", "write_sweep"]
