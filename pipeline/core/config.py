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
from typing import Any, Mapping, get_args, get_origin, get_type_hints

from pipeline.core.errors import ConfigError


def _exec(default: Any, **kw: Any) -> Any:
    return field(default=default, metadata={"exec": True, **kw})


def _opt(default: Any, **kw: Any) -> Any:
    """A semantic option with validation metadata (``choices``, ``min``, ``max``)."""
    return field(default=default, metadata=kw)


def _list(default: list, **kw: Any) -> Any:
    return field(default_factory=lambda: list(default), metadata=kw)


@dataclass
class SyntheticConfig:
    """The generated demo dataset (used by roots written ``synthetic:<set>``).

    Keys:
        seed: seed of the generator; every video, figure and background is a function of it.
        frames (frames): length of every generated video.
        width (pixels): frame width of the generated videos.
        height (pixels): frame height of the generated videos.
        fps (frames per second): frame rate written into the video files (sets how fast an action looks).
        kinetics_per_class (videos): Kinetics-style videos per class (the pretraining set; a quarter are val).
        ucf_per_class (videos): UCF101-style videos per class (retrieval's default dataset).
        hmdb_per_class (videos): HMDB51-style videos per class (the finetuning set; split into train/test/unused).
        scene_bias (probability): an HMDB51-style video is shot in its class's place with this probability
            (0: off); above 0 the scene-swapped test set hmdb51_scene_swapped/ is written too (the same test
            videos in another class's place, SCUBA's rawframes layout; data_manifests/synthetic/scene_swap.py).
        workers (processes): parallel video writers.
    """

    seed: int = _opt(0)
    frames: int = _opt(48, min=8)
    width: int = _opt(112, min=32)
    height: int = _opt(112, min=32)
    fps: int = _opt(25, min=1)
    kinetics_per_class: int = _opt(12, min=1)
    ucf_per_class: int = _opt(10, min=2)
    hmdb_per_class: int = _opt(10, min=2)
    scene_bias: float = _opt(0.0, min=0.0, max=1.0)
    workers: int = _exec(2, min=1)


@dataclass
class DatasetConfig:
    """One video dataset: its format, where the videos are and where the official annotations are.

    Keys:
        kind: annotation format of the dataset; "folder" is one sub-folder per class.
        root (path): folder holding the videos (``synthetic:<set>`` points into the synthetic stage's output).
        annotations (paths): official annotation files or folders (split lists, CSVs); format per ``kind``.
        split: official split number (UCF101 / HMDB51 have three).
        min_frames (frames): videos with fewer decodable frames are rejected (listed in rejected.jsonl).
        allow_missing: build the manifest even when many annotated videos are missing from ``root``.
        workers (processes): parallel video probes.
        classes (path): class-list file (one name per line, or "<index> <name>"); labels index that list.
        parent: dataset whose manifest's class list a test set cut from it uses (SCUBA, Mimetics).
        filename_tmpl: frame file name of a frame folder (kind "rawframes"), e.g. "img_{:05}.jpg".
        start_index (frame number): number of a frame folder's first frame file.
        fps (frames per second): frame rate recorded for frame folders (image files carry none).
    """

    kind: str = _opt("folder", choices=("ucf101", "hmdb51", "kinetics400", "folder", "rawframes"))
    root: str = _opt("")
    annotations: list[str] = _list([])
    split: int = _opt(1, min=1, max=3)
    min_frames: int = _opt(0, min=0)
    allow_missing: bool = _opt(False)
    workers: int = _exec(2, min=1)
    # Class names: a class-list file (one name per line, or "<index> <name>"), or the class list of the
    # parent dataset's manifest (a test set cut from it: SCUBA, Mimetics). Labels index that list.
    classes: str = _opt("")
    parent: str = _opt("")
    # Frame folders (kind "rawframes", MMAction2's layout): frame i of a folder is the file
    # filename_tmpl.format(start_index + offset + i); fps is recorded for the frames (files carry none).
    filename_tmpl: str = _opt("img_{:05}.jpg")
    start_index: int = _opt(1, min=0)
    fps: float = _opt(30.0, min=0.0)


@dataclass
class ClipsConfig:
    """The clip plan: anchors per video and the playback geometry of a training clip.

    Keys:
        anchors_per_video (frames): anchor frames per video; each gets a teacher map and centres training clips.
        clip_len (frames): frames per clip fed to the student.
        speeds (frame strides): playback speeds of RSP; the longest span is clip_len x max(speeds).
        splits: manifest splits whose videos enter the clip plan (pretraining and the teacher cache).
    """

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
    """How the teacher's parsing maps are produced and stored.

    Keys:
        backend: "schp" runs the SCHP network; "rendered" uses the synthetic generator's exact part masks.
        checkpoint (path): SCHP checkpoint file (schp backend only).
        labels: SCHP label set of the checkpoint: lip (20 classes), atr (18), pascal (7).
        input_size (pixels): SCHP input side; 0 takes the label set's own (473 LIP, 512 ATR / Pascal).
        map_size (pixels): side of the cached softmax maps (frame coordinates, whole frame).
        shard_size (clips): clips per HDF5 shard (the unit of work split across GPUs and job arrays).
        flip_test: also parse the mirrored frame and average (SCHP's flip test).
        softness (map pixels): rendered backend only: blur of the part masks, making soft targets.
        batch_size (frames): frames per teacher forward pass.
        workers (processes): frame-decoding DataLoader workers.
        device: auto, cpu, cuda or cuda:N.
        amp: mixed precision of the teacher forward pass (auto: bf16/fp16 on GPU, off on CPU).
    """

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
    """The multi-task student (paper §3).

    Keys:
        backbone: 3D-CNN backbone, state-dict-compatible with RSPNet's releases.
        width (multiplier): channel width multiplier (1.0 = the published network; small for CPU runs).
        split_after (backbone stage): last stage of the shared low-level encoder f_l; the rest is h_h and h_c.
        input_size (pixels): side of the square training crops.
        parse_size (pixels): side of the KD decoder's parsing output.
        kd: train the human-prior distillation branch (false: the paper's "w/o KD").
        task_dependent: separate high-level encoders h_h and h_c (false: the paper's "TI", one shared).
        proj_dim (dimensions): output size of the RSP and A-VID projection heads.
        decoder_upscale (cells): the parsing decoder g_h predicts an r×r block of logits per feature cell
            (pixel shuffle) before the resize to parse_size; 1 = plain bilinear upsampling.
    """

    backbone: str = _opt("c3d", choices=("c3d", "r2plus1d", "r3d18"))
    width: float = _opt(1.0, min=0.0625, max=4.0)
    split_after: int = _opt(3, min=1, max=4)
    input_size: int = _opt(112, min=16)
    parse_size: int = _opt(28, min=4)
    kd: bool = _opt(True)
    task_dependent: bool = _opt(True)
    proj_dim: int = _opt(128, min=8)
    decoder_upscale: int = _opt(1, min=1, max=16)


@dataclass
class PretrainConfig:
    """Self-supervised multi-task pretraining (RSPNet recipe + human-prior distillation).

    Keys:
        dataset: name of the [datasets.<name>] table to pretrain on.
        epochs (epochs): passes over the clip plan.
        batch_size (clips per process): query clips per step on each process.
        optimizer: "sgd" (RSPNet: momentum SGD, linear lr scaling) or "adamw" (AdamW, lr used as given: the
            demo's choice, as momentum SGD does not learn the relative-speed task in a few hundred steps;
            docs/results.md section 4).
        lr (learning rate): SGD learning rate for a global batch of 64, scaled linearly with the global batch;
            AdamW's learning rate as given.
        momentum: SGD momentum (AdamW: unused).
        weight_decay: SGD L2 weight decay; AdamW's decoupled weight decay.
        slow_modules: student modules (f_l, h_h, g_h, h_c, g_m, g_a) trained at lr × slow_lr_ratio.
        slow_lr_ratio: learning-rate ratio of slow_modules (1: no difference).
        lambda_kd (weight): weight of the KD loss (paper Eq. 4).
        lambda_m (weight): weight of the RSP margin-ranking loss.
        lambda_a (weight): weight of the A-VID InfoNCE loss.
        queue_size (keys): MoCo queue length, trimmed to a multiple of the global batch (as RSPNet).
        exclude_same_video: keep each queued key's video id and leave a query's own video out of its negatives.
        moco_momentum: EMA momentum of the key encoder.
        temperature: softmax temperature of the contrastive similarities.
        margin: margin of the RSP ranking loss.
        crop_area (fraction of frame area): [min, max] area of the random resized crop.
        jitter: ColorJitter strengths [brightness, contrast, saturation, hue] (RSPNet's recipe by default).
        jitter_p (probability): probability that a clip is colour-jittered.
        grayscale_p (probability): probability that a clip is turned to grayscale.
        shared_colour: the query and the keys share one draw of colour parameters (RSPNet: independent draws).
        avid_own_colour: with shared_colour, A-VID's key keeps the key's own colour draw (so appearance
            discrimination cannot match colours) while RSP keeps the shared one; one more key-encoder pass per
            step. No effect without shared_colour.
        avid_start_epoch (epochs): before this epoch A-VID weighs 0 and slow_modules train at the full rate
            (relative speed starts learning first); from it on, lambda_a and slow_lr_ratio apply. 0: from the start.
        avid_projection: per sample, the A-VID gradient on the contrastive features z_c loses its component
            along the RSP gradient where the two conflict (student/grad_surgery.py); losses unchanged.
        heldout_videos (videos): the pretext tasks are measured on at most this many videos never pretrained
            on (student/pretext_eval.py; 0: off), before training and at the end.
        heldout_views (items per video): RSP and A-VID are averaged over this many independent items (clip
            positions, crops, colours) per video, with their standard error; a small gallery needs several.
        heldout_every (epochs): also measure them every this many epochs (0: only before and at the end).
        seed: seed of sampling, augmentation and initialisation.
        init_from (path): start from these encoder weights (a student.pt or an RSPNet release) instead of random.
        max_steps_per_epoch (steps): cap on steps per epoch; 0 is a full pass over the clip plan.
        max_missing_maps (fraction): refuse to train when more of the clip plan has no teacher map (a lost
            shard); raising it does not change the output's id.
        deterministic: deterministic kernels (slower).
        amp: mixed precision (auto: bf16/fp16 on GPU, off on CPU); fp16 and bf16 need a GPU.
        augment_device: "gpu" ships uint8 crops and runs colour jitter, grayscale and normalisation batched on
            the training device (equal to "cpu" to float tolerance).
        workers (processes): DataLoader workers.
        device: auto, cpu, cuda or cuda:N.
        log_interval (steps): steps per metrics.jsonl / TensorBoard record (window means).
    """

    dataset: str = _opt("kinetics400")
    epochs: int = _opt(200, min=1)
    batch_size: int = _opt(32, min=2)  # per process
    optimizer: str = _opt("sgd", choices=("sgd", "adamw"))
    lr: float = _opt(0.1, min=0.0)  # SGD: for a global batch of 64, scaled linearly; AdamW: as given
    momentum: float = _opt(0.9, min=0.0, max=1.0)
    weight_decay: float = _opt(1e-4, min=0.0)
    slow_modules: list[str] = _list([])
    slow_lr_ratio: float = _opt(1.0, min=0.0)
    lambda_kd: float = _opt(1.0, min=0.0)
    lambda_m: float = _opt(1.0, min=0.0)
    lambda_a: float = _opt(1.0, min=0.0)
    queue_size: int = _opt(16384, min=1, max=1 << 20)  # trimmed to a multiple of the global batch (as RSPNet)
    # keep each queued key's video id and leave a query's own video out of its A-VID negatives
    exclude_same_video: bool = _opt(True)
    moco_momentum: float = _opt(0.999, min=0.0, max=1.0)
    temperature: float = _opt(0.07, min=1e-4)
    margin: float = _opt(2.0, min=0.0)
    crop_area: list[float] = _list([0.4, 1.0])
    jitter: list[float] = _list([0.4, 0.4, 0.4, 0.4])
    jitter_p: float = _opt(1.0, min=0.0, max=1.0)
    grayscale_p: float = _opt(0.2, min=0.0, max=1.0)
    shared_colour: bool = _opt(False)
    avid_own_colour: bool = _opt(False)
    avid_projection: bool = _opt(False)
    avid_start_epoch: int = _opt(0, min=0)
    heldout_videos: int = _opt(128, min=0)
    heldout_views: int = _opt(1, min=1)
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
    """Supervised finetuning on UCF101 / HMDB51 (RSPNet's protocols as presets).

    Keys:
        dataset: name of the [datasets.<name>] table to finetune on.
        protocol: auto / paper (RSPNet's preset, 100 epochs), rspnet (its released configs), custom (every
            value from this section), or a preset name such as "paper:c3d/hmdb51"; see student/protocols.py.
        epochs (epochs): 0 takes the protocol's.
        batch_size (clips per process): 0 takes the protocol's.
        lr (learning rate): 0 takes the protocol's.
        schedule: learning-rate schedule; "" takes the protocol's.
        milestones (epochs): step schedule's decay epochs; [] takes the protocol's.
        momentum: SGD momentum.
        weight_decay: SGD L2 weight decay.
        crop_area (fraction of frame area): [min, max] area of the random resized crop.
        val_fraction (fraction): share of each class's train videos held out to choose the epoch.
        select_on: which epoch's weights are kept: best on the held-out val videos, best on test (reported as
            such), or the last.
        from_scratch: random initialisation instead of the pretrained student (the "scratch" baseline).
        seed: seed of sampling, augmentation, the val draw and the classifier's initialisation.
        deterministic: deterministic kernels (slower).
        amp: mixed precision (auto: bf16/fp16 on GPU, off on CPU); fp16 and bf16 need a GPU.
        workers (processes): DataLoader workers.
        device: auto, cpu, cuda or cuda:N.
        log_interval (steps): steps per metrics.jsonl / TensorBoard record.
    """

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
    """Multi-view test protocol: N clips × M crops per video, softmax averaged.

    Keys:
        clips (clips per video): evenly spaced clips per test video.
        crops (crops per clip): 1 centre crop, or 3 (left / centre / right).
        test_sets: out-of-context test sets of finetune.dataset that `pipeline run` also evaluates.
        chunk (views): views per forward pass (memory).
        workers (processes): decoding workers.
        device: auto, cpu, cuda or cuda:N.
    """

    clips: int = _opt(10, min=1)
    crops: int = _opt(1, choices=(1, 3))
    # out-of-context test sets of finetune.dataset that `pipeline run` also evaluates (their own stages:
    # this list changes no stage's output) and whose rows join the results table
    test_sets: list[str] = field(default_factory=list, metadata={"exec": True})
    chunk: int = _exec(10, min=1)
    workers: int = _exec(4, min=0)  # decoding 10 clips per video is the cost on a GPU
    device: str = _exec("auto")


@dataclass
class RetrievalConfig:
    """Nearest-neighbour video retrieval from the pretrained representation (no finetuning).

    Keys:
        dataset: name of the [datasets.<name>] table: test videos query its train videos.
        clips (clips per video): centre-crop clips averaged into one feature per video.
        ks (neighbours): the k of each reported R@k.
        workers (processes): decoding workers.
        device: auto, cpu, cuda or cuda:N.
    """

    dataset: str = _opt("ucf101")
    clips: int = _opt(10, min=1)
    ks: list[int] = _list([1, 5, 10, 20, 50])
    workers: int = _exec(4, min=0)
    device: str = _exec("auto")


@dataclass
class LinearProbeConfig:
    """Linear probe on frozen [z_h || z_c] features (student/linear_probe.py): logistic regression by L-BFGS.

    Keys:
        dataset: name of the [datasets.<name>] table to probe.
        clips (clips per video): centre-crop clips averaged into one feature per video.
        weight_decay (L2 penalty): used only when weight_decays is empty (no search).
        weight_decays (L2 penalties): candidates; the best top-1 on held-out train videos wins (never the test split).
        heldout_fraction (fraction): share of each class's train videos held out to choose the penalty.
        max_iter (iterations): L-BFGS iterations per fit.
        workers (processes): decoding workers.
        device: auto, cpu, cuda or cuda:N.
    """

    dataset: str = _opt("hmdb51")
    clips: int = _opt(10, min=1)  # views averaged into one feature per video
    weight_decay: float = _opt(1e-3, min=0.0)  # used only when weight_decays is empty (no search)
    # L2 penalties tried; the one with the best top-1 on held-out train videos is used (never the test split)
    weight_decays: list[float] = _list([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0], min=0.0)
    heldout_fraction: float = _opt(0.2, min=0.0, max=0.5)  # of each class's train videos, for the choice
    max_iter: int = _opt(500, min=1)
    workers: int = _exec(4, min=0)
    device: str = _exec("auto")


@dataclass
class TranscodeConfig:
    """Optional one-time copies of the videos for the student (data_manifests/transcode.py): short side
    ``short_side``, every frame index kept, all-intra MJPEG in AVI (every frame a keyframe, so reads
    seek). The teacher keeps reading the originals.

    Keys:
        enabled: write the copies (run's transcode stage does nothing otherwise).
        short_side (pixels): short side of the copies (the student's 112-pixel crops never need more).
        codec: mjpeg (all-intra, read by seeking) or mp4v (about half the disk, read forward).
        workers (processes): parallel transcoders.
    """

    enabled: bool = _opt(False)
    short_side: int = _opt(128, min=16)  # the student's 112² crops never need more
    # mjpeg: all-intra, read by seeking; mp4v: ~half the disk, read forward (bench/loader.py --real)
    codec: str = _opt("mjpeg", choices=("mjpeg", "mp4v"))
    workers: int = _exec(2, min=1)


@dataclass
class RunConfig:
    """What ``pipeline run`` does: its stages, in order.

    Keys:
        stages: stage kinds ``pipeline run`` builds, in order (transcode only when [transcode] enabled).
        fidelity: "fast" runs the configured numerics; "official" puts the official code's numerics and inputs
            over them (fp32 teacher and student, 256-pixel copies, the paper's finetuning protocol;
            docs/fidelity.md), and refuses a --set that contradicts them.
    """

    stages: list[str] = _list(["synthetic", "manifest", "transcode", "teacher-cache", "pretrain", "finetune",
                               "evaluate"])  # transcode: only when [transcode] enabled
    # "official": the official code's numerics and inputs (OFFICIAL_NUMERICS); "fast": the configured ones
    fidelity: str = _exec("fast", choices=("fast", "official"))


# run.fidelity = "official": what SCHP's and RSPNet's own code compute with (docs/fidelity.md). The teacher
# in float32 (SCHP's tools never use half precision; fp16/bf16 move its softmax by ~5e-3 / ~3e-2), the
# student trained and tested in float32 (RSPNet's scripts have no autocast), the student reading copies
# 256 pixels high as RSPNet's transcode script writes them, and RSPNet's finetuning protocol.
OFFICIAL_NUMERICS: dict[tuple[str, str], Any] = {
    ("teacher", "amp"): "off", ("pretrain", "amp"): "off", ("finetune", "amp"): "off",
    ("transcode", "short_side"): 256, ("finetune", "protocol"): "paper",
}


def apply_fidelity(raw: dict[str, Any], where: str, explicit: set[tuple[str, ...]]) -> list[str]:
    """Put :data:`OFFICIAL_NUMERICS` into ``raw`` when ``run.fidelity = "official"`` (over the config file's
    values); a ``--set`` (``explicit``) of one of those keys to another value is an error: the switch promises
    the official numerics, so it never half-applies. Returns what it changed, for the config's sources."""
    if raw.get("run", {}).get("fidelity", "fast") != "official":
        return []
    changed = []
    for (section, key), value in OFFICIAL_NUMERICS.items():
        table = raw.setdefault(section, {})
        if (section, key) in explicit and table[key] not in (value, "auto"):
            raise ConfigError(f"{where}: run.fidelity = 'official' needs {section}.{key} = {value!r} "
                              f"(the official code's), but --set gives {table[key]!r}; drop one of the two")
        if table.get(key) != value:
            changed.append(f"run.fidelity=official: {section}.{key}={value!r}")
        table[key] = value
    return changed


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
    # [datasets.<name>.test_sets.<set>]: out-of-context test sets of dataset <name> (SCUBA, Mimetics),
    # known to the stages as the dataset "<name>.<set>" (see :meth:`dataset`).
    test_sets: dict[str, dict[str, DatasetConfig]] = field(default_factory=dict)

    def test_set(self, name: str, test_set: str) -> DatasetConfig:
        """Test set ``test_set`` of dataset ``name``, with the dataset's split and the dataset as its parent."""
        sets = self.test_sets.get(name, {})
        if test_set not in sets:
            raise ConfigError(
                f"dataset {name!r} has no test set {test_set!r} (known: {', '.join(sorted(sets)) or 'none'}); "
                f"add a [datasets.{name}.test_sets.{test_set}] table with kind, root and annotations")
        return dataclasses.replace(sets[test_set], split=self.dataset(name).split,
                                   parent=sets[test_set].parent or name)

    def dataset(self, name: str) -> DatasetConfig:
        if name not in self.datasets and "." in name and name.split(".", 1)[0] in self.datasets:
            return self.test_set(*name.split(".", 1))
        if name not in self.datasets:
            raise ConfigError(
                f"no dataset named {name!r} in the config{_suggest(name, list(self.datasets))} (known: "
                f"{', '.join(sorted(self.datasets)) or 'none'}); add a [datasets.{name}] table with kind, root and "
                f"annotations")
        return self.datasets[name]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("sources")
        if not d["test_sets"]:
            d.pop("test_sets")
        return d


# --------------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------------

SECTIONS = {f.name: f for f in fields(Config) if f.name not in ("sources", "test_sets")}


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


def _check_range(value: Any, meta: Mapping[str, Any], where: str) -> None:
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


class _Underflow(ValueError):
    """A number written non-zero that floating point rounds to 0.0 (``1e-400``)."""


def _exact_float(text: str) -> float:
    """TOML's float parser, refusing numbers that silently become 0.0 (an lr of 1e-400 is no lr)."""
    value = float(text)
    mantissa = text.lower().split("e")[0]
    if value == 0.0 and any(c in "123456789" for c in mantissa):
        raise _Underflow(f"{text} is too small for floating point (it becomes 0.0); give 0 or a larger number")
    return value


def _parse_value(text: str) -> Any:
    """A ``--set`` value is read as a TOML value; a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}", parse_float=_exact_float)["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.epochs=10")
    key, _, value = item.partition("=")
    path = [p for p in key.strip().split(".") if p]
    if len(path) < 2:
        raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. --set pretrain.epochs=10")
    try:
        return path, _parse_value(value.strip())
    except _Underflow as exc:
        raise ConfigError(f"--set {item!r}: {exc}") from None


def default_toml_text() -> str:
    return resources.files("pipeline.core").joinpath("default.toml").read_text(encoding="utf-8")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh, parse_float=_exact_float)
    except _Underflow as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
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
            kwargs[key] = {name: _build_section(DatasetConfig, _without_test_sets(table), f"{where}: datasets.{name}")
                           for name, table in value.items()}
            kwargs["test_sets"] = _test_sets(value, where)
        else:
            cls = get_type_hints(Config)[key]
            kwargs[key] = _build_section(cls, value, f"{where}: {key}")
    cfg = Config(**kwargs)
    _check_consistency(cfg, where)
    return cfg


def _without_test_sets(table: Any) -> Any:
    return {k: v for k, v in table.items() if k != "test_sets"} if isinstance(table, dict) else table


def _test_sets(datasets: dict[str, Any], where: str) -> dict[str, dict[str, DatasetConfig]]:
    """The [datasets.<name>.test_sets.<set>] tables, validated like datasets."""
    out: dict[str, dict[str, DatasetConfig]] = {}
    for name, table in datasets.items():
        sets = table.get("test_sets", {}) if isinstance(table, dict) else {}
        if not isinstance(sets, dict):
            raise ConfigError(f"{where}: datasets.{name}.test_sets must hold tables like "
                              f"[datasets.{name}.test_sets.scuba_places365]")
        for set_name, set_table in sets.items():
            if "." in set_name:
                raise ConfigError(f"{where}: datasets.{name}.test_sets.{set_name}: a test-set name cannot hold '.'")
            out.setdefault(name, {})[set_name] = _build_section(
                DatasetConfig, set_table, f"{where}: datasets.{name}.test_sets.{set_name}")
    return out


STUDENT_MODULES = ("f_l", "h_h", "g_h", "h_c", "g_m", "g_a")  # student/model.py, paper section 3


def slow_phase_problem(p: PretrainConfig) -> str | None:
    """Why ``avid_start_epoch`` cannot combine with this slow group (None when it can); checked at load time
    and again by ``student.pretrain`` for library calls that build a PretrainConfig directly."""
    if p.avid_start_epoch and p.slow_modules and p.slow_lr_ratio <= 0:
        return ("pretrain.avid_start_epoch > 0 trains slow_modules at the full rate first, which needs "
                "pretrain.slow_lr_ratio > 0 (0 freezes them)")
    return None


def _check_consistency(cfg: Config, where: str) -> None:
    if not cfg.clips.speeds or any(s < 1 for s in cfg.clips.speeds):
        raise ConfigError(f"{where}: clips.speeds must be a non-empty list of positive integers")
    if len(set(cfg.clips.speeds)) != len(cfg.clips.speeds) or len(cfg.clips.speeds) < 2:
        raise ConfigError(f"{where}: clips.speeds {cfg.clips.speeds} must hold at least two different speeds "
                          f"(the speed task compares a clip with the same clip at another speed)")
    if cfg.pretrain.lr <= 0:
        raise ConfigError(f"{where}: pretrain.lr {cfg.pretrain.lr} must be above 0 (a student that never "
                          f"moves would be marked done)")
    if cfg.pretrain.queue_size < cfg.pretrain.batch_size:
        raise ConfigError(f"{where}: pretrain.queue_size {cfg.pretrain.queue_size} is below pretrain.batch_size "
                          f"{cfg.pretrain.batch_size}: the queue is trimmed to a multiple of the global batch")
    for name in (cfg.pretrain.dataset, cfg.finetune.dataset):
        if name and cfg.datasets and name not in cfg.datasets:
            raise ConfigError(f"{where}: dataset {name!r} is used but there is no [datasets.{name}] table"
                              f"{_suggest(name, list(cfg.datasets))}")
    lo, hi = cfg.pretrain.crop_area
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"{where}: pretrain.crop_area must be [min, max] with 0 < min <= max <= 1")
    unknown = [m for m in cfg.pretrain.slow_modules if m not in STUDENT_MODULES]
    if unknown:
        raise ConfigError(f"{where}: pretrain.slow_modules {unknown} are not student modules; choose from "
                          f"{list(STUDENT_MODULES)}")
    if not cfg.model.kd and {"h_h", "g_h"} & set(cfg.pretrain.slow_modules):
        raise ConfigError(f"{where}: pretrain.slow_modules names the human-prior branch (h_h, g_h), which "
                          f"model.kd = false leaves out")
    if cfg.pretrain.avid_start_epoch >= cfg.pretrain.epochs:
        raise ConfigError(f"{where}: pretrain.avid_start_epoch {cfg.pretrain.avid_start_epoch} must be below "
                          f"pretrain.epochs {cfg.pretrain.epochs} (A-VID would never train)")
    if (problem := slow_phase_problem(cfg.pretrain)) is not None:
        raise ConfigError(f"{where}: {problem}")
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
    explicit: set[tuple[str, ...]] = set()
    for item in overrides:
        keypath, value = parse_override(item)
        node = raw
        for part in keypath[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {'.'.join(keypath[:-1])} is not a section")
        node[keypath[-1]] = value
        sources.append(f"--set {item}")
        explicit.add(tuple(keypath))
    if overrides:
        where = f"{where} with --set overrides"
    sources += apply_fidelity(raw, where, explicit)
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
        if section == "test_sets":
            for name, sets in values.items():
                for set_name, table in sets.items():
                    lines.append(f"[datasets.{name}.test_sets.{set_name}]")
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
