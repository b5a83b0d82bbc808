"""Parsers of the official annotation formats (one module per dataset format).

Each module has ``annotation_files(annotations, split) -> list[Path]`` and
``parse(annotations, split, index, classes) -> Listing``: what the annotations list, with each
video already looked up in the dataset tree (``path=None`` when it is not there).
"""
