"""The vision wrappers: frozen towers stay in eval mode, output shapes, and the documented input-size errors."""

import pytest
import torch

from instructseg.modeling.vision import SwinPyramid


def test_frozen_towers_stay_in_eval_mode_while_the_projector_trains(tiny_model):
    tiny_model.eval()
    tiny_model.train()
    for wrapper in (tiny_model.siglip, tiny_model.swin):
        assert wrapper.training
        assert not any(m.training for m in wrapper.tower.modules()), type(wrapper).__name__
    assert all(m.training for m in tiny_model.siglip.projector.modules())


def test_frozen_swin_drops_no_path_in_training_mode(tiny_model):
    """The Swin's DropPath (rate 0.1 in the tiny checkpoint) never fires in the frozen tower, but does once unfrozen."""
    assert tiny_model.swin.tower.config.drop_path_rate > 0
    x = torch.randn(1, 3, tiny_model.config.mask.image_size, tiny_model.config.mask.image_size)
    tiny_model.train()
    torch.manual_seed(0)
    first = tiny_model.swin(x)
    second = tiny_model.swin(x)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not any(f.requires_grad for f in first)
    unfrozen = SwinPyramid(tiny_model.swin.tower, frozen=False).train()
    assert all(m.training for m in unfrozen.tower.modules())
    assert not all(torch.equal(a, b) for a, b in zip(unfrozen(x), first))


def test_siglip_projects_to_llm_width(tiny_model):
    s = tiny_model.config.vision.image_size
    tokens = tiny_model.siglip(torch.randn(3, 3, s, s))
    patch = tiny_model.siglip.tower.config.patch_size
    assert tokens.shape == (3, (s // patch) ** 2, tiny_model.llm.hidden_size)
    assert tiny_model.siglip.num_tokens == (s // patch) ** 2
    assert tokens.requires_grad  # through the trainable projector


def test_swin_pyramid_strides_and_channels(tiny_model):
    s = tiny_model.config.mask.image_size
    pyramid = tiny_model.swin(torch.randn(2, 3, s, s))
    shapes = [tuple(f.shape) for f in pyramid]
    expected = [(2, c, s // stride, s // stride) for c, stride in zip(tiny_model.swin.channels, SwinPyramid.strides)]
    assert shapes == expected


def test_wrong_input_sizes_raise_the_documented_errors(tiny_model):
    for shape in [(2, 3, 32, 32), (2, 1, 64, 64), (3, 64, 64)]:
        with pytest.raises(ValueError, match=r"clip pixel_values: expected \(F, 3, 64, 64\)"):
            tiny_model.siglip(torch.randn(*shape))
    for shape in [(2, 3, 48, 48), (2, 4, 64, 64), (3, 64, 64)]:
        with pytest.raises(ValueError, match="mask pixel_values: expected .* S a multiple of 32"):
            tiny_model.swin(torch.randn(*shape))
