"""Backbones: RSPNet key layouts, parameter counts, output shapes, the f_l / high split, loading."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import torch

from student.backbones import (Backbone, BackbonePart, build_backbone, load_rspnet_backbone, scaled_channels,
                               split_backbone)

REFERENCE_DIR = Path(os.environ.get("PIPELINE_SHARED_REFERENCE",
                                    Path(__file__).resolve().parents[2] / "shared" / "reference"))
REF_FILES = {"c3d": "rspnet_c3d_backbone_state_dict.txt", "r2plus1d": "rspnet_r2plus1d10_backbone_state_dict.txt",
             "r3d18": "rspnet_r3d18_backbone_state_dict.txt"}
# sha256 of the "key (shape)" rows of each reference file, so the layout is checked without the file too
REF_SHA256 = {"c3d": "f745d8cd30e75b25a1b8ae90d5ea5683b5326229872e9119760bb9215ecb3378",
              "r2plus1d": "f3386f1e04bed05c4e1f0abc2b44ac092a8a4ee1da83c0e099722870539ca049",
              "r3d18": "2287e7959938ad7d04878d0b6e85db7f951928ca91500f7592e65946ff6bde2e"}
NAMES = list(REF_FILES)


def _meta_backbone(name: str, width: float = 1.0) -> Backbone:
    with torch.device("meta"):
        return build_backbone(name, width)


def _rows(sd: dict[str, torch.Tensor]) -> list[str]:
    return [f"{k} {tuple(v.shape)}" for k, v in sd.items()]


def _reference(name: str) -> list[tuple[str, tuple[int, ...], str]]:
    path = REFERENCE_DIR / REF_FILES[name]
    if not path.is_file():
        pytest.skip(f"reference key list not found at {path}")
    out = []
    for line in path.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)
        out.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip()), dtype))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_layout_matches_rspnet_reference_hash(name):
    rows = _rows(_meta_backbone(name).state_dict())
    assert hashlib.sha256("\n".join(rows).encode()).hexdigest() == REF_SHA256[name]


@pytest.mark.parametrize("name", NAMES)
def test_layout_matches_rspnet_reference_file(name):
    ref = _reference(name)
    assert _rows(_meta_backbone(name).state_dict()) == [f"{k} {s}" for k, s, _ in ref]
    assert hashlib.sha256("\n".join(f"{k} {s}" for k, s, _ in ref).encode()).hexdigest() == REF_SHA256[name]


@pytest.mark.parametrize("name, millions, digits, exact", [("c3d", 27.66, 2, 27_661_440),
                                                            ("r2plus1d", 14.37, 2, 14_365_303),
                                                            ("r3d18", 33.2, 1, 33_203_904)])
def test_full_width_parameter_counts_match_facts(name, millions, digits, exact):
    n = sum(p.numel() for p in _meta_backbone(name).parameters())
    assert round(n / 1e6, digits) == millions
    assert n == exact


@pytest.mark.parametrize("name, shape", [("c3d", (2, 512, 2, 7, 7)), ("r2plus1d", (2, 512, 2, 7, 7)),
                                         ("r3d18", (2, 512, 1, 4, 4))])
def test_full_width_output_shape_for_16x112x112(name, shape):
    bb = _meta_backbone(name)
    with torch.device("meta"):
        assert tuple(bb(torch.empty(2, 3, 16, 112, 112)).shape) == shape
    assert bb.out_channels == 512


@pytest.mark.parametrize("name, thw", [("c3d", (2, 7, 7)), ("r2plus1d", (2, 7, 7)), ("r3d18", (1, 4, 4))])
def test_small_width_real_forward_keeps_strides(name, thw):
    torch.manual_seed(0)
    bb = build_backbone(name, 0.125).eval()
    with torch.no_grad():
        y = bb(torch.randn(1, 3, 16, 112, 112))
    assert tuple(y.shape) == (1, 64, *thw)
    assert torch.isfinite(y).all() and (y >= 0).all()  # ends in ReLU


def test_width_multiplier_scales_channels_with_floor_of_8():
    assert [scaled_channels(c, 0.25) for c in (64, 128, 256, 512)] == [16, 32, 64, 128]
    assert [scaled_channels(c, 0.0625) for c in (64, 128, 512)] == [8, 8, 32]
    bb = _meta_backbone("r2plus1d", 0.25)
    # intermediate width follows the formula on the scaled widths: t=3, k=7, in=3, out=16 -> 3*49*3*16 // (147+48)
    assert bb.conv1.spatial_conv.weight.shape[0] == (3 * 49 * 3 * 16) // (49 * 3 + 3 * 16)
    assert build_backbone("c3d", 0.25).conv5b.weight.shape[:2] == (128, 128)


@pytest.mark.parametrize("name, split_after", [("c3d", 1), ("c3d", 3), ("c3d", 4), ("r2plus1d", 2), ("r2plus1d", 3),
                                               ("r3d18", 3), ("r3d18", 4)])
def test_split_equals_unsplit_backbone(name, split_after):
    torch.manual_seed(1)
    bb = build_backbone(name, 0.125)
    for m in bb.modules():  # non-trivial BN statistics so eval mode is a real check
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    f_l, make_high = split_backbone(bb, split_after)  # CONTRACTS form: f_l shares bb's modules
    assert all(a is b for a, b in zip(f_l.parameters(), list(bb.parameters())[:len(list(f_l.parameters()))]))
    high = make_high()
    own = bb.state_dict()
    high.load_state_dict({k: own[k] for k in high.state_dict()})
    assert set(f_l.state_dict()) | set(high.state_dict()) == set(own)
    assert not set(f_l.state_dict()) & set(high.state_dict())
    assert (f_l.first_stage, f_l.last_stage, high.first_stage, high.last_stage) == (1, split_after, split_after + 1, 5)
    x = torch.randn(2, 3, 8, 16, 16)
    for mode in ("eval", "train"):
        bb.train(mode == "train"), high.train(mode == "train")
        with torch.no_grad():
            torch.testing.assert_close(high(f_l(x)), bb(x), rtol=1e-5, atol=1e-6)


def test_split_by_name_builds_fresh_instances():
    torch.manual_seed(2)
    f_l, make_high = split_backbone("c3d", width=0.125, split_after=3)
    h1, h2 = make_high(), make_high()
    assert isinstance(f_l, BackbonePart) and not isinstance(f_l, Backbone)
    assert f_l.stage_names == ("conv1", "conv2", "conv3") and h1.stage_names == ("conv4", "conv5")
    assert list(f_l.state_dict())[0] == "conv1.weight" and list(h1.state_dict())[0] == "conv4a.weight"
    assert h1.conv4a.weight is not h2.conv4a.weight
    assert not torch.equal(h1.conv4a.weight, h2.conv4a.weight)  # independently initialised
    assert h1.out_channels == 64 and f_l.out_channels == 32


@pytest.mark.parametrize("bad", [0, 5])
def test_split_after_out_of_range_is_rejected(bad):
    with pytest.raises(ValueError, match="split_after must be in 1..4"):
        split_backbone("r3d18", width=0.125, split_after=bad)


def _rspnet_checkpoint(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """A released-layout checkpoint with random tensors of the reference shapes (plus heads, key encoder)."""
    gen = torch.Generator().manual_seed(3)
    bare = {}
    for key, shape, dtype in _reference(name):
        bare[key] = (torch.randint(0, 1000, shape, generator=gen) if dtype == "int64"
                     else torch.randn(shape, generator=gen))
    model = {"encoder_q.encoder." + k: v for k, v in bare.items()}
    model["encoder_k.encoder.conv1.weight"] = torch.zeros(1)  # the key encoder is not ours to load
    for fc in ("fc1", "fc2"):
        model[f"encoder_q.{fc}.2.weight"] = torch.randn(128, 512, generator=gen)
        model[f"encoder_q.{fc}.2.bias"] = torch.randn(128, generator=gen)
    model["queue"] = torch.randn(128, 16)
    return {"model": model, "epoch": 200}, bare


@pytest.mark.parametrize("name", NAMES)
def test_rspnet_checkpoint_loads_strictly_into_f_l_and_every_high(name):
    ckpt, bare = _rspnet_checkpoint(name)
    f_l, make_high = split_backbone(name, width=1.0, split_after=3)
    highs = [make_high(), make_high()]
    assert load_rspnet_backbone(f_l, highs, ckpt) == []
    for part in (f_l, *highs):
        for k, v in part.state_dict().items():
            assert torch.equal(v, bare[k]), k
    assert highs[0].state_dict().keys() == highs[1].state_dict().keys()
    assert not {id(p) for p in highs[0].parameters()} & {id(p) for p in highs[1].parameters()}


def test_bare_state_dict_with_ddp_prefix_and_dummy_head_loads():
    bb = build_backbone("r3d18", 0.125)
    bare = {"module." + k: v.clone() for k, v in bb.state_dict().items()}
    bare["module.fc.weight"] = torch.zeros(10, 64)
    f_l, make_high = split_backbone("r3d18", width=0.125, split_after=2)
    high = make_high()
    assert load_rspnet_backbone(f_l, [high], bare) == ["fc.weight"]
    torch.testing.assert_close(high.layer4[1].conv2.weight, bb.layer4[1].conv2.weight)


def test_mismatched_checkpoints_give_clear_errors():
    f_l, make_high = split_backbone("c3d", width=0.125, split_after=3)
    high = make_high()
    full = build_backbone("c3d", 1.0 / 4).state_dict()
    with pytest.raises(ValueError, match=r"48 shape mismatches.*checkpoint \(16,\) vs model \(8,\).*width"):
        load_rspnet_backbone(f_l, [high], {"model": {"encoder_q.encoder." + k: v for k, v in full.items()}})
    own = build_backbone("c3d", 0.125).state_dict()
    del own["bn5b.running_var"]
    own["conv5b.extra"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"missing 1 keys.*bn5b.running_var(.|\n)*unexpected 1 keys.*conv5b.extra"):
        load_rspnet_backbone(f_l, [high], own)
    with pytest.raises(ValueError, match="high part covers stages"):
        load_rspnet_backbone(f_l, [split_backbone("c3d", width=0.125, split_after=2)[1]()], own)
