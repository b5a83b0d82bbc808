"""Atomic file writes: the one helper every package uses (a leaf module: imports nothing of ours).

A reader (a rerun, another rank, ``pipeline status``) must never see half a file, and a crash or
power cut must not leave a name pointing at data still in the page cache. So every write goes to
a temporary name in the same folder (same filesystem: the rename is atomic), the data is fsynced,
the temporary file is renamed over the final name, and the folder is fsynced so the rename itself
is durable. On any error the temporary file is removed and the old file, if any, stays.

:func:`atomic_path` is the general form (the caller writes the temporary path with any library:
torch.save, zipfile, cv2.VideoWriter); :func:`atomic_write_text` and :func:`atomic_write_bytes`
cover the common cases; :func:`replace_durably` publishes a file that was written and checked
elsewhere (a teacher-cache shard).
"""
from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterator

from pipeline.core.errors import ConfigError

PATH_MAX = 4096


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: some filesystems refuse a folder fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(tmp: Path | str, final: Path | str) -> None:
    """fsync ``tmp``, rename it over ``final``, fsync the folder."""
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(Path(final).parent)


@contextlib.contextmanager
def atomic_path(path: Path | str, *, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; write it in the block. A clean exit publishes it
    (:func:`replace_durably`); an exception removes it and leaves ``path`` as it was.

    ``keep_suffix``: the temporary name ends with ``path``'s suffix (writers that pick the format
    from the extension, e.g. OpenCV's VideoWriter).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if keep_suffix:
        tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    else:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        replace_durably(tmp, path)
    except OSError as exc:
        if exc.filename is None and exc.errno is not None:  # a failed write(2) names no file: name it
            raise type(exc)(exc.errno, exc.strerror, str(path)) from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str, *, newline: str | None = None) -> None:
    """Write ``text`` (UTF-8) atomically; ``newline`` as for ``open`` ("" keeps the bytes given)."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline=newline) as fh:
        fh.write(text)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Write ``data`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _name_max(path: Path) -> int:
    for folder in (path, *path.parents):
        try:
            return int(os.pathconf(folder, "PC_NAME_MAX"))
        except (OSError, ValueError):
            continue
    return 255


def usable_folder(path: Path, what: str, headroom: int = 256) -> Path:
    """``path`` resolved, or a ConfigError naming what is wrong: a symlink loop, a component longer than
    the filesystem's NAME_MAX, or a path that leaves under ``headroom`` bytes of PATH_MAX for the
    files the stages write below it (checked up front: the OS would refuse them one by one later)."""
    try:
        resolved = path.resolve()
    except RuntimeError:  # "Symlink loop from ..." (pathlib, Python < 3.13)
        raise ConfigError(f"{what} {path}: a symlink loop (a link that leads back to itself); fix or remove "
                          f"the link") from None
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENAMETOOLONG):
            raise
        resolved = Path(os.path.abspath(path))
        if exc.errno == errno.ELOOP:
            raise ConfigError(f"{what} {path}: a symlink loop; fix or remove the link") from None
    limit = _name_max(resolved)
    for part in resolved.parts:
        if len(os.fsencode(part)) > limit:
            raise ConfigError(f"{what}: the folder name {part[:40]}… is {len(os.fsencode(part))} bytes long; the "
                              f"filesystem allows {limit}")
    size = len(os.fsencode(str(resolved)))
    if size + headroom > PATH_MAX:
        raise ConfigError(f"{what}: the path is {size} bytes long; the files below it need up to {headroom} more "
                          f"and paths end at {PATH_MAX} bytes: choose a shorter folder")
    return resolved
