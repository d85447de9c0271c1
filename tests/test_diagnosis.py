"""The query diagnosis of benchmarks/train_quality.py: the linear probe and the region colours it regresses on."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_quality import linear_r2, region_colours  # noqa: E402


def test_linear_r2_is_one_for_a_linear_target_and_near_zero_for_noise():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(400, 8, generator=generator)
    y = x @ torch.randn(8, 3, generator=generator) + 0.5
    assert linear_r2(x, y) > 0.999
    assert linear_r2(x, torch.randn(400, 3, generator=generator)) < 0.05
    assert linear_r2(x[:30], (x[:30] ** 2).sum(1, keepdim=True)) < 0.5  # not linear: poorly explained
    assert math.isnan(linear_r2(x[:2], y[:2]))  # too few rows to hold any out


def test_region_colours_average_the_pixels_under_each_mask():
    pixels = torch.zeros(1, 3, 8, 8)
    pixels[0, 0, :4] = 1.0  # top half red channel 1
    pixels[0, 2, 4:] = 2.0  # bottom half blue channel 2
    masks = torch.zeros(1, 3, 4, 4)  # at half the resolution
    masks[0, 0, :2] = 1  # top half
    masks[0, 1, 2:, :2] = 1  # bottom-left quarter
    colours, area = region_colours(masks, pixels)
    assert torch.allclose(colours[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(colours[0, 1], torch.tensor([0.0, 0.0, 2.0]))
    assert torch.equal(colours[0, 2], torch.zeros(3)) and area[0].tolist() == [8.0, 4.0, 0.0]
