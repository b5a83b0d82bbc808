"""Typed configuration: one dataclass per TOML section, validated once at the edge.

A config is either the built-in demo (``pipeline/core/default.toml``, package data) or a user TOML
file over the dataclass defaults (the paper's settings), then ``--set section.key=value``
overrides. Every key is
checked against the dataclass fields: an unknown key, a wrong type or an out-of-range value is a
:class:`ConfigError` naming the key, where it came from and the expected form.

Each field carries ``metadata={"exec": True}`` when it only affects *how* a stage runs (workers,
device, batch size for inference, log interval): such keys never enter a stage fingerprint.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from pipeline.core.errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration problem, phrased for the user: which key, which file, what is expected."""


def _exec(default: Any, **kw: Any) -> Any:
    return field(default=default, metadata={"exec": True, **kw})


def _opt(default: Any, **kw: Any) -> Any:
    """A semantic option with validation metadata (``choices``, ``min``, ``max``)."""
    return field(default=default, metadata=kw)


def _list(default: list, **kw: Any) -> Any:
    return field(default_factory=lambda: list(default), metadata=kw)


@dataclass
class SyntheticConfig:
    """The generated demo dataset (used by roots written ``synthetic:<set>``)."""

    seed: int = _opt(0)
    frames: int = _opt(48, min=8)
    width: int = _opt(112, min=32)
    height: int = _opt(112, min=32)
    fps: int = _opt(25, min=1)
    kinetics_per_class: int = _opt(12, min=1)
    ucf_per_class: int = _opt(10, min=2)
    hmdb_per_class: int = _opt(10, min=2)
    # HMDB51-style videos shot in their class's place with this probability (0: off; > 0 also writes the
    # scene-swapped test set hmdb51_scene_swapped/, see data_manifests/synthetic/scene_swap.py)
    scene_bias: float = _opt(0.0, min=0.0, max=1.0)
    workers: int = _exec(2, min=1)


@dataclass
class DatasetConfig:
    """One video dataset: its format, where the videos are and where the official annotations are."""

    kind: str = _opt("folder", choices=("ucf101", "hmdb51", "kinetics400", "folder"))
    root: str = _opt("")
    annotations: list[str] = _list([])
    split: int = _opt(1, min=1, max=3)
    min_frames: int = _opt(0, min=0)
    allow_missing: bool = _opt(False)
    workers: int = _exec(2, min=1)


@dataclass
class ClipsConfig:
    """The clip plan: anchors per video and the playback geometry of a training clip."""

    anchors_per_video: int = _opt(8, min=1)
    clip_len: int = _opt(16, min=1)
    speeds: list[int] = _list([1, 2])
    splits: list[str] = _list(["train"])

    @property
    def span(self) -> int:
        """Longest playback span: a clip at the fastest speed, centred on its anchor."""
        return self.clip_len * max(self.speeds)


@dataclass
class TeacherConfig:
    """How the teacher's parsing maps are produced and stored."""

    backend: str = _opt("schp", choices=("schp", "rendered"))
    checkpoint: str = _opt("")
    labels: str = _opt("lip", choices=("lip", "atr", "pascal"))
    input_size: int = _opt(0, min=0)  # 0: the label set's own (473 LIP, 512 ATR/Pascal)
    map_size: int = _opt(64, min=8)
    shard_size: int = _opt(2048, min=1)
    flip_test: bool = _opt(False)
    softness: float = _opt(0.5, min=0.0, max=1.0)  # rendered backend only: blur (in map pixels) of the part masks
    batch_size: int = _exec(16, min=1)
    workers: int = _exec(2, min=0)
    device: str = _exec("auto")
    amp: str = _exec("auto", choices=("auto", "off", "fp16", "bf16"))


@dataclass
class ModelConfig:
    """The multi-task student (paper §3)."""

    backbone: str = _opt("c3d", choices=("c3d", "r2plus1d", "r3d18"))
    width: float = _opt(1.0, min=0.0625, max=4.0)
    split_after: int = _opt(3, min=1, max=4)
    input_size: int = _opt(112, min=16)
    parse_size: int = _opt(28, min=4)
    kd: bool = _opt(True)
    task_dependent: bool = _opt(True)
    proj_dim: int = _opt(128, min=8)
    # parsing decoder g_h: logits per feature cell as an r×r block (pixel shuffle) before the resize to
    # parse_size; 1 = plain bilinear upsampling (student/heads.py ParsingDecoder)
    decoder_upscale: int = _opt(1, min=1, max=16)


@dataclass
class PretrainConfig:
    """Self-supervised multi-task pretraining (RSPNet recipe + human-prior distillation)."""

    dataset: str = _opt("kinetics400")
    epochs: int = _opt(200, min=1)
    batch_size: int = _opt(32, min=2)  # per process
    lr: float = _opt(0.1, min=0.0)  # for a global batch of 64; scaled linearly
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    weight_decay: float = _opt(1e-4, min=0.0)
    lambda_kd: float = _opt(1.0, min=0.0)
    lambda_m: float = _opt(1.0, min=0.0)
    lambda_a: float = _opt(1.0, min=0.0)
    queue_size: int = _opt(16384, min=1)  # trimmed to a multiple of the global batch (as RSPNet)
    # keep each queued key's video id and leave a query's own video out of its A-VID negatives
    exclude_same_video: bool = _opt(True)
    moco_momentum: float = _opt(0.999, min=0.0, max=1.0)
    temperature: float = _opt(0.07, min=1e-4)
    margin: float = _opt(2.0, min=0.0)
    crop_area: list[float] = _list([0.4, 1.0])
    # Colour augmentation (RSPNet's recipe by default): ColorJitter strengths (brightness, contrast,
    # saturation, hue), the probability that a clip is jittered, the grayscale probability, and whether
    # the query and the keys share one draw of colour parameters (RSPNet: independent draws).
    jitter: list[float] = _list([0.4, 0.4, 0.4, 0.4])
    jitter_p: float = _opt(1.0, min=0.0, max=1.0)
    grayscale_p: float = _opt(0.2, min=0.0, max=1.0)
    shared_colour: bool = _opt(False)
    # Pretext tasks measured on videos never pretrained on (student/pretext_eval.py): at most this many
    # videos (0: off), before training, every heldout_every epochs (0: only at the end) and at the end.
    heldout_videos: int = _opt(128, min=0)
    heldout_every: int = _opt(0, min=0)
    seed: int = _opt(0)
    init_from: str = _opt("")
    max_steps_per_epoch: int = _opt(0, min=0)  # 0: a full pass over the clip plan
    # Refuse to train when more than this fraction of the clip plan has no teacher map (a lost or
    # damaged cache shard, not a few failed decodes); raising it to go on does not change the output's id.
    max_missing_maps: float = _exec(0.05, min=0.0, max=1.0)
    deterministic: bool = _exec(False)
    amp: str = _exec("auto", choices=("auto", "off", "fp16", "bf16"))
    # "gpu": workers ship uint8 crops + each clip's colour parameters; jitter, grayscale and normalisation
    # run batched on the training device (student/gpu_augment.py). Equal to "cpu" to float tolerance.
    augment_device: str = _exec("cpu", choices=("cpu", "gpu"))
    workers: int = _exec(4, min=0)
    device: str = _exec("auto")
    log_interval: int = _exec(20, min=1)


@dataclass
class FinetuneConfig:
    """Supervised finetuning on UCF101 / HMDB51 (RSPNet's protocols as presets)."""

    dataset: str = _opt("hmdb51")
    # auto = "paper" (RSPNet's preset, 100 epochs); "rspnet"; "custom"; see student/protocols.py
    protocol: str = _opt("auto")
    epochs: int = _opt(0, min=0)  # 0: the protocol's
    batch_size: int = _opt(0, min=0)
    lr: float = _opt(0.0, min=0.0)
    schedule: str = _opt("", choices=("", "cosine", "step"))
    milestones: list[int] = _list([])
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    weight_decay: float = _opt(1e-4, min=0.0)
    crop_area: list[float] = _list([0.25, 1.0])
    val_fraction: float = _opt(0.1, min=0.0, max=0.5)
    select_on: str = _opt("val", choices=("val", "test", "last"))
    from_scratch: bool = _opt(False)
    seed: int = _opt(0)
    deterministic: bool = _exec(False)
    amp: str = _exec("auto", choices=("auto", "off", "fp16", "bf16"))
    workers: int = _exec(4, min=0)
    device: str = _exec("auto")
    log_interval: int = _exec(20, min=1)


@dataclass
class EvaluateConfig:
    """Multi-view test protocol: N clips × M crops per video, softmax averaged."""

    clips: int = _opt(10, min=1)
    crops: int = _opt(1, choices=(1, 3))
    chunk: int = _exec(10, min=1)
    workers: int = _exec(4, min=0)  # decoding 10 clips per video is the cost on a GPU
    device: str = _exec("auto")


@dataclass
class RetrievalConfig:
    """Nearest-neighbour video retrieval from the pretrained representation (no finetuning)."""

    dataset: str = _opt("ucf101")
    clips: int = _opt(10, min=1)
    ks: list[int] = _list([1, 5, 10, 20, 50])
    workers: int = _exec(4, min=0)
    device: str = _exec("auto")


@dataclass
class LinearProbeConfig:
    """Linear probe on frozen [z_h || z_c] features (student/linear_probe.py): logistic regression by L-BFGS."""

    dataset: str = _opt("hmdb51")
    clips: int = _opt(10, min=1)  # views averaged into one feature per video
    weight_decay: float = _opt(1e-3, min=0.0)
    max_iter: int = _opt(500, min=1)
    workers: int = _exec(4, min=0)
    device: str = _exec("auto")


@dataclass
class TranscodeConfig:
    """Optional one-time copies of the videos for the student (data_manifests/transcode.py): short side
    ``short_side``, every frame index kept, all-intra MJPEG in AVI (every frame a keyframe, so reads
    seek). The teacher keeps reading the originals."""

    enabled: bool = _opt(False)
    short_side: int = _opt(128, min=16)  # the student's 112² crops never need more
    # mjpeg: all-intra, read by seeking; mp4v: ~half the disk, read forward (bench/loader.py --real)
    codec: str = _opt("mjpeg", choices=("mjpeg", "mp4v"))
    workers: int = _exec(2, min=1)


@dataclass
class RunConfig:
    """What ``pipeline run`` does: its stages, in order."""

    stages: list[str] = _list(["synthetic", "manifest", "transcode", "teacher-cache", "pretrain", "finetune",
                               "evaluate"])  # transcode: only when [transcode] enabled


@dataclass
class Config:
    """The whole configuration; ``datasets`` maps a dataset name to its :class:`DatasetConfig`."""

    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    clips: ClipsConfig = field(default_factory=ClipsConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    linear_probe: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    run: RunConfig = field(default_factory=RunConfig)
    sources: list[str] = field(default_factory=list)  # where the values came from, for messages

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets:
            raise ConfigError(
                f"no dataset named {name!r} in the config (known: {', '.join(sorted(self.datasets)) or 'none'}); "
                f"add a [datasets.{name}] table with kind, root and annotations")
        return self.datasets[name]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("sources")
        return d


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

SECTIONS = {f.name: f for f in fields(Config) if f.name not in ("sources",)}


def semantic_dict(section: Any) -> dict[str, Any]:
    """The fields of a section that change a stage's output (execution-only keys dropped)."""
    return {f.name: copy.deepcopy(getattr(section, f.name)) for f in fields(section) if not f.metadata.get("exec")}


def _suggest(key: str, options: list[str]) -> str:
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is list:
        (inner,) = get_args(tp)
        return f"a list of {_type_name(inner)}"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin is list:
        (inner,) = get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_coerce(v, inner, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(float(value)):  # nan, inf, and 1e400 (which TOML reads as inf)
                raise ConfigError(f"{where}: {value!r} is not a finite number; give a finite value")
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {tp}")


def _check_range(value: Any, meta: dict, where: str) -> None:
    items = value if isinstance(value, list) else [value]
    for v in items:
        if "choices" in meta and v not in meta["choices"]:
            choices = ", ".join(repr(c) for c in meta["choices"])
            hint = _suggest(str(v), [str(c) for c in meta['choices']])
            raise ConfigError(f"{where}: {v!r} is not one of {choices}{hint}")
        if "min" in meta and v < meta["min"]:
            raise ConfigError(f"{where}: {v!r} is below the minimum {meta['min']}")
        if "max" in meta and v > meta["max"]:
            raise ConfigError(f"{where}: {v!r} is above the maximum {meta['max']}")


def _build_section(cls: type, raw: dict[str, Any], where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {raw!r}")
    hints = get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r}{_suggest(key, list(known))}; "
                              f"valid keys: {', '.join(known)}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
        _check_range(kwargs[key], known[key].metadata, f"{where}.{key}")
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _parse_value(text: str) -> Any:
    """A ``--set`` value is read as a TOML value; a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.epochs=10")
    key, _, value = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.epochs=10")
    return path, _parse_value(value.strip())


def default_toml_text() -> str:
    return resources.files("pipeline.core").joinpath("default.toml").read_text(encoding="utf-8")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          f"save it as UTF-8") from None
    except (IsADirectoryError, PermissionError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror})") from None


def from_dict(raw: dict[str, Any], where: str = "config") -> Config:
    """Validate a raw nested dict into a :class:`Config`."""
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{key}]{_suggest(key, list(SECTIONS))}; "
                              f"valid sections: {', '.join(SECTIONS)}")
        if key == "datasets":
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [datasets] must hold tables like [datasets.hmdb51]")
            kwargs[key] = {name: _build_section(DatasetConfig, table, f"{where}: datasets.{name}")
                           for name, table in value.items()}
        else:
            cls = get_type_hints(Config)[key]
            kwargs[key] = _build_section(cls, value, f"{where}: {key}")
    cfg = Config(**kwargs)
    _check_consistency(cfg, where)
    return cfg


def _check_consistency(cfg: Config, where: str) -> None:
    if not cfg.clips.speeds or any(s < 1 for s in cfg.clips.speeds):
        raise ConfigError(f"{where}: clips.speeds must be a non-empty list of positive integers")
    for name in (cfg.pretrain.dataset, cfg.finetune.dataset):
        if name and cfg.datasets and name not in cfg.datasets:
            raise ConfigError(f"{where}: dataset {name!r} is used but there is no [datasets.{name}] table"
                              f"{_suggest(name, list(cfg.datasets))}")
    lo, hi = cfg.pretrain.crop_area
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{where}: pretrain.crop_area must be [min, max] with 0 < min <= max <= 1")
    jit = cfg.pretrain.jitter
    if len(jit) != 4 or min(jit) < 0 or jit[3] > 0.5:
        raise ConfigError(f"{where}: pretrain.jitter must be [brightness, contrast, saturation, hue], each >= 0 "
                          f"and hue <= 0.5, got {list(jit)}")


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The built-in demo config, or a user TOML over the dataclass defaults; then ``--set`` overrides.

    The dataclass defaults are the paper's full-scale settings; the built-in file (package data)
    turns them into the synthetic CPU demo. A user file starts from the dataclass defaults, so no
    demo value leaks into a real run.
    """
    if path is None:
        raw: dict[str, Any] = tomllib.loads(default_toml_text())
        sources = ["built-in default config"]
        where = "built-in default config"
    else:
        raw = _read_toml(Path(path))
        sources = [str(path)]
        where = f"config file {path}"
    for item in overrides:
        keypath, value = parse_override(item)
        node = raw
        for part in keypath[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(keypath[:-1])} is not a section")
        node[keypath[-1]] = value
        sources.append(f"--set {item}")
    if overrides:
        where = f"{where} with --set overrides"
    cfg = from_dict(raw, where)
    cfg.sources = sources
    return cfg


def dump_toml(cfg: Config) -> str:
    """The resolved config as TOML (saved beside every stage output)."""
    lines: list[str] = []
    d = cfg.to_dict()
    for section, values in d.items():
        if section == "datasets":
            for name, table in values.items():
                lines.append(f"[datasets.{name}]")
                lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
                lines.append("")
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)


def toml_value(v: Any) -> str:
    """``v`` written as a TOML value (``dump_toml``, and ``--set key=value`` strings the CLI rebuilds)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)
