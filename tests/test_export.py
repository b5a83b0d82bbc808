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


@pytest.mark.parametrize("backbone,ref", [("c3d", "rspnet_c3d_backbone_state_dict.txt"),
                                          ("r2plus1d", "rspnet_r2plus1d10_backbone_state_dict.txt"),
                                          ("r3d18", "rspnet_r3d18_backbone_state_dict.txt")])
def test_rspnet_layout_is_rspnets_key_layout_and_same_features(backbone: str, ref: str):
    if not (REFERENCE / ref).is_file():
        pytest.skip(f"RSPNet reference layout not found at {REFERENCE / ref}")
    with torch.device("meta"):  # width 1: names AND shapes of the released checkpoint
        full = MultiTaskStudent(backbone=backbone, width=1.0)
        state = export_state(full, {}, "rspnet", "human")["model"]
    got = {k[len(RSPNET_PREFIX):]: tuple(v.shape) for k, v in state.items() if k.startswith(RSPNET_PREFIX)}
    assert got == _reference_layout(ref)

    student = _student(backbone, 0.25)
    for branch in ("human", "contrastive"):
        sd = export_state(student, _meta(student), "rspnet", branch)["model"]
        target = build_backbone(backbone, 0.25).double().eval()  # a plain backbone, RSPNet's module names
        target.load_state_dict({k[len(RSPNET_PREFIX):]: v for k, v in sd.items() if k.startswith(RSPNET_PREFIX)},
                               strict=True)
        x = _clip()
        with torch.no_grad():
            assert torch.equal(target(x), _branch_map(student, branch, x))
        heads = {k for k in sd if not k.startswith(RSPNET_PREFIX)}
        assert heads == ({"encoder_q.fc1.2.weight", "encoder_q.fc1.2.bias", "encoder_q.fc2.2.weight",
                          "encoder_q.fc2.2.bias"} if branch == "contrastive" else set())


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

    rsp = export_checkpoint(src, tmp_path / "rsp.pth", "rspnet", "contrastive")
    assert rsp.tensors > 0 and len(rsp.sha256) == 64
    learnt = [student.f_l, student.h_c, student.g_a[2], student.g_m[2]]
    assert rsp.parameters == sum(p.numel() for m in learnt for p in m.parameters())  # BN statistics not counted
    model = read_exported(rsp.path)["model"]
    for fc, head in (("fc1", student.g_a), ("fc2", student.g_m)):  # the pretrained heads, not fresh ones
        assert torch.equal(model[f"encoder_q.{fc}.2.weight"].double(), head[2].weight.detach())
    again = MultiTaskStudent(backbone="c3d", width=0.25, parse_size=8)
    load_encoders(again, read_exported(rsp.path))
    want = branch_backbone(student, "contrastive")
    for part in (again.f_l, again.h_h, again.h_c):
        for k, v in part.state_dict().items():
            assert torch.equal(v.double(), want[k]), k


@pytest.mark.parametrize("layout,backbone,words", [
    ("mmaction2", "c3d", "fc6/fc7"), ("mmaction2", "r3d18", "(1,3,3)"), ("mmaction2", "r2plus1d", "depth 18/34"),
    ("torchvision", "c3d", "no c3d"), ("torchvision-r3d_18", "r3d18", "3x7x7"),
    ("torchvision", "r3d18", "fixed widths")])
def test_refusals_say_why(layout: str, backbone: str, words: str):
    with torch.device("meta"):
        student = MultiTaskStudent(backbone=backbone, width=0.5)
    with pytest.raises(CheckpointError, match=r"export --layout") as info:
        export_state(student, {}, layout, "contrastive")
    assert words in str(info.value) and "\n" not in str(info.value)


def test_branch_choices():
    with torch.device("meta"):
        student = MultiTaskStudent(backbone="c3d", width=0.25)
        no_kd = MultiTaskStudent(backbone="c3d", width=0.25, kd=False)
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
