"""The distributed and mixed-precision run-time paths that review found broken, shown on CPU.

Two-process gloo runs (the same environment torchrun sets) reproduce:
  (a) a rank-0-only stage that takes longer than the collective timeout: the other ranks must wait
      for it, not die (the timeout is shortened to seconds here; in real runs it is 30 minutes and
      probing Kinetics takes hours);
  (b) CPU tensors in a group made for CUDA: the group must carry a CPU backend (``cpu:gloo,cuda:nccl``;
      ``cpu:gloo,cuda:gloo`` stands in for it without a GPU, and a ``cuda:gloo``-only group shows the
      original failure); ``cuda:N`` under torchrun is refused;
  (e) rank 0 decides done / missing: a rank whose view of the file system lags follows it;
and, in one process: (c) the CLI destroys the process group on exit; (d) finetuning resumes when the
amp dtype changed between runs (an empty GradScaler state meeting an enabled scaler).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from pipeline.core import distributed
from pipeline.core.config import load_config
from pipeline.core.errors import StageError
from pipeline.stage import BuildResult, Stage, run_stage

scenario, out = sys.argv[1], Path(sys.argv[2])
rank = int(__import__("os").environ["RANK"])

def make(kind, build, upstream=()):
    return Stage(kind=kind, name="x", version=1, semantic={}, upstream=list(upstream), build=build,
                 command=f"pipeline {kind}")

if scenario == "lagging_view" and rank == 0:  # built by rank 0 alone, before this job started
    run_stage(make("up", lambda ctx: BuildResult({})), out / "work0", load_config(None, []))
d = distributed.init_distributed("cpu")
result = {"rank": d.rank}

if scenario == "slow_rank0":
    def slow(ctx):
        time.sleep(float(sys.argv[3]))
        return BuildResult({"built_by": ctx.dist.rank})
    work = out / "work"
    path = run_stage(make("slow", slow), work, load_config(None, []), dist=d)
    result["summary"] = json.loads((path / "stage.json").read_text())["summary"]
elif scenario == "lagging_view":
    # rank 1's work dir lacks the upstream output that rank 0's has: a shared file system seen late
    work = out / f"work{d.rank}"
    up = make("up", lambda ctx: BuildResult({}))
    down = make("down", lambda ctx: BuildResult({"ok": True}), upstream=[up])
    try:
        path = run_stage(down, work, load_config(None, []), dist=d)
        result["summary"] = json.loads((path / "stage.json").read_text())["summary"] if d.rank == 0 else "followed"
    except StageError as exc:
        result["error"] = str(exc)
elif scenario == "cpu_tensors":
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 2))  # CPU parameters broadcast
    net(torch.ones(3, 4)).sum().backward()
    t = torch.tensor([float(d.rank + 1)])
    dist.all_reduce(t)
    result["sum"] = float(t)
    result["gathered"] = distributed.all_gather_tensor(torch.full((1, 2), float(d.rank))).tolist()
    result["object"] = distributed.broadcast_object({"from": d.rank})
(out / f"rank{d.rank}.json").write_text(json.dumps(result))
distributed.cleanup()
""".replace("import torch\ntorch", "import torch\nimport torch.distributed as dist\ntorch", 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_ranks(tmp: Path, scenario: str, *args: str, env: dict[str, str] | None = None,
                  timeout: float = 120) -> tuple[list[int], list[str], list[dict]]:
    """Start ranks 0 and 1 as torchrun would (RANK, WORLD_SIZE, MASTER_*), return codes, logs, results."""
    base = {**os.environ, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, scenario, str(tmp), *args], cwd=REPO,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for r in range(2)]
    try:
        logs = [p.communicate(timeout=timeout)[0].decode() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = [json.loads((tmp / f"rank{r}.json").read_text()) if (tmp / f"rank{r}.json").is_file() else {}
               for r in range(2)]
    return [p.returncode for p in procs], logs, results


@pytest.mark.slow
def test_rank0_only_stage_longer_than_the_collective_timeout(tmp_path: Path) -> None:
    """(a) Rank 0 builds for 9 s; the collective timeout is 6 s; rank 1 must wait, then see the summary."""
    codes, logs, res = run_two_ranks(tmp_path, "slow_rank0", "9", env={"PIPELINE_DIST_TIMEOUT_S": "6"})
    assert codes == [0, 0], "\n".join(logs)[-4000:]
    assert res[0]["summary"] == res[1]["summary"] == {"built_by": 0}


@pytest.mark.slow
def test_rank0_decides_upstream_state_for_every_rank(tmp_path: Path) -> None:
    """(e) Rank 1 cannot see the upstream output yet; it follows rank 0 instead of refusing alone."""
    codes, logs, res = run_two_ranks(tmp_path, "lagging_view", env={"PIPELINE_DIST_TIMEOUT_S": "20"})
    assert codes == [0, 0], "\n".join(logs)[-4000:]
    assert "error" not in res[0] and "error" not in res[1], res
    assert res[0]["summary"] == {"ok": True} and res[1]["summary"] == "followed"


@pytest.mark.slow
def test_cpu_tensors_in_a_group_made_for_cuda(tmp_path: Path) -> None:
    """(b) The group carries a CPU backend beside the CUDA one; a CUDA-only group fails as review found."""
    codes, logs, res = run_two_ranks(tmp_path, "cpu_tensors", env={"PIPELINE_DIST_BACKEND": "cpu:gloo,cuda:gloo"})
    assert codes == [0, 0], "\n".join(logs)[-4000:]
    assert res[0]["sum"] == res[1]["sum"] == 3.0
    assert res[1]["gathered"] == [[0.0, 0.0], [1.0, 1.0]] and res[1]["object"] == {"from": 0}
    bad = tmp_path / "cuda-only"
    bad.mkdir()
    codes, logs, _ = run_two_ranks(bad, "cpu_tensors", env={"PIPELINE_DIST_BACKEND": "cuda:gloo"})
    assert codes != [0, 0] and "No backend type associated with device type cpu" in "".join(logs)


def test_group_backend_has_a_cpu_side_when_cuda_is_there(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.core import distributed

    monkeypatch.delenv("PIPELINE_DIST_BACKEND", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.process_group_backend() == "cpu:gloo,cuda:nccl"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.process_group_backend() == "gloo"


def test_cuda_n_is_refused_under_torchrun(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """(b) ``--device cuda:1`` under torchrun would put every rank on GPU 1: one clear line, before any group."""
    from click.testing import CliRunner

    from pipeline.core import distributed
    from pipeline.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(distributed.ConfigError, match="every rank on one GPU"):
        distributed.resolve_device("cuda:1", 0)
    assert distributed.resolve_device("cuda", 1) == "cuda:1"
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "pretrain", "--device", "cuda:1"])
    assert result.exit_code == 1 and "every rank on one GPU" in result.output and "Traceback" not in result.output
    assert not dist.is_initialized()


def test_run_resolves_the_device_of_each_stage() -> None:
    from pipeline.cli import device_setting
    from pipeline.core.config import load_config
    from pipeline.stages import StageGraph

    cfg = load_config(None, ['pretrain.device="cuda"', 'finetune.device="cpu"'])
    devices = {st.kind: device_setting(cfg, st) for st in StageGraph(cfg, Path("/nonexistent")).run_stages()}
    assert devices["pretrain"] == "cuda" and devices["finetune"] == "cpu" and devices["manifest"] == "cpu"


def test_cli_destroys_the_process_group_on_exit(tmp_path: Path) -> None:
    """(c) A group left alive keeps NCCL communicators (and their threads) until the interpreter dies."""
    from click.testing import CliRunner

    from pipeline.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "config"])
        assert result.exit_code == 0, result.output
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_finetune_resumes_after_the_amp_dtype_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """(d) Written with amp off or bf16 (a disabled scaler saves ``{}``), resumed with fp16 (an enabled
    scaler): it used to fail with "The source state dict is empty"."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_finetune import DIST, _cfg
    from tiny_videos import CLIP_LEN, make_dataset, tiny_model_config, write_student

    from student import finetune as ft
    from student.checkpointing import TrainingInterrupted

    man = make_dataset(tmp_path, classes=2, train_per_class=3, test_per_class=1, frames=10)
    mc = tiny_model_config()
    write_student(tmp_path / "pretrain", mc, seed=1)
    cfg = _cfg(epochs=1, val_fraction=0.0, select_on="last", deterministic=False)
    out = tmp_path / "ft"
    with pytest.raises(TrainingInterrupted):
        ft.finetune(man, tmp_path / "pretrain", out, mc, cfg, dist=DIST, clip_len=CLIP_LEN, stop_after_steps=1)
    assert ft.load_checkpoint(out / "checkpoints" / "last.pt")["scaler"] == {}
    # the resumed run's scaler is enabled, as fp16 on a GPU makes it (a CPU scaler stands in here)
    scaler_cls = torch.amp.GradScaler
    monkeypatch.setattr(ft.torch.amp, "GradScaler", lambda *a, **k: scaler_cls("cpu", enabled=True))
    summary = ft.finetune(man, tmp_path / "pretrain", out, mc, cfg, dist=DIST, clip_len=CLIP_LEN)
    assert summary["global_steps"] >= 2


def test_schp_fusion_head_is_float32_under_autocast() -> None:
    """Results (b): the cached softmax targets come from float32 logits even under bf16 autocast."""
    from teacher.schp import build_schp

    torch.manual_seed(0)
    model = build_schp(7).eval()
    seen: list[torch.dtype] = []
    model.fushion[-1].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(1, 3, 33, 33))
    assert seen == [torch.float32] and logits.dtype == torch.float32


def test_teacher_amp_auto_is_fp16_on_gpu_and_follows_the_cpu() -> None:
    from teacher.backends import cpu_has_native_bf16, resolve_amp

    assert resolve_amp("auto", "cuda:0") == torch.float16
    assert resolve_amp("auto", "cpu") == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert resolve_amp("off", "cuda:0") is None and resolve_amp("bf16", "cpu") == torch.bfloat16


def test_pretrain_losses_are_computed_outside_autocast() -> None:
    """Results (c): under bf16 autocast the InfoNCE logits against the queue stay float32."""
    from student import losses
    from student.pretrain_model import PretrainModel

    torch.manual_seed(0)
    pm = PretrainModel(backbone="c3d", width=0.125, num_parts=3, parse_size=4, queue_size=16).train()
    autocast_on: list[bool] = []  # cross_entropy would return float32 anyway: check autocast itself
    original = losses._info_nce

    def spy(*args, **kwargs):
        autocast_on.append(torch.is_autocast_enabled("cpu"))
        return original(*args, **kwargs)

    clips = [torch.randn(2, 3, 8, 32, 32) for _ in range(3)]
    target = torch.softmax(torch.randn(2, 3, 4, 4), 1)
    try:
        losses._info_nce = spy
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = pm(*clips, target)
    finally:
        losses._info_nce = original
    assert autocast_on == [False, False] and out["loss"].dtype == torch.float32


def test_finetune_keeps_one_loader_and_each_epoch_draws_anew(tmp_path: Path) -> None:
    """Speed: one persistent DataLoader for the run. Its workers never see set_epoch, so every index carries
    its epoch: with a worker the run must equal the in-process (workers=0) run, epoch 2 included."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_finetune import DIST, _cfg
    from tiny_videos import CLIP_LEN, make_dataset, tiny_model_config, write_student

    from student import finetune as ft

    man = make_dataset(tmp_path, classes=2, train_per_class=2, test_per_class=1, frames=10)
    mc = tiny_model_config()
    write_student(tmp_path / "pretrain", mc, seed=1)
    runs = {}
    created: list[int] = []
    real_loader = ft.DataLoader

    def counting_loader(*args, **kwargs):
        created.append(kwargs.get("num_workers", 0))
        return real_loader(*args, **kwargs)

    ft.DataLoader = counting_loader
    try:
        for workers in (0, 1):
            cfg = _cfg(epochs=2, val_fraction=0.0, select_on="last", deterministic=False, workers=workers)
            runs[workers] = ft.finetune(man, tmp_path / "pretrain", tmp_path / f"w{workers}", mc, cfg, dist=DIST,
                                        clip_len=CLIP_LEN)
    finally:
        ft.DataLoader = real_loader
    assert created == [0, 1]  # one training loader per run, not one per epoch
    records = {w: [json.loads(line) for line in (tmp_path / f"w{w}" / "metrics.jsonl").read_text().splitlines()]
               for w in runs}
    losses = {w: [r["train_loss"] for r in records[w] if r["kind"] == "epoch"] for w in runs}
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], abs=1e-6)
