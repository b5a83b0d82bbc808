"""Action classes as joint-angle trajectories over the action's phase.

A class is what its body parts do over a cycle (phase in cycles, 1.0 = one repetition), not how
it looks in one frame: several classes share poses (standing, crouching, arms forward) and differ
in how they move through them. Angles are in degrees, in the convention of :mod:`.figure`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

DEFAULT_CLASSES: tuple[str, ...] = ("wave", "clap", "jump", "squat", "kick", "punch", "bend",
                                    "jumping_jack", "walk", "run_in_place")

POSE_KEYS: tuple[str, ...] = (
    ("torso_pitch", "torso_roll", "head_pitch")
    + tuple(f"{limb}_{side}_{k}" for limb in ("arm", "leg") for side in ("l", "r") for k in ("fu", "au", "fl", "al"))
)


@dataclass(frozen=True)
class Style:
    """Per-video manner of performing: amplitude, which side leads, and a class-specific variant."""

    amp: float = 1.0
    side: str = "l"          # leading arm / leg ("l" or "r")
    variant: int = 0


def rest_pose() -> dict[str, float]:
    pose = {k: 0.0 for k in POSE_KEYS}
    for s in ("l", "r"):
        pose.update({f"arm_{s}_fu": 0.0, f"arm_{s}_au": 7.0, f"arm_{s}_fl": 8.0, f"arm_{s}_al": 5.0,
                     f"leg_{s}_fu": 0.0, f"leg_{s}_au": 3.0, f"leg_{s}_fl": 0.0, f"leg_{s}_al": 3.0})
    pose.update(lift=0.0, dx=0.0, dz=0.0)
    return pose


def _other(side: str) -> str:
    return "r" if side == "l" else "l"


def _set(pose: dict[str, float], limb: str, fu: float, au: float, fl: float, al: float) -> None:
    pose.update({f"{limb}_fu": fu, f"{limb}_au": au, f"{limb}_fl": fl, f"{limb}_al": al})


def _cyclic_keys(u: float, keys: list[tuple[float, float]]) -> float:
    """Cosine-eased interpolation through (phase, value) keys on a cycle (u in [0, 1))."""
    u = u % 1.0
    for (p0, v0), (p1, v1) in zip(keys, keys[1:] + [(keys[0][0] + 1.0, keys[0][1])]):
        if p0 <= u < p1:
            w = (u - p0) / (p1 - p0)
            w = 0.5 - 0.5 * math.cos(math.pi * w)
            return v0 + (v1 - v0) * w
    return keys[0][1]


def _bump(u: float, start: float, length: float) -> float:
    """A smooth 0 -> 1 -> 0 pulse over [start, start + length) of the cycle."""
    x = (u - start) % 1.0
    return math.sin(math.pi * x / length) ** 2 if x < length else 0.0


def wave(ph: float, st: Style) -> dict[str, float]:
    p, th = rest_pose(), 2 * math.pi * ph
    for i, s in enumerate((st.side, _other(st.side))):
        if i == 1 and st.variant == 0:
            break
        _set(p, f"arm_{s}", 12.0, 108.0 + 6 * math.sin(th), 10.0, 166.0 + 30 * st.amp * math.sin(th + i * math.pi))
    p["torso_roll"] = 3.0 * math.sin(th)
    return p


def clap(ph: float, st: Style) -> dict[str, float]:
    p, th = rest_pose(), 2 * math.pi * ph
    open_ = (0.5 + 0.5 * math.cos(th)) * st.amp
    for s in ("l", "r"):
        _set(p, f"arm_{s}", 55.0, 5.0 + 25 * open_, 88.0, -45.0 + 50 * open_)
    p["torso_pitch"] = 5.0
    return p


def jump(ph: float, st: Style) -> dict[str, float]:
    p, th = rest_pose(), 2 * math.pi * ph
    air, crouch = max(0.0, math.sin(th)), max(0.0, -math.sin(th))
    p["lift"] = 0.17 * st.amp * air
    for s in ("l", "r"):
        fu = 50 * crouch + 8 * air
        _set(p, f"leg_{s}", fu, 4.0, fu - 100 * crouch - 18 * air, 4.0)
        afu = -35 * crouch + 160 * air * st.amp
        _set(p, f"arm_{s}", afu, 10.0, afu + 10, 8.0)
    p["torso_pitch"] = 25 * crouch
    return p


def squat(ph: float, st: Style) -> dict[str, float]:
    p = rest_pose()
    k = (0.5 - 0.5 * math.cos(2 * math.pi * ph)) * min(st.amp, 1.05)
    for s in ("l", "r"):
        _set(p, f"leg_{s}", 95 * k, 3 + 12 * k, -20 * k, 3 + 4 * k)
        _set(p, f"arm_{s}", 85 * k, 8.0, 8 + 80 * k, 5.0)
    p["torso_pitch"] = 40 * k
    return p


def kick(ph: float, st: Style) -> dict[str, float]:
    p, d, o = rest_pose(), st.side, _other(st.side)
    thigh = _cyclic_keys(ph, [(0.0, 0.0), (0.2, 70.0), (0.35, 88.0), (0.5, 70.0), (0.7, 0.0)]) * st.amp
    shin = _cyclic_keys(ph, [(0.0, 0.0), (0.2, -25.0), (0.35, 82.0), (0.5, -25.0), (0.7, 0.0)]) * st.amp
    _set(p, f"leg_{d}", thigh, 5.0, shin, 5.0)
    _set(p, f"leg_{o}", 6.0, 5.0, -6.0, 5.0)
    for s in ("l", "r"):
        _set(p, f"arm_{s}", 35.0, 20.0, 130.0, -15.0)
    p["torso_pitch"] = -12.0 * (thigh / 88.0)
    return p


def punch(ph: float, st: Style) -> dict[str, float]:
    p, d, o = rest_pose(), st.side, _other(st.side)
    _set(p, f"leg_{d}", 15.0, 8.0, 5.0, 8.0)
    _set(p, f"leg_{o}", -12.0, 8.0, -18.0, 8.0)
    for s, start in ((d, 0.0), (o, 0.5)):
        e = _bump(ph, start, 0.3) * st.amp
        _set(p, f"arm_{s}", 35 + 55 * e, 18 - 10 * e, 135 - 45 * e, -15 + 10 * e)
    p["torso_roll"] = 4.0 * (_bump(ph, 0.0, 0.3) - _bump(ph, 0.5, 0.3)) * (1 if d == "l" else -1)
    return p


def bend(ph: float, st: Style) -> dict[str, float]:
    p = rest_pose()
    k = (0.5 - 0.5 * math.cos(2 * math.pi * ph))
    k = k * k * (3 - 2 * k) * min(st.amp, 1.05)
    p["torso_pitch"] = 85 * k
    p["head_pitch"] = 10 * k
    for s in ("l", "r"):
        _set(p, f"arm_{s}", 12 * k, 7.0, 5 + 10 * k, 5.0)
        _set(p, f"leg_{s}", 8 * k, 4.0, 0.0, 4.0)
    return p


def jumping_jack(ph: float, st: Style) -> dict[str, float]:
    p, th = rest_pose(), 2 * math.pi * ph
    k = (0.5 - 0.5 * math.cos(th)) * min(st.amp, 1.05)
    for s in ("l", "r"):
        _set(p, f"arm_{s}", 5.0, 8 + 160 * k, 5.0, 10 + 165 * k)
        _set(p, f"leg_{s}", 0.0, 3 + 20 * k, 0.0, 3 + 20 * k)
    p["lift"] = 0.05 * abs(math.sin(th))
    return p


WALK_TRAVEL = 0.75     # body heights per cycle (two steps)


def walk(ph: float, st: Style) -> dict[str, float]:
    p, th = rest_pose(), 2 * math.pi * ph
    for s, sign in (("l", 1.0), ("r", -1.0)):
        sw = math.sin(th) * sign
        fu = 28 * st.amp * sw
        knee = 45 * max(0.0, math.cos(th) * sign) ** 1.5 + 5
        _set(p, f"leg_{s}", fu, 3.0, fu - knee, 3.0)
        afu = -22 * st.amp * sw
        _set(p, f"arm_{s}", afu, 7.0, afu + 15, 5.0)
    p["torso_pitch"] = 4.0
    p["dz"] = WALK_TRAVEL * st.amp * ph
    return p


def run_in_place(ph: float, st: Style) -> dict[str, float]:
    p, th = rest_pose(), 2 * math.pi * ph
    for s, sign in (("l", 1.0), ("r", -1.0)):
        h = max(0.0, math.sin(th) * sign)
        fu = 75 * st.amp * h
        _set(p, f"leg_{s}", fu, 4.0, fu - 95 * h, 4.0)
        afu = -40 * math.sin(th) * sign
        _set(p, f"arm_{s}", afu, 10.0, afu + 85, 5.0)
    p["torso_pitch"] = 6.0
    p["lift"] = 0.03 * abs(math.sin(th))
    return p


@dataclass(frozen=True)
class ActionDef:
    name: str
    pose: Callable[[float, Style], dict[str, float]]
    hz: float                 # typical repetitions per second
    variants: int = 1


ACTIONS: dict[str, ActionDef] = {a.name: a for a in (
    ActionDef("wave", wave, 1.6, variants=2),
    ActionDef("clap", clap, 2.0),
    ActionDef("jump", jump, 1.1),
    ActionDef("squat", squat, 0.7),
    ActionDef("kick", kick, 0.8),
    ActionDef("punch", punch, 0.9),
    ActionDef("bend", bend, 0.5),
    ActionDef("jumping_jack", jumping_jack, 1.1),
    ActionDef("walk", walk, 0.9),
    ActionDef("run_in_place", run_in_place, 1.5),
)}


def get_action(name: str) -> ActionDef:
    if name not in ACTIONS:
        raise KeyError(f"unknown synthetic action {name!r}; known: {sorted(ACTIONS)}")
    return ACTIONS[name]


def ucf_name(name: str) -> str:
    """``run_in_place`` -> ``RunInPlace`` (UCF101 class names are CamelCase)."""
    return "".join(w[:1].upper() + w[1:] for w in name.split("_"))


def kinetics_label(name: str) -> str:
    """``jumping_jack`` -> ``jumping jack`` (Kinetics labels are lower case with spaces)."""
    return name.replace("_", " ")


def hmdb_name(name: str) -> str:
    """HMDB51 class names are lower case with underscores: the canonical name."""
    return name
