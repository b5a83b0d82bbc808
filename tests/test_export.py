"""``pipeline export``: each supported layout loads STRICTLY into a model built from the target's
own key layout and gives the same features (float64); the round trip back into this project's
student is exact; unsupported targets are refused with the reason."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from student.backbones import RSPNET_PREFIX, build_backbone
from student.checkpointing import save_checkpoint
from pipeline.core.errors import CheckpointError
from student.export import branch_backbone, export_checkpoint, export_state, read_exported
from student.model import MultiTaskStudent, load_encoders

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"


def _randomised(student: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND batch-norm statistics, so a mis-mapped BN or conv cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in student.state_dict().items():
            if t.is_floating_point():
                r = torch.rand(t.shape, generator=g, dtype=t.dtype)
                t.copy_(r + 0.5 if name.endswith("running_var") else (r - 0.5) * 0.2)
    return student.double().eval()


def _student(backbone: str, width: float, **kw) -> MultiTaskStudent:
    torch.manual_seed(0)
    return _randomised(MultiTaskStudent(backbone=backbone, width=width, parse_size=8, **kw))


def _meta(student: MultiTaskStudent) -> dict:
    return {"model_config": {**student.config, "input_size": 32}, "num_parts": 7}


def _clip(t: int = 8, s: int = 32) -> torch.Tensor:
    return torch.randn(1, 3, t, s, s, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _branch_map(student: MultiTaskStudent, branch: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        low = student.f_l(x)
        return (student.h_h if branch == "human" else student.h_c)(low)


def _reference_layout(name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for line in (REFERENCE / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, rest = line.split(" ", 1)
        out[key] = tuple(int(v) for v in rest.rsplit(")", 1)[0].strip("( ").split(",") if v.strip())
    return out


def _torchvision_rspnet_r3d18() -> nn.Module:
    """torchvision's VideoResNet (the class of r3d_18) with RSPNet's stem: the same network as ours."""
    from torchvision.models.video.resnet import BasicBlock, Conv3DSimple, VideoResNet

    class Stem(nn.Sequential):
        def __init__(self) -> None:
            super().__init__(nn.Conv3d(3, 64, 7, stride=(1, 2, 2), padding=3, bias=False), nn.BatchNorm3d(64),
                             nn.ReLU(inplace=True), nn.MaxPool3d(3, stride=2, padding=1))

    model = VideoResNet(BasicBlock, [Conv3DSimple] * 4, [2, 2, 2, 2], Stem)
    model.fc = nn.Identity()
    return model.double().eval()


# --- RSPNet's own loading logic, re-stated from its finetune.py / retrieval.py (facts, not its code) ---------
# finetune.py `load_moco_checkpoint`: a file with BOTH "model" and "arch" is a MoCo checkpoint: logs
# cp["epoch"] with %d, takes cp["model"] and the prefix "encoder_q."; any other file is "third-party":
# cp["state_dict"] if present else cp itself, prefix "module." when the first key starts with "module",
# else "". Keys that start with the prefix and not with prefix + one of the blacklist are kept, the prefix
# is stripped, and the finetune network loads them with strict=False (missing keys are only a warning).
# That network is its MultiTaskWrapper(finetune=True): `encoder` = the backbone built with num_classes=1
# (a dummy classifier: `linear` for c3d / r2plus1d-vcop, `fc` for resnet18, unused by get_feature),
# `avg_pool`, and `fc` = Linear(512, num_classes).
# retrieval.py `load_moco_checkpoint`: logs cp["epoch"] with %d, prefix "encoder_q.encoder.", blacklist
# fc / linear / head / new_fc, strict=False, then ASSERTS that the missing keys are exactly the classifier's.
FINETUNE_BLACKLIST = ("fc.", "linear", "head", "new_fc", "fc8", "encoder_fuse")
RETRIEVAL_BLACKLIST = ("fc", "linear", "head", "new_fc")


def _classifier_name(backbone: str) -> str:
    return "fc" if backbone == "r3d18" else "linear"


class RSPNetBackbone(nn.Module):
    """RSPNet's backbone module tree: the layers under its names (our names, checked against its released
    layout above) plus its classifier; ``get_feature`` is the feature map before pooling, as RSPNet's."""

    def __init__(self, backbone: str, num_classes: int) -> None:
        super().__init__()
        layers = build_backbone(backbone, 1.0)
        self.features = [name for name, _ in layers.named_children()]
        for name, module in layers.named_children():
            self.add_module(name, module)
        self.add_module(_classifier_name(backbone), nn.Linear(512, num_classes))

    def get_feature(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.features:
            x = self._modules[name](x)  # type: ignore[misc]
        return x


def _rspnet_backbone(backbone: str, num_classes: int) -> RSPNetBackbone:
    return RSPNetBackbone(backbone, num_classes)


class RSPNetFinetuneNet(nn.Module):
    """The module tree of RSPNet's finetune network (MultiTaskWrapper with finetune=True)."""

    def __init__(self, backbone: str, num_classes: int = 101) -> None:
        super().__init__()
        self.encoder = _rspnet_backbone(backbone, 1)
        self.avg_pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(512, num_classes)


def _kept(state: dict, prefix: str, blacklist: tuple[str, ...]) -> dict:
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not any(k.startswith(prefix + b) for b in blacklist)}


def rspnet_finetune_load(cp: dict, net: nn.Module) -> tuple[str, set[str], set[str]]:
    """finetune.py's branches: (which branch, missing keys, unexpected keys)."""
    if "model" in cp and "arch" in cp:
        branch, state, prefix = f"moco (epoch {cp['epoch']:d})", cp["model"], "encoder_q."
    else:
        branch = "third-party"
        state = cp["state_dict"] if "state_dict" in cp else cp
        prefix = "module." if next(iter(state)).startswith("module") else ""
    msg = net.load_state_dict(_kept(state, prefix, FINETUNE_BLACKLIST), strict=False)
    return branch, set(msg.missing_keys), set(msg.unexpected_keys)


def rspnet_retrieval_load(cp: dict, net: nn.Module, backbone: str) -> None:
    """retrieval.py's loading, its assertion included."""
    f"{cp['epoch']:d}"
    msg = net.load_state_dict(_kept(cp["model"], RSPNET_PREFIX, RETRIEVAL_BLACKLIST), strict=False)
    name = _classifier_name(backbone)
    assert set(msg.missing_keys) == {f"{name}.weight", f"{name}.bias"}, msg


def _full_width_student(backbone: str) -> MultiTaskStudent:
    """Width 1 (RSPNet has no other), float32 (float64 would double ~200 MB for nothing: the same ops in the
    same dtype are bit-identical), random weights and BN statistics."""
    torch.manual_seed(0)
    return _randomised(MultiTaskStudent(backbone=backbone, width=1.0, parse_size=8)).float()


@pytest.mark.parametrize("backbone,ref", [("c3d", "rspnet_c3d_backbone_state_dict.txt"),
                                          ("r2plus1d", "rspnet_r2plus1d10_backbone_state_dict.txt"),
                                          ("r3d18", "rspnet_r3d18_backbone_state_dict.txt")])
def test_rspnet_layout_is_rspnets_key_layout(backbone: str, ref: str):
    if not (REFERENCE / ref).is_file():
        pytest.skip(f"RSPNet reference layout not found at {REFERENCE / ref}")
    with torch.device("meta"):  # width 1: names AND shapes of the released checkpoint
        full = MultiTaskStudent(backbone=backbone, width=1.0)
        state = export_state(full, {}, "rspnet", "human")["model"]
    got = {k[len(RSPNET_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(RSPNET_PREFIX)}
    assert got == _reference_layout(ref)


@pytest.mark.parametrize("backbone", ["c3d", "r2plus1d", "r3d18"])
def test_rspnet_export_loads_whole_through_rspnets_loading_logic(backbone: str):
    student = _full_width_student(backbone)
    x = _clip().float()
    for branch in ("human", "contrastive"):
        cp = export_state(student, {**_meta(student), "epochs": 200}, "rspnet", branch)
        assert cp["arch"] == {"c3d": "c3d", "r2plus1d": "r2plus1d-vcop", "r3d18": "resnet18"}[backbone]
        assert cp["epoch"] == 200
        net = RSPNetFinetuneNet(backbone).eval()
        taken, missing, unexpected = rspnet_finetune_load(cp, net)
        assert taken.startswith("moco")
        dummy = _classifier_name(backbone)  # RSPNet's unused num_classes=1 head: not part of our export
        assert missing == {"fc.weight", "fc.bias", f"encoder.{dummy}.weight", f"encoder.{dummy}.bias"}
        heads = {"fc1.2.weight", "fc1.2.bias", "fc2.2.weight", "fc2.2.bias"}  # unused by finetuning, as RSPNet's own
        assert unexpected == (heads if branch == "contrastive" else set())
        with torch.no_grad():
            assert torch.equal(net.encoder.get_feature(x), _branch_map(student, branch, x)), branch
        plain = _rspnet_backbone(backbone, 101).eval()
        rspnet_retrieval_load(cp, plain, backbone)
        with torch.no_grad():
            assert torch.equal(plain.get_feature(x), _branch_map(student, branch, x)), branch


def test_rspnet_loading_logic_misses_everything_without_arch():
    """The harness itself: the old file ({"model": ...} only) takes finetune.py's third-party branch and
    loads no tensor (what issue #21 saw: the network finetunes from random weights)."""
    with torch.device("meta"):
        student = MultiTaskStudent(backbone="c3d", width=1.0)
        cp = export_state(student, {}, "rspnet", "contrastive")
        net = RSPNetFinetuneNet("c3d")
    taken, missing, unexpected = rspnet_finetune_load({"model": cp["model"]}, net)
    assert taken == "third-party" and unexpected == {"model"}
    assert missing == {k for k in net.state_dict() if not k.endswith("num_batches_tracked")}  # BN tolerates those
    assert len(missing) == 52  # the count issue #21 saw in RSPNet


def test_torchvision_layout_loads_strictly_into_videoresnet_with_same_features():
    from torchvision.models.video import r3d_18

    student = _student("r3d18", 1.0, split_after=4)
    sd = export_state(student, _meta(student), "torchvision", "contrastive")
    reference_keys = {k for k in r3d_18(weights=None).state_dict() if not k.startswith("fc.")}
    assert set(sd) == reference_keys  # exactly torchvision's r3d_18 key names
    tv = _torchvision_rspnet_r3d18()
    tv.load_state_dict(sd, strict=True)
    x = _clip()
    maps = {}
    tv.layer4.register_forward_hook(lambda m, i, o: maps.setdefault("z", o))
    with torch.no_grad():
        pooled = tv(x)
        ours = _branch_map(student, "contrastive", x)
    assert torch.equal(maps["z"], ours)  # the feature map, bit for bit
    assert torch.allclose(pooled, ours.mean(dim=(2, 3, 4)), rtol=0, atol=1e-12)


def test_round_trip_into_the_student_is_exact(tmp_path: Path):
    student = _student("c3d", 0.25)
    src = save_checkpoint(tmp_path / "student.pt", {**_meta(student), "state_dict": student.float().state_dict()})
    student = student.double()
    out = export_checkpoint(src, tmp_path / "enc.pt", "student")
    back = MultiTaskStudent(backbone="c3d", width=0.25, parse_size=8)
    load_encoders(back, read_exported(out.path))
    for k, v in back.state_dict().items():
        if k.split(".", 1)[0] in ("f_l", "h_h", "h_c"):
            assert torch.equal(v.double(), student.state_dict()[k]), k
    x = _clip()
    with torch.no_grad():
        assert torch.equal(back.double().eval().representation(x), student.representation(x))


def test_rspnet_file_round_trip(tmp_path: Path):
    """The written file: loads with torch.load (weights only), counts learnt parameters, keeps the
    pretrained heads, and loads back into this project's student."""
    student = _student("r2plus1d", 1.0).float()
    src = save_checkpoint(tmp_path / "student.pt", {**_meta(student), "state_dict": student.state_dict()})
    rsp = export_checkpoint(src, tmp_path / "rsp.pth", "rspnet", "contrastive")
    assert rsp.tensors > 0 and len(rsp.sha256) == 64
    learnt = [student.f_l, student.h_c, student.g_a[2], student.g_m[2]]
    assert rsp.parameters == sum(p.numel() for m in learnt for p in m.parameters())  # BN statistics not counted
    model = torch.load(rsp.path, map_location="cpu", weights_only=True)["model"]
    for fc, head in (("fc1", student.g_a), ("fc2", student.g_m)):  # the pretrained heads, not fresh ones
        assert torch.equal(model[f"encoder_q.{fc}.2.weight"], head[2].weight.detach())
    again = MultiTaskStudent(backbone="r2plus1d", width=1.0, parse_size=8)
    load_encoders(again, read_exported(rsp.path))
    want = branch_backbone(student, "contrastive")
    for part in (again.f_l, again.h_h, again.h_c):
        for k, v in part.state_dict().items():
            assert torch.equal(v, want[k]), k


@pytest.mark.parametrize("layout,backbone,words", [
    ("mmaction2", "c3d", "fc6/fc7"), ("mmaction2", "r3d18", "(1,3,3)"), ("mmaction2", "r2plus1d", "depth 18/34"),
    ("torchvision", "c3d", "no c3d"), ("torchvision-r3d_18", "r3d18", "3x7x7"),
    ("torchvision", "r3d18", "fixed widths"), ("rspnet", "c3d", "no width option")])
def test_refusals_say_why(layout: str, backbone: str, words: str):
    with torch.device("meta"):
        student = MultiTaskStudent(backbone=backbone, width=0.5)
    with pytest.raises(CheckpointError, match=r"export --layout") as info:
        export_state(student, {}, layout, "contrastive")
    assert words in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).endswith(f"layouts that can hold this {backbone} x0.5: student")


def test_branch_choices():
    with torch.device("meta"):
        student = MultiTaskStudent(backbone="c3d", width=1.0)
        no_kd = MultiTaskStudent(backbone="c3d", width=1.0, kd=False)
    with pytest.raises(CheckpointError, match="one branch"):
        export_state(student, {}, "rspnet", "both")
    with pytest.raises(CheckpointError, match="without KD"):
        export_state(no_kd, {}, "rspnet", "human")
    with pytest.raises(CheckpointError, match="whole"):
        export_state(student, {}, "student", "human")
    with pytest.raises(CheckpointError, match="pass --branch human .* or --branch contrastive"):
        export_state(student, {}, "rspnet", None)
    assert set(export_state(student, {}, "student", None)["state_dict"]) == {
        k for k in student.state_dict() if k.split(".", 1)[0] in ("f_l", "h_h", "h_c")}
