"""pretrain.augment_device: the batched on-device colour half gives the same tensors as the worker's
CPU augmentation, clip for clip, for the same seed and item (on CPU here; the code is device-agnostic)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from student.gpu_augment import batch_clips, colour_batch
from student.transforms import ClipAugment, colour_vector
from test_pretrain import toy  # noqa: F401  (the pretraining fixture: 8 short videos + a teacher cache)
from test_pretrain_data import CLIPS, MODEL, FakeReader, make_manifest, make_plan

TOL = 2e-5  # normalised units (≈ 1e-5 of the 0..1 range after dividing by std ≈ 0.22)


def natural_frames(seed: int, t: int = 4, h: int = 40, w: int = 52) -> np.ndarray:
    """Smooth colourful frames (gradients + noise), so every hue sector and saturation level occurs."""
    g = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([xs, ys, 1 - xs * ys], -1) * 255
    out = base[None] + g.normal(0, 40, (t, h, w, 3))
    return np.clip(out, 0, 255).astype(np.uint8)


def test_colour_batch_matches_per_clip_cpu_augmentation() -> None:
    aug = ClipAugment(24, grayscale_p=0.3, jitter_p=0.8)
    refs, raws, vecs = [], [], []
    for seed in range(24):  # 24 clips: every op order position, skipped jitter and grayscale all occur
        frames = natural_frames(seed)
        p = aug.sample(frames.shape[1], frames.shape[2], np.random.default_rng(seed))
        refs.append(aug.apply(frames, p).clip)
        geo = aug.geometry(frames, p)
        assert geo.clip.dtype == torch.uint8 and geo.box == aug.apply(frames, p).box
        raws.append(geo.clip)
        vecs.append(colour_vector(p))
    params = torch.stack(vecs)
    assert (params[:, 0] == 0).any() and (params[:, 0] == 1).any() and (params[:, 9] == 1).any()
    out = colour_batch(torch.stack(raws), params)
    ref = torch.stack(refs)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max().item() < TOL


def test_colour_batch_rejects_float_clips() -> None:
    with pytest.raises(ValueError, match="uint8"):
        colour_batch(torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 10))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_dataset_items_agree_between_cpu_and_gpu_settings(index: int) -> None:
    """Same seed, same item: the worker's uint8 clips + parameters, finished by batch_clips, equal the CPU item."""
    manifest = make_manifest([40, 36, 50])
    plan = make_plan(manifest, 4, 8)
    model = dataclasses.replace(MODEL, kd=False)
    aug = ClipAugment(MODEL.input_size)  # the full RSPNet recipe, colour jitter included

    def dataset(device: str):
        from student.pretrain_data import PretrainClipDataset

        return PretrainClipDataset(manifest, plan, None, model, CLIPS, seed=7, reader=FakeReader(), augment=aug,
                                   augment_device=device)

    cpu, gpu = dataset("cpu")[(3, index)], dataset("gpu")[(3, index)]
    assert gpu["query"].dtype == torch.uint8 and gpu["query"].nbytes * 4 == cpu["query"].nbytes
    assert torch.equal(cpu["query_box"], gpu["query_box"]) and cpu["query_flip"] == gpu["query_flip"]
    batch = {k: (v.unsqueeze(0) if torch.is_tensor(v) else v) for k, v in gpu.items()}
    finished = batch_clips(batch, torch.device("cpu"), "gpu")
    for name, got in zip(("query", "key_pos", "key_neg"), finished):
        assert (got[0] - cpu[name]).abs().max().item() < TOL, name


def test_pretraining_with_gpu_augmentation_matches_cpu_augmentation(toy, tmp_path) -> None:
    """The whole pretraining loop with augment_device = "gpu" (run on the CPU) trains on the same tensors:
    its first-step losses equal those of "cpu" to float tolerance, for the same seed."""
    import dataclasses as dc

    import test_pretrain as tp
    from pipeline.core.distributed import DistInfo
    from student.pretrain import pretrain

    cfg = dc.replace(tp.CFG, epochs=1, max_steps_per_epoch=1, deterministic=False)
    first = {}
    for device in ("cpu", "gpu"):
        summary = pretrain(toy["manifest"], toy["cache"], tmp_path / device, tp.MODEL,
                           dc.replace(cfg, augment_device=device), tp.CLIPS, dist=DistInfo())
        first[device] = summary["final"]
    for key in ("loss", "loss_kd", "loss_rsp", "loss_avid"):
        assert abs(first["cpu"][key] - first["gpu"][key]) < 1e-4, (key, first)
