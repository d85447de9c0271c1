import json

import pytest

from instructseg.config import InstructSegConfig


def test_full_size_preset_has_paper_sizes():
    cfg = InstructSegConfig.from_name("instructseg-phi2")
    assert cfg.vision.image_size == 384 and cfg.vision.select_layer == -2
    assert cfg.perceiver.num_latents == 128 and cfg.perceiver.depth == 3 and cfg.fusion.depth == 3
    assert cfg.decoder.num_queries == 100 and cfg.mask.image_size == 1024
    assert (cfg.llm.lora.r, cfg.llm.lora.alpha, cfg.llm.lora.target_modules) == (8, 16, ["q_proj", "v_proj"])
    assert cfg.llm.path == "microsoft/phi-2"


def test_tiny_preset_and_overrides():
    cfg = InstructSegConfig.from_name("tiny", decoder={"num_queries": 4}, llm={"lora": {"r": 2}})
    assert cfg.decoder.num_queries == 4 and cfg.llm.lora.r == 2 and cfg.llm.lora.alpha == 16
    assert cfg.name == "tiny"


def test_round_trip_through_json(tmp_path):
    cfg = InstructSegConfig.from_name("tiny", fusion={"reference_kv": True})
    cfg.save(tmp_path / "config.json")
    again = InstructSegConfig.from_file(tmp_path / "config.json")
    assert again == cfg
    assert json.loads((tmp_path / "config.json").read_text())["fusion"]["reference_kv"] is True


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"decoder": {"num_queries": 0}}, "decoder.num_queries"),
        ({"mask": {"image_size": 100}}, "mask.image_size"),
        ({"llm": {"lora": {"dropout": 1.5}}}, "llm.lora.dropout"),
        ({"loss": {"importance_sample_ratio": 2.0}}, "loss.importance_sample_ratio"),
        ({"num_reference_frames": 0}, "num_reference_frames"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        InstructSegConfig.from_name("tiny", **overrides)


def test_unknown_keys_and_presets_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown key"):
        InstructSegConfig.from_dict({"vision": {"siglip": "x"}})
    with pytest.raises(ValueError, match="Unknown preset"):
        InstructSegConfig.from_name("huge")
    with pytest.raises(FileNotFoundError, match="missing.json"):
        InstructSegConfig.from_file(tmp_path / "missing.json")
