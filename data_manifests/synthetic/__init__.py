"""Synthetic human-action dataset: articulated figures with known body parts, written as real
videos in the official Kinetics-400 / UCF101 / HMDB51 layouts, each with per-frame part masks."""
from .actions import ACTIONS, DEFAULT_CLASSES, hmdb_name, kinetics_label, ucf_name
from .figure import PART_NAMES
from .generate import INDEX_FILE, generate_synthetic
from .masks import load_part_masks, mask_path_for
from .spec import SyntheticSpec, spec_from_config

__all__ = ["ACTIONS", "DEFAULT_CLASSES", "INDEX_FILE", "PART_NAMES", "SyntheticSpec", "generate_synthetic",
           "hmdb_name", "kinetics_label", "load_part_masks", "mask_path_for", "spec_from_config", "ucf_name"]
