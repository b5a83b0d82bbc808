"""SCHP's three label sets, their left/right flip pairs, input sizes and the VOC palette."""
from __future__ import annotations

import numpy as np

LABEL_SETS: dict[str, list[str]] = {
    "lip": [
        "Background", "Hat", "Hair", "Glove", "Sunglasses", "Upper-clothes", "Dress", "Coat",
        "Socks", "Pants", "Jumpsuits", "Scarf", "Skirt", "Face", "Left-arm", "Right-arm",
        "Left-leg", "Right-leg", "Left-shoe", "Right-shoe",
    ],
    "atr": [
        "Background", "Hat", "Hair", "Sunglasses", "Upper-clothes", "Skirt", "Pants", "Dress",
        "Belt", "Left-shoe", "Right-shoe", "Face", "Left-leg", "Right-leg", "Left-arm",
        "Right-arm", "Bag", "Scarf",
    ],
    "pascal": ["Background", "Head", "Torso", "Upper Arms", "Lower Arms", "Upper Legs", "Lower Legs"],
}

# Left/right channel pairs swapped when a prediction is mirrored (Pascal-Person-Part has none).
FLIP_PAIRS: dict[str, list[tuple[int, int]]] = {
    "lip": [(14, 15), (16, 17), (18, 19)],
    "atr": [(9, 10), (12, 13), (14, 15)],
    "pascal": [],
}

# The square input side SCHP's released checkpoints were trained at.
INPUT_SIZES: dict[str, int] = {"lip": 473, "atr": 512, "pascal": 512}


def check_label_set(labels: str) -> str:
    """Return ``labels`` if it names a label set, else raise a ValueError listing the valid ones."""
    if labels not in LABEL_SETS:
        raise ValueError(f"unknown label set {labels!r}; expected one of {sorted(LABEL_SETS)}")
    return labels


def num_classes(labels: str) -> int:
    return len(LABEL_SETS[check_label_set(labels)])


def input_size(labels: str) -> int:
    return INPUT_SIZES[check_label_set(labels)]


def flip_permutation(labels: str) -> list[int]:
    """Channel order of a mirrored prediction: ``probs_flipped[:, perm]`` puts left/right back."""
    perm = list(range(num_classes(labels)))
    for a, b in FLIP_PAIRS[labels]:
        perm[a], perm[b] = b, a
    return perm


def palette(n: int) -> np.ndarray:
    """The PASCAL VOC bit-interleaved palette, (n, 3) uint8 RGB: label i's bits spread over R, G, B."""
    out = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        out[i] = (r, g, b)
    return out
