"""Commands that look at things rather than build stages: parse an image, show a cached map, CAMs."""
from __future__ import annotations

from pathlib import Path

import click

from pipeline.core.config import ConfigError
from pipeline.stage import stage_status

CONTEXT = {"help_option_names": ["-h", "--help"], "show_default": True, "max_content_width": 100}


@click.command("parse-image", context_settings=CONTEXT)
@click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="SCHP checkpoint file.")
@click.option("--labels", type=click.Choice(["lip", "atr", "pascal"]), default="lip",
              help="Label set of the checkpoint.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Palette PNG to write, at the image's own resolution.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
def parse_image_cmd(image: Path, checkpoint: Path, labels: str, output: Path, device: str) -> None:
    """Parse one image with SCHP and write an SCHP-style palette PNG (compare with SCHP's demo)."""
    from pipeline.core.distributed import resolve_device
    from teacher.parse_image import parse_image

    from pipeline.core.errors import CheckpointError

    try:
        label_map = parse_image(image, checkpoint, labels, output, device=resolve_device(device))
    except CheckpointError as exc:
        raise click.ClickException(str(exc)) from None
    counts = {int(k): int(v) for k, v in zip(*__import__("numpy").unique(label_map, return_counts=True))}
    click.echo(f"wrote {output} ({label_map.shape[1]}x{label_map.shape[0]}); label histogram {counts}")


@click.command("teacher-show", context_settings=CONTEXT)
@click.option("--clip", "clip_id", required=True, help='Clip id "<video_id>@<frame>" from the clip plan.')
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="PNG to write: the anchor frame beside its cached map.")
@click.pass_context
def teacher_show_cmd(ctx: click.Context, clip_id: str, output: Path) -> None:
    """Show what the student is taught: a clip's anchor frame beside its cached parsing map."""
    from teacher.show import show_clip

    session = ctx.find_root().obj
    try:
        cfg = session.config()
        st = session.graph(cfg).teacher_cache()
        status = stage_status(st, session.work_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if status.state != "done" or status.path is None:
        raise click.ClickException(f"the teacher cache is {status.state}; build it with `{st.command}`")
    manifest_dir = st.upstream[0].out_dir(session.work_dir)
    show_clip(status.path, manifest_dir, clip_id, output)
    click.echo(f"wrote {output}")


@click.command("visualize", context_settings=CONTEXT)
@click.option("--cam", "videos", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
              required=True, help="Video(s) to draw class-activation maps for (repeatable).")
@click.option("--classifier", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A classifier.pt [default: the config's finetuned model].")
@click.option("-o", "--out-dir", type=click.Path(file_okay=False, path_type=Path), default=Path("cam"),
              help="Folder for the PNG strips.")
@click.option("--frames", type=int, default=8, help="Frames per strip.")
@click.option("--device", default="auto", help="auto, cpu, cuda or cuda:N.")
@click.pass_context
def visualize_cmd(ctx: click.Context, videos: tuple[Path, ...], classifier: Path | None, out_dir: Path,
                  frames: int, device: str) -> None:
    """Class-activation maps over a clip's frames (the paper's Fig. 3) as PNG strips."""
    from pipeline.core.distributed import resolve_device
    from student.cam import class_activation_maps

    session = ctx.find_root().obj
    cfg = session.config()
    if classifier is None:
        st = session.graph(cfg).finetune()
        status = stage_status(st, session.work_dir)
        if status.state != "done" or status.path is None:
            raise click.ClickException(f"no finetuned model: pass --classifier or run `{st.command}`")
        classifier = status.path / "classifier.pt"
    paths = class_activation_maps(classifier, list(videos), out_dir, clip_len=cfg.clips.clip_len,
                                  input_size=cfg.model.input_size, frames_per_strip=frames,
                                  device=resolve_device(device))
    for p in paths:
        click.echo(f"wrote {p}")
    from pipeline.core.tensorboard_log import SUBDIR, log_png_files

    log_png_files(out_dir / SUBDIR, "cam", list(paths))  # optional TensorBoard copy of the strips


COMMANDS = [parse_image_cmd, teacher_show_cmd, visualize_cmd]
