"""Config loading: defaults, overrides, and errors that name the key, the file and the fix."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.core.config import ConfigError, dump_toml, load_config, semantic_dict


def test_default_config_loads_and_is_valid():
    cfg = load_config()
    assert cfg.teacher.backend == "rendered"
    assert cfg.pretrain.dataset in cfg.datasets
    assert cfg.clips.span == cfg.clips.clip_len * max(cfg.clips.speeds)


def test_set_overrides_are_typed():
    cfg = load_config(overrides=["pretrain.epochs=7", "clips.speeds=[1, 4]", "teacher.backend=schp",
                                 "model.kd=false", "pretrain.lr=0.5"])
    assert cfg.pretrain.epochs == 7 and cfg.clips.speeds == [1, 4]
    assert cfg.teacher.backend == "schp" and cfg.model.kd is False and cfg.pretrain.lr == 0.5


def test_int_accepted_where_float_expected():
    assert load_config(overrides=["pretrain.lr=1"]).pretrain.lr == 1.0


def test_unknown_key_suggests_the_near_miss(tmp_path: Path):
    f = tmp_path / "my.toml"
    f.write_text("[pretrain]\nepoch = 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert "unknown key 'epoch'" in msg and "did you mean 'epochs'" in msg and str(f) in msg


def test_unknown_section_suggests(tmp_path: Path):
    f = tmp_path / "my.toml"
    f.write_text("[pretrian]\nepochs = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[pretrian\].*did you mean 'pretrain'"):
        load_config(f)


def test_wrong_type_names_key_and_expected_form():
    with pytest.raises(ConfigError, match=r"pretrain\.epochs: expected an integer, got 'ten'"):
        load_config(overrides=["pretrain.epochs=ten"])
    with pytest.raises(ConfigError, match=r"model\.kd: expected true or false"):
        load_config(overrides=["model.kd=1"])


def test_out_of_range_and_choices():
    with pytest.raises(ConfigError, match=r"teacher\.shard_size: 0 is below the minimum 1"):
        load_config(overrides=["teacher.shard_size=0"])
    with pytest.raises(ConfigError, match=r"model\.backbone: 'c3dd' is not one of .*did you mean 'c3d'"):
        load_config(overrides=["model.backbone=c3dd"])


def test_bad_set_syntax():
    with pytest.raises(ConfigError, match="expected section.key=value"):
        load_config(overrides=["pretrain.epochs"])


def test_missing_file_and_bad_toml(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[pretrain\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_config(bad)


def test_unknown_dataset_reference():
    with pytest.raises(ConfigError, match=r"no \[datasets\.ucf11\] table.*did you mean 'ucf101'"):
        load_config(overrides=["finetune.dataset=ucf11"])


def test_user_file_starts_from_paper_defaults_not_the_demo(tmp_path: Path):
    f = tmp_path / "real.toml"
    f.write_text('[datasets.hmdb51]\nkind = "hmdb51"\nroot = "/data/hmdb51"\nannotations = ["/data/splits"]\n'
                 '[datasets.kinetics400]\nkind = "kinetics400"\nroot = "/data/k400"\n')
    cfg = load_config(f)
    assert cfg.datasets["hmdb51"].root == "/data/hmdb51" and set(cfg.datasets) == {"hmdb51", "kinetics400"}
    assert cfg.teacher.backend == "schp" and cfg.model.width == 1.0 and cfg.clips.clip_len == 16
    assert cfg.pretrain.epochs == 200 and cfg.finetune.protocol == "auto"


def test_semantic_dict_drops_execution_keys():
    cfg = load_config()
    sem = semantic_dict(cfg.pretrain)
    assert "workers" not in sem and "log_interval" not in sem and "device" not in sem
    assert "lr" in sem and "epochs" in sem
    assert "batch_size" not in semantic_dict(cfg.teacher)  # inference batch size: execution only


def test_dump_roundtrip(tmp_path: Path):
    cfg = load_config(overrides=["pretrain.epochs=5"])
    f = tmp_path / "resolved.toml"
    f.write_text(dump_toml(cfg))
    again = load_config(f)
    assert again.to_dict() == cfg.to_dict()
