"""Held-out pretext figures of finished pretraining runs, grouped by recipe, with paired differences.

Each run directory (``WORK/pretrain/<dataset>/<id>``) gives its seed (``config.toml``) and the first and
last ``heldout`` records of its ``metrics.jsonl``: the untrained network and the pretrained student
(student/pretext_eval.py). A recipe is ``NAME=section.key=value,...``: the runs whose config.toml has
those values (a key the run's config does not write counts as the key's dataclass default). Printed:
one row per run (with the epoch whose training-batch RSP loss first falls below 1.9, a diagnostic of
when relative speed starts to be learnt), each recipe's mean, each recipe's pretrained minus untrained
figures (is a task learnt at all) and each later recipe minus the first, both paired by seed, with the
95 % Student t-interval (``*`` when it excludes 0).

    python bench/recipe_compare.py --runs /tmp/ablB/default/pretrain/kinetics400/* W/pretrain/kinetics400/* \\
        --recipe "demo=pretrain.lambda_a=0.1,model.kd=true,model.task_dependent=true" \\
        --recipe "own_colour_0.2=pretrain.avid_own_colour=true,pretrain.lambda_a=0.2"
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablation_synthetic import HELDOUT, t_interval  # noqa: E402
from common import Bench, print_table  # noqa: E402

from pipeline.core.config import Config  # noqa: E402


def parse_recipe(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME=section.key=value,...`` → (NAME, {"section.key": value}); values are TOML."""
    name, _, conds = spec.partition("=")
    wanted = {}
    for cond in filter(None, conds.split(",")):
        key, _, value = cond.partition("=")
        wanted[key] = tomllib.loads(f"v = {value}")["v"]
    return name, wanted


DEFAULTS = dataclasses.asdict(Config())  # every key's dataclass default, by section

# The RSP ranking loss sits at its margin (2.0) while the same- and other-speed keys score alike; the first
# epoch whose training-batch mean falls below this is when relative speed starts to be learnt (a diagnostic).
RSP_ONSET_LOSS = 1.9


def read_run(run: Path) -> dict[str, Any] | None:
    """Seed, config and the untrained / pretrained held-out figures of a finished run; None if unfinished."""
    if not (run / "stage.json").exists():
        return None
    config = tomllib.loads((run / "config.toml").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    heldout = [r for r in records if r.get("event") == "heldout"]
    if len(heldout) < 2:
        return None
    epochs = [r for r in records if r.get("event") == "epoch"]
    onset = next((r["epoch"] for r in epochs if r["loss_rsp"] < RSP_ONSET_LOSS), None)
    return {"run": run.name, "config": config, "seed": int(config.get("pretrain", {}).get("seed", 0)),
            "untrained": {k: heldout[0][k] for k in HELDOUT}, "trained": {k: heldout[-1][k] for k in HELDOUT},
            "rsp_onset_epoch": onset}


def matches(config: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """A key the run's config.toml does not write (a run built before the key existed) counts as the key's
    dataclass default: a new key's default keeps the old behaviour."""
    for key, value in wanted.items():
        section, _, name = key.partition(".")
        if config.get(section, {}).get(name, DEFAULTS.get(section, {}).get(name, object())) != value:
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="finished pretraining output dirs")
    ap.add_argument("--recipe", action="append", required=True, help="NAME=section.key=value,... (first: reference)")
    ap.add_argument("--out", type=Path, default=None, help="result JSON (default bench/results/recipe_compare.json)")
    args = ap.parse_args()
    recipes = [parse_recipe(r) for r in args.recipe]
    runs = [r for r in map(read_run, args.runs) if r is not None]
    by_recipe: dict[str, dict[int, dict]] = {}
    for name, wanted in recipes:
        chosen = [r for r in runs if matches(r["config"], wanted)]
        seeds = [r["seed"] for r in chosen]
        if len(set(seeds)) != len(seeds):
            sys.exit(f"recipe {name!r} matches two runs of one seed ({sorted(seeds)}): pass fewer --runs")
        by_recipe[name] = {r["seed"]: r for r in chosen}
    rows: list[dict] = []
    for name, seeded in by_recipe.items():
        for seed in sorted(seeded):
            r = seeded[seed]
            rows.append({"recipe": name, "seed": seed, "run": r["run"],
                         **{k: f"{r['trained'][k]:.3f} ({r['untrained'][k]:.3f})" for k in HELDOUT},
                         "rsp onset epoch": "never" if r["rsp_onset_epoch"] is None else r["rsp_onset_epoch"]})
        if seeded:
            rows.append({"recipe": name, "seed": "mean", "run": f"{len(seeded)} runs",
                         **{k: f"{statistics.fmean(r['trained'][k] for r in seeded.values()):.3f} "
                               f"({statistics.fmean(r['untrained'][k] for r in seeded.values()):.3f})"
                            for k in HELDOUT}})
    print_table(rows, title="held-out pretext figures, pretrained (untrained network)")
    def paired_row(label: str, diffs: dict[str, list[float]]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A printed row and its JSON entry: each figure's mean difference with its 95 % t-interval."""
        row: dict[str, Any] = {"difference": label, "seeds": len(next(iter(diffs.values())))}
        entry: dict[str, Any] = {}
        for k, d in diffs.items():
            ci = t_interval(d)
            entry[k] = {"mean": round(statistics.fmean(d), 4) if d else None,
                        "ci95": [round(ci[1], 4), round(ci[2], 4)] if ci else None}
            row[k] = f"{ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}]{'*' if ci[1] > 0 or ci[2] < 0 else ''}" if ci else ""
        return row, entry

    diff_rows, learnt, paired = [], {}, {}
    for name, seeded in by_recipe.items():  # is each figure learnt: pretrained minus the same seed's untrained
        row, learnt[name] = paired_row(f"{name}: pretrained - untrained",
                                       {k: [r["trained"][k] - r["untrained"][k] for r in seeded.values()]
                                        for k in HELDOUT})
        diff_rows.append(row)
    reference, ref_runs = next(iter(by_recipe.items()))
    for name, seeded in list(by_recipe.items())[1:]:
        seeds = sorted(set(seeded) & set(ref_runs))
        row, paired[name] = paired_row(f"{name} - {reference}",
                                       {k: [seeded[s]["trained"][k] - ref_runs[s]["trained"][k] for s in seeds]
                                        for k in HELDOUT})
        paired[name]["seeds"] = seeds
        diff_rows.append(row)
    print_table(diff_rows, title="paired by seed, 95 % t-interval (* excludes 0)")
    bench = Bench("recipe_compare", "held-out pretext figures of finished pretraining runs by recipe, paired by seed",
                  {"recipes": args.recipe, "runs": [str(r) for r in args.runs]})
    figures = {"runs": {name: {str(s): {k: r[k] for k in ("run", "untrained", "trained", "rsp_onset_epoch")}
                               for s, r in seeded.items()}
                        for name, seeded in by_recipe.items()}, "pretrained_minus_untrained": learnt,
               "paired_to_" + reference: paired}
    print(f"wrote {bench.write(figures, args.out)}")


if __name__ == "__main__":
    main()
