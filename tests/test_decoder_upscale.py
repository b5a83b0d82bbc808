"""model.decoder_upscale: the parsing decoder predicts an r×r block of logits per feature cell."""
from __future__ import annotations

import pytest
import torch

from student.heads import ParsingDecoder


def test_upscale_one_is_the_plain_decoder_and_r_draws_inside_a_cell() -> None:
    torch.manual_seed(0)
    plain, one = ParsingDecoder(16, 7, 12), ParsingDecoder(16, 7, 12, upscale=1)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in one.state_dict().items()}
    r3 = ParsingDecoder(16, 7, 9, upscale=3).eval()
    assert r3.classifier.out_channels == 7 * 9
    z = torch.zeros(1, 16, 2, 3, 3)
    with torch.no_grad():
        r3.classifier.weight.zero_()
        r3.classifier.bias.zero_()
        r3.classifier.bias[1 * 9 + 4] = 5.0   # class 1 at sub-position (1, 1) of every cell (pixel-shuffle order)
        out = r3(z)
    assert out.shape == (1, 7, 9, 9)
    centres = out[0].argmax(0)
    # the middle pixel of each 3x3 block is class 1, its neighbours are not: a shape inside one cell
    assert all(centres[3 * i + 1, 3 * j + 1] == 1 for i in range(3) for j in range(3))
    assert centres[0, 0] == 0 and centres[1, 0] == 0
    with pytest.raises(ValueError, match="upscale"):
        ParsingDecoder(16, 7, 9, upscale=0)
