"""Render one synthetic video (frames + part masks) from its seeds, and write it to disk.

Everything random about a video is drawn from two numpy Generators: one for the *actor* (body
proportions, clothes, and the place) and one for the *clip* (speed, phase, view, camera, clutter,
noise). A UCF101-style group shares the actor seed across its clips; elsewhere both come from the
video's own key. The same seeds always give the same frames and masks.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.core.files import atomic_path

from .actions import Style, get_action
from .figure import INST, INSTANCE_TO_PART, INSTANCES, Body, Camera, draw_figure
from .scene import PALETTE, SKIN_TONES, make_scene


OUTLINE_GAIN = 9 / 16          # brightness of the outline pixels where two drawn segments meet


@dataclass(frozen=True)
class Look:
    """Difficulty knobs shared by every video of a dataset (``SyntheticSpec`` carries them).

    ``figure_scale``: range of the actor's standing height as a fraction of the frame height;
    ``max_yaw``: the actor turns up to this many degrees away from the camera (views where a
    sideways arm swing is foreshortened); ``limb_thickness``: multiplier on limb widths;
    ``distractors``: inclusive range of moving distractor objects in the scene.
    """

    figure_scale: tuple[float, float] = (0.72, 0.88)
    max_yaw: float = 45.0
    limb_thickness: float = 1.3
    distractors: tuple[int, int] = (1, 3)


@dataclass(frozen=True)
class VideoJob:
    """What to render: the action, the seeds, the clip geometry and the dataset's difficulty."""

    action: str
    actor_seed: tuple[int, ...]
    clip_seed: tuple[int, ...]
    frames: int
    width: int
    height: int
    fps: float
    look: Look = Look()
    place_seed: tuple[int, ...] | None = None  # the place (background texture, floor); None: the actor's own


@dataclass
class Rendered:
    frames: np.ndarray               # (T, H, W, 3) uint8 BGR
    masks: np.ndarray                # (T, H, W) uint8 Pascal-Person-Part ids
    info: dict[str, Any] = field(default_factory=dict)


def _rng(seed: tuple[int, ...]) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(seed))))


def _jit(rng: np.random.Generator, col, j: int = 14) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(col) + rng.integers(-j, j + 1, 3), 0, 255))


def sample_body(rng: np.random.Generator, thickness: float = 1.0) -> Body:
    """An actor: proportions around the defaults, a skin tone and clothes from the shared palette;
    ``thickness`` scales every limb's width."""
    d = Body()
    ln, wd, hd = (float(rng.uniform(0.92, 1.08)) for _ in range(3))
    legs, arms = float(rng.uniform(0.93, 1.07)), float(rng.uniform(0.93, 1.07))
    wide = float(rng.uniform(0.85, 1.2))
    limb = wide * thickness
    skin = _jit(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 8)
    shirt_i, pants_i, shoe_i = rng.choice(len(PALETTE), 3, replace=False)
    shirt, pants, shoes = (_jit(rng, PALETTE[i]) for i in (shirt_i, pants_i, shoe_i))
    long_sleeves = rng.random() < 0.5
    shorts = rng.random() < 0.3
    colors = {
        "background": (0, 0, 0), "head": skin, "torso": shirt,
        "upper_arm_l": shirt, "upper_arm_r": shirt,
        "lower_arm_l": shirt if long_sleeves else skin, "lower_arm_r": shirt if long_sleeves else skin,
        "hand_l": skin, "hand_r": skin,
        "upper_leg_l": pants, "upper_leg_r": pants,
        "lower_leg_l": skin if shorts else pants, "lower_leg_r": skin if shorts else pants,
        "shoe_l": shoes, "shoe_r": shoes,
    }
    return Body(
        head_rx=d.head_rx * hd, head_ry=d.head_ry * hd, neck=d.neck, torso=d.torso * ln,
        shoulder_w=d.shoulder_w * wide * wd, hip_w=d.hip_w * wd * float(rng.uniform(0.9, 1.15)),
        hip_joint_w=d.hip_joint_w * wd, torso_depth=d.torso_depth * wide,
        upper_arm=d.upper_arm * arms, lower_arm=d.lower_arm * arms, hand_r=d.hand_r,
        upper_leg=d.upper_leg * legs, lower_leg=d.lower_leg * legs, foot=d.foot,
        t_upper_arm=d.t_upper_arm * limb, t_lower_arm=d.t_lower_arm * limb,
        t_upper_leg=d.t_upper_leg * limb, t_lower_leg=d.t_lower_leg * limb,
        colors=tuple(colors[name] for name in INSTANCES),
    )


def render_video(job: VideoJob) -> Rendered:
    """Frames (BGR) and part masks of one video; pure function of ``job``."""
    T, W, H = job.frames, job.width, job.height
    actor_rng, rng = _rng(job.actor_seed), _rng(job.clip_seed)
    look = job.look
    body = sample_body(actor_rng, look.limb_thickness)
    place_rng = _rng(tuple(job.place_seed) if job.place_seed is not None else tuple(job.actor_seed) + (7,))
    act = get_action(job.action)
    style = Style(amp=float(rng.uniform(0.85, 1.15)), side=str(rng.choice(["l", "r"])),
                  variant=int(rng.integers(act.variants)))
    hz = act.hz * float(rng.uniform(0.75, 1.35))
    phase0 = float(rng.uniform(0, 1))
    yaw = float(rng.uniform(-look.max_yaw, look.max_yaw))
    scale = float(rng.uniform(*look.figure_scale)) * H
    ground_v = float(rng.uniform(0.86, 0.97)) * H
    # pose wobble: two slow sinusoids per angle, so no two videos follow the exact template
    wob_amp = rng.uniform(0.0, 4.0)
    wob = {k: (rng.uniform(0.2, 1.2, 2), rng.uniform(0, 2 * math.pi, 2)) for k in act.pose(0.0, style)
           if k not in ("lift", "dx", "dz")}

    p0 = act.pose(phase0, style)
    p_end = act.pose(phase0 + hz * (T - 1) / job.fps, style)
    yr = math.radians(yaw)
    travel = ((p_end["dx"] - p0["dx"]) * math.cos(yr) + (p_end["dz"] - p0["dz"]) * math.sin(yr)) * scale
    travel_scale = min(1.0, 0.5 * W / abs(travel)) if abs(travel) > 1e-6 else 1.0
    u0 = float(rng.uniform(0.38, 0.62)) * W - 0.5 * travel * travel_scale

    clothes = [body.colors[INST[n]] for n in ("torso", "upper_leg_l", "lower_arm_l", "shoe_l")]
    scene = make_scene(rng, W, H, T, clothes, ground_v, place_rng=place_rng, distractors=look.distractors)
    lut = body.color_lut()
    part_lut = np.zeros(256, dtype=np.uint8)
    part_lut[: len(INSTANCE_TO_PART)] = INSTANCE_TO_PART
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    # sensor noise: one bank per clip, a different random window of it per frame
    pad = 16
    bank = np.rint(rng.standard_normal((H + pad, W + pad, 3), dtype=np.float32) * np.float32(scene.noise_sigma))
    bank = bank.astype(np.int16)
    noise_at = rng.integers(0, pad + 1, (T, 2))

    frames = np.empty((T, H, W, 3), dtype=np.uint8)
    masks = np.empty((T, H, W), dtype=np.uint8)
    inst = np.empty((H, W), dtype=np.uint8)
    for t in range(T):
        sec = t / job.fps
        pose = act.pose(phase0 + hz * sec, style)
        for k, (f, ph) in wob.items():
            pose[k] += wob_amp * (math.sin(2 * math.pi * f[0] * sec + ph[0])
                                  + math.sin(2 * math.pi * f[1] * sec + ph[1])) / 2
        pose["dx"] = (pose["dx"] - p0["dx"]) * travel_scale
        pose["dz"] = (pose["dz"] - p0["dz"]) * travel_scale
        ox, oy = scene.offset(t)
        frame = scene.background(t)
        scene.draw_distractors(frame, None, t, front=False)
        inst.fill(0)
        draw_figure(inst, body, pose, Camera(u0 + ox, ground_v + oy, scale, yaw))
        cv2.copyTo(np.take(lut, inst, axis=0), inst, frame)      # figure colours where inst > 0 (take: 4x lut[inst])
        edge = cv2.compare(cv2.dilate(inst, cross), cv2.erode(inst, cross), cv2.CMP_NE)
        edge &= inst.astype(bool).view(np.uint8) * np.uint8(255)
        cv2.copyTo(cv2.convertScaleAbs(frame, alpha=OUTLINE_GAIN), edge, frame)   # darker outlines
        scene.draw_distractors(frame, inst, t, front=True)
        ny, nx = noise_at[t]
        noisy = bank[ny:ny + H, nx:nx + W] + frame
        frames[t] = np.clip(noisy, 0, 255, out=noisy)
        masks[t] = cv2.LUT(inst, part_lut)

    info = {
        "action": job.action, "hz": round(hz, 4), "phase0": round(phase0, 4), "yaw_deg": round(yaw, 2),
        "scale_px": round(scale, 2), "amp": round(style.amp, 4), "side": style.side, "variant": style.variant,
        "pan_px_per_frame": [round(float(v), 3) for v in scene.pan],
        "distractors": len(scene.distractors),
        "part_colors_bgr": {str(k): list(v) for k, v in body.part_colors().items()},
        "part_palettes_bgr": {str(k): [list(c) for c in v] for k, v in body.part_palettes().items()},
    }
    return Rendered(frames, masks, info)


def write_video(path: str | os.PathLike, frames_bgr: np.ndarray, fps: float, fourcc: str) -> Path:
    """Encode ``frames_bgr`` (T, H, W, 3) with OpenCV to a temporary name, then rename into place."""
    path = Path(path)
    T, H, W, _ = frames_bgr.shape
    with atomic_path(path, keep_suffix=True) as tmp:  # keep the extension: it picks the container
        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*fourcc), float(fps), (W, H))
        if not writer.isOpened():
            raise RuntimeError(f"{path}: OpenCV cannot open a VideoWriter for fourcc {fourcc!r} "
                               f"({path.suffix} container); is this OpenCV built with FFmpeg?")
        for f in frames_bgr:
            writer.write(np.ascontiguousarray(f))
        writer.release()
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"{path}: OpenCV wrote no data (fourcc {fourcc!r})")
    return path
