"""Pixel decoder shapes, and a pin of the transformers dependency it runs on.

``test_transformers_dependency_pin_...`` checks ``transformers``' pure-PyTorch ``multi_scale_deformable_attention``
(the op inside the pixel decoder) against a naive loop: it tests the dependency, not instructseg's code, so that a
``transformers`` upgrade that changes the op fails here first.
"""

import math

import pytest
import torch
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention


def bilinear_zero_padded(feature: torch.Tensor, x: float, y: float) -> torch.Tensor:
    """Sample ``feature (C, H, W)`` at normalised (x, y) in [0, 1] like grid_sample(align_corners=False, zeros)."""
    _, h, w = feature.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(feature.shape[0], dtype=feature.dtype)
    for dy in (0, 1):
        for dx in (0, 1):
            xi, yi = x0 + dx, y0 + dy
            weight = (1 - abs(px - xi)) * (1 - abs(py - yi))
            if 0 <= xi < w and 0 <= yi < h:
                out += weight * feature[:, yi, xi]
    return out


def naive_ms_deform_attn(value, shapes, locations, weights):
    b, _, heads, dim = value.shape
    _, queries, _, levels, points, _ = locations.shape
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    out = torch.zeros(b, queries, heads * dim, dtype=value.dtype)
    for bi in range(b):
        for qi in range(queries):
            for hi in range(heads):
                acc = torch.zeros(dim, dtype=value.dtype)
                for li, (h, w) in enumerate(shapes):
                    feature = value[bi, starts[li] : starts[li] + h * w, hi].T.reshape(dim, h, w)
                    for pi in range(points):
                        x, y = locations[bi, qi, hi, li, pi].tolist()
                        acc += weights[bi, qi, hi, li, pi] * bilinear_zero_padded(feature, x, y)
                out[bi, qi, hi * dim : (hi + 1) * dim] = acc
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformers_dependency_pin_deformable_attention_matches_naive_loop(seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(4, 6), (2, 3), (1, 2)]
    b, heads, dim, queries, points = 2, 2, 3, 5, 4
    value = torch.randn(b, sum(h * w for h, w in shapes), heads, dim, generator=gen, dtype=torch.float64)
    # locations slightly outside [0, 1] exercise the zero padding
    locations = torch.rand(b, queries, heads, len(shapes), points, 2, generator=gen, dtype=torch.float64) * 1.2 - 0.1
    weights = torch.rand(b, queries, heads, len(shapes), points, generator=gen, dtype=torch.float64)
    weights = weights / weights.flatten(-2).sum(-1)[..., None, None]
    fast = multi_scale_deformable_attention(value, shapes, locations, weights)
    torch.testing.assert_close(fast, naive_ms_deform_attn(value, shapes, locations, weights), atol=1e-10, rtol=1e-10)


def test_pixel_decoder_shapes(tiny_model):
    pyramid = tiny_model.swin(torch.randn(2, 3, 64, 64))
    mask_features, multi_scale = tiny_model.pixel_decoder(pyramid)
    c = tiny_model.pixel_decoder.hidden_size
    assert mask_features.shape == (2, tiny_model.pixel_decoder.mask_dim, 16, 16)
    assert [tuple(f.shape) for f in multi_scale] == [(2, c, 2, 2), (2, c, 4, 4), (2, c, 8, 8)]
    with pytest.raises(ValueError, match="4 feature maps"):
        tiny_model.pixel_decoder(pyramid[:3])
