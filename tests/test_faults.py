"""Faults and bad input (issue 12), driven through the CLI where a user would meet them.

Each test names the numbered item of the issue it covers and asserts the exit code, ONE error line
naming the file or key (no traceback), and that nothing is marked done that is not complete.
The data stages are built once (tiny synthetic config); every test works on its own copy of that
work directory, which also exercises item 11 (a copied work directory is self-contained).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.core.errors import UserError
from test_end_to_end import TINY

DATA_STAGES = 'run.stages=["synthetic", "manifest", "teacher-cache"]'
REPO = Path(__file__).resolve().parents[1]


def cli(work: Path, *args: str, sets: tuple[str, ...] = (), verbose: bool = False) -> Result:
    argv = ["--work-dir", str(work)] + (["-v"] if verbose else [])
    for item in TINY + [DATA_STAGES, *sets]:
        argv += ["--set", item]
    return CliRunner().invoke(main, argv + list(args))


def error_line(result: Result, *needles: str) -> str:
    """The single ``Error:`` line of a failed command, holding every needle; no traceback anywhere."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def finished(work: Path, kind: str) -> list[Path]:
    """Finished output folders of a stage kind ("teacher-cache") or of one named stage ("manifest/f")."""
    pattern = "*" if "/" in kind else "*/*"
    return sorted(p for p in (work / kind).glob(pattern) if (p / "stage.json").is_file())


def only(work: Path, kind: str) -> Path:
    (path,) = finished(work, kind)
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    work = tmp_path_factory.mktemp("faults") / "base"
    result = cli(work, "run")
    assert result.exit_code == 0, result.output
    return work


@pytest.fixture
def work(base: Path, tmp_path: Path) -> Path:
    """A private copy of the built data stages (item 11: it must not depend on where it was built)."""
    copy = tmp_path / "work"
    shutil.copytree(base, copy)
    return copy


def _synthetic(work: Path) -> Path:
    return only(work, "synthetic")


# ---------------------------------------------------------------------------------------------- 1
def test_1_missing_hmdb51_split_file_is_an_error(work: Path, tmp_path: Path):
    syn = _synthetic(work)
    splits = tmp_path / "splits"
    shutil.copytree(syn / "hmdb51" / "splits", splits)
    (splits / "bend_test_split1.txt").unlink()
    result = cli(work, "manifest", "--dataset", "hmdb51", "--root", str(syn / "hmdb51" / "videos"),
                 "--annotations", str(splits), "--name", "h2", sets=("datasets.h2.kind=\"hmdb51\"",))
    error_line(result, "bend_test_split1.txt", "is missing")
    assert not finished(work, "manifest/h2")


# ---------------------------------------------------------------------------------------------- 2
def test_2_deleted_shard_makes_the_stage_damaged_and_only_it_is_rebuilt(work: Path):
    cache = only(work, "teacher-cache")
    kept = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*.h5")}
    (cache / "shard-00001.h5").unlink()
    status = cli(work, "status")
    assert status.exit_code == 0 and "damaged" in status.output and "shard-00001.h5: missing" in status.output
    refused = cli(work, "pretrain")
    error_line(refused, "teacher-cache:kinetics400", "damaged", "shard-00001.h5")
    assert not finished(work, "pretrain")
    rebuilt = cli(work, "run")
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "1 to build" in rebuilt.output
    again = {p.name: p.stat().st_mtime_ns for p in only(work, "teacher-cache").glob("shard-*.h5")}
    assert set(again) == set(kept)
    assert all(again[n] == kept[n] for n in kept if n != "shard-00001.h5")  # the others were not rewritten


def test_2_pretraining_refuses_when_many_clips_have_no_map(work: Path):
    from student.pretrain_data import MissingMapsError, clips_with_maps
    from teacher.cache_reader import TeacherCache

    cache_dir = only(work, "teacher-cache")
    ids = []
    for shard in sorted(cache_dir.glob("shard-*.h5")):
        with h5py.File(shard, "r") as f:
            ids += list(f["clip_ids"].asstr()[...])
    plan = [SimpleNamespace(clip_id=c) for c in ids]
    (cache_dir / "shard-00001.h5").unlink()
    cache = TeacherCache(cache_dir)
    with pytest.raises(MissingMapsError, match=r"shard-00001\.h5 is missing.*pretrain\.max_missing_maps"):
        clips_with_maps(plan, cache, 0.05)
    assert len(clips_with_maps(plan, cache, 1.0)) == len(ids) - 16  # allowed when asked for


# ---------------------------------------------------------------------------------------------- 3
@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "-inf"])
def test_3_non_finite_config_numbers_are_config_errors(tmp_path: Path, value: str):
    result = cli(tmp_path, "run", sets=(f"pretrain.lr={value}",))
    error_line(result, "pretrain.lr", "not a finite number")
    assert not (tmp_path / "synthetic").exists()


def test_3_non_finite_loss_stops_training_keeps_the_last_finite_checkpoint(work: Path, monkeypatch):
    from student.pretrain_model import PretrainModel

    forward, calls = PretrainModel.forward, []

    def diverging(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > 2:  # epoch 0 (2 steps) trains normally, epoch 1 diverges
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(PretrainModel, "forward", diverging)
    result = cli(work, "pretrain", sets=("pretrain.epochs=2",))
    error_line(result, "pretrain", "non-finite", "last.pt", "nothing is marked done")
    assert not finished(work, "pretrain")
    (partial,) = (work / "pretrain" / "kinetics400").glob("*.partial")
    state = torch.load(partial / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1 and state["step_in_epoch"] == 0
    assert all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())


def test_3_a_non_finite_state_is_never_saved(tmp_path: Path):
    from student.checkpointing import save_checkpoint

    good = tmp_path / "last.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(3)}})
    with pytest.raises(UserError, match=r"last\.pt: not saved: model\.w holds NaN"):
        save_checkpoint(good, {"model": {"w": torch.tensor([1.0, float("nan"), 2.0])}})
    assert torch.equal(torch.load(good, weights_only=True)["model"]["w"], torch.ones(3))


# ---------------------------------------------------------------------------------------------- 4
def test_4_parse_image_refuses_a_checkpoint_holding_nan(tmp_path: Path, shared_data: Path):
    ckpt = tmp_path / "nan.pth"
    weight = torch.zeros(20, 8, 1, 1)
    weight[3, 2] = float("nan")
    torch.save({"state_dict": {"module.decoder.conv4.weight": weight}}, ckpt)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(main, ["parse-image", str(shared_data / "images" / "schp_demo.jpg"),
                                       "--checkpoint", str(ckpt), "-o", str(out), "--device", "cpu"])
    error_line(result, "nan.pth", "NaN")
    assert not out.exists()


# ---------------------------------------------------------------------------------------------- 5
def test_5_still_image_is_rejected_and_a_damaged_video_is_named(work: Path, tmp_path: Path, shared_data: Path):
    root = tmp_path / "videos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    shutil.copy(shared_data / "images" / "schp_demo.jpg", root / "a" / "photo.mp4")
    good = shared_data / "videos" / "kinetics400" / "using_segway" / "WUzgd7C1pWA.mp4"
    shutil.copy(good, root / "a" / "good.mp4")
    data = bytearray(good.read_bytes())
    n = len(data)
    data[int(0.45 * n):int(0.55 * n)] = bytes(int(0.55 * n) - int(0.45 * n))  # a damaged middle
    (root / "b" / "damaged.mp4").write_bytes(bytes(data))
    result = cli(work, "manifest", "--dataset", "folder", "--root", str(root), "--name", "f",
                 sets=("datasets.f.kind=\"folder\"",))
    assert result.exit_code == 0, result.output
    rejected = {Path(r["path"]).name: r for r in map(json.loads, (only(work, "manifest/f") / "rejected.jsonl")
                                                     .read_text().splitlines())}
    assert set(rejected) == {"photo.mp4"}
    assert rejected["photo.mp4"]["reason"] == "not_a_video" and "JPEG" in rejected["photo.mp4"]["detail"]
    # The damaged video keeps the frames that decode (a cut file is usable, tests/test_manifests.py),
    # but never silently: a warning names it and the frames its container promised.
    (warning,) = [ln for ln in result.output.splitlines() if "damaged.mp4" in ln]
    assert "of the 327 frames its container lists decode" in warning and "kept with its" in warning
    entries = {Path(json.loads(ln)["path"]).name: json.loads(ln)
               for ln in (only(work, "manifest/f") / "manifest.jsonl").read_text().splitlines()}
    assert set(entries) == {"good.mp4", "damaged.mp4"} and entries["damaged.mp4"]["frames"] < 327 * 0.9


# ---------------------------------------------------------------------------------------------- 6
def _limited(fsize: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, resource.RLIM_INFINITY))
    return apply


def test_6_file_size_limit_while_writing_the_cache_is_one_line_and_resumable(work: Path):
    args = [sys.executable, "-m", "pipeline.cli", "--work-dir", str(work)]
    for item in TINY + [DATA_STAGES, "teacher.map_size=64"]:
        args += ["--set", item]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.run(args + ["teacher-cache"], capture_output=True, text=True, cwd=REPO, env=env,
                          preexec_fn=_limited(64 * 1024), timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Segmentation" not in proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert "no space left" in line and ".shard-00000.h5.tmp" in line
    assert len(finished(work, "teacher-cache")) == 1  # only the one built earlier, not the new one
    again = cli(work, "teacher-cache", sets=("teacher.map_size=64",))
    assert again.exit_code == 0, again.output
    assert len(finished(work, "teacher-cache")) == 2


def test_6_disk_full_while_saving_a_checkpoint_names_the_file(tmp_path: Path):
    import resource

    from pipeline.core.errors import DiskFullError
    from student.checkpointing import save_checkpoint

    path = tmp_path / "ckpt" / "last.pt"
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(DiskFullError, match=r"last\.pt: no space left"):
            save_checkpoint(path, {"model": {"w": torch.ones(1 << 16)}})
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not path.exists() and not list(path.parent.glob(".*tmp*"))


# ---------------------------------------------------------------------------------------------- 7
def _flip_chunk(shard: Path, chunk: int | None = 3) -> None:
    """Flip one byte inside map chunk ``chunk`` (every chunk when None): same size, bad checksum."""
    with h5py.File(shard, "r") as f:
        maps = f["maps"].id
        chunks = range(maps.get_num_chunks()) if chunk is None else [chunk]
        offsets = [maps.get_chunk_info(c).byte_offset for c in chunks]
    data = bytearray(shard.read_bytes())
    for offset in offsets:
        data[offset + 40] ^= 0xFF
    shard.write_bytes(bytes(data))


def test_7_verify_finds_a_flipped_chunk_and_the_rerun_rebuilds_only_that_shard(work: Path):
    cache = only(work, "teacher-cache")
    with h5py.File(cache / "shard-00001.h5", "r") as f:
        original = f["maps"][...]
    _flip_chunk(cache / "shard-00001.h5")
    assert "damaged" not in cli(work, "status").output  # same size: only reading every byte tells
    verify = cli(work, "status", "--verify")
    error_line(verify, "1 stage(s) damaged")
    assert "shard-00001.h5: checksum mismatch" in verify.output
    assert not finished(work, "teacher-cache")  # no longer marked done
    rebuilt = cli(work, "run")
    assert rebuilt.exit_code == 0 and "1 to build" in rebuilt.output, rebuilt.output
    with h5py.File(only(work, "teacher-cache") / "shard-00001.h5", "r") as f:
        np.testing.assert_array_equal(f["maps"][...], original)
    assert cli(work, "status", "--verify").exit_code == 0


def test_7_training_on_a_corrupt_shard_names_it_in_one_line(work: Path):
    for shard in only(work, "teacher-cache").glob("shard-*.h5"):
        _flip_chunk(shard, chunk=None)
    result = cli(work, "pretrain", sets=("pretrain.workers=1",))
    error_line(result, "teacher-cache shard", "checksum mismatch", "status --verify")
    assert not finished(work, "pretrain")


# ---------------------------------------------------------------------------------------------- 8
_ORPHAN_SCRIPT = """
import os, signal, sys, time
import torch
from torch.utils.data import DataLoader, Dataset
from pipeline.core.lifetime import DieWithParent

class Slow(Dataset):
    def __len__(self): return 100
    def __getitem__(self, i):
        time.sleep(60)  # busy decoding: the worker never goes back to poll its parent
        return i

loader = DataLoader(Slow(), batch_size=None, num_workers=2, worker_init_fn=DieWithParent())
it = iter(loader)
time.sleep(1.5)
with open(sys.argv[1], "w") as fh:  # not stdout: orphans holding a pipe would block the test
    fh.write(" ".join(str(w.pid) for w in it._workers))
os.kill(os.getpid(), signal.SIGKILL)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has exited already


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_8_decode_workers_die_with_their_parent(tmp_path: Path):
    pid_file = tmp_path / "pids"
    proc = subprocess.run([sys.executable, "-c", _ORPHAN_SCRIPT, str(pid_file)], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, cwd=REPO, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    pids = [int(p) for p in pid_file.read_text().split()]
    assert len(pids) == 2
    deadline = time.time() + 10
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    alive = [p for p in pids if _alive(p)]
    for p in alive:  # never leave them behind, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not alive


# ---------------------------------------------------------------------------------------------- 9
def test_9_a_stage_being_built_elsewhere_is_refused_with_its_pid(tmp_path: Path):
    from pipeline.core.config import load_config
    from pipeline.stage import stage_lock
    from pipeline.stages import StageGraph

    cfg = load_config(None, TINY)
    synthetic = StageGraph(cfg, tmp_path).synthetic()
    with stage_lock(synthetic, tmp_path):
        result = cli(tmp_path, "run")
    error_line(result, "stage synthetic:default is being built by PID", str(os.getpid()))
    assert not list((tmp_path / "synthetic" / "default").glob("*.partial"))
    assert not finished(tmp_path, "synthetic")


# ---------------------------------------------------------------------------------------------- 10
def test_10_a_folder_without_stage_json_is_rebuilt(work: Path):
    cache = only(work, "teacher-cache")
    (cache / "stage.json").unlink()
    result = cli(work, "run")
    assert result.exit_code == 0, result.output
    assert only(work, "teacher-cache") == cache
    assert "0 to build" in result.output  # its verified shards were reused


# ---------------------------------------------------------------------------------------------- 11
def test_11_a_moved_work_directory_reads_its_own_videos(base: Path, tmp_path: Path):
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    meta = json.loads((only(moved, "manifest/hmdb51") / "meta.json").read_text())
    assert not Path(meta["root"]).is_absolute()
    assert json.loads((_synthetic(moved) / "synthetic.json").read_text())["summary"]["root"] == "."
    hidden = base.with_name("base-hidden")
    base.rename(hidden)  # the original is gone while the copy works
    try:
        status = cli(moved, "status")
        assert status.exit_code == 0 and "stale" not in status.output and "damaged" not in status.output
        result = cli(moved, "teacher-cache", "--force")
        assert result.exit_code == 0, result.output
        assert json.loads((only(moved, "teacher-cache") / "stage.json").read_text())["summary"]["failed"] == 0
    finally:
        hidden.rename(base)


def test_11_stage_files_respect_the_umask(work: Path):
    for kind in ("synthetic", "teacher-cache"):
        for name in ("stage.json", "config.toml"):
            mode = (only(work, kind) / name).stat().st_mode & 0o777
            assert mode == 0o666 & ~_umask(), (kind, name, oct(mode))


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------- 12
def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _annotation_cases(work: Path, tmp: Path) -> list[tuple[list[str], tuple[str, ...], list[str]]]:
    """(manifest arguments, extra --set items, needles of the error line) per annotation mistake."""
    syn = _synthetic(work)
    ucf, hmdb, kin = tmp / "ucf", tmp / "hmdb", tmp / "kin"
    shutil.copytree(syn / "ucf101" / "splits", ucf)
    shutil.copytree(syn / "hmdb51" / "splits", hmdb)
    kin.mkdir()
    _edit(ucf / "trainlist01.txt", "Bend/v_Bend_g02_c01.avi 1", "Bendy/v_Bend_g02_c01.avi 1")
    _edit(hmdb / "wave_test_split1.txt", ".avi 1", ".avi 7")
    (kin / "empty.csv").write_text("")
    (kin / "header.csv").write_text("label,youtube_id,time_start,time_end,split,is_cc\n")
    (kin / "nocol.csv").write_text("label,youtube_id,split\nbend,abc,train\n")
    ucf_args = ["--dataset", "ucf101", "--root", str(syn / "ucf101" / "videos")]
    hmdb_args = ["--dataset", "hmdb51", "--root", str(syn / "hmdb51" / "videos")]
    kin_args = ["--dataset", "kinetics400", "--root", str(syn / "kinetics" / "videos"), "--name", "k2"]
    kset = ("datasets.k2.kind=\"kinetics400\"",)
    return [
        (ucf_args + ["--annotations", str(ucf)], (), ["trainlist01.txt", "Bendy"]),
        (hmdb_args + ["--annotations", str(hmdb)], (), ["wave_test_split1.txt", "7"]),
        (kin_args + ["--annotations", str(kin / "empty.csv")], kset, ["empty.csv"]),
        (kin_args + ["--annotations", str(kin / "header.csv")], kset, ["header.csv"]),
        (kin_args + ["--annotations", str(kin / "nocol.csv")], kset, ["nocol.csv", "time_start"]),
        (hmdb_args + ["--annotations", str(tmp / "no-such-folder")], (), ["no-such-folder"]),
    ]


def test_12_annotation_mistakes_are_one_line(work: Path, tmp_path: Path):
    for args, sets, needles in _annotation_cases(work, tmp_path):
        result = cli(work, "manifest", *args, sets=sets)
        error_line(result, *needles)


def test_12_file_mistakes_are_one_line(work: Path, tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image, not a checkpoint\n")
    parse = CliRunner().invoke(main, ["parse-image", str(notes), "--checkpoint", str(notes), "-o",
                                      str(tmp_path / "o.png")])
    error_line(parse, "notes.txt", "not an image")
    init = cli(work, "pretrain", "--init-from", str(notes))
    error_line(init, "pretrain.init_from", "notes.txt")
    assert not finished(work, "pretrain")
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[pretrain]\n# caf\xe9\nepochs = 2\n'.encode("latin-1"))
    bad_config = CliRunner().invoke(main, ["--config", str(latin1), "status"])
    error_line(bad_config, "latin1.toml", "not UTF-8")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    unwritable = cli(blocker / "work", "run")
    error_line(unwritable, "a-file")


def test_12_errors_inside_dataloader_workers_are_one_line(work: Path):
    manifest = only(work, "manifest/kinetics400")
    root = manifest / json.loads((manifest / "meta.json").read_text())["root"]
    for line in (manifest / "manifest.jsonl").read_text().splitlines():
        video = root / json.loads(line)["path"]
        video.write_bytes(bytes(video.stat().st_size))  # damaged after the manifest, same size
    # held-out evaluation off: it would read a damaged val video in the main process first
    result = cli(work, "pretrain", sets=("pretrain.workers=1", "pretrain.heldout_videos=0"))
    error_line(result, "kinetics/videos/", ".mp4", "in a data-loading worker")
    assert not finished(work, "pretrain")


def test_12_verbose_keeps_the_traceback(tmp_path: Path):
    result = cli(tmp_path, "run", sets=("pretrain.lr=nan",), verbose=True)
    assert result.exit_code != 0 and isinstance(result.exception, UserError)
