"""The ``pipeline`` command line: a thin layer over the stage graph and the library functions.

Command-line options are turned into config overrides, so every value goes through the same
validation as the config file.
"""
from __future__ import annotations

import os

from pipeline.core.cpu_tuning import tune_process

tune_process(os.environ)  # before anything imports torch: libgomp reads its settings once (pipeline/core/cpu_tuning.py)

import logging
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, NoReturn

import click

from pipeline.cli_types import SuggestChoice
from pipeline.core import distributed
from pipeline.core.config import Config, default_toml_text, dump_toml, load_config, toml_value
from pipeline.core.errors import user_message
from pipeline.core.files import usable_folder
from pipeline.stage import BuildOptions, Stage, run_stage, stage_status, verify_stage
from pipeline.stages import StageGraph

log = logging.getLogger(__name__)
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
        items += [f"{k}={toml_value(v)}" for k, v in extra.items() if v is not None]
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


def fail(message: str) -> NoReturn:
    raise click.ClickException(message)


def build(session: Session, cfg: Config, stage: Stage, *, force: bool = False, build_upstream: bool = False,
          dry_run: bool = False, device: str = "auto", shard_index: int | None = None,
          num_shards: int | None = None) -> Path | None:
    """Run one stage (and, if asked, its upstream) with errors turned into clean CLI messages."""
    from student.checkpointing import TrainingInterrupted

    dist = distributed.init_distributed(device)
    try:
        return run_stage(stage, session.work_dir, cfg, dist=dist, force=force, build_upstream=build_upstream,
                         dry_run=dry_run, options=BuildOptions(shard_index=shard_index, num_shards=num_shards))
    except TrainingInterrupted as exc:
        click.echo(str(exc), err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - user errors become one line; anything else re-raises
        message = user_message(exc)
        if message is None or session.verbose:
            raise
        fail(message if stage.key in message else f"{stage.key}: {message}")
    return None


class PipelineGroup(click.Group):
    """The command group: any :class:`~pipeline.core.errors.UserError` (or an OS error that is the user's
    to fix: no space, no permission, a missing file), wherever it is raised, even inside a
    DataLoader worker, is printed as ONE line and exits 1; ``-v`` shows the traceback instead."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - decided by user_message; bugs keep their traceback
            message = user_message(exc)
            if message is None or ctx.params.get("verbose"):
                raise
            raise click.ClickException(message) from None


def common_stage_options(f):
    f = click.option("--force", is_flag=True, help="Rebuild this stage even if its output is up to date.")(f)
    f = click.option("--build-upstream", is_flag=True,
                     help="Build missing or stale upstream stages first instead of stopping.")(f)
    f = click.option("--dry-run", is_flag=True, help="Say what would be built, build nothing.")(f)
    f = click.option("--json", "as_json", is_flag=True, expose_value=False, callback=_remember_json,
                     help="End with the stage's machine-readable summary (JSON) instead of the readable one.")(f)
    return f


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    """``--json`` is read by ``_print_summary``, so no command signature has to carry it."""
    ctx.meta["pipeline.json"] = ctx.meta.get("pipeline.json", False) or value
    return value


@click.group(cls=PipelineGroup, context_settings=CONTEXT)
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
    ctx.call_on_close(distributed.cleanup)  # destroy the process group (NCCL communicators) on every exit path
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit then fails the write (EFBIG, one clear line)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # instead of killing the process mid-write
    ctx.obj = Session(work_dir=usable_folder(work_dir, "--work-dir"), config_file=config_file,
                      overrides=list(overrides), verbose=verbose)


def _session(ctx: click.Context) -> Session:
    return ctx.obj


def device_setting(cfg: Config, stage: Stage) -> str:
    """The device setting of a stage's own config section (``run`` builds stages that run on different devices)."""
    section: Any = {"teacher-cache": cfg.teacher, "pretrain": cfg.pretrain, "finetune": cfg.finetune,
               "evaluate": cfg.evaluate, "retrieval": cfg.retrieval, "linear-probe": cfg.linear_probe}.get(stage.kind)
    return section.device if section is not None else "cpu"


class Built(NamedTuple):
    """What a stage command built: the config it resolved, its graph, and the stage's folder (None: not built)."""

    cfg: Config
    graph: StageGraph
    out: Path | None


def stage_command(session: Session, extra: dict[str, Any], make_stage: Callable[[StageGraph], Stage], *,
                  force: bool, dry_run: bool, build_upstream: bool = False, device: str | None = None,
                  split: int | None = None, dataset: str | None = None, section: str = "",
                  check: Callable[[Config], None] | None = None, shard_index: int | None = None,
                  num_shards: int | None = None) -> Built:
    """What every stage command does: its options as config overrides (``split`` sets
    ``datasets.<dataset or <section>.dataset>.split``), ``check`` on the config, build the stage
    (on ``device``, by default the stage's own device setting), print its summary."""
    if split is not None:
        extra[f"datasets.{dataset or getattr(_config_or_fail(session), section).dataset}.split"] = split
    cfg = _config_or_fail(session, **extra)
    if check is not None:
        check(cfg)
    graph = session.graph(cfg)
    stage = make_stage(graph)
    out = build(session, cfg, stage, force=force, build_upstream=build_upstream, dry_run=dry_run,
                device=device or device_setting(cfg, stage), shard_index=shard_index, num_shards=num_shards)
    if out:
        _print_summary(out)
    return Built(cfg, graph, out)


# --------------------------------------------------------------------------------------------
# status / run / config
# --------------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.option("--verify", is_flag=True,
              help="Read every byte of each finished stage (sha256 / HDF5 checksums); a damaged stage "
                   "loses its damaged files and is rebuilt, only those, by the next run. Exit 1 if any.")
@click.pass_context
def status(ctx: click.Context, verify: bool) -> None:
    """Show every stage of the config as done, damaged, stale (and what changed) or missing."""
    session = _session(ctx)
    cfg = session.config()  # a ConfigError is one line (PipelineGroup), with its traceback under -v
    stages = session.graph(cfg).run_stages()
    width = max(len(s.key) for s in stages)
    damaged = 0
    for st in stages:
        s = stage_status(st, session.work_dir)
        if verify and s.state == "done":
            problems = verify_stage(st, session.work_dir)
            if problems:
                s = type(s)(st, "damaged", [f"{rel}: {why}" for rel, why in problems[:5]]
                            + [f"removed {len(problems)} damaged file(s); the next run rebuilds only those"], s.path)
        damaged += s.state == "damaged"
        where = f"  {s.path}" if s.path is not None and s.state in ("done", "damaged") else ""
        click.echo(f"{st.key:<{width}}  {s.state:<8}{where}" + ("  (verified)" if verify and s.state == "done" else ""))
        for reason in s.reasons:
            click.echo(f"{'':<{width}}    - {reason}")
        if s.state != "done":
            click.echo(f"{'':<{width}}    build with: {st.command}")
    if verify and damaged:
        raise click.ClickException(f"{damaged} stage(s) damaged in {session.work_dir}; `pipeline run` rebuilds "
                                   f"only the damaged files")


@main.command(context_settings=CONTEXT)
@click.option("--force", is_flag=True, help="Rebuild every stage, even those that are up to date.")
@click.option("--dry-run", is_flag=True, help="Say which stages would be built, build nothing.")
@click.pass_context
def run(ctx: click.Context, force: bool, dry_run: bool) -> None:
    """Run the config's stages in order, skipping those already done (the default: the synthetic demo)."""
    from pipeline.results import print_results

    session = _session(ctx)
    cfg = session.config()  # a ConfigError is one line (PipelineGroup), with its traceback under -v
    stages = session.graph(cfg).run_stages()
    distributed.init_distributed()  # the group first: rank 0 decides what is left, for every rank
    todo_flags = distributed.broadcast_object(
        [force or stage_status(st, session.work_dir).state != "done" for st in stages])
    todo = [st for st, flag in zip(stages, todo_flags) if flag]
    if not todo:
        click.echo(f"Nothing to do: all {len(stages)} stages are up to date in {session.work_dir}.")
    if dry_run:  # each stage once, in order, with what its build would fail on (pipeline/preflight.py)
        from pipeline.preflight import check

        for st in todo:
            s = stage_status(st, session.work_dir)
            click.echo(f"would build {st.key} ({s.state}{': ' + '; '.join(s.reasons[:2]) if s.reasons else ''})")
            check(st.key, st.kind, cfg)
        click.echo(f"{len(todo)} of {len(stages)} stages to build")
        return
    for st in todo:
        build(session, cfg, st, force=force, build_upstream=True, dry_run=dry_run, device=device_setting(cfg, st))
    if not dry_run:
        print_results(session.work_dir, cfg, stages)
        from pipeline.report import report_for_run

        for path in report_for_run(session.work_dir, cfg, stages):
            click.echo(f"picture: {path}")


@main.command("config", context_settings=CONTEXT)
@click.option("--default", "show_default_file", is_flag=True, help="Print the built-in default file instead.")
@click.option("--explain", metavar="[KEY]", is_flag=False, flag_value="", default=None,
              help="What a key (or a section, or with no value every key) means: unit, default, allowed values.")
@click.option("--docs", "as_docs", is_flag=True, help="Print docs/config.md (every key, as Markdown).")
@click.pass_context
def show_config(ctx: click.Context, show_default_file: bool, explain: str | None, as_docs: bool) -> None:
    """Print the resolved configuration (default ← --config ← --set) as TOML."""
    if explain is not None or as_docs:
        from pipeline.core import config_docs

        click.echo(config_docs.markdown() if as_docs else config_docs.explain(explain or None))
        return
    if show_default_file:
        click.echo(default_toml_text())
        return
    click.echo(dump_toml(_session(ctx).config()))


# --------------------------------------------------------------------------------------------
# stage commands
# --------------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@common_stage_options
@click.pass_context
def synthetic(ctx: click.Context, force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Generate the synthetic human-action dataset (Kinetics/UCF101/HMDB51 layouts + part masks)."""
    stage_command(_session(ctx), {}, StageGraph.synthetic, force=force, dry_run=dry_run, device="auto")


@main.command(context_settings=CONTEXT)
@click.option("--dataset", "kind", type=SuggestChoice(["ucf101", "hmdb51", "kinetics400", "folder", "rawframes"]),
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

    def has_root(cfg: Config) -> None:
        if not cfg.dataset(name).root:
            fail(f"no video folder for dataset {name!r}: pass --root VIDEO_DIR")

    stage_command(session, extra, lambda g: g.manifest(name), force=force, build_upstream=build_upstream,
                  dry_run=dry_run, device="auto", check=has_root)


@main.command("teacher-cache", context_settings=CONTEXT)
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SCHP checkpoint file (LIP, ATR or Pascal-Person-Part).")
@click.option("--backend", type=SuggestChoice(["schp", "rendered"]), default=None,
              help="schp: the real teacher; rendered: part masks of the synthetic dataset.")
@click.option("--labels", type=SuggestChoice(["lip", "atr", "pascal"]), default=None,
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
    if num_shards is not None and shard_index is not None and not 0 <= shard_index < num_shards:
        fail(f"--shard-index must be in [0, {num_shards})")
    extra = {"teacher.checkpoint": str(checkpoint.resolve()) if checkpoint else None, "teacher.backend": backend,
             "teacher.labels": labels, "teacher.batch_size": batch_size, "teacher.workers": workers,
             "teacher.device": device}
    stage_command(_session(ctx), extra, StageGraph.teacher_cache, force=force, build_upstream=build_upstream,
                  dry_run=dry_run, shard_index=shard_index, num_shards=num_shards)


@main.command(context_settings=CONTEXT)
@click.option("--dataset", default=None, help="Dataset to copy [default: pretrain.dataset].")
@click.option("--shard-index", type=int, default=None, help="Copy only videos i, i+n, … (job arrays).")
@click.option("--num-shards", type=int, default=None, help="Number of jobs sharing the videos.")
@click.option("--workers", type=int, default=None, help="Parallel transcoding processes.")
@common_stage_options
@click.pass_context
def transcode(ctx: click.Context, dataset: str | None, shard_index: int | None, num_shards: int | None,
              workers: int | None, force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Copy a dataset's videos at short side transcode.short_side, every frame index kept, for the student."""
    if (shard_index is None) != (num_shards is None) or (num_shards is not None and shard_index is not None
                                                       and not 0 <= shard_index < num_shards):
        fail("--shard-index i and --num-shards n go together, with 0 <= i < n")

    def enabled(cfg: Config) -> None:
        if not cfg.transcode.enabled:
            fail("transcode.enabled is false, so no stage would read the copies: set [transcode] enabled = true "
                 "in the config (or --set transcode.enabled=true)")

    stage_command(_session(ctx), {"transcode.workers": workers},
                  lambda g: g.transcode(dataset or g.cfg.pretrain.dataset), force=force,
                  build_upstream=build_upstream, dry_run=dry_run, device="cpu", check=enabled,
                  shard_index=shard_index, num_shards=num_shards)


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
    extra = {"pretrain.init_from": str(init_from.resolve()) if init_from else None, "pretrain.epochs": epochs,
             "pretrain.device": device}
    stage_command(_session(ctx), extra, StageGraph.pretrain, force=force, build_upstream=build_upstream,
                  dry_run=dry_run)


@main.command(context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset to finetune on (ucf101 or hmdb51).")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--from-scratch", is_flag=True, default=None, help="Random initialisation, no pretraining.")
@click.option("--select-on", type=SuggestChoice(["val", "test", "last"]), default=None,
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
    cfg, graph, out = stage_command(session, extra, StageGraph.finetune, force=force, build_upstream=build_upstream,
                                    dry_run=dry_run, split=split, dataset=dataset, section="finetune")
    if out:
        ev = build(session, cfg, graph.evaluate(), force=force, dry_run=dry_run, device=cfg.finetune.device)
        if ev:
            _print_summary(ev)
            from pipeline.results import echo_table  # the row names its protocol and selection

            echo_table(session.work_dir, cfg, [graph.evaluate()])


@main.command(context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset whose finetuned model to test.")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--clips", type=int, default=None, help="Clips per video.")
@click.option("--crops", type=SuggestChoice(["1", "3"]), default=None, help="Spatial crops per clip.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--test-set", default=None,
              help="An out-of-context test set of the dataset ([datasets.<name>.test_sets.<set>]: SCUBA, "
                   "scene-swapped): its top-1 beside the in-distribution top-1 and the drop.")
@common_stage_options
@click.pass_context
def evaluate(ctx: click.Context, dataset: str | None, split: int | None, clips: int | None, crops: str | None,
             device: str | None, test_set: str | None, force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Multi-view test: top-1 / top-5 (video and clip level), per-class accuracy, confusion matrix."""
    extra: dict[str, Any] = {"finetune.dataset": dataset, "evaluate.clips": clips,
                             "evaluate.crops": int(crops) if crops else None, "evaluate.device": device}
    session = _session(ctx)
    cfg, graph, out = stage_command(
        session, extra, lambda g: g.evaluate_test_set(test_set) if test_set else g.evaluate(), force=force,
        build_upstream=build_upstream, dry_run=dry_run, split=split, dataset=dataset, section="finetune")
    if out and test_set and distributed.current().rank == 0:  # the test set's row beside in-distribution top-1
        from pipeline.results import echo_table

        echo_table(session.work_dir, cfg, [graph.evaluate_test_set(test_set)])


@main.command(context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset (UCF101-style: test queries train).")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@common_stage_options
@click.pass_context
def retrieval(ctx: click.Context, dataset: str | None, split: int | None, device: str | None, force: bool,
              build_upstream: bool, dry_run: bool) -> None:
    """Video retrieval R@1/5/10/20/50 from the pretrained representation (no finetuning)."""
    extra: dict[str, Any] = {"retrieval.dataset": dataset, "retrieval.device": device}
    stage_command(_session(ctx), extra, StageGraph.retrieval, force=force, build_upstream=build_upstream,
                  dry_run=dry_run, split=split, dataset=dataset, section="retrieval")


@main.command("linear-probe", context_settings=CONTEXT)
@click.option("--dataset", type=str, default=None, help="Dataset (its train split fits, its test split scores).")
@click.option("--split", type=click.IntRange(1, 3), default=None, help="Official split.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--test-set", default=None,
              help="Score an out-of-context test set of the dataset (Mimetics for kinetics400) with the probe, "
                   "restricted to the classes it covers; its top-1 beside the in-distribution top-1.")
@common_stage_options
@click.pass_context
def linear_probe(ctx: click.Context, dataset: str | None, split: int | None, device: str | None,
                 test_set: str | None, force: bool, build_upstream: bool, dry_run: bool) -> None:
    """Linear probe: logistic regression on frozen [z_h || z_c] features; video-level top-1 / top-5."""
    extra: dict[str, Any] = {"linear_probe.dataset": dataset, "linear_probe.device": device}
    session = _session(ctx)
    cfg, graph, out = stage_command(
        session, extra, lambda g: g.linear_probe_test_set(test_set) if test_set else g.linear_probe(), force=force,
        build_upstream=build_upstream, dry_run=dry_run, split=split, dataset=dataset, section="linear_probe")
    if out and test_set and distributed.current().rank == 0:
        from pipeline.results import echo_table

        echo_table(session.work_dir, cfg, [graph.linear_probe_test_set(test_set)])


@main.command(context_settings=CONTEXT)
@click.option("--layout", type=click.Choice(["student", "rspnet", "torchvision", "torchvision-r3d_18", "mmaction2"]),
              default="student", help="Whose checkpoint layout to write (README: what loads where); one the model "
                                      "cannot load into is refused with the reason and the layouts that fit.")
@click.option("--branch", type=click.Choice(["both", "human", "contrastive"]), default=None,
              help="both: the [z_h || z_c] encoder (student layout); human / contrastive: f_l + that branch.")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A pretrained student.pt [default: the config's finished pretrain stage].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The file to write.")
@click.option("--force", is_flag=True, help="Overwrite --output if it exists.")
@click.pass_context
def export(ctx: click.Context, layout: str, branch: str | None, checkpoint: Path | None, output: Path,
           force: bool) -> None:
    """Write the pretrained encoder as a checkpoint another codebase loads without conversion code."""
    from student.export import export_checkpoint

    if output.exists() and not force:
        fail(f"export: {output} already exists; pass --force to overwrite it, or choose another -o")
    session = _session(ctx)
    if checkpoint is None:
        cfg = _config_or_fail(session)
        st = stage_status(session.graph(cfg).pretrain(), session.work_dir)
        if st.state != "done" or st.path is None:
            fail(f"export: the config's pretrain stage is {st.state}; run `pipeline pretrain` or pass --checkpoint")
        checkpoint = st.path / "student.pt"
    res = export_checkpoint(checkpoint, output, layout, branch)
    click.echo(f"export {res.layout} ({res.branch}): {res.path}")
    click.echo(f"  {res.backbone} x{res.width:g}: {res.tensors} tensors, {res.parameters:,} parameters; "
               f"sha256 {res.sha256[:16]}")
    click.echo(f"  loads into: {res.loads_into}")
    for note in res.notes:
        click.echo(f"  note: {note}")


@main.command(context_settings=CONTEXT)
@click.option("--protocol", type=SuggestChoice(["finetune", "linear-probe"]), required=True,
              help="finetune (+ multi-view evaluate) or linear-probe.")
@click.option("--dataset", type=str, required=True, help="Dataset name in the config (hmdb51, ucf101, ...).")
@click.option("--splits", type=click.IntRange(1, 3), multiple=True, default=(1, 2, 3), help="Official splits.")
@click.option("--seeds", type=int, multiple=True, default=(0, 1, 2), help="Seeds (repeat the option).")
@click.option("--seed-key", default=None,
              help="Config key the seed sets [default: finetune.seed, or pretrain.seed for linear-probe].")
@click.option("--dry-run", is_flag=True, help="Say what would be built, build nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table.")
@click.option("--test-set", default=None,
              help="Score each run on this out-of-context test set of the dataset (beside in-distribution top-1).")
@click.pass_context
def sweep(ctx: click.Context, protocol: str, dataset: str, splits: tuple[int, ...], seeds: tuple[int, ...],
          seed_key: str | None, dry_run: bool, as_json: bool, test_set: str | None) -> None:
    """Run one protocol over splits x seeds; video-level top-1 / top-5 mean +- std per split and overall."""
    import json

    from pipeline.sweep import plan_lines, plan_sweep, run_sweep, table_lines, write_sweep

    session = _session(ctx)
    if dry_run:  # one line per distinct stage, the count and a time estimate; nothing is built
        if protocol not in ("finetune", "linear-probe"):
            fail(f"sweep --protocol {protocol}: choose finetune or linear-probe")
        planned, done = plan_sweep(lambda extra: load_config(session.config_file, session.overrides + extra),
                                   session.work_dir, protocol, dataset, splits, seeds, seed_key,
                                   test_set=test_set)
        for line in plan_lines(planned, done):
            click.echo(line)
        return

    def run_one(cfg: Config, stage: Stage) -> Path | None:
        return build(session, cfg, stage, build_upstream=True, dry_run=dry_run, device=device_setting(cfg, stage))

    result = run_sweep(lambda extra: load_config(session.config_file, session.overrides + extra), session.work_dir,
                       protocol, dataset, splits, seeds, seed_key, run_one, test_set=test_set)
    if dry_run or distributed.current().rank != 0:
        return
    path = write_sweep(result, session.work_dir)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    click.echo(f"sweep: {path}")
    for line in table_lines(result):
        click.echo(line)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _config_or_fail(session: Session, **extra: Any) -> Config:
    """The config with this command's options; a ConfigError becomes one line in PipelineGroup."""
    return session.config(**extra)


def _print_summary(out: Path) -> None:
    import json

    from pipeline.stage import read_record

    if distributed.current().rank != 0:
        return
    rec = read_record(out)
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.meta.get("pipeline.json"):
        click.echo(f"{rec['stage']} {rec['name']}: {out}")
        click.echo(json.dumps(rec.get("summary", {}), indent=2, sort_keys=True, default=str))
        return
    from pipeline.summary import summary_lines

    for line in summary_lines(rec, out):
        click.echo(line)


def _register_tools() -> None:
    """Commands that are not stages (image parsing, visualisation) live in their own module."""
    from pipeline import tools

    for cmd in tools.COMMANDS:
        main.add_command(cmd)


_register_tools()

if __name__ == "__main__":  # pragma: no cover
    main()
