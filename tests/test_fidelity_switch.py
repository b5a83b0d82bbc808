"""``run.fidelity = "official"``: one switch gives the official code's numerics (fp32 teacher and student,
256-pixel copies, RSPNet's finetuning protocol), over the config file's values, and refuses a ``--set``
that contradicts it; the real configs' short side is the one bench/resolution.py chose."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.core.config import OFFICIAL_NUMERICS, ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
REAL = [REPO / "configs" / "real_c3d.toml", REPO / "configs" / "real_r2plus1d.toml"]


@pytest.mark.parametrize("path", REAL + [None], ids=["real_c3d", "real_r2plus1d", "built-in"])
def test_official_switch_sets_every_official_value(path: Path | None) -> None:
    fast = load_config(path)
    official = load_config(path, ['run.fidelity="official"'])
    assert fast.run.fidelity == "fast" and official.run.fidelity == "official"
    for (section, key), value in OFFICIAL_NUMERICS.items():
        assert getattr(getattr(official, section), key) == value, (section, key)
    assert (official.teacher.amp, official.pretrain.amp, official.finetune.amp) == ("off", "off", "off")
    noted = any(s.startswith("run.fidelity=official: teacher.amp") for s in official.sources)
    assert noted or fast.teacher.amp == "off"
    # nothing else moves
    rest = {k: v for k, v in official.to_dict().items() if k not in {s for s, _ in OFFICIAL_NUMERICS} | {"run"}}
    assert rest == {k: v for k, v in fast.to_dict().items() if k in rest}


def test_a_contradicting_set_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"run.fidelity = 'official' needs teacher.amp = 'off'.*'fp16'") as err:
        load_config(REAL[0], ['run.fidelity="official"', 'teacher.amp="fp16"'])
    assert "\n" not in str(err.value)
    assert load_config(REAL[0], ['run.fidelity="official"', 'teacher.amp="off"']).teacher.amp == "off"


def test_real_configs_read_the_measured_short_side() -> None:
    measured = json.loads((REPO / "bench" / "results" / "resolution.json").read_text())["figures"]
    for path in REAL:
        assert load_config(path).transcode.short_side == measured["choice"]["short_side"] == 171
    assert measured["copy_171"]["upscaled_both_dims_pct"] == 0 < measured["copy_128"]["upscaled_both_dims_pct"]
