"""SCHP network, norm rule and checkpoint loading, against the released checkpoint's key list."""
from __future__ import annotations

import copy
import hashlib
import logging
import re
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import CheckpointError, DataError
from teacher.checkpoint import infer_labels, load_schp, sha256_file
from teacher.labels import FLIP_PAIRS, INPUT_SIZES, LABEL_SETS, flip_permutation, palette
from teacher.norm import ABNNorm
from teacher.schp import AugmentCE2P, build_schp

KEY_LIST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "schp_lip20_checkpoint_state_dict.txt"
CLASS_KEYS = ("decoder.conv4.weight", "decoder.conv4.bias", "fushion.3.weight", "fushion.3.bias")
LEAKY_NORMS = {
    "context_encoding.stages.0.2", "context_encoding.stages.1.2", "context_encoding.stages.2.2",
    "context_encoding.stages.3.2", "context_encoding.bottleneck.1", "edge.conv1.1", "edge.conv2.1",
    "edge.conv3.1", "decoder.conv1.1", "decoder.conv2.1", "decoder.conv3.1", "decoder.conv3.3", "fushion.1",
}


def reference_shapes() -> dict[str, tuple[int, ...]]:
    """The released LIP checkpoint's keys (with ``module.``) and shapes."""
    if not KEY_LIST.is_file():
        pytest.skip(f"reference key list not found at {KEY_LIST}")
    shapes = {}
    for line in KEY_LIST.read_text().splitlines():
        m = re.match(r"(module\.\S+) \(([\d, ]*)\) float32$", line)
        if m:
            shapes[m[1]] = tuple(int(s) for s in m[2].split(",") if s.strip())
    return shapes


def random_state(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random SCHP weights in the released layout: He-scaled convs, norms with ~30 % negative weights."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_shapes().items():
        if key[len("module."):] in CLASS_KEYS:
            shape = (num_classes,) + shape[1:]
        n = shape[0]
        if len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            t = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif key.endswith("running_var"):
            t = torch.rand(n, generator=g) + 0.5
        elif key.endswith("running_mean") or key.endswith(".bias"):
            t = torch.randn(n, generator=g) * 0.1
        else:  # norm weight: random sign; residual-branch norms small so deep activations stay tame
            sign = torch.where(torch.rand(n, generator=g) < 0.3, -1.0, 1.0)
            scale = 0.2 if key.endswith(".bn3.weight") else 1.0
            t = sign * (torch.rand(n, generator=g) + 0.5) * scale
        state[key] = t
    return state


def save_checkpoint(path: Path, state: dict[str, torch.Tensor]) -> Path:
    torch.save({"state_dict": OrderedDict(state)}, path)
    return path


@pytest.fixture(scope="session")
def lip_state() -> dict[str, torch.Tensor]:
    return random_state(20)


@pytest.fixture(scope="session")
def lip_checkpoint(tmp_path_factory, lip_state) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("schp") / "lip.pth", lip_state)


@pytest.fixture(scope="session")
def lip_model(lip_checkpoint) -> AugmentCE2P:
    return load_schp(lip_checkpoint, "lip")


# --- network layout -------------------------------------------------------------------------------


def meta_schp(num_classes: int) -> AugmentCE2P:
    """The network without storage: layout and shape tests need no weights."""
    with torch.device("meta"):
        return build_schp(num_classes)


def test_state_dict_matches_released_layout_and_parameter_count():
    model = meta_schp(20)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    ref = {k[len("module."):]: v for k, v in reference_shapes().items()}
    assert len(ref) == 603
    assert own == ref
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == 66_723_928  # FACTS: 66.7 M for 20 classes
    assert round(n_params / 1e6, 1) == 66.7
    # only the two class heads change with the label set: 2 × (256 + 1) per class
    assert sum(p.numel() for p in meta_schp(7).parameters()) == n_params - 13 * 2 * 257


def test_norm_layers_and_activations():
    model = meta_schp(18)
    norms = {name: m for name, m in model.named_modules() if isinstance(m, ABNNorm)}
    assert len(norms) == 119
    leaky = {name for name, m in norms.items() if m.has_activation}
    assert leaky == LEAKY_NORMS and len(leaky) == 13
    assert sum(not m.has_activation for m in norms.values()) == 106
    assert all(m.eps == F32_EPS for m in norms.values())  # the float the official kernel receives
    assert not any(isinstance(m, torch.nn.BatchNorm2d) and not isinstance(m, ABNNorm) for m in model.modules())


def test_layer4_is_dilated_and_strides_match_facts():
    model = meta_schp(20)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [3, 4, 23, 3]
    for block in model.layer4:
        assert block.conv2.dilation == (2, 2) and block.conv2.padding == (2, 2) and block.conv2.stride == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)
    assert all(getattr(model, f"layer{i}")[0].downsample is not None for i in range(1, 5))
    assert model.layer1[0].downsample[0].stride == (1, 1) and model.layer3[0].downsample[0].stride == (2, 2)


@pytest.mark.parametrize("size,expected", [
    (473, {"relu1": 237, "layer1": 119, "layer2": 60, "layer3": 30, "layer4": 30}),
    (512, {"relu1": 256, "layer1": 128, "layer2": 64, "layer3": 32, "layer4": 32}),
])
def test_feature_sizes_output_stride_16(size, expected):
    """Shapes through stem and layers (FACTS: 473 → 237/119/60/30/30; fusion at ≈ input/4), on the meta device."""
    sizes = {}
    with torch.device("meta"):
        model = build_schp(7).eval()
        for name in expected:
            getattr(model, name).register_forward_hook(lambda m, i, o, n=name: sizes.__setitem__(n, o.shape[-1]))
        out = model.forward_all(torch.empty(2, 3, size, size))
    assert sizes == expected
    q = expected["layer1"]
    assert out.fusion.shape == (2, 7, q, q) and out.parsing.shape == (2, 7, q, q) and out.edge.shape == (2, 2, q, q)


# --- the norm rule ----------------------------------------------------------------------------------


F32_EPS = 9.999999747378752e-06  # float32(1e-5): in-place ABN's kernel takes eps as a C float


def _abn_reference(x, w, b, mean, var, leaky):
    y = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + F32_EPS)
    y = y * (w.abs() + F32_EPS).view(1, -1, 1, 1) + b.view(1, -1, 1, 1)
    return torch.where(y >= 0, y, 0.01 * y) if leaky else y


@pytest.mark.parametrize("activation", ["none", "leaky_relu"])
def test_abn_norm_matches_formula(activation):
    g = torch.Generator().manual_seed(1)
    norm = ABNNorm(6, activation=activation).double().eval()
    w = torch.tensor([-1.5, -0.2, 0.0, 0.3, 1.0, -0.0], dtype=torch.float64)
    b, mean = torch.randn(6, generator=g).double(), torch.randn(6, generator=g).double()
    var = (torch.rand(6, generator=g) + 0.1).double()
    state = {"weight": w, "bias": b, "running_mean": mean, "running_var": var}  # no num_batches_tracked
    norm.load_state_dict(state, strict=True)
    x = torch.randn(2, 6, 5, 4, generator=g).double() * 3
    expected = _abn_reference(x, w, b, mean, var, activation == "leaky_relu")
    torch.testing.assert_close(norm(x), expected, rtol=0, atol=1e-12)
    # the trap: a plain BatchNorm2d with the raw weights gives something else
    plain = torch.nn.BatchNorm2d(6).double().eval()
    plain.load_state_dict(state, strict=False)
    assert (plain(x) - expected).abs().max() > 0.1


def test_abn_norm_loads_without_num_batches_tracked_even_with_new_metadata():
    norm = ABNNorm(4)
    state = OrderedDict((k, v.clone()) for k, v in norm.state_dict().items() if k != "num_batches_tracked")
    state._metadata = OrderedDict({"": {"version": 2}})  # what a state_dict() saved by recent torch carries
    norm.load_state_dict(state, strict=True)
    with pytest.raises(ValueError, match="activation"):
        ABNNorm(4, activation="relu")


def _norm_by_hand(x, sd, prefix, leaky=False):
    return _abn_reference(x, sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], sd[f"{prefix}.running_mean"],
                          sd[f"{prefix}.running_var"], leaky)


def _bottleneck_by_hand(x, sd, p, stride, dilation):
    out = F.relu(_norm_by_hand(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
    out = F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=dilation, dilation=dilation)
    out = F.relu(_norm_by_hand(out, sd, f"{p}.bn2"))
    out = _norm_by_hand(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
    residual = x
    if f"{p}.downsample.0.weight" in sd:
        residual = _norm_by_hand(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
    return F.relu(out + residual)


def _double(module: torch.nn.Module) -> torch.nn.Module:
    return copy.deepcopy(module).double().eval()


def test_stem_and_bottlenecks_by_hand_in_float64(lip_state, lip_model):
    """The loaded network's stem, a layer1 block, a strided layer2 block and a dilated layer4 block
    equal explicit float64 formulas computed from the checkpoint tensors (negative norm weights included)."""
    sd = {k[len("module."):]: v.double() for k, v in lip_state.items()}
    assert sum(int((sd[k] < 0).sum()) for k in sd if k.endswith(".weight") and sd[k].ndim == 1) > 1000
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 3, 33, 29, generator=g, dtype=torch.float64)
    stem = _double(torch.nn.Sequential(lip_model.conv1, lip_model.bn1, lip_model.relu1, lip_model.conv2,
                                       lip_model.bn2, lip_model.relu2, lip_model.conv3, lip_model.bn3,
                                       lip_model.relu3, lip_model.maxpool))
    with torch.no_grad():
        h = x
        for i, stride in ((1, 2), (2, 1), (3, 1)):
            h = F.relu(_norm_by_hand(F.conv2d(h, sd[f"conv{i}.weight"], stride=stride, padding=1), sd, f"bn{i}"))
        h = F.max_pool2d(h, 3, 2, 1)
        torch.testing.assert_close(stem(x), h, rtol=0, atol=1e-10)
        torch.testing.assert_close(lip_model.stem(x.float()), h.float(), rtol=1e-4, atol=1e-4)
        h1 = _bottleneck_by_hand(h, sd, "layer1.0", 1, 1)
        torch.testing.assert_close(_double(lip_model.layer1[0])(h), h1, rtol=0, atol=1e-10)
        x2 = torch.randn(1, 256, 9, 8, generator=g, dtype=torch.float64)
        torch.testing.assert_close(_double(lip_model.layer2[0])(x2), _bottleneck_by_hand(x2, sd, "layer2.0", 2, 1),
                                   rtol=0, atol=1e-10)
        x4 = torch.randn(1, 2048, 7, 6, generator=g, dtype=torch.float64)
        torch.testing.assert_close(_double(lip_model.layer4[1])(x4), _bottleneck_by_hand(x4, sd, "layer4.1", 1, 2),
                                   rtol=0, atol=1e-10)


def test_heads_by_hand_in_float64(lip_state, lip_model):
    """PSP context, decoder, edge and fusion wiring (concat orders, shared edge conv4, leaky norms)."""
    sd = {k[len("module."):]: v.double() for k, v in lip_state.items()}
    m = lip_model
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 65, 65, generator=g)

    def up(t, hw):
        return F.interpolate(t, size=hw, mode="bilinear", align_corners=True)

    def cbr(t, p, pad=0):
        return _norm_by_hand(F.conv2d(t, sd[f"{p}.0.weight"], padding=pad), sd, f"{p}.1", leaky=True)

    with torch.no_grad():
        x1 = m.layer1(m.stem(x))
        x2 = m.layer2(x1)
        x3 = m.layer3(x2)
        x4 = m.layer4(x3)
        out32 = m.forward_all(x)
        x1, x2, x3, x4 = (t.double() for t in (x1, x2, x3, x4))
        hw4, hw1 = x4.shape[-2:], x1.shape[-2:]
        priors = []
        for i, s in enumerate((1, 2, 3, 6)):
            pooled = F.adaptive_avg_pool2d(x4, s)
            y = _norm_by_hand(F.conv2d(pooled, sd[f"context_encoding.stages.{i}.1.weight"]), sd,
                              f"context_encoding.stages.{i}.2", leaky=True)
            priors.append(up(y, hw4))
        ctx = cbr(torch.cat(priors + [x4], 1), "context_encoding.bottleneck", pad=1)
        top = up(cbr(ctx, "decoder.conv1"), hw1)
        dec = torch.cat([top, cbr(x1, "decoder.conv2")], 1)
        dec = _norm_by_hand(F.conv2d(dec, sd["decoder.conv3.0.weight"]), sd, "decoder.conv3.1", leaky=True)
        dec = _norm_by_hand(F.conv2d(dec, sd["decoder.conv3.2.weight"]), sd, "decoder.conv3.3", leaky=True)
        parsing = F.conv2d(dec, sd["decoder.conv4.weight"], sd["decoder.conv4.bias"])
        native = [cbr(t, f"edge.conv{i}") for i, t in ((1, x1), (2, x2), (3, x3))]
        feas = [up(f, hw1) for f in native]  # conv4 runs at each scale, its logits are upsampled
        edges = [up(F.conv2d(f, sd["edge.conv4.weight"], sd["edge.conv4.bias"], padding=1), hw1) for f in native]
        edge = F.conv2d(torch.cat(edges, 1), sd["edge.conv5.weight"], sd["edge.conv5.bias"])
        fus = _norm_by_hand(F.conv2d(torch.cat([dec] + feas, 1), sd["fushion.0.weight"]), sd, "fushion.1", leaky=True)
        fusion = F.conv2d(fus, sd["fushion.3.weight"], sd["fushion.3.bias"])

        context = _double(m.context_encoding)(x4)
        got_parsing, got_dec = _double(m.decoder)(context, x1)
        got_edge, got_feas = _double(m.edge)(x1, x2, x3)
        got_fusion = _double(m.fushion)(torch.cat([got_dec, got_feas], 1))
    for got, want in ((context, ctx), (got_parsing, parsing), (got_edge, edge), (got_fusion, fusion)):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    # and the float32 forward wires the same pieces together
    for got, want in ((out32.fusion, fusion), (out32.parsing, parsing), (out32.edge, edge), (m(x), fusion)):
        assert (got.double() - want).abs().max() <= 1e-4 * want.abs().max()


# --- checkpoint loading -----------------------------------------------------------------------------


def test_load_lip_checkpoint_strictly_and_logs_digest(lip_checkpoint, lip_state, caplog):
    with caplog.at_level(logging.INFO, logger="teacher"):
        model = load_schp(lip_checkpoint, "lip")
    assert not model.training and model.num_classes == 20
    own = model.state_dict()
    assert all(torch.equal(own[k[len("module."):]], v) for k, v in lip_state.items())
    digest = hashlib.sha256(lip_checkpoint.read_bytes()).hexdigest()
    assert sha256_file(lip_checkpoint) == digest
    negative = sum(int((v < 0).sum()) for k, v in lip_state.items() if v.ndim == 1 and k.endswith(".weight")
                   and not k.endswith(("conv4.weight", "conv5.weight")))
    text = caplog.text
    assert digest in text and f"{negative} negative norm weights" in text


@pytest.mark.parametrize("labels,classes", [("atr", 18), ("pascal", 7)])
def test_load_other_label_sets_and_infer_labels(tmp_path, lip_state, labels, classes):
    state = dict(lip_state)
    for k in CLASS_KEYS:
        state["module." + k] = state["module." + k][:classes].clone()
    path = save_checkpoint(tmp_path / f"{labels}.pth", state)
    model = load_schp(path, labels)
    assert model.num_classes == classes and model.fushion[3].weight.shape[0] == classes
    assert torch.equal(model.decoder.conv4.bias, state["module.decoder.conv4.bias"])
    assert infer_labels(state) == labels
    assert infer_labels({k[len("module."):]: v for k, v in state.items()}) == labels


def test_bare_state_dict_without_prefix_loads(tmp_path, lip_state, lip_model):
    path = tmp_path / "bare.pth"
    torch.save({k[len("module."):]: v for k, v in lip_state.items()}, path)
    model = load_schp(path, "lip")
    assert torch.equal(model.fushion[1].weight, lip_model.fushion[1].weight)
    assert infer_labels(lip_state) == "lip"


def test_class_count_mismatch_names_the_right_labels(lip_checkpoint):
    with pytest.raises(CheckpointError) as err:
        load_schp(lip_checkpoint, "atr")
    msg = str(err.value)
    assert str(lip_checkpoint) in msg
    assert "has 20 classes (decoder.conv4.weight) but labels 'atr' has 18 — use --labels lip" in msg


def test_unusable_files_get_clear_errors(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(CheckpointError, match=r"nope\.pth: file not found"):
        load_schp(missing, "lip")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a PyTorch checkpoint"):
        load_schp(text, "lip")
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match=r"list\.pth: expected a dict, got list"):
        load_schp(listed, "lip")
    no_state = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "arch": "x"}, no_state)
    with pytest.raises(CheckpointError, match=r"meta\.pth: no 'state_dict' of tensors found"):
        load_schp(no_state, "lip")
    with pytest.raises(ValueError, match="unknown label set 'coco'"):
        load_schp(text, "coco")


def test_checkpoint_of_another_network_lists_missing_and_unexpected(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in other.state_dict().items()}}, path)
    with pytest.raises(CheckpointError) as err:
        load_schp(path, "pascal")
    msg = str(err.value)
    assert "other.pth" in msg and "603 missing" in msg and "6 unexpected" in msg and "'0.weight'" in msg


def test_infer_labels_rejects_unknown_class_count():
    with pytest.raises(CheckpointError, match="12 classes"):
        infer_labels({"decoder.conv4.weight": torch.zeros(12, 256, 1, 1)})


# --- labels -----------------------------------------------------------------------------------------


def test_label_sets_flip_pairs_and_sizes():
    assert {k: len(v) for k, v in LABEL_SETS.items()} == {"lip": 20, "atr": 18, "pascal": 7}
    assert LABEL_SETS["lip"][13] == "Face" and LABEL_SETS["atr"][16] == "Bag"
    assert LABEL_SETS["pascal"][3] == "Upper Arms"
    for name in ("lip", "atr"):
        for a, b in FLIP_PAIRS[name]:
            left, right = LABEL_SETS[name][a], LABEL_SETS[name][b]
            assert left.startswith("Left-") and right == "Right-" + left[len("Left-"):]
        lefts = [i for i, n in enumerate(LABEL_SETS[name]) if "Left" in n or "Right" in n]
        assert sorted(i for p in FLIP_PAIRS[name] for i in p) == lefts
    assert flip_permutation("lip")[14:] == [15, 14, 17, 16, 19, 18]
    assert flip_permutation("pascal") == list(range(7))
    assert INPUT_SIZES == {"lip": 473, "atr": 512, "pascal": 512}


def test_voc_palette():
    pal = palette(256)
    assert pal.dtype == np.uint8 and pal.shape == (256, 3)
    assert pal[:9].tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128],
                                [128, 0, 128], [0, 128, 128], [128, 128, 128], [64, 0, 0]]
    assert pal[19].tolist() == [128, 192, 0] and pal[255].tolist() == [224, 224, 192]
    assert len({tuple(c) for c in pal}) == 256
    assert np.array_equal(palette(20), pal[:20])


# --- parse-image and the palette PNG ----------------------------------------------------------------


def read_png(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """Minimal reader for unfiltered 8/4-bit palette PNGs: (indices (H, W), palette (n, 3), bit depth)."""
    import struct
    import zlib

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, pal, ihdr = 8, b"", None, None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(kind + body)
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", body)
        elif kind == b"PLTE":
            pal = np.frombuffer(body, np.uint8).reshape(-1, 3)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    w, h, depth, colour_type = ihdr[:4]
    assert colour_type == 3 and depth in (4, 8)
    rows = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, -1)
    assert (rows[:, 0] == 0).all(), "only unfiltered rows supported"
    px = rows[:, 1:]
    if depth == 4:
        px = np.stack([px >> 4, px & 15], axis=-1).reshape(h, -1)
    return px[:, :w], pal, depth


def test_palette_png_round_trips_and_decodes_in_opencv(tmp_path):
    import cv2

    from teacher.parse_image import schp_palette, write_palette_png

    labels = (np.arange(37 * 23).reshape(23, 37) % 20).astype(np.uint8)
    path = tmp_path / "sub" / "labels.png"
    write_palette_png(path, labels, schp_palette(20))
    idx, pal, depth = read_png(path)
    assert depth == 8 and np.array_equal(idx, labels)
    assert pal.shape == (256, 3) and np.array_equal(pal[:20], palette(20)) and pal[200].tolist() == [200] * 3
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)  # an independent decoder expands the palette
    assert np.array_equal(bgr[..., ::-1], palette(20)[labels])
    with pytest.raises(ValueError, match="uint8"):
        write_palette_png(path, labels.astype(np.int32), schp_palette(20))


def test_schp_palette_equals_reference_png_palette(shared_data):
    from teacher.parse_image import schp_palette

    _, ref_pal, _ = read_png(shared_data / "images" / "schp_demo_lip.png")
    assert np.array_equal(schp_palette(20), ref_pal)
    _, ref_pascal, _ = read_png(shared_data / "images" / "schp_demo_pascal.png")
    assert np.array_equal(ref_pascal[:7], palette(7))


def test_parse_image_writes_full_size_palette_png(shared_data, lip_checkpoint, lip_model, tmp_path):
    from teacher.parse_image import parse_image
    from teacher.preprocess import parse_to_labels

    import cv2

    image = shared_data / "images" / "schp_demo.jpg"
    out = tmp_path / "demo_lip.png"
    labels = parse_image(image, lip_checkpoint, "lip", out, input_size=65)
    assert labels.shape == (1333, 2000) and labels.dtype == np.uint8
    idx, pal, _ = read_png(out)
    assert idx.shape == (1333, 2000) and np.array_equal(idx, labels)
    assert np.array_equal(pal[:20], palette(20))
    assert labels.max() < 20
    model = lip_model
    again = parse_to_labels(model, [cv2.imread(str(image))], 65)[0].numpy()
    assert np.array_equal(again, labels)
    with pytest.raises(DataError, match="missing.jpg"):
        parse_image(tmp_path / "missing.jpg", model, "lip", tmp_path / "x.png")
