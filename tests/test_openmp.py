"""OpenMP's wait policy (pipeline/core/openmp.py): PASSIVE by default, the user's setting wins, and the CLI
sets it before torch (and so libgomp) is loaded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.openmp import prefer_passive_wait

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_sets_passive_when_the_user_set_nothing() -> None:
    env = {"PATH": "/bin"}
    assert prefer_passive_wait(env) is True
    assert env == {"PATH": "/bin", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"OMP_WAIT_POLICY": "passive"},
                                  {"GOMP_SPINCOUNT": "300000"}])
def test_leaves_the_users_own_setting(user: dict[str, str]) -> None:
    env = dict(user)
    assert prefer_passive_wait(env) is False
    assert env == user


# Records OMP_WAIT_POLICY at the moment the first module of torch is looked up, then imports the CLI.
_PROBE = """
import importlib.abc, json, os, sys
seen = {}
class Probe(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and "policy" not in seen:
            seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
        return None
sys.meta_path.insert(0, Probe())
import pipeline.cli
print(json.dumps({"at_torch_import": seen.get("policy", "torch not imported"),
                  "after": os.environ.get("OMP_WAIT_POLICY")}))
"""


def _probe(extra_env: dict[str, str]) -> dict[str, str | None]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(extra_env)
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_sets_the_policy_before_torch_loads() -> None:
    assert _probe({}) == {"at_torch_import": "PASSIVE", "after": "PASSIVE"}


def test_cli_keeps_the_users_policy() -> None:
    assert _probe({"OMP_WAIT_POLICY": "ACTIVE"}) == {"at_torch_import": "ACTIVE", "after": "ACTIVE"}
