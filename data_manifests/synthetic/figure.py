"""An articulated 3D stick-and-volume person, projected to 2D and drawn part by part.

The body lives in its own frame: x to the figure's left (image right when it faces the camera),
y up, z forward (towards the camera at yaw 0); the pelvis is the origin. Every limb direction is
given by a flexion angle f (swing forward, about the lateral axis) and an abduction angle a (swing
sideways away from the body), in degrees, so that (f=0, a=0) hangs straight down:

    d = (s * sin a,  -cos a * cos f,  cos a * sin f)     s = +1 left side, -1 right side

Drawing happens on an *instance* map (one id per drawn segment, back to front by depth), which
becomes the Pascal-Person-Part mask and the colour image through two look-up tables, so a mask
pixel always names exactly the part that is visible there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np

SHIFT = 4                     # sub-pixel bits for OpenCV drawing
_ONE = 1 << SHIFT

# Instance ids: one per drawn segment (left/right separate so outlines show between them).
INSTANCES = ("background", "head", "torso", "upper_arm_l", "upper_arm_r", "lower_arm_l", "lower_arm_r",
             "hand_l", "hand_r", "upper_leg_l", "upper_leg_r", "lower_leg_l", "lower_leg_r",
             "shoe_l", "shoe_r")
INST = {name: i for i, name in enumerate(INSTANCES)}

# Pascal-Person-Part ids: 0 background, 1 head, 2 torso, 3 upper arms, 4 lower arms (hands included),
# 5 upper legs, 6 lower legs (feet included).
PART_NAMES = ("Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs")
INSTANCE_TO_PART = np.array([0, 1, 2, 3, 3, 4, 4, 4, 4, 5, 5, 6, 6, 6, 6], dtype=np.uint8)

LIMB_KEYS = ("arm_l", "arm_r", "leg_l", "leg_r")


def _bgr(colour: Sequence[int]) -> tuple[int, int, int]:
    return int(colour[0]), int(colour[1]), int(colour[2])


@dataclass(frozen=True)
class Body:
    """Proportions (fractions of standing height) and colours (BGR per instance) of one actor."""

    head_rx: float = 0.055
    head_ry: float = 0.068
    neck: float = 0.03
    torso: float = 0.30
    shoulder_w: float = 0.105      # half width at the shoulders
    hip_w: float = 0.085           # half width at the hips
    hip_joint_w: float = 0.055     # lateral offset of the hip joints
    torso_depth: float = 0.05      # half depth (so a profile view is not a line)
    upper_arm: float = 0.165
    lower_arm: float = 0.14
    hand_r: float = 0.022
    upper_leg: float = 0.24
    lower_leg: float = 0.225
    foot: float = 0.06
    t_upper_arm: float = 0.062     # limb thickness (diameter)
    t_lower_arm: float = 0.05
    t_upper_leg: float = 0.09
    t_lower_leg: float = 0.07
    colors: tuple[tuple[int, int, int], ...] = field(default_factory=lambda: ((0, 0, 0),) * len(INSTANCES))

    def color_lut(self) -> np.ndarray:
        """(num_instances, 3) uint8 BGR; row 0 (background) unused."""
        return np.asarray(self.colors, dtype=np.uint8)

    def part_colors(self) -> dict[int, tuple[int, int, int]]:
        """Main BGR colour of each Pascal part (the colour covering most of its pixels)."""
        main = {1: "head", 2: "torso", 3: "upper_arm_l", 4: "lower_arm_l", 5: "upper_leg_l", 6: "lower_leg_l"}
        return {p: _bgr(self.colors[INST[name]]) for p, name in main.items()}

    def part_palettes(self) -> dict[int, list[tuple[int, int, int]]]:
        """Every BGR colour drawn inside each Pascal part (e.g. lower legs: trousers or skin, and shoes)."""
        out: dict[int, list[tuple[int, int, int]]] = {}
        for iid in range(1, len(INSTANCES)):
            col = _bgr(self.colors[iid])
            lst = out.setdefault(int(INSTANCE_TO_PART[iid]), [])
            if col not in lst:
                lst.append(col)
        return out


@dataclass(frozen=True)
class Camera:
    """Orthographic view of the body: image position of the pelvis, pixels per body height, yaw."""

    u: float
    v: float
    scale: float
    yaw_deg: float


_SIDES = np.array([1.0, -1.0, 1.0, -1.0])          # arm_l, arm_r, leg_l, leg_r
_IS_ARM = np.array([True, True, False, False])
_ANGLE_KEYS = [[f"{limb}_{k}" for k in ("fu", "au", "fl", "al")] for limb in LIMB_KEYS]


def limb_dirs(f_deg: np.ndarray, a_deg: np.ndarray, side: np.ndarray) -> np.ndarray:
    """Unit directions (..., 3) for flexion / abduction angles (degrees); see the module doc."""
    f, a = np.radians(f_deg), np.radians(a_deg)
    ca = np.cos(a)
    return np.stack([side * np.sin(a), -ca * np.cos(f), ca * np.sin(f)], -1)


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.sqrt(v @ v))
    return v / n if n > 1e-9 else v


@dataclass
class Skeleton:
    """3D joint positions (body frame, pelvis at origin) for one pose.

    Limb arrays are ordered arm_l, arm_r, leg_l, leg_r: ``root`` (shoulder / hip joint), ``mid``
    (elbow / knee), ``end`` (wrist / ankle), ``tip`` (hand centre / toe).
    """

    neck: np.ndarray
    head: np.ndarray
    spine: np.ndarray
    lat: np.ndarray
    fwd: np.ndarray
    root: np.ndarray
    mid: np.ndarray
    end: np.ndarray
    tip: np.ndarray

    def points(self) -> np.ndarray:
        return np.concatenate([self.neck[None], self.head[None], self.root, self.mid, self.end, self.tip])


def pose_skeleton(body: Body, pose: dict[str, float]) -> Skeleton:
    """Forward kinematics: angles (see module doc) -> joint positions."""
    p, r = math.radians(pose["torso_pitch"]), math.radians(pose["torso_roll"])
    cr, sr = math.cos(r), math.sin(r)
    spine = np.array([sr, cr * math.cos(p), cr * math.sin(p)])
    lat = np.array([cr, -sr, 0.0])
    lat = _unit(lat - spine * float(lat @ spine))
    fwd = np.array([lat[1] * spine[2] - lat[2] * spine[1], lat[2] * spine[0] - lat[0] * spine[2],
                    lat[0] * spine[1] - lat[1] * spine[0]])          # lat x spine
    hp = p + math.radians(pose["head_pitch"])
    head_dir = np.array([sr, cr * math.cos(hp), cr * math.sin(hp)])
    neck = spine * body.torso
    head = neck + head_dir * (body.neck + body.head_ry)
    ang = np.array([[pose[k] for k in keys] for keys in _ANGLE_KEYS])        # (4 limbs, fu au fl al)
    d_up = limb_dirs(ang[:, 0], ang[:, 1], _SIDES)
    d_lo = limb_dirs(ang[:, 2], ang[:, 3], _SIDES)
    lat_off = np.array([body.shoulder_w - 0.015, body.shoulder_w - 0.015, body.hip_joint_w, body.hip_joint_w])
    root = np.where(_IS_ARM[:, None], neck - spine * 0.035, 0.0) + (_SIDES * lat_off)[:, None] * lat
    mid = root + d_up * np.array([body.upper_arm, body.upper_arm, body.upper_leg, body.upper_leg])[:, None]
    end = mid + d_lo * np.array([body.lower_arm, body.lower_arm, body.lower_leg, body.lower_leg])[:, None]
    foot_dir = np.stack([np.zeros(4), d_lo[:, 2], -d_lo[:, 1]], 1)
    foot_dir /= np.maximum(np.linalg.norm(foot_dir, axis=1, keepdims=True), 1e-9)
    tip = end + np.where(_IS_ARM[:, None], d_lo * (body.hand_r * 0.8), foot_dir * body.foot)
    return Skeleton(neck, head, spine, lat, fwd, root, mid, end, tip)


def ground_offset(body: Body, sk: Skeleton) -> float:
    """Height of the pelvis above the ground when the lowest foot point touches it."""
    low = min(sk.end[2:, 1].min(), sk.tip[2:, 1].min())
    return -(float(low) - body.t_lower_leg * 0.5)


def draw_figure(inst: np.ndarray, body: Body, pose: dict[str, float], cam: Camera) -> None:
    """Draw the posed body onto the uint8 instance map ``inst`` (in place), back to front.

    ``pose`` also carries ``lift`` (jump height above ground, body heights) and ``dx``/``dz``
    (translation of the pelvis in the body frame, e.g. walking forward).
    """
    sk = pose_skeleton(body, pose)
    lift = ground_offset(body, sk) + pose.get("lift", 0.0)
    sc = cam.scale
    yaw = math.radians(cam.yaw_deg)
    cy, sy = math.cos(yaw), math.sin(yaw)

    top = sk.neck - sk.spine * 0.01
    bottom = -sk.spine * 0.02
    corners = np.array([base + sk.lat * (sx * w) + sk.fwd * (sz * body.torso_depth)
                        for base, w in ((top, body.shoulder_w), (bottom, body.hip_w))
                        for sx in (-1.0, 1.0) for sz in (-1.0, 1.0)])
    neck_base = sk.neck - sk.spine * 0.02
    pts3 = np.concatenate([sk.points(), neck_base[None], ((top + bottom) / 2)[None], corners])
    pts3 = pts3 + np.array([pose.get("dx", 0.0), 0.0, pose.get("dz", 0.0)])
    u = cam.u + sc * (pts3[:, 0] * cy + pts3[:, 2] * sy)
    v = cam.v - sc * (pts3[:, 1] + lift)
    depth = (-pts3[:, 0] * sy + pts3[:, 2] * cy).tolist()
    fx = np.round(np.stack([u, v], 1) * _ONE).astype(np.int32)
    P = [tuple(p) for p in fx.tolist()]
    # indices into pts3
    _NECK, HEAD, ROOT, MID, END, TIP = 0, 1, 2, 6, 10, 14
    NB, TC, CORNERS = 18, 19, 20

    def thick(frac: float) -> int:
        return max(1, int(round(frac * sc)))

    items: list[tuple[float, int, int, str, tuple, int]] = []
    hull = cv2.convexHull(fx[CORNERS:CORNERS + 8])
    items.append((depth[TC], 0, 0, "poly", (hull,), INST["torso"]))
    hc, nb = P[HEAD], P[NB]
    ang = math.degrees(math.atan2(hc[0] - nb[0], -(hc[1] - nb[1])))
    items.append((depth[HEAD], 3, 1, "head", (nb, hc, thick(body.head_rx * 1.1),
                                               (int(round(body.head_rx * sc * _ONE)),
                                                int(round(body.head_ry * sc * _ONE))),
                                               ang), INST["head"]))
    limbs = (("arm", "l", 0), ("arm", "r", 1), ("leg", "l", 2), ("leg", "r", 3))
    for limb, side, i in limbs:
        up, lo = (("upper_arm", "lower_arm") if limb == "arm" else ("upper_leg", "lower_leg"))
        prio = 2 if limb == "arm" else 1
        t_up, t_lo = ((body.t_upper_arm, body.t_lower_arm) if limb == "arm" else (body.t_upper_leg, body.t_lower_leg))
        d_up = (depth[ROOT + i] + depth[MID + i]) / 2
        d_lo = (depth[MID + i] + depth[END + i]) / 2
        items.append((d_up, prio, len(items), "line", (P[ROOT + i], P[MID + i], thick(t_up)), INST[f"{up}_{side}"]))
        items.append((d_lo, prio, len(items), "line", (P[MID + i], P[END + i], thick(t_lo)), INST[f"{lo}_{side}"]))
        if limb == "arm":
            items.append((d_lo + 1e-4, prio, len(items), "circle",
                          (P[TIP + i], int(round(max(body.hand_r * sc, 1.0) * _ONE))), INST[f"hand_{side}"]))
        else:
            items.append((d_lo + 1e-4, prio, len(items), "line",
                          (P[END + i], P[TIP + i], thick(body.t_lower_leg * 0.9)), INST[f"shoe_{side}"]))

    items.sort(key=lambda it: (round(it[0], 4), it[1], it[2]))
    for _, _, _, kind, args, iid in items:
        if kind == "poly":
            cv2.fillConvexPoly(inst, args[0], iid, cv2.LINE_8, SHIFT)
        elif kind == "line":
            cv2.line(inst, args[0], args[1], iid, args[2], cv2.LINE_8, SHIFT)
        elif kind == "circle":
            cv2.circle(inst, args[0], args[1], iid, -1, cv2.LINE_8, SHIFT)
        else:  # head: neck line + ellipse
            p1, p2, t, axes, angle = args
            cv2.line(inst, p1, p2, iid, t, cv2.LINE_8, SHIFT)
            cv2.ellipse(inst, p2, axes, angle, 0, 360, iid, -1, cv2.LINE_8, SHIFT)
