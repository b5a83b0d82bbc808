"""Domain errors: a handful of UserError classes in pipeline/core/errors.py, recognised by type, also when
they arrive from a DataLoader worker."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
from torch.utils.data import DataLoader, Dataset

from pipeline.core import errors
from pipeline.core.errors import DataError, UserError, user_message

LIBRARIES = ("pipeline", "data_manifests", "teacher", "student")
# Subclasses of a domain error that carry data their callers read (the failed frame's index).
CARRIERS = {"data_manifests.video.VideoDecodeError"}


class _Raises(Dataset):
    def __init__(self, exc: Exception) -> None:
        self.exc = exc

    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> int:
        raise self.exc


def _worker_error(exc: Exception) -> BaseException:
    with pytest.raises(Exception) as info:
        next(iter(DataLoader(_Raises(exc), num_workers=1)))
    return info.value


def test_worker_errors_are_recognised_by_type():
    err = _worker_error(DataError("videos/a.mp4: frame 3 does not decode"))
    assert isinstance(err, DataError) and "Original Traceback" in str(err)
    assert user_message(err) == "videos/a.mp4: frame 3 does not decode (in a data-loading worker)"
    assert user_message(_worker_error(ValueError("a bug"))) is None, "a bug keeps its traceback"


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_user_errors_are_the_domain_errors_of_one_module():
    for lib in LIBRARIES:
        pkg = importlib.import_module(lib)
        for mod in pkgutil.walk_packages(pkg.__path__, f"{lib}."):
            importlib.import_module(mod.name)
    stray = sorted(f"{c.__module__}.{c.__qualname__}" for c in _subclasses(UserError)
                   if c.__module__ != errors.__name__ and c.__module__.split(".")[0] in LIBRARIES)
    assert set(stray) <= CARRIERS, f"new UserError classes outside pipeline/core/errors.py: {stray}"
    assert len([c for c in _subclasses(UserError) if c.__module__ == errors.__name__]) <= 8
