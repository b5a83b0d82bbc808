"""The CLI's CPU settings (pipeline/core/cpu_tuning.py): OpenMP PASSIVE set before torch loads, glibc's
malloc keeping freed memory (fewer page faults), the user's own settings and the off switch respected."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.cpu_tuning import (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, MALLOC_KEYS, MMAP_THRESHOLD, OPENMP_KEYS,
                                      SWITCH, TRIM_THRESHOLD, keep_freed_memory, prefer_passive_wait)

REPO_ROOT = Path(__file__).resolve().parents[1]
TUNING_KEYS = (*OPENMP_KEYS, *MALLOC_KEYS, SWITCH)


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return 1


def test_sets_passive_when_the_user_set_nothing() -> None:
    env = {"PATH": "/bin"}
    assert prefer_passive_wait(env) is True
    assert env == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "passive"},
                                  {"GOMP_SPINCOUNT": "300000"}, {"PIPELINE_CPU_TUNING": "0"}])
def test_leaves_the_users_own_wait_policy(user: dict[str, str]) -> None:
    env = dict(user)
    assert prefer_passive_wait(env) is False
    assert env == user


def test_malloc_thresholds_set_through_mallopt() -> None:
    libc = FakeLibc()
    assert keep_freed_memory({}, libc) is True
    assert libc.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]


@pytest.mark.parametrize("user", [{"MALLOC_MMAP_THRESHOLD_": "131072"}, {"MALLOC_TRIM_THRESHOLD_": "0"},
                                  {"PIPELINE_CPU_TUNING": "off"}])
def test_malloc_left_alone_when_the_user_chose(user: dict[str, str]) -> None:
    libc = FakeLibc()
    assert keep_freed_memory(dict(user), libc) is False
    assert libc.calls == []


# Records OMP_WAIT_POLICY when torch is first looked up, imports the CLI, then counts the page faults of five
# rounds of a training step's pattern: eight 20 MB arrays alive at once, then all freed.
_PROBE = """
import importlib.abc, json, os, resource, sys
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "policy" not in seen:
            seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Probe())
import pipeline.cli
import numpy as np
def step():
    live = [np.ones(5 << 20, np.float32) for _ in range(8)]
    del live
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"at_torch_import": seen.get("policy", "torch not imported"),
                  "after": os.environ.get("OMP_WAIT_POLICY"), "faults": faults}))
"""


def _probe(extra_env: dict[str, str]) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in TUNING_KEYS}
    env.update(extra_env)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_sets_the_policy_before_torch_loads() -> None:
    got = _probe({})
    assert (got["at_torch_import"], got["after"]) == ("PASSIVE", "PASSIVE")


def test_cli_keeps_the_users_policy() -> None:
    got = _probe({"OMP_WAIT_POLICY": "ACTIVE"})
    assert (got["at_torch_import"], got["after"]) == ("ACTIVE", "ACTIVE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_cli_makes_freed_memory_reusable() -> None:
    """Under glibc's defaults the freed 160 MB go back to the system and the next round faults them in again
    (measured: about 20 000 faults in five rounds); with the CLI's thresholds they stay and are reused."""
    tuned, plain = _probe({}), _probe({"PIPELINE_CPU_TUNING": "0"})
    assert plain["faults"] > 10_000
    assert tuned["faults"] < 1_000
