"""The one base class for errors a user can cause and fix (a leaf module: it imports nothing of ours).

Anything derived from :class:`UserError` (a bad config value, a missing or corrupt input file, a
mismatched checkpoint, too little data for a batch) is printed by the CLI as one line, naming the
file or key and what to do, without a traceback (``-v`` shows it). Everything else is a bug and
keeps its traceback.

:func:`user_message` is the single place that decides whether an exception is the user's to fix
and turns it into that line. It also sees through the two wrappers a user error can arrive in:
a DataLoader worker re-raises its exception with the worker's whole traceback as the message
(or as a ``RuntimeError`` when the type cannot be rebuilt from one string), and the operating
system reports a full disk, a file-size limit or a read-only folder as a plain ``OSError``.
"""
from __future__ import annotations

import errno
import re

# errno values that describe the user's environment (space, permissions), not a bug.
_DISK_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_NOT_FOUND = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR}
_WORKER_MARK = "Original Traceback (most recent call last):"
_LAST_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<msg>.*))?$")


class UserError(Exception):
    """An error caused by the user's input or environment, with an actionable one-line message."""


# The domain errors: one per kind of thing a user gets wrong. The message says which file or key and
# what to do; the class only says where to look. A new error picks one of these, not a new class.

class ConfigError(UserError, ValueError):
    """A config value, command-line option or environment setting is invalid or cannot be honoured here
    (an unknown key, a bad protocol, fp16 on a CPU, shard options that do not go together, a folder path
    with a symlink loop or too long to hold the stages' files)."""


class DataError(UserError, ValueError):
    """A dataset input is unusable: a manifest, annotation file, dataset folder, video or image (missing,
    undecodable, unlabelled, or too little of it)."""


class TeacherCacheError(UserError, ValueError):
    """The teacher cache is missing, damaged, or does not match the clip plan it is read with."""


class CheckpointError(UserError, ValueError):
    """A checkpoint file (SCHP teacher, pretrained student, classifier, resume state, export) is missing,
    unreadable, or does not fit the model or run that loads it."""


class StageError(UserError, RuntimeError):
    """A stage cannot run or be finished: an upstream is missing or stale, its inputs are unusable, another
    process is building it, or its build left outputs incomplete (videos that failed to transcode, empty
    or undecodable files at mark-done), so it is not marked done."""


class TrainingError(UserError, RuntimeError):
    """Training (pretrain, finetune) cannot start or go on with these inputs and settings (no train
    videos, fewer videos than one batch, too few speeds, no teacher maps for the plan)."""


class DiskFullError(UserError, OSError):
    """A write failed for lack of space (or a file-size / quota limit); names the file."""


class NonFiniteError(UserError, ArithmeticError):
    """Training produced a non-finite loss (NaN or inf); names the stage, step and the checkpoint kept."""


# A DataLoader worker rebuilds the worker's exception as its own type, with the worker's traceback as
# the message, so these are recognised by type (isinstance), like errors raised in this process.
_USER_FIXABLE = (UserError, FileNotFoundError, PermissionError, IsADirectoryError)


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EFBIG / EDQUOT, also when a library only put the reason in the message
    (HDF5: "errno = 28", "No space left"; torch.save: "unexpected pos" after a short write)."""
    if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
        return True
    text = str(exc)
    return any(s in text for s in ("No space left", "File too large", "errno = 28", "errno = 27",
                                   "Disk quota exceeded", "unexpected pos"))


def disk_full_error(path: object, exc: BaseException, what: str = "writing") -> DiskFullError:
    """The one-line error for a failed write: names the file, says "no space left", says how to go on."""
    return DiskFullError(f"{path}: no space left on device (or file-size limit reached) while {what}; "
                         f"free space (or raise `ulimit -f`) and rerun the same command to resume")


def _one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def unwrap_worker_message(text: str) -> tuple[str, str] | None:
    """(type name, message) of the original exception inside a DataLoader worker's wrapped message."""
    if _WORKER_MARK not in text:
        return None
    lines = [ln for ln in text.rsplit(_WORKER_MARK, 1)[1].splitlines() if ln.strip()]
    # The exception line(s) follow the last frame's "  File ..." line and its indented source line.
    tail: list[str] = []
    for ln in reversed(lines):
        if ln.startswith((" ", "\t")):
            break
        tail.append(ln)
    if not tail:
        return None
    first, *rest = list(reversed(tail))
    m = _LAST_LINE.match(first.strip())
    if m is None:
        return None
    msg = " ".join([m.group("msg") or "", *[r.strip() for r in rest]]).strip()
    return m.group("type").rsplit(".", 1)[-1], msg


def _short(name: object, keep: int = 120) -> str:
    text = str(name)
    return text if len(text) <= keep else f"{text[:keep // 2]}…{text[-keep // 2:]} ({len(text)} characters)"


def _os_message(exc: OSError) -> str | None:
    name = exc.filename if exc.filename is not None else ""
    if exc.errno == errno.ENAMETOOLONG:
        return f"{_short(name)}: name too long (a path component over 255 bytes or a path over 4096 bytes); " \
               f"use a shorter path"
    if exc.errno == errno.ELOOP:
        return f"{_short(name)}: too many levels of symbolic links (a symlink loop); fix or remove the link"
    if is_disk_full(exc):
        return str(exc) if isinstance(exc, DiskFullError) else _one_line(str(disk_full_error(name or "a file", exc)))
    if exc.errno in _NO_ACCESS:
        return f"{name}: cannot write or read here ({exc.strerror}); use a folder you can write to " \
               f"(e.g. --work-dir) or fix its permissions"
    if exc.errno in _NOT_FOUND and name:
        return f"{name}: {exc.strerror}"
    return None


def user_message(exc: BaseException) -> str | None:
    """The one line to print for an error the user can fix, or None for a bug (keep the traceback)."""
    text = str(exc)
    wrapped = unwrap_worker_message(text)
    if wrapped is not None:
        _, msg = wrapped
        if isinstance(exc, _USER_FIXABLE):
            return _one_line(f"{msg} (in a data-loading worker)")
        if is_disk_full(exc):
            return _one_line(f"{msg} (no space left on device)")
        return None
    if isinstance(exc, UserError):
        return _one_line(text) or type(exc).__name__
    if isinstance(exc, OSError):
        os_msg = _os_message(exc)
        return _one_line(os_msg) if os_msg else None
    if isinstance(exc, UnicodeDecodeError):
        return None  # a bug unless a caller turned it into a UserError naming the file
    if isinstance(exc, RuntimeError) and text.startswith("Symlink loop from "):  # pathlib.resolve, Python < 3.13
        where = text[len("Symlink loop from "):].strip("'")
        return f"{where}: a symlink loop (a link that leads back to itself); fix or remove the link"
    return None
