"""The stage engine: fingerprints, done / stale / missing, atomic builds, resumable partial state."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.core.config import load_config
from pipeline.stage import STAGE_FILE, BuildResult, Stage, StageError, run_stage, stage_status
from pipeline.stages import StageGraph


def _fp(work: Path, *overrides: str) -> dict[str, str]:
    graph = StageGraph(load_config(overrides=list(overrides)), work)
    return {st.key: st.fingerprint(work) for st in graph.run_stages()}


def test_fingerprint_equal_across_processes(tmp_path: Path):
    code = ("import json,sys; from pathlib import Path; from pipeline.core.config import load_config; "
            "from pipeline.stages import StageGraph; w=Path(sys.argv[1]); "
            "g=StageGraph(load_config(overrides=['pretrain.epochs=2']), w); "
            "print(json.dumps({s.key: s.fingerprint(w) for s in g.run_stages()}))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == _fp(tmp_path, "pretrain.epochs=2")


def test_semantic_key_changes_only_its_stage_and_downstream(tmp_path: Path):
    base = _fp(tmp_path)
    changed = _fp(tmp_path, "teacher.map_size=48")
    same = {"synthetic:default", "manifest:kinetics400", "manifest:hmdb51"}
    for key in base:
        if key in same:
            assert base[key] == changed[key], key
        else:
            assert base[key] != changed[key], key


def test_finetune_key_changes_finetune_and_evaluate_only(tmp_path: Path):
    base = _fp(tmp_path)
    changed = _fp(tmp_path, "finetune.lr=0.01")
    diff = {k for k in base if base[k] != changed[k]}
    # the demo config also evaluates the scene-swapped test set (evaluate.test_sets) with that classifier
    assert diff == {"finetune:hmdb51-split1", "evaluate:hmdb51-split1", "evaluate:hmdb51-split1.scene_swapped"}


def test_execution_only_keys_do_not_change_fingerprints(tmp_path: Path):
    assert _fp(tmp_path) == _fp(tmp_path, "pretrain.workers=0", "teacher.batch_size=3", "teacher.device=cpu",
                                "pretrain.log_interval=1", "evaluate.chunk=2", "synthetic.workers=1")


# -- a small graph of toy stages ----------------------------------------------------------------

class Toy:
    """Two toy stages, A -> B, whose builds write files and can be made to fail."""

    def __init__(self, work: Path, a_value: int = 1, fail_b_after_partial: bool = False):
        self.work = work
        self.calls: list[str] = []
        self.fail_b = fail_b_after_partial

        def build_a(ctx):
            self.calls.append("a")
            (ctx.out_dir / "a.txt").write_text(str(a_value))
            return BuildResult({"value": a_value})

        def build_b(ctx):
            self.calls.append("b")
            part = ctx.out_dir / "part-0.txt"
            resumed = part.exists()
            part.write_text("first half")
            if self.fail_b:
                raise RuntimeError("killed")
            (ctx.out_dir / "part-1.txt").write_text((ctx.upstream_dir("a") / "a.txt").read_text())
            return BuildResult({"resumed": resumed})

        self.a = Stage("a", "x", 1, {"value": a_value}, [], build_a, command="toy a")
        self.b = Stage("b", "x", 1, {"k": 0}, [self.a], build_b, command="toy b")


def test_upstream_change_makes_downstream_stale_and_status_says_why(tmp_path: Path):
    cfg = load_config()
    toy = Toy(tmp_path)
    run_stage(toy.b, tmp_path, cfg, build_upstream=True)
    assert stage_status(toy.a, tmp_path).state == "done" and stage_status(toy.b, tmp_path).state == "done"

    toy2 = Toy(tmp_path, a_value=2)
    sa, sb = stage_status(toy2.a, tmp_path), stage_status(toy2.b, tmp_path)
    assert sa.state == "stale" and sa.reasons == ["config value: 1 -> 2"]
    assert sb.state == "stale" and sb.reasons == ["upstream a:x changed"]


def test_missing_upstream_names_the_command(tmp_path: Path):
    toy = Toy(tmp_path)
    with pytest.raises(StageError, match=r"b:x needs a:x, which is missing.*`toy a`.*--build-upstream"):
        run_stage(toy.b, tmp_path, load_config())


def test_killed_stage_is_never_done_and_resumes(tmp_path: Path):
    cfg = load_config()
    toy = Toy(tmp_path, fail_b_after_partial=True)
    with pytest.raises(RuntimeError, match="killed"):
        run_stage(toy.b, tmp_path, cfg, build_upstream=True)
    assert not (toy.b.out_dir(tmp_path) / STAGE_FILE).exists()
    st = stage_status(toy.b, tmp_path)
    assert st.state == "missing" and any("stopped part-way" in r for r in st.reasons)

    toy.fail_b = False
    out = run_stage(toy.b, tmp_path, cfg)
    record = json.loads((out / STAGE_FILE).read_text())
    assert record["summary"] == {"resumed": True}  # the partial state of the killed run was kept
    assert (out / "part-1.txt").read_text() == "1"
    assert not toy.b.partial_dir(tmp_path).exists()
    assert (out / "config.toml").is_file()  # the resolved config is saved beside the output


def test_done_stage_is_skipped_and_force_rebuilds(tmp_path: Path):
    cfg = load_config()
    toy = Toy(tmp_path)
    run_stage(toy.a, tmp_path, cfg)
    run_stage(toy.a, tmp_path, cfg)
    assert toy.calls == ["a"]
    run_stage(toy.a, tmp_path, cfg, force=True)
    assert toy.calls == ["a", "a"]
    assert stage_status(toy.a, tmp_path).state == "done"


def test_dry_run_builds_nothing(tmp_path: Path):
    toy = Toy(tmp_path)
    assert run_stage(toy.b, tmp_path, load_config(), build_upstream=True, dry_run=True) is None
    assert toy.calls == [] and not (tmp_path / "a").exists()


def test_digest_cache_reuses_hash_until_file_changes(tmp_path: Path):
    from pipeline.core.fingerprint import DigestCache, sha256_file

    f = tmp_path / "ckpt.pth"
    f.write_bytes(b"x" * 1000)
    cache = DigestCache(tmp_path / "d.json")
    d1 = cache.digest(f)
    cache.save()
    assert json.loads((tmp_path / "d.json").read_text())[str(f.resolve())]["sha256"] == d1
    f.write_bytes(b"y" * 1001)
    assert DigestCache(tmp_path / "d.json").digest(f) == sha256_file(f) != d1


def test_incomplete_build_is_not_done_and_options_reach_the_build(tmp_path: Path):
    """A shard of a job array returns complete=False: no stage.json; the run over all shards finishes it."""
    from pipeline.stage import BuildOptions

    seen: list[BuildOptions] = []

    def build(ctx):
        seen.append(ctx.options)
        assert ctx.fingerprint == ctx.stage.fingerprint(tmp_path) and ctx.input_digest("checkpoint") == "abc"
        (ctx.out_dir / f"shard-{ctx.options.shard_index}").write_text("x")
        return BuildResult({"shards": len(list(ctx.out_dir.glob("shard-*")))},
                           complete=ctx.options.shard_index == 1, message="1 of 2 shards")

    st = Stage("s", "x", 1, {}, [], build, inputs=lambda up: {"checkpoint": "abc"})
    cfg = load_config()
    assert run_stage(st, tmp_path, cfg, options=BuildOptions(shard_index=0, num_shards=2)) is None
    assert not (st.out_dir(tmp_path) / STAGE_FILE).exists() and st.partial_dir(tmp_path).is_dir()
    out = run_stage(st, tmp_path, cfg, options=BuildOptions(shard_index=1, num_shards=2))
    assert out is not None and json.loads((out / STAGE_FILE).read_text())["summary"] == {"shards": 2}
    assert seen == [BuildOptions(0, 2), BuildOptions(1, 2)]
