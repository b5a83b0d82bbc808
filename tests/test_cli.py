"""The command line: help, status on an empty work dir, config errors as clean messages."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from pipeline.cli import main

COMMANDS = ["status", "run", "config", "synthetic", "manifest", "teacher-cache", "pretrain", "finetune",
            "evaluate", "retrieval", "parse-image", "teacher-show", "visualize"]


def test_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for cmd in COMMANDS:
        assert f"  {cmd} " in result.output, cmd


def test_every_command_has_complete_help():
    for cmd in COMMANDS:
        result = CliRunner().invoke(main, [cmd, "-h"])
        assert result.exit_code == 0, (cmd, result.output)
        assert "Usage: main" in result.output or "Usage: pipeline" in result.output


def test_status_on_empty_work_dir(tmp_path: Path):
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "status"])
    assert result.exit_code == 0, result.output
    assert "synthetic:default" in result.output and "missing" in result.output
    assert "build with: pipeline pretrain" in result.output


def test_config_error_is_a_clean_message(tmp_path: Path):
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "--set", "pretrain.epochz=3", "status"])
    assert result.exit_code != 0
    assert "Error: " in result.output and "did you mean 'epochs'" in result.output
    assert "Traceback" not in result.output


def test_stage_command_refuses_missing_upstream(tmp_path: Path):
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "pretrain"])
    assert result.exit_code != 0
    assert "needs manifest:kinetics400, which is missing" in result.output
    assert "pipeline manifest --dataset kinetics400" in result.output


def test_run_dry_run_lists_stages(tmp_path: Path, caplog):
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "run", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "synthetic").exists()


def test_config_command_prints_resolved_toml(tmp_path: Path):
    result = CliRunner().invoke(main, ["--set", "pretrain.epochs=9", "config"])
    assert result.exit_code == 0 and "epochs = 9" in result.output


def test_manifest_command_on_real_hmdb51(tmp_path: Path, shared_data: Path):
    args = ["--work-dir", str(tmp_path), "manifest", "--dataset", "hmdb51", "--root",
            str(shared_data / "videos" / "hmdb51"), "--annotations", str(shared_data / "splits" / "hmdb51")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    assert "Is --root right?" in refused.output and "--allow-missing" in refused.output

    result = CliRunner().invoke(main, args + ["--allow-missing"])
    assert result.exit_code == 0, result.output
    assert "4 usable videos" in result.output and "missing 6762" in result.output  # the readable summary
    as_json = CliRunner().invoke(main, args + ["--allow-missing", "--json"])  # done: reused, summary as JSON
    assert '"videos": 4' in as_json.output and '"missing": 6762' in as_json.output


def test_parse_image_command_writes_full_size_png(tmp_path: Path, shared_data: Path):
    import cv2

    from test_schp import random_state, save_checkpoint

    ckpt = save_checkpoint(tmp_path / "lip.pth", random_state(20))
    out = tmp_path / "demo_lip.png"
    result = CliRunner().invoke(main, ["parse-image", str(shared_data / "images" / "schp_demo.jpg"),
                                       "--checkpoint", str(ckpt), "--labels", "lip", "-o", str(out),
                                       "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape[:2] == (1333, 2000)
    assert "label histogram" in result.output

    wrong = CliRunner().invoke(main, ["parse-image", str(shared_data / "images" / "schp_demo.jpg"),
                                      "--checkpoint", str(ckpt), "--labels", "atr", "-o", str(out)])
    assert wrong.exit_code != 0 and "20 classes" in wrong.output and "Traceback" not in wrong.output


def test_stage_commands_put_split_on_the_right_dataset(tmp_path: Path):
    """--split sets datasets.<--dataset, or the command's own section's dataset>.split (one shared helper)."""
    cases = [(["finetune", "--split", "2"], "finetune:hmdb51-split2"),
             (["evaluate", "--dataset", "ucf101", "--split", "3"], "evaluate:ucf101-split3"),
             (["retrieval", "--split", "2"], "retrieval:ucf101-split2"),
             (["linear-probe", "--split", "3"], "linear-probe:hmdb51-split3")]
    for args, key in cases:
        result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), *args, "--dry-run", "--build-upstream"])
        assert result.exit_code == 0, (args, result.output)
        assert f"would build {key} (missing)" in result.output, (args, result.output)
    assert not any(tmp_path.iterdir()), "a dry run writes nothing"


def test_shard_options_go_together(tmp_path: Path):
    result = CliRunner().invoke(main, ["--work-dir", str(tmp_path), "teacher-cache", "--shard-index", "1"])
    assert result.exit_code != 0 and "--shard-index and --num-shards go together" in result.output
