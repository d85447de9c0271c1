"""VMTF: the classifier's shape and which inputs reach it in the paper mode and the released-code mode."""

import pytest
import torch

from instructseg.modeling.text_fusion import VisionGuidedTextFusion

B, L, D, C5, H_D = 3, 5, 32, 24, 20


def fusion(reference_kv: bool) -> VisionGuidedTextFusion:
    torch.manual_seed(0)  # both modes get the same weights
    return VisionGuidedTextFusion(D, C5, 16, 2, 2, 8, 2, H_D, reference_kv=reference_kv).eval()


def inputs(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "image_features": torch.randn(B, C5, 2, 3, generator=gen),
        "text_global": torch.randn(B, D, generator=gen),
        "text_detailed": torch.randn(B, L, D, generator=gen),
        "text_mask": torch.arange(L)[None] < torch.tensor([L, 3, 1])[:, None],
    }


def change(x: dict[str, torch.Tensor], name: str, index: tuple) -> dict[str, torch.Tensor]:
    """A copy of ``x`` with ``x[name][index]`` replaced by large noise."""
    out = dict(x, **{name: x[name].clone()})
    out[name][index] = torch.randn_like(out[name][index]) * 10
    return out


@pytest.mark.parametrize("reference_kv", [False, True])
def test_classifier_shape(reference_kv):
    assert fusion(reference_kv)(**inputs()).shape == (B, H_D)


def test_released_mode_ignores_the_detailed_text_tokens():
    model, x = fusion(True), inputs()
    with torch.no_grad():
        base = model(**x)
        torch.testing.assert_close(model(**change(x, "text_detailed", (slice(None),))), base, atol=1e-6, rtol=0)
        for name in ("text_global", "image_features"):  # the other inputs do reach the classifier
            assert (model(**change(x, name, (slice(None),))) - base).abs().min() > 1e-4, name


def test_paper_mode_uses_the_real_detailed_tokens_only():
    model, x = fusion(False), inputs()
    with torch.no_grad():
        base = model(**x)
        moved = model(**change(x, "text_detailed", (slice(None), 0)))  # token 0 is real in every row
        assert (moved - base).abs().amax(1).min() > 1e-4
        padded = model(**change(x, "text_detailed", (1, slice(3, None))))  # row 1's padding
        torch.testing.assert_close(padded, base, atol=1e-6, rtol=0)


def test_the_two_modes_differ_on_the_same_weights():
    x = inputs()
    with torch.no_grad():
        assert (fusion(False)(**x) - fusion(True)(**x)).abs().max() > 1e-4
