"""Cluttered, moving backgrounds and distractor objects around the actor.

Backgrounds are large textured canvases (smooth colour noise, stripes, static clutter in the same
palette as the clothes) seen through a panning, shaking camera, sometimes with a band moving on
its own. Distractors are shapes in clothing colours that slide, bounce or oscillate, some in front
of the actor (occluding it: their pixels are background in the part mask). So neither colour nor
global motion alone tells the action apart.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from .figure import SHIFT

_ONE = 1 << SHIFT

# BGR colours shared by clothes, clutter and distractors (so colour overlaps on purpose).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (40, 40, 200), (180, 80, 30), (60, 160, 60), (40, 200, 220), (30, 120, 230), (140, 50, 120),
    (200, 180, 40), (170, 120, 230), (225, 225, 225), (35, 35, 35), (128, 128, 128), (40, 70, 120),
    (90, 30, 20), (40, 120, 110), (120, 120, 20), (150, 190, 210),
)
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (180, 200, 240), (150, 180, 225), (120, 160, 210), (90, 130, 180), (60, 90, 140), (45, 65, 100),
)


def _color(rng: np.random.Generator, jitter: int = 18) -> np.ndarray:
    base = np.asarray(PALETTE[rng.integers(len(PALETTE))], dtype=np.float32)
    return np.clip(base + rng.integers(-jitter, jitter + 1, 3), 0, 255)


@dataclass
class Distractor:
    kind: str                      # circle | ellipse | rect | triangle
    color: tuple[int, int, int]
    size: float                    # px (radius-like)
    p0: np.ndarray                 # px
    vel: np.ndarray                # px / frame (slide / bounce)
    osc_amp: np.ndarray            # px
    osc_hz: float                  # cycles per frame
    osc_phase: float
    spin: float                    # degrees per frame
    front: bool

    def center(self, t: int, w: int, h: int) -> tuple[float, float]:
        p = self.p0 + self.vel * t + self.osc_amp * math.sin(2 * math.pi * self.osc_hz * t + self.osc_phase)
        # reflect at the frame borders (bouncing) so objects stay in view
        out = []
        for v, lim in ((p[0], w), (p[1], h)):
            period = 2 * lim
            v = v % period
            out.append(period - v if v > lim else v)
        return out[0], out[1]

    def draw(self, img: np.ndarray, color, t: int, w: int, h: int, offset: tuple[float, float]) -> None:
        cx, cy = self.center(t, w, h)
        cx, cy = cx + offset[0], cy + offset[1]
        ang = self.spin * t
        c = (int(round(cx * _ONE)), int(round(cy * _ONE)))
        s = self.size
        if self.kind == "circle":
            cv2.circle(img, c, int(round(s * _ONE)), color, -1, cv2.LINE_8, SHIFT)
        elif self.kind == "ellipse":
            cv2.ellipse(img, c, (int(round(s * _ONE)), int(round(s * 0.5 * _ONE))), ang, 0, 360, color, -1,
                        cv2.LINE_8, SHIFT)
        else:
            n = 4 if self.kind == "rect" else 3
            a = np.radians(ang + np.arange(n) * 360.0 / n + 45.0)
            pts = np.stack([cx + s * np.cos(a), cy + s * np.sin(a)], 1)
            cv2.fillConvexPoly(img, np.round(pts * _ONE).astype(np.int32), color, cv2.LINE_8, SHIFT)


@dataclass
class Scene:
    """Everything around the actor in one video; deterministic given the rng that built it."""

    width: int
    height: int
    canvas: np.ndarray                       # BGR uint8, larger than the frame
    start: np.ndarray                        # crop centre at t = 0 (canvas px)
    pan: np.ndarray                          # px / frame
    shake: np.ndarray                        # (T, 2) camera jitter, px
    floor_color: np.ndarray | None
    ground_v: float                          # image row of the floor line
    band: tuple[int, int, np.ndarray, float] | None   # rows y0..y1, band texture, speed px/frame
    distractors: list[Distractor] = field(default_factory=list)
    noise_sigma: float = 2.0

    def offset(self, t: int) -> tuple[float, float]:
        """Camera shake at frame t (applied to everything that is drawn in frame coordinates)."""
        return float(self.shake[t, 0]), float(self.shake[t, 1])

    def background(self, t: int) -> np.ndarray:
        w, h = self.width, self.height
        cx, cy = self.start + self.pan * t - self.shake[t]
        frame = cv2.getRectSubPix(self.canvas, (w, h), (float(cx), float(cy)))
        if self.band is not None:
            y0, y1, tex, speed = self.band
            dx = (speed * t) % (tex.shape[1] - w)
            strip = cv2.getRectSubPix(tex, (w, y1 - y0), (dx + w / 2.0, (y1 - y0) / 2.0 - 0.5))
            frame[y0:y1] = strip
        if self.floor_color is not None:
            g = int(round(self.ground_v + self.shake[t, 1]))
            if g < h:
                g = max(g, 0)
                floor = np.empty_like(frame[g:])
                floor[:] = self.floor_color.astype(np.uint8)
                cv2.addWeighted(frame[g:], 0.5, floor, 0.5, 0.0, dst=frame[g:])
        return frame

    def draw_distractors(self, frame: np.ndarray, inst: np.ndarray | None, t: int, front: bool) -> None:
        """Draw the back (front=False) or front layer; front ones also clear the instance map."""
        off = self.offset(t)
        for d in self.distractors:
            if d.front != front:
                continue
            d.draw(frame, d.color, t, self.width, self.height, off)
            if inst is not None:
                d.draw(inst, 0, t, self.width, self.height, off)


def _texture(rng: np.random.Generator, w: int, h: int, clothes: list[tuple[int, int, int]]) -> np.ndarray:
    """Smooth two-colour noise + optional stripes + static clutter in palette and clothing colours."""
    c1, c2 = _color(rng), _color(rng)
    cell = int(rng.integers(8, 24))
    small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
    n = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)[..., None]
    img = c1 * (1 - n) + c2 * n
    if rng.random() < 0.65:
        period = float(rng.uniform(5, 22))
        ang = float(rng.uniform(0, math.pi))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        s = (np.sin(2 * math.pi * (xx * math.cos(ang) + yy * math.sin(ang)) / period) > 0)[..., None]
        alpha = float(rng.uniform(0.3, 0.7))
        img = np.where(s, img * (1 - alpha) + _color(rng) * alpha, img)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(10, 25) * (w * h) / (300 * 200))):
        col = clothes[rng.integers(len(clothes))] if rng.random() < 0.3 else tuple(int(v) for v in _color(rng))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        sz = int(rng.integers(4, max(6, h // 6)))
        k = rng.integers(3)
        if k == 0:
            cv2.rectangle(img, (x, y), (x + sz, y + int(sz * rng.uniform(0.3, 2.0))), col, -1)
        elif k == 1:
            cv2.circle(img, (x, y), sz // 2, col, -1)
        else:
            cv2.line(img, (x, y), (x + int(rng.integers(-40, 40)), y + int(rng.integers(-40, 40))), col,
                     int(rng.integers(1, 4)))
    grain = rng.normal(0, 4, img.shape).astype(np.float32)
    img = np.clip(img.astype(np.float32) + grain, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(img, (3, 3), 0.6)


def make_scene(rng: np.random.Generator, width: int, height: int, frames: int,
               clothes: list[tuple[int, int, int]], ground_v: float,
               place_rng: np.random.Generator | None = None, distractors: tuple[int, int] = (2, 5)) -> Scene:
    """Sample one video's surroundings. ``clothes`` are the actor's colours, reused by distractors;
    ``distractors`` is the inclusive range of how many moving objects there are.

    ``place_rng`` (default ``rng``) draws the background texture and floor: UCF101-style groups
    pass a per-group generator so clips of one group share their place, like the real dataset.
    """
    place_rng = rng if place_rng is None else place_rng
    moving = rng.random() < 0.7
    pan = np.array([rng.uniform(0.3, 1.8) * rng.choice([-1, 1]), rng.uniform(-0.4, 0.4)]) if moving else np.zeros(2)
    pad = 8
    cw = int(width + 2 * pad + abs(pan[0]) * frames + 2)
    ch = int(height + 2 * pad + abs(pan[1]) * frames + 2)
    canvas = _texture(place_rng, cw, ch, clothes)
    start = np.array([pad + width / 2.0 + (abs(pan[0]) * frames if pan[0] < 0 else 0.0),
                      pad + height / 2.0 + (abs(pan[1]) * frames if pan[1] < 0 else 0.0)])
    amp = float(rng.uniform(0.0, 1.5))
    steps = rng.normal(0, 1, (frames + 8, 2))
    kernel = np.ones(5) / 5
    walk = np.stack([np.convolve(np.cumsum(steps[:, i]), kernel, "same") for i in range(2)], 1)[4:4 + frames]
    walk = walk - walk.mean(0)
    scale = np.abs(walk).max() or 1.0
    shake = walk / scale * amp
    floor = _color(place_rng) if place_rng.random() < 0.7 else None
    band = None
    if rng.random() < 0.4:
        bh = int(rng.integers(max(3, height // 12), max(4, height // 5)))
        y0 = int(rng.integers(0, max(1, int(ground_v) - bh)))
        speed = float(rng.uniform(0.5, 2.5) * rng.choice([-1, 1]))
        tw = int(width + abs(speed) * frames + 4)
        tex = _texture(rng, tw + width, bh, clothes)
        band = (y0, y0 + bh, tex, speed)
    n_distractors = int(rng.integers(distractors[0], distractors[1] + 1))
    distractors = []
    for _ in range(n_distractors):
        front = bool(rng.random() < 0.3)
        size = float(rng.uniform(0.04, 0.09) if front else rng.uniform(0.05, 0.16)) * height
        if rng.random() < 0.5:
            col = clothes[rng.integers(len(clothes))]
        else:
            col = tuple(int(v) for v in _color(rng, 0))
        osc = rng.random() < 0.5
        distractors.append(Distractor(
            kind=str(rng.choice(["circle", "ellipse", "rect", "triangle"])),
            color=tuple(int(v) for v in col), size=size,
            p0=np.array([rng.uniform(0, width), rng.uniform(0, height)]),
            vel=rng.uniform(-2.0, 2.0, 2) * (0.3 if osc else 1.0),
            osc_amp=rng.uniform(3, 0.25 * height, 2) * (1.0 if osc else 0.0),
            osc_hz=float(rng.uniform(0.02, 0.1)), osc_phase=float(rng.uniform(0, 2 * math.pi)),
            spin=float(rng.uniform(-6, 6)), front=front))
    return Scene(width, height, canvas, start, pan, shake, floor, ground_v, band, distractors,
                 noise_sigma=float(rng.uniform(1.0, 3.0)))
