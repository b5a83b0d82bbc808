"""Issue 24, through the CLI: every defect of the hostile run that a user meets as a command.

Each test asserts the exit code, one ``Error:`` line naming the file, key or option (no
traceback), and that nothing incomplete is marked done. Fixtures: the tiny data stages of
tests/test_faults.py (built once per module).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from test_end_to_end import TINY
from test_faults import DATA_STAGES, REPO, _limited, base, cli, error_line, finished, only, work  # noqa: F401


# ------------------------------------------------------------------------------------ defect 2
def test_2_teacher_cache_with_workers_exits_after_its_disk_full_error(work: Path):
    args = [sys.executable, "-m", "pipeline.cli", "--work-dir", str(work)]
    for item in TINY + [DATA_STAGES, "teacher.map_size=64", "teacher.workers=1"]:
        args += ["--set", item]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        proc = subprocess.run(args + ["teacher-cache"], capture_output=True, text=True, cwd=REPO, env=env,
                              preexec_fn=_limited(64 * 1024), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("teacher-cache hung after its error (a decode worker kept the process alive)")
    assert proc.returncode == 1, proc.stderr
    (line,) = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error:")]
    assert "no space left" in line and ".shard-00000.h5.tmp" in line
    assert len(finished(work, "teacher-cache")) == 1


# ------------------------------------------------------------------------------------ defect 4
def test_4_status_verify_catches_a_bit_flip_in_a_generated_video(work: Path):
    syn = only(work, "synthetic")
    video = sorted(syn.rglob("*.avi"))[0]
    st = video.stat()
    data = bytearray(video.read_bytes())
    data[len(data) // 2] ^= 0x01
    video.write_bytes(bytes(data))
    os.utime(video, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "damaged" not in cli(work, "status").output  # same size and mtime: only --verify can know
    result = cli(work, "status", "--verify")
    assert result.exit_code == 1 and video.name in result.output and "checksum mismatch" in result.output


# ------------------------------------------------------------------------------------ defect 6
def test_6_unreadable_entries_of_a_folder_dataset_are_rejected_the_rest_indexed(work: Path, tmp_path: Path):
    root = tmp_path / "folder"
    for cls in ("bend", "wave"):
        (root / cls).mkdir(parents=True)
        for v in sorted((only(work, "synthetic") / "hmdb51" / "videos" / cls).glob("*.avi"))[:2]:
            (root / cls / v.name).write_bytes(v.read_bytes())
    (root / "bend" / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "wave" / "loop.mp4").symlink_to("loop.mp4")
    os.mkfifo(root / "wave" / "pipe.mp4")  # opening it would block forever
    result = cli(work, "manifest", "--dataset", "folder", "--root", str(root), "--name", "f")
    assert result.exit_code == 0, result.output
    out = only(work, "manifest/f")
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 4
    records = [json.loads(ln) for ln in (out / "rejected.jsonl").read_text().splitlines()]
    rejected = {r["id"]: r["detail"] for r in records}
    assert set(rejected) == {"dangling", "loop", "pipe"}
    assert "broken symbolic link" in rejected["dangling"] and "not a regular file" in rejected["pipe"]


# ------------------------------------------------------------------------------------ defect 7, 9, 11
@pytest.mark.parametrize("args, needles", [
    (["--dataset", "nope"], ["'nope'", "known:"]),
    (["--dataset", "hmdb51", "--seeds", "-1"], ["--seeds -1"]),
    (["--dataset", "hmdb51", "--splits", "1", "--splits", "1"], ["--splits 1", "more than once"]),
    (["--dataset", "hmdb51", "--seeds", "3", "--seeds", "3"], ["--seeds 3", "more than once"]),
])
def test_7_9_11_sweep_arguments(tmp_path: Path, monkeypatch, args: list[str], needles: list[str]):
    monkeypatch.chdir(tmp_path)  # "nope" used to be indexed as a folder dataset rooted here
    result = cli(tmp_path / "work", "sweep", "--protocol", "finetune", *args)
    error_line(result, *needles)
    assert not (tmp_path / "work" / "manifest").exists()


# ------------------------------------------------------------------------------------ defect 9, 10
@pytest.mark.parametrize("item, needles", [
    ("pretrain.queue_size=4000000000", ["pretrain.queue_size", "above the maximum"]),
    ("pretrain.queue_size=2", ["pretrain.queue_size", "below pretrain.batch_size"]),
    ("clips.speeds=[1, 1]", ["clips.speeds", "two different speeds"]),
    ("clips.speeds=[2]", ["clips.speeds", "two different speeds"]),
    ("pretrain.lr=1e-400", ["pretrain.lr=1e-400", "becomes 0.0"]),
    ("finetune.lr=2.5e-999", ["finetune.lr=2.5e-999", "becomes 0.0"]),
    ("pretrain.lr=0", ["pretrain.lr", "must be above 0"]),
])
def test_9_10_degenerate_config_values(tmp_path: Path, item: str, needles: list[str]):
    error_line(cli(tmp_path, "status", sets=(item,)), *needles)


def test_10_underflow_in_a_config_file_names_the_file(tmp_path: Path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[finetune]\nlr = 1e-400\n")
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "--config", str(cfg), "status"])
    error_line(result, "c.toml", "1e-400", "becomes 0.0")


# ------------------------------------------------------------------------------------ defect 9: paths
def _loop(tmp_path: Path) -> Path:
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    return tmp_path / "a" / "work"


@pytest.mark.parametrize("command", ["run", "status"])
@pytest.mark.parametrize("make, needles", [
    (_loop, ["--work-dir", "symlink loop"]),
    (lambda t: t / ("x" * 300) / "work", ["--work-dir", "300 bytes long"]),
    (lambda t: t.joinpath(*["y" * 200] * 21), ["--work-dir", "paths end at 4096 bytes"]),
])
def test_9_unusable_work_dirs_are_one_line(tmp_path: Path, command: str, make, needles: list[str]):
    error_line(cli(make(tmp_path), command), *needles)


def test_9_os_path_errors_are_one_line():
    import errno

    from pipeline.core.errors import user_message

    long = "/d/" + "z" * 300
    assert "name too long" in user_message(OSError(errno.ENAMETOOLONG, "File name too long", long))
    assert "symlink loop" in user_message(OSError(errno.ELOOP, "Too many levels of symbolic links", "/a"))
    assert "symlink loop" in user_message(RuntimeError("Symlink loop from '/x/a'"))


# ------------------------------------------------------------------------------------ defect 12
def test_12_permission_denied_is_not_called_corrupt(tmp_path: Path, monkeypatch):
    from data_manifests import video as V

    path = tmp_path / "locked.mp4"
    path.write_bytes(b"\0" * 100)
    with pytest.raises(V.VideoDecodeError, match="corrupt"):
        V.probe_video(path)
    real = os.access
    monkeypatch.setattr(V.os, "access", lambda p, mode: False if Path(p) == path else real(p, mode))
    with pytest.raises(V.VideoDecodeError, match=r"locked\.mp4: permission denied"):
        V.probe_video(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: chmod cannot make one unreadable")
def test_12_permission_denied_for_real(tmp_path: Path):
    from data_manifests import video as V

    path = tmp_path / "locked.mp4"
    path.write_bytes(b"\0" * 100)
    path.chmod(0)
    with pytest.raises(V.VideoDecodeError, match="permission denied"):
        V.probe_video(path)


def test_12_a_short_kinetics_row_names_the_missing_columns(tmp_path: Path):
    from data_manifests.formats import kinetics
    from data_manifests.formats.common import FileIndex

    csv = tmp_path / "train.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\nabseiling,abc\n")
    with pytest.raises(ValueError, match=r"train\.csv:2: the row has 2 field\(s\), the header 5.*missing: "
                                         r"time_start, time_end, split"):
        kinetics.parse([csv], 1, FileIndex(tmp_path))


def test_12_export_refuses_to_overwrite_without_force(tmp_path: Path):
    out = tmp_path / "encoder.pt"
    out.write_bytes(b"mine")
    result = cli(tmp_path, "export", "--checkpoint", str(tmp_path / "student.pt"), "-o", str(out))
    error_line(result, "encoder.pt", "already exists", "--force")
    assert out.read_bytes() == b"mine"
    forced = cli(tmp_path, "export", "--checkpoint", str(tmp_path / "student.pt"), "-o", str(out), "--force")
    assert "already exists" not in forced.output  # it goes on (and fails on the missing checkpoint)


# ------------------------------------------------------------------------------------ defect 8
def test_8_a_manifest_label_edited_by_hand_is_damage_and_finetune_refuses(work: Path):
    listing = only(work, "manifest/hmdb51") / "manifest.jsonl"
    text = listing.read_text()
    assert '"label": 0' in text
    listing.write_text(text.replace('"label": 0', '"label": 1', 1))
    status = cli(work, "status")
    assert "manifest.jsonl: content changed" in status.output
    error_line(cli(work, "finetune", "--dataset", "hmdb51"), "manifest:hmdb51", "content changed")
