"""SCHP pre/post-processing in torch against OpenCV's warps, and batching of frames of any sizes."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from teacher.labels import flip_permutation
from teacher.preprocess import (
    BGR_MEAN,
    BGR_STD,
    letterbox,
    letterbox_matrix,
    letterbox_pixels,
    normalise,
    output_to_frame_matrix,
    parse_frames,
    parse_to_labels,
    warp_back,
)
from teacher.schp import build_schp


def _cv2_letterbox(img: np.ndarray, size: int) -> np.ndarray:
    m = letterbox_matrix(img.shape[1], img.shape[0], size)
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


def _linear_frame(h: int, w: int) -> np.ndarray:
    """uint8 BGR frame whose channels are affine in (x, y): bilinear warps reproduce it exactly."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x + 2 * y, 2 * x + y + 3, 200 - x - y], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def demo(shared_data) -> np.ndarray:
    img = cv2.imread(str(shared_data / "images" / "schp_demo.jpg"), cv2.IMREAD_COLOR)
    assert img is not None and img.shape == (1333, 2000, 3)
    return img


@pytest.fixture(scope="module")
def frames(demo) -> list[np.ndarray]:
    """Three frames of different sizes and aspect ratios cut from the demo photo."""
    return [cv2.resize(demo, (97, 65), interpolation=cv2.INTER_AREA),
            cv2.resize(np.ascontiguousarray(demo[:, 600:1400]), (60, 100), interpolation=cv2.INTER_AREA),
            np.ascontiguousarray(demo[150:230, 820:900])]


@pytest.fixture(scope="module")
def lip_net() -> nn.Module:
    """A random LIP-layout network with tame activations (He convs, small residual norms, some negative)."""
    torch.manual_seed(0)
    model = build_schp(20)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                sign = torch.where(torch.rand(p.shape, generator=g) < 0.3, -1.0, 1.0)
                p.copy_(sign * (torch.rand(p.shape, generator=g) + 0.5) * (0.2 if ".bn3." in name else 1.0))
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


# --- the letterbox ----------------------------------------------------------------------------------


@pytest.mark.parametrize("w,h,size", [(2000, 1333, 473), (333, 500, 512), (64, 64, 65), (97, 65, 33)])
def test_letterbox_matrix_maps_ends_and_centre(w, h, size):
    m = np.vstack([letterbox_matrix(w, h, size), [0, 0, 1]])
    c = (size - 1) / 2
    np.testing.assert_allclose(m @ [(w - 1) / 2, (h - 1) / 2, 1], [c, c, 1], atol=1e-12)
    if w >= h:
        np.testing.assert_allclose((m @ [0, 0, 1])[0], 0, atol=1e-12)
        np.testing.assert_allclose((m @ [w - 1, 0, 1])[0], size - 1, atol=1e-12)
    else:
        np.testing.assert_allclose((m @ [0, h - 1, 1])[1], size - 1, atol=1e-12)
    assert m[0, 0] == m[1, 1] == (size - 1) / max(w - 1, h - 1) and m[0, 1] == m[1, 0] == 0
    with pytest.raises(ValueError, match="too small"):
        letterbox_matrix(1, 5, size)


def test_letterbox_matches_cv2_on_real_images(shared_data):
    """Rounded like cv2.warpAffine's uint8 output (INTER_LINEAR, constant 0 border): equal but for a few
    pixels one grey level apart (a value within float noise of .5 rounds either way); unrounded, within half."""
    for path in sorted((shared_data / "images").glob("*.jpg")):
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        for variant in (img, np.ascontiguousarray(img.transpose(1, 0, 2)),
                        cv2.resize(img, (301, 200), interpolation=cv2.INTER_AREA)):
            for size in (129, 473):
                ours = letterbox_pixels([variant], size)[0].permute(1, 2, 0).numpy()
                ref = _cv2_letterbox(variant, size).astype(np.float32)
                diff = np.abs(ours - ref)
                assert np.array_equal(ours, np.round(ours)), "the network must see whole grey levels"
                assert diff.max() <= 1.0 and (diff > 0).mean() < 1e-3, (path.name, variant.shape, size, diff.max())
                bare = letterbox_pixels([variant], size, rounded=False)[0].permute(1, 2, 0).numpy()
                assert np.abs(bare - ref).max() < 0.51 and np.abs(bare - ref).mean() < 0.3


def test_letterbox_normalises_with_bgr_statistics():
    blue = np.zeros((30, 50, 3), np.uint8)
    blue[..., 0] = 255
    x = letterbox([blue], 33)[0]
    mean, std = np.array(BGR_MEAN), np.array(BGR_STD)
    np.testing.assert_allclose(x[:, 16, 16].numpy(), (np.array([1.0, 0, 0]) - mean) / std, atol=1e-5)
    np.testing.assert_allclose(x[:, 0, 16].numpy(), -mean / std, atol=1e-5)  # letterbox padding (black)
    pixels = letterbox_pixels([blue], 33)
    torch.testing.assert_close(x, normalise(pixels)[0])
    torch.testing.assert_close(normalise(pixels), (pixels / 255 - torch.tensor(mean).float().view(1, 3, 1, 1))
                               / torch.tensor(std).float().view(1, 3, 1, 1))


def test_mixed_size_batch_letterbox_equals_one_at_a_time(frames):
    bare = letterbox_pixels(frames, 65, rounded=False)
    batch = letterbox_pixels(frames, 65)
    for i, f in enumerate(frames):
        # float32 grid
        torch.testing.assert_close(bare[i], letterbox_pixels([f], 65, rounded=False)[0], rtol=0, atol=2e-3)
        # rounded: a value that float noise puts either side of .5 may round the other way (as in cv2)
        diff = (batch[i] - letterbox_pixels([f], 65)[0]).abs()
        assert diff.max() <= 1 and (diff > 0).float().mean() < 0.05
    same = [frames[2], frames[2][::-1].copy()]
    as_tensor = letterbox(torch.from_numpy(np.stack(same)), 65)
    torch.testing.assert_close(as_tensor, letterbox(np.stack(same), 65))
    torch.testing.assert_close(as_tensor, letterbox(same, 65))


def test_frame_validation():
    with pytest.raises(ValueError, match="frame 1 must be a uint8"):
        letterbox([np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.float32)], 9)
    with pytest.raises(ValueError, match="frame tensor must be uint8"):
        letterbox(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 9)
    with pytest.raises(ValueError, match="no frames"):
        letterbox([], 9)


# --- the inverse warp -------------------------------------------------------------------------------


@pytest.mark.parametrize("w,h", [(200, 133), (90, 160), (129, 129), (40, 31)])
def test_warp_back_matches_cv2_inverse_map(w, h):
    """SCHP's transform_logits: per-channel cv2.warpAffine(..., WARP_INVERSE_MAP) of S×S logits to the frame."""
    size, channels = 129, 20
    logits = np.random.default_rng(w * h).normal(0, 3, (size, size, channels)).astype(np.float32)
    m = letterbox_matrix(w, h, size)
    ref = np.stack([cv2.warpAffine(logits[..., c], m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0) for c in range(channels)])
    ours = warp_back(torch.from_numpy(logits).permute(2, 0, 1)[None], [(h, w)], (h, w))[0].numpy()
    assert np.abs(ours - ref).max() < 1e-3


def test_warp_back_output_grid_uses_pixel_centres():
    """At any output size, output pixel centres land where the pixel-edge convention says they should."""
    size = 65
    ramp = torch.arange(size, dtype=torch.float64)
    ys, xs = torch.meshgrid(ramp, ramp, indexing="ij")
    square = torch.stack([xs, ys, torch.ones_like(xs)])[None]  # channels = S-space x, y, and 1
    for (h, w), out in [((133, 200), (16, 24)), ((160, 90), (64, 64)), ((31, 40), (31, 40))]:
        got = warp_back(square, [(h, w)], out)[0]
        k = (size - 1) / max(w - 1, h - 1)
        x_frame = (np.arange(out[1]) + 0.5) * w / out[1] - 0.5  # output pixel centres, frame pixel units
        y_frame = (np.arange(out[0]) + 0.5) * h / out[0] - 0.5
        x_square = k * (x_frame - (w - 1) / 2) + (size - 1) / 2
        y_square = k * (y_frame - (h - 1) / 2) + (size - 1) / 2
        np.testing.assert_allclose(got[0].numpy(), np.broadcast_to(x_square, out), atol=1e-9)
        np.testing.assert_allclose(got[1].numpy(), np.broadcast_to(y_square[:, None], out), atol=1e-9)
        np.testing.assert_allclose(got[2].numpy(), 1.0, atol=1e-12)  # covers the frame: no zero border leaks in
    # frame-own-size output is the identity map onto frame pixels
    np.testing.assert_allclose(output_to_frame_matrix(40, 31, 40, 31), [[1, 0, 0], [0, 1, 0]])


def test_mixed_size_warp_back_equals_one_at_a_time():
    square = torch.randn(3, 5, 33, 33, generator=torch.Generator().manual_seed(4))
    sizes = [(65, 97), (100, 60), (80, 80)]
    batch = warp_back(square, sizes, (20, 30))
    for i, hw in enumerate(sizes):
        torch.testing.assert_close(batch[i], warp_back(square[i:i + 1], [hw], (20, 30))[0])


@pytest.mark.parametrize("size", [65, 33])
def test_letterbox_then_warp_back_reproduces_linear_frames(size):
    """Forward and inverse geometry agree: an affine image survives the round trip (away from the border)."""
    frames = [_linear_frame(30, 40), _linear_frame(44, 30)]
    square = letterbox_pixels(frames, size, dtype=torch.float64, rounded=False)
    margin = 1 if size == 65 else 2
    for i, f in enumerate(frames):
        back = warp_back(square[i:i + 1], [f.shape[:2]], f.shape[:2])[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(back[margin:-margin, margin:-margin], f[margin:-margin, margin:-margin], atol=1e-6)


# --- parse_frames -----------------------------------------------------------------------------------


class _Subsample(nn.Module):
    """Stand-in network: 'logits' = 10 × input sampled every 4th pixel (like a stride-4 output)."""

    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::4, ::4] * self.scale


def _even_linear_frame(h: int, w: int) -> np.ndarray:
    """Like _linear_frame with even coefficients: letterboxed at scale 2 (size 65 for a 33-pixel long side),
    every sample is a whole grey level, so SCHP's rounding leaves the affine image exact."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([2 * x + 4 * y, 4 * x + 2 * y + 3, 200 - 2 * x - 2 * y], axis=-1).astype(np.uint8)


def test_parse_frames_chain_is_aligned_with_the_frame():
    """letterbox → network → upsample to S×S → inverse warp → softmax, checked end to end on affine frames."""
    frames = [_even_linear_frame(17, 33), _even_linear_frame(33, 25)]
    net = _Subsample()
    maps = [parse_frames(net, [f], 65, out_size=f.shape[:2])[0] for f in frames]
    for f, got in zip(frames, maps):
        x = torch.from_numpy(f.astype(np.float64)).permute(2, 0, 1)[None]
        expected = torch.softmax(normalise(x) * 10, dim=1)[0]
        # the zero border reaches 4 S-pixels (one output stride) ≈ 2.4 frame pixels inwards
        torch.testing.assert_close(got[:, 3:-3, 3:-3], expected[:, 3:-3, 3:-3], rtol=0, atol=1e-6)


def test_parse_frames_batch_of_different_sizes_equals_one_at_a_time(lip_net, frames):
    batch = parse_frames(lip_net, frames, 65, out_size=(24, 40))
    assert batch.shape == (3, 20, 24, 40) and batch.dtype == torch.float32
    torch.testing.assert_close(batch.sum(1), torch.ones(3, 24, 40), rtol=0, atol=1e-5)
    assert (batch >= 0).all()
    for i, f in enumerate(frames):
        # 2e-4: batching may round a pixel at a float-noise tie the other way (one grey level)
        torch.testing.assert_close(batch[i], parse_frames(lip_net, [f], 65, out_size=(24, 40))[0], rtol=0, atol=2e-4)
    # not a trivial map: classes vary over the frame
    assert batch.argmax(1).unique().numel() > 1 or batch.std() > 1e-3


def test_flip_test_is_mirror_equivariant(lip_net, frames):
    """With the flip test, a mirrored frame gives the mirrored map with left/right classes swapped.

    Exact here because every feature map of a 33² input has odd size, so the network is mirror-symmetric."""
    f = frames[0]
    plain = parse_frames(lip_net, [f], 33, out_size=32)
    with_flip = parse_frames(lip_net, [f], 33, out_size=32, flip=True)
    mirrored = parse_frames(lip_net, [np.ascontiguousarray(f[:, ::-1])], 33, out_size=32, flip=True)
    torch.testing.assert_close(mirrored[0], with_flip[0].flip(-1)[flip_permutation("lip")], rtol=0, atol=1e-5)
    assert (with_flip - plain).abs().max() > 1e-3


class _Mixer(nn.Module):
    """Stand-in network with 5 classes: a fixed random 1×1 conv, then every 4th pixel."""

    num_classes = 5

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 5, 1)
        with torch.no_grad():
            self.mix.weight.copy_(torch.randn(5, 3, 1, 1, generator=torch.Generator().manual_seed(5)) * 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x)[:, :, ::4, ::4]


def test_parse_to_labels_is_argmax_at_frame_resolution(frames):
    net = _Mixer().eval()
    labels = parse_to_labels(net, frames, 65)
    assert len({lab.shape for lab in labels}) == 3
    assert [lab.shape for lab in labels] == [f.shape[:2] for f in frames]
    # one frame at a time, so that a rounding tie cannot differ between the two calls
    labels = [parse_to_labels(net, [f], 65)[0] for f in frames]
    for f, lab in zip(frames, labels):
        assert lab.shape == f.shape[:2] and lab.dtype == torch.uint8
        probs = parse_frames(net, [f], 65, out_size=f.shape[:2])[0]
        top2 = probs.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 1e-4  # ignore numerical ties
        assert clear.float().mean() > 0.9 and lab.unique().numel() > 1
        assert torch.equal(lab[clear], probs.argmax(0).to(torch.uint8)[clear])


def test_autocast_bfloat16_stays_close(lip_net, frames):
    fp32 = parse_frames(lip_net, frames[:1], 33, out_size=16)
    bf16 = parse_frames(lip_net, frames[:1], 33, out_size=16, amp_dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16.sum(1), torch.ones(1, 16, 16), rtol=0, atol=1e-5)
    assert 0 < (bf16 - fp32).abs().max() < 0.1
