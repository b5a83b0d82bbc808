"""The official Kinetics-400 / UCF101 / HMDB51 layouts for the synthetic videos.

Which files exist, what they are called, and the annotation / split files that describe them,
byte-compatible with the originals (see reference/FACTS.md "Dataset formats"):
- Kinetics: ``videos/<label>/<ytid>_<start:06d>_<end:06d>.mp4`` (label as in the CSV, spaces kept,
  as ActivityNet's downloader does) + ``annotations/{train,val}.csv`` (labels with spaces quoted).
- UCF101: ``videos/<Class>/v_<Class>_gXX_cYY.avi`` + ``splits/classInd.txt``,
  ``trainlist0N.txt`` / ``testlist0N.txt`` with CRLF endings; clips of a group share the actor and
  the place, and each split holds out different groups (split 1: g01.., split 2: the next ones ..).
- HMDB51: ``videos/<class>/<name>.avi`` + ``splits/<class>_test_split{1,2,3}.txt``, lines
  ``<name>.avi <0|1|2> `` (trailing space, LF): ~70 % train, ~30 % test, some unused.
"""
from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.core.files import atomic_write_text

from .actions import hmdb_name, kinetics_label, ucf_name
from .render import Look, VideoJob
from .spec import SyntheticSpec

DATASET_CODES = {"kinetics": 1, "ucf101": 2, "hmdb51": 3}
_YT_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SYLLABLES = ("ka", "lo", "mi", "ra", "ten", "vo", "su", "der", "bel", "no", "fin", "ga", "tor", "li", "mun", "pe")


@dataclass(frozen=True)
class PlannedVideo:
    """One video to generate: where it goes and how to render it."""

    dataset: str              # kinetics | ucf101 | hmdb51
    cls: str                  # canonical class name (e.g. jumping_jack)
    relpath: str              # relative to out_dir/<dataset>
    fourcc: str
    job: VideoJob
    split: str = ""           # kinetics only: train | val
    ytid: str = ""
    time_start: int = 0
    time_end: int = 0
    is_cc: int = 0
    group: int = 0            # ucf101 only
    scene: str = ""           # hmdb51 with scene bias: the class whose place the video is shot in


def class_code(name: str) -> int:
    """Stable per-class seed component (adding a class does not change the others' videos)."""
    return zlib.crc32(name.encode("utf-8"))


def _rng(*seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed))))


def _job(spec: SyntheticSpec, cls: str, actor: tuple[int, ...], clip: tuple[int, ...]) -> VideoJob:
    w, h = spec.size
    look = Look(spec.figure_scale, spec.max_yaw, spec.limb_thickness, spec.distractors)
    return VideoJob(cls, actor, clip, spec.frames, w, h, spec.fps, look)


def plan_kinetics(spec: SyntheticSpec) -> list[PlannedVideo]:
    out, seen = [], set()
    n = spec.kinetics_per_class
    n_val = 0 if n < 2 else max(1, int(round(n * spec.kinetics_val_fraction)))
    for cls in spec.classes:
        cc = class_code(cls)
        label = kinetics_label(cls)
        for i in range(n):
            rng = _rng(spec.seed, DATASET_CODES["kinetics"], cc, i, 99)
            ytid = "".join(_YT_ALPHABET[k] for k in rng.integers(0, len(_YT_ALPHABET), 11))
            while ytid in seen:       # practically never; deterministic either way
                ytid = "".join(_YT_ALPHABET[k] for k in rng.integers(0, len(_YT_ALPHABET), 11))
            seen.add(ytid)
            start = int(rng.integers(0, 590))
            seed = (spec.seed, DATASET_CODES["kinetics"], cc, i)
            out.append(PlannedVideo(
                "kinetics", cls, f"videos/{label}/{ytid}_{start:06d}_{start + 10:06d}.mp4", "mp4v",
                _job(spec, cls, seed, seed), split="val" if i >= n - n_val else "train",
                ytid=ytid, time_start=start, time_end=start + 10, is_cc=int(rng.random() < 0.3)))
    return out


def ucf_group_sizes(n: int, groups: int) -> list[int]:
    g = max(1, min(groups, n))
    return [n // g + (1 if k < n % g else 0) for k in range(g)]


def ucf_test_groups(num_groups: int, split: int) -> set[int]:
    """1-based groups held out by ``split`` (1..3): consecutive blocks, like g01-07 / g08-14 / g15-21 of 25."""
    k = max(1, int(round(num_groups * 7 / 25)))
    return {((split - 1) * k + j) % num_groups + 1 for j in range(k)}


def plan_ucf101(spec: SyntheticSpec) -> list[PlannedVideo]:
    out = []
    for cls in spec.classes:
        cc, camel = class_code(cls), ucf_name(cls)
        for g, size in enumerate(ucf_group_sizes(spec.ucf_per_class, spec.ucf_groups), start=1):
            actor = (spec.seed, DATASET_CODES["ucf101"], cc, g)
            for c in range(1, size + 1):
                out.append(PlannedVideo(
                    "ucf101", cls, f"videos/{camel}/v_{camel}_g{g:02d}_c{c:02d}.avi", "XVID",
                    _job(spec, cls, actor, actor + (c,)), group=g))
    return out


def _movie_title(rng: np.random.Generator) -> str:
    words = []
    for _ in range(int(rng.integers(1, 4))):
        w = "".join(_SYLLABLES[k] for k in rng.integers(0, len(_SYLLABLES), int(rng.integers(1, 4))))
        words.append(w.capitalize() if rng.random() < 0.7 else w.upper())
    return "_".join(words)


def class_place(spec: SyntheticSpec, cls: str) -> tuple[int, ...]:
    """The place seed a class owns when the scene-bias knob is on (``SyntheticSpec.scene_bias``)."""
    return (spec.seed, DATASET_CODES["hmdb51"], class_code(cls), 7)


def other_class(spec: SyntheticSpec, cls: str, rng: np.random.Generator) -> str:
    """A class drawn uniformly among the others."""
    others = [c for c in spec.classes if c != cls]
    return others[int(rng.integers(len(others)))] if others else cls


def hmdb_scene(spec: SyntheticSpec, cls: str, i: int) -> str:
    """Whose place video ``i`` of ``cls`` is shot in: "" (its own) when the knob is off; else its class's
    with probability ``scene_bias`` and another class's otherwise (a pure function of the seed)."""
    if spec.scene_bias <= 0:
        return ""
    rng = _rng(spec.seed, DATASET_CODES["hmdb51"], class_code(cls), i, 77)
    own = rng.random() < spec.scene_bias
    return cls if own else other_class(spec, cls, rng)


def plan_hmdb51(spec: SyntheticSpec) -> list[PlannedVideo]:
    out = []
    for cls in spec.classes:
        cc, name = class_code(cls), hmdb_name(cls)
        seen: set[str] = set()
        for i in range(spec.hmdb_per_class):
            rng = _rng(spec.seed, DATASET_CODES["hmdb51"], cc, i, 99)
            title = _movie_title(rng)
            tags = [str(rng.choice(["f", "f", "u"])), str(rng.choice(["cm", "nm"])), "np1",
                    str(rng.choice(["fr", "le", "ri", "ba"])), str(rng.choice(["goo", "med", "bad"]))]
            k = int(rng.integers(0, 40))
            stem = f"{title}_{name}_{'_'.join(tags)}_{k}"
            while stem in seen:
                k += 1
                stem = f"{title}_{name}_{'_'.join(tags)}_{k}"
            seen.add(stem)
            seed = (spec.seed, DATASET_CODES["hmdb51"], cc, i)
            scene = hmdb_scene(spec, cls, i)
            place = class_place(spec, scene) if scene else None
            job = dataclasses.replace(_job(spec, cls, seed, seed), place_seed=place)
            out.append(PlannedVideo("hmdb51", cls, f"videos/{name}/{stem}.avi", "DIVX", job, scene=scene))
    return out


def plan_dataset(spec: SyntheticSpec) -> list[PlannedVideo]:
    """Every video of the three datasets, in a fixed order."""
    return plan_kinetics(spec) + plan_ucf101(spec) + plan_hmdb51(spec)


def hmdb_split_flags(spec: SyntheticSpec, cls: str, names: list[str], split: int) -> dict[str, int]:
    """name -> 0 (unused) / 1 (train) / 2 (test) for one class and split (1..3)."""
    n = len(names)
    n_unused = n // 10 if n >= 5 else 0
    n_test = max(1, int(round(0.3 * (n - n_unused)))) if n >= 2 else 0
    order = _rng(spec.seed, DATASET_CODES["hmdb51"], class_code(cls), 100 + split).permutation(n)
    flags = {}
    for rank, idx in enumerate(order):
        flags[names[idx]] = 0 if rank < n_unused else (2 if rank < n_unused + n_test else 1)
    return flags


def _write_text(path: Path, text: str) -> None:
    """Atomic write with the exact bytes given (no newline translation)."""
    atomic_write_text(path, text, newline="")


def _csv_label(label: str) -> str:
    return f'"{label}"' if (" " in label or "," in label) else label


def write_kinetics_annotations(root: Path, videos: list[PlannedVideo]) -> dict[str, int]:
    counts = {}
    for split in ("train", "val"):
        rows = sorted((kinetics_label(v.cls), v.ytid, v) for v in videos if v.split == split)
        lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
        lines += [f"{_csv_label(lab)},{yt},{v.time_start},{v.time_end},{split},{v.is_cc}" for lab, yt, v in rows]
        _write_text(root / "annotations" / f"{split}.csv", "\n".join(lines) + "\n")
        counts[split] = len(rows)
    return counts


def write_ucf101_splits(root: Path, spec: SyntheticSpec, videos: list[PlannedVideo]) -> dict[str, dict[str, int]]:
    classes = sorted(ucf_name(c) for c in spec.classes)
    label = {c: i + 1 for i, c in enumerate(classes)}
    _write_text(root / "splits" / "classInd.txt", "".join(f"{label[c]} {c}\r\n" for c in classes))
    num_groups = len(ucf_group_sizes(spec.ucf_per_class, spec.ucf_groups))
    rows = sorted((label[ucf_name(v.cls)], v.relpath[len("videos/"):], v.group) for v in videos)
    counts = {}
    for split in (1, 2, 3):
        test_g = ucf_test_groups(num_groups, split)
        train = [f"{rel} {lab}\r\n" for lab, rel, g in rows if g not in test_g]
        test = [f"{rel}\r\n" for lab, rel, g in rows if g in test_g]
        _write_text(root / "splits" / f"trainlist0{split}.txt", "".join(train))
        _write_text(root / "splits" / f"testlist0{split}.txt", "".join(test))
        counts[f"split{split}"] = {"train": len(train), "test": len(test)}
    return counts


def write_hmdb51_splits(root: Path, spec: SyntheticSpec, videos: list[PlannedVideo]) -> dict[str, dict[str, int]]:
    counts = {f"split{s}": {"train": 0, "test": 0, "unused": 0} for s in (1, 2, 3)}
    names_of = {"0": "unused", "1": "train", "2": "test"}
    for cls in spec.classes:
        names = sorted(Path(v.relpath).name for v in videos if v.cls == cls)
        for split in (1, 2, 3):
            flags = hmdb_split_flags(spec, cls, names, split)
            _write_text(root / "splits" / f"{hmdb_name(cls)}_test_split{split}.txt",
                        "".join(f"{nm} {flags[nm]} \n" for nm in names))
            for f in flags.values():
                counts[f"split{split}"][names_of[str(f)]] += 1
    return counts
