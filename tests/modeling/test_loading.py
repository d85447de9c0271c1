"""Pretrained parts load by path through the production loader; bad paths give one clear error."""

import dataclasses

import pytest

from instructseg.constants import SPECIAL_TOKENS
from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.loading import PretrainedLoadError


def test_loads_tiny_parts_by_path(tiny_config, tiny_root):
    model = InstructSeg.from_config(tiny_config)
    assert model.siglip.image_size == tiny_config.vision.image_size
    assert model.swin.channels == [16, 32, 64, 128]
    assert all(t in model.tokenizer.get_vocab() for t in SPECIAL_TOKENS)
    assert str(tiny_root) in tiny_config.llm.path


@pytest.mark.parametrize("part, field", [("siglip", "vision"), ("llm", "llm"), ("mask2former", "mask")])
def test_missing_directory_names_path_and_content(tiny_config, tmp_path, part, field):
    missing = tmp_path / "nowhere" / part
    key = {"vision": "siglip_path", "llm": "path", "mask": "mask2former_path"}[field]
    sub = dataclasses.replace(getattr(tiny_config, field), **{key: str(missing)})
    with pytest.raises(PretrainedLoadError) as err:
        InstructSeg.from_config(dataclasses.replace(tiny_config, **{field: sub}))
    assert str(missing) in str(err.value) and "Expected" in str(err.value)


def test_directory_without_weights_is_rejected(tiny_config, tmp_path):
    empty = tmp_path / "siglip"
    empty.mkdir()
    (empty / "config.json").write_text("{}")
    vision = dataclasses.replace(tiny_config.vision, siglip_path=str(empty))
    with pytest.raises(PretrainedLoadError, match="no weight files"):
        InstructSeg.from_config(dataclasses.replace(tiny_config, vision=vision))
