"""The ``pipeline`` command line: a thin layer over the stage graph and the library functions.

Command-line options are turned into config overrides, so every value goes through the same
validation as the config file.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from pipeline import distributed
from pipeline.config import Config, ConfigError, _toml_value, default_toml_text, dump_toml, load_config
from pipeline.stage import Stage, StageError, run_stage, stage_status
from pipeline.stages import StageGraph

log = logging.getLogger("pipeline")
CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@dataclass
class Session:
    """What the group's options set up for every command."""

    work_dir: Path
    config_file: Path | None
    overrides: list[str] = field(default_factory=list)
    verbose: int = 0

    def config(self, **extra: Any) -> Config:
        """The validated config with this command's own options applied as ``--set`` overrides."""
        items = list(self.overrides)
        items += [f"{k}={_toml_value(v)}" for k, v in extra.items() if v is not None]
        return load_config(self.config_file, items)

    def graph(self, cfg: Config) -> StageGraph:
        return StageGraph(cfg, self.work_dir)


def setup_logging(verbose: int) -> None:
    rank = distributed.current().rank
    import os

    rank = int(os.environ.get("RANK", rank))
    level = logging.DEBUG if verbose > 0 else logging.INFO
    if rank != 0:
        level = logging.WARNING
    fmt = "%(asctime)s %(levelname).1s %(name)s: %(message)s" if verbose else "%(message)s"
    if rank != 0:
        fmt = f"[rank {rank}] " + fmt
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", stream=sys.stderr, force=True)


def fail(message: str) -> None:
    raise click.ClickException(message)


def build(session: Session, cfg: Config, stage: Stage, *, force: bool = False, build_upstream: bool = False,
          dry_run: bool = False, device: str = "auto", **options: Any) -> Path | None:
    """Run one stage (and, if asked, its upstream) with errors turned into clean CLI messages."""
    from student.checkpointing import TrainingInterrupted

    dist = distributed.init_distributed(device)
    try:
        return run_stage(stage, session.work_dir, cfg, dist=dist, force=force, build_upstream=build_upstream,
                         dry_run=dry_run, options=options)
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    except user_errors() as exc:
        if session.verbose:
            raise
        fail(f"{stage.key}: {exc}")
    return None


def user_errors() -> tuple[type[Exception], ...]:
    """Errors that describe bad input (a file, a key, a checkpoint): shown as one clean message;
    ``-v`` shows the traceback. Anything else is a bug and keeps its traceback."""
    from data_manifests.builders import MissingVideosError
    from data_manifests.video import VideoDecodeError
    from student.checkpointing import CheckpointError as TrainCheckpointError
    from student.evaluate import EvaluationError
    from student.finetune import FinetuneError
    from student.protocols import ProtocolError
    from student.retrieval import RetrievalError
    from teacher.cache_format import CacheFormatError
    from teacher.checkpoint import CheckpointError

    return (StageError, ConfigError, MissingVideosError, VideoDecodeError, TrainCheckpointError, EvaluationError,
            FinetuneError, ProtocolError, RetrievalError, CacheFormatError, CheckpointError, FileNotFoundError)


def common_stage_options(f):
    f = click.option("--force", is_flag=True, help="Rebuild this stage even if its output is up to date.")(f)
    f = click.option("--build-upstream", is_flag=True,
                     help="Build missing or stale upstream stages first instead of stopping.")(f)
    f = click.option("--dry-run", is_flag=True, help="Say what would be built, build nothing.")(f)
    return f


@click.group(context_settings=CONTEXT)
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), envvar="PIPELINE_WORK_DIR",
              default=Path("work"), show_envvar=True, help="Where every stage writes its outputs.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A TOML file merged over the built-in default (the synthetic demo).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override one config value (TOML syntax; repeatable), e.g. --set pretrain.epochs=10.")
@click.option("-v", "--verbose", count=True, help="More log detail (timestamps, debug messages).")
@click.version_option(package_name="humanprior-pretrain", prog_name="pipeline")
@click.pass_context
def main(ctx: click.Context, work_dir: Path, config_file: Path | None, overrides: tuple[str, ...],
         verbose: int) -> None:
    """Human-prior-guided, task-dependent multi-task pre-training for action recognition.

    Stages: synthetic → manifest → teacher-cache → pretrain → finetune → evaluate (and retrieval).
    Each writes into WORK/<stage>/<name>/<fingerprint>/ and is rebuilt only when its inputs change.
    With no config, everything runs on a generated synthetic dataset on the CPU: `pipeline run`.
    """
    setup_logging(verbose)
    ctx.obj = Session(work_dir=work_dir.resolve(), config_file=config_file, overrides=list(overrides),
                      verbose=verbose)


def _session(ctx: click.Context) -> Session:
    return ctx.obj


# --------------------------------------------------------------------------------------------
# status / run / config
# --------------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.pass_context
def status(ctx: click.Context) -> None:
    """Show every stage of the config as done, stale (and what changed) or missing."""
    session = _session(ctx)
    try:
        cfg = session.config()
        stages = session.graph(cfg).run_stages()
    except (ConfigError, StageError) as exc:
        fail(str(exc))
    width = max(len(s.key) for s in stages)
    for st in stages:
        s = stage_status(st, session.work_dir)
        where = f"  {s.path}" if s.path is not None and s.state == "done" else ""
        click.echo(f"{st.key:<{width}}  {s.state:<8}{where}")
        for reason in s.reasons:
            click.echo(f"{'':<{width}}    - {reason}")
        if s.state != "done":
            click.echo(f"{'':<{width}}    build with: {st.command}")


@main.command(context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Rebuild every stage, even those that are up to date.")
@click.option("--dry-run", is_flag=True, help="Say which stages would be built, build nothing.")
@click.pass_context
def run(ctx: click.Context, force: bool, dry_run: bool) -> None:
    """Run the config's stages in order, skipping those already done (the default: the synthetic demo)."""
    from pipeline.results import print_results

    session = _session(ctx)
    try:
        cfg = session.config()
        stages = session.graph(cfg).run_stages()
    except (ConfigError, StageError) as exc:
        fail(str(exc))
    todo = [st for st in stages if force or stage_status(st, session.work_dir).state != "done"]
    if not todo:
        click.echo(f"Nothing to do: all {len(stages)} stages are up to date in {session.work_dir}.")
    for st in todo:
        build(session, cfg, st, force=force, build_upstream=True, dry_run=dry_run)
    if not dry_run:
        print_results(session.work_dir, cfg, stages)


@main.command("config", context_settings=CONTEXT)
@click.option("--default", "show_default_file", is_flag=True, help="Print the built-in default file instead.")
@click.pass_context
def show_config(ctx: click.Context, show_default_file: bool) -> None:
    """Print the resolved configuration (default ← --config ← --set) as TOML."""
    if show_default_file:
        click.echo(default_toml_text())
        return
    try:
        click.echo(dump_toml(_session(ctx).config()))
    except ConfigError as exc:
        fail(str(exc))


# --------------------------------------------------------------------------------------------
# stage commands
# --------------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@common_stage_options
@click.pass_context
def synthetic(ctx: click.Context, force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Generate the synthetic human-action dataset (Kinetics/UCF101/HMDB51 layouts + part masks)."""
    session = _session(ctx)
    cfg = _config_or_fail(session)
    out = build(session, cfg, session.graph(cfg).synthetic(), force=force, dry_run=dry_run)
    if out:
        click.echo(str(out))


@main.command(context_settings=CONTEXT)
@click.option("--dataset", "kind", type=click.Choice(["ucf101", "hmdb51", "kinetics400", "folder"]),
              required=True, help="Annotation format of the dataset.")
@click.option("--root", type=click.Path(path_type=Path), default=None,
              help="Folder of the videos (default: the config's datasets.<name>.root).")
@click.option("--annotations", type=click.Path(path_type=Path), multiple=True,
              help="Official annotation files: UCF101 split folder, HMDB51 split folder, Kinetics CSV(s).")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split (UCF101/HMDB51).")
@click.option("--name", default=None, help="Dataset name in the config [default: the --dataset value].")
@click.option("--min-frames", type=int, default=None, help="Reject videos with fewer decodable frames.")
@click.option("--allow-missing", is_flag=True, default=None,
              help="Go on when more than 1% of the listed videos are missing.")
@click.option("--workers", type=int, default=None, help="Parallel probing processes.")
@common_stage_options
@click.pass_context
def manifest(ctx: click.Context, kind: str, root: Path | None, annotations: tuple[Path, ...], split: int | None,
             name: str | None, min_frames: int | None, allow_missing: bool | None, workers: int | None,
             force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Index a dataset: probe every video once, reject unusable ones, write manifest.jsonl."""
    session = _session(ctx)
    name = name or kind
    extra: dict[str, Any] = {f"datasets.{name}.kind": kind}
    if root is not None:
        extra[f"datasets.{name}.root"] = str(root.resolve())
    if annotations:
        extra[f"datasets.{name}.annotations"] = [str(a.resolve()) for a in annotations]
    for key, value in (("split", split), ("min_frames", min_frames), ("allow_missing", allow_missing),
                       ("workers", workers)):
        if value is not None:
            extra[f"datasets.{name}.{key}"] = value
    cfg = _config_or_fail(session, **extra)
    if not cfg.dataset(name).root:
        fail(f"no video folder for dataset {name!r}: pass --root VIDEO_DIR")
    out = build(session, cfg, session.graph(cfg).manifest(name), force=force, build_upstream=build_upstream,
                dry_run=dry_run)
    if out:
        _print_summary(out)


@main.command("teacher-cache", context_settings=CONTEXT)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SCHP checkpoint file (LIP, ATR or Pascal-Person-Part).")
@click.option("--backend", type=click.Choice(["schp", "rendered"]), default=None,
              help="schp: the real teacher; rendered: part masks of the synthetic dataset.")
@click.option("--labels", type=click.Choice(["lip", "atr", "pascal"]), default=None,
              help="Label set of the checkpoint.")
@click.option("--shard-index", type=int, default=None, help="Build only shards i, i+n, … (job arrays).")
@click.option("--num-shards", type=int, default=None, help="Number of jobs sharing the shards.")
@click.option("--batch-size", type=int, default=None, help="Frames per teacher forward pass.")
@click.option("--workers", type=int, default=None, help="Decoding worker processes.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@common_stage_options
@click.pass_context
def teacher_cache(ctx: click.Context, checkpoint: Path | None, backend: str | None, labels: str | None,
                  shard_index: int | None, num_shards: int | None, batch_size: int | None,
                  workers: int | None, device: str | None, force: bool, build_upstream: bool,
                  dry_run: bool) -> None:
    """Run the teacher on every clip's anchor frame and write softmax maps to sharded HDF5."""
    if (shard_index is None) != (num_shards is None):
        fail("--shard-index and --num-shards go together")
    if num_shards is not None and not 0 <= shard_index < num_shards:
        fail(f"--shard-index must be in [0, {num_shards})")
    session = _session(ctx)
    cfg = _config_or_fail(session, **{
        "teacher.checkpoint": str(checkpoint.resolve()) if checkpoint else None, "teacher.backend": backend,
        "teacher.labels": labels, "teacher.batch_size": batch_size, "teacher.workers": workers,
        "teacher.device": device})
    out = build(session, cfg, session.graph(cfg).teacher_cache(), force=force, build_upstream=build_upstream,
                dry_run=dry_run, device=cfg.teacher.device, shard_index=shard_index, num_shards=num_shards)
    if out:
        _print_summary(out)


@main.command(context_settings=CONTEXT)
@click.option("--init-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Start from an RSPNet checkpoint (its backbone weights).")
@click.option("--epochs", type=int, default=None, help="Override pretrain.epochs.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@common_stage_options
@click.pass_context
def pretrain(ctx: click.Context, init_from: Path | None, epochs: int | None, device: str | None, force: bool,
             build_upstream: bool, dry_run: bool) -> None:
    """Pretrain the multi-task student on cached teacher maps (DDP under torchrun; resumes)."""
    session = _session(ctx)
    cfg = _config_or_fail(session, **{"pretrain.init_from": str(init_from.resolve()) if init_from else None,
                                      "pretrain.epochs": epochs, "pretrain.device": device})
    out = build(session, cfg, session.graph(cfg).pretrain(), force=force, build_upstream=build_upstream,
                dry_run=dry_run, device=cfg.pretrain.device)
    if out:
        _print_summary(out)


@main.command(context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset to finetune on (ucf101 or hmdb51).")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--from-scratch", is_flag=True, default=None, help="Random initialisation, no pretraining.")
@click.option("--select-on", type=click.Choice(["val", "test", "last"]), default=None,
              help="Which epoch to keep: best on held-out train videos, best on test (reported), or last.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@common_stage_options
@click.pass_context
def finetune(ctx: click.Context, dataset: str | None, split: int | None, from_scratch: bool | None,
             select_on: str | None, device: str | None, force: bool, build_upstream: bool,
             dry_run: bool) -> None:
    """Finetune the pretrained model on UCF101 / HMDB51, then evaluate it on the test split."""
    session = _session(ctx)
    extra: dict[str, Any] = {"finetune.dataset": dataset, "finetune.from_scratch": from_scratch,
                             "finetune.select_on": select_on, "finetune.device": device}
    if split is not None:
        extra[f"datasets.{dataset or _config_or_fail(session).finetune.dataset}.split"] = split
    cfg = _config_or_fail(session, **extra)
    graph = session.graph(cfg)
    out = build(session, cfg, graph.finetune(), force=force, build_upstream=build_upstream, dry_run=dry_run,
                device=cfg.finetune.device)
    if out:
        _print_summary(out)
        ev = build(session, cfg, graph.evaluate(), force=force, dry_run=dry_run, device=cfg.finetune.device)
        if ev:
            _print_summary(ev)


@main.command(context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset whose finetuned model to test.")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--clips", type=int, default=None, help="Clips per video.")
@click.option("--crops", type=click.Choice(["1", "3"]), default=None, help="Spatial crops per clip.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@common_stage_options
@click.pass_context
def evaluate(ctx: click.Context, dataset: str | None, split: int | None, clips: int | None, crops: str | None,
             device: str | None, force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Multi-view test: top-1 / top-5 (video and clip level), per-class accuracy, confusion matrix."""
    session = _session(ctx)
    extra: dict[str, Any] = {"finetune.dataset": dataset, "evaluate.clips": clips,
                             "evaluate.crops": int(crops) if crops else None, "evaluate.device": device}
    if split is not None:
        extra[f"datasets.{dataset or _config_or_fail(session).finetune.dataset}.split"] = split
    cfg = _config_or_fail(session, **extra)
    out = build(session, cfg, session.graph(cfg).evaluate(), force=force, build_upstream=build_upstream,
                dry_run=dry_run, device=cfg.evaluate.device)
    if out:
        _print_summary(out)


@main.command(context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset (UCF101-style: test queries train).")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@common_stage_options
@click.pass_context
def retrieval(ctx: click.Context, dataset: str | None, split: int | None, device: str | None, force: bool,
              build_upstream: bool, dry_run: bool) -> None:
    """Video retrieval R@1/5/10/20/50 from the pretrained representation (no finetuning)."""
    session = _session(ctx)
    extra: dict[str, Any] = {"retrieval.dataset": dataset, "retrieval.device": device}
    if split is not None:
        extra[f"datasets.{dataset or _config_or_fail(session).retrieval.dataset}.split"] = split
    cfg = _config_or_fail(session, **extra)
    out = build(session, cfg, session.graph(cfg).retrieval(), force=force, build_upstream=build_upstream,
                dry_run=dry_run, device=cfg.retrieval.device)
    if out:
        _print_summary(out)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _config_or_fail(session: Session, **extra: Any) -> Config:
    try:
        return session.config(**extra)
    except ConfigError as exc:
        fail(str(exc))
    raise AssertionError  # unreachable


def _print_summary(out: Path) -> None:
    import json

    from pipeline.stage import read_record

    if distributed.current().rank != 0:
        return
    rec = read_record(out)
    click.echo(f"{rec['stage']} {rec['name']}: {out}")
    click.echo(json.dumps(rec.get("summary", {}), indent=2, sort_keys=True, default=str))


def _register_tools() -> None:
    """Commands that are not stages (image parsing, visualisation) live in their own module."""
    from pipeline import tools

    for cmd in tools.COMMANDS:
        main.add_command(cmd)


_register_tools()

if __name__ == "__main__":  # pragma: no cover
    main()
