"""What synthetic dataset to generate: one small dataclass, deterministic from its seed."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .actions import ACTIONS, DEFAULT_CLASSES


@dataclass
class SyntheticSpec:
    """Sizes of the three synthetic datasets and of their videos.

    The defaults (10 classes; 12 Kinetics + 10 UCF101 + 10 HMDB51 videos per class = 320 videos
    of 48 frames at 112x112, 25 fps) generate in well under a minute on 2 CPU cores.
    """

    seed: int = 0
    classes: tuple[str, ...] = field(default_factory=lambda: DEFAULT_CLASSES)
    kinetics_per_class: int = 12
    kinetics_val_fraction: float = 0.25
    ucf_per_class: int = 10
    ucf_groups: int = 4                     # UCF101-style groups per class (clips of a group share actor and place)
    hmdb_per_class: int = 10
    frames: int = 48
    size: tuple[int, int] = (112, 112)      # (width, height)
    fps: float = 25.0
    # difficulty knobs (see render.Look): how big the actor is, how far it turns, how busy the scene is
    figure_scale: tuple[float, float] = (0.72, 0.88)   # standing height / frame height, drawn per video
    max_yaw: float = 45.0                   # degrees; 0 faces the camera, 90 is a profile
    limb_thickness: float = 1.3             # multiplier on every limb's thickness
    distractors: tuple[int, int] = (1, 3)   # moving distractor objects per video, inclusive range
    # scene bias (HMDB51-style videos only): 0 = off, every video its own place; p > 0 = each class owns a
    # place (background texture and floor) and a video is shot in its class's place with probability p,
    # else in another class's; the scene-swapped test set (scene_swap.py) is then written too
    scene_bias: float = 0.0

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        self.size = (int(self.size[0]), int(self.size[1]))
        self.figure_scale = (float(self.figure_scale[0]), float(self.figure_scale[1]))
        self.distractors = (int(self.distractors[0]), int(self.distractors[1]))
        lo, hi = self.figure_scale
        if not 0.1 <= lo <= hi <= 1.2:
            raise ValueError(f"SyntheticSpec.figure_scale must be (lo, hi) with 0.1 <= lo <= hi <= 1.2, "
                             f"got {self.figure_scale}")
        if not 0.0 <= self.max_yaw <= 90.0:
            raise ValueError(f"SyntheticSpec.max_yaw must be in [0, 90] degrees, got {self.max_yaw}")
        if not 0.25 <= self.limb_thickness <= 4.0:
            raise ValueError(f"SyntheticSpec.limb_thickness must be in [0.25, 4], got {self.limb_thickness}")
        if not 0 <= self.distractors[0] <= self.distractors[1]:
            raise ValueError(f"SyntheticSpec.distractors must be (min, max) with 0 <= min <= max, "
                             f"got {self.distractors}")
        if not 0.0 <= self.scene_bias <= 1.0:
            raise ValueError(f"SyntheticSpec.scene_bias must be in [0, 1], got {self.scene_bias}")
        unknown = [c for c in self.classes if c not in ACTIONS]
        if unknown:
            raise ValueError(f"SyntheticSpec.classes: unknown action(s) {unknown}; known: {sorted(ACTIONS)}")
        if not self.classes or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"SyntheticSpec.classes must be non-empty and unique, got {self.classes}")
        for name in ("kinetics_per_class", "ucf_per_class", "hmdb_per_class"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticSpec.{name} must be >= 0, got {getattr(self, name)}")
        if self.ucf_per_class == 1:
            raise ValueError("SyntheticSpec.ucf_per_class must be 0 or >= 2 (splits hold out groups)")
        if self.ucf_groups < 2:
            raise ValueError(f"SyntheticSpec.ucf_groups must be >= 2, got {self.ucf_groups}")
        if not 0.0 <= self.kinetics_val_fraction < 1.0:
            raise ValueError(f"SyntheticSpec.kinetics_val_fraction must be in [0, 1), got {self.kinetics_val_fraction}")
        w, h = self.size
        if w < 32 or h < 32 or w % 2 or h % 2:
            raise ValueError(f"SyntheticSpec.size must be even and >= 32 (width, height), got {self.size}")
        if self.frames < 1 or self.fps <= 0:
            raise ValueError(f"SyntheticSpec: frames must be >= 1 and fps > 0, got {self.frames}, {self.fps}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["classes"], d["size"] = list(self.classes), list(self.size)
        d["figure_scale"], d["distractors"] = list(self.figure_scale), list(self.distractors)
        return d


def spec_from_config(cfg: Any) -> SyntheticSpec:
    """A SyntheticSpec from the pipeline's ``[synthetic]`` config section (or any object with the
    same attribute names: seed, frames, width, height, fps, *_per_class; optionally classes,
    ucf_groups, kinetics_val_fraction and the difficulty knobs figure_scale, max_yaw,
    limb_thickness, distractors, scene_bias). Missing attributes keep the spec defaults."""
    d = SyntheticSpec()
    get = lambda name, default: getattr(cfg, name, default)  # noqa: E731
    return SyntheticSpec(
        seed=int(get("seed", d.seed)),
        classes=tuple(get("classes", None) or d.classes),
        kinetics_per_class=int(get("kinetics_per_class", d.kinetics_per_class)),
        kinetics_val_fraction=float(get("kinetics_val_fraction", d.kinetics_val_fraction)),
        ucf_per_class=int(get("ucf_per_class", d.ucf_per_class)),
        ucf_groups=int(get("ucf_groups", d.ucf_groups)),
        hmdb_per_class=int(get("hmdb_per_class", d.hmdb_per_class)),
        frames=int(get("frames", d.frames)),
        size=(int(get("width", d.size[0])), int(get("height", d.size[1]))),
        fps=float(get("fps", d.fps)),
        figure_scale=tuple(get("figure_scale", d.figure_scale)),
        max_yaw=float(get("max_yaw", d.max_yaw)),
        limb_thickness=float(get("limb_thickness", d.limb_thickness)),
        distractors=tuple(get("distractors", d.distractors)),
        scene_bias=float(get("scene_bias", d.scene_bias)),
    )
