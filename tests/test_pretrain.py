"""Stage 0 (instructseg.pretrain): labels and descriptions, determinism, reuse, and loading through from_pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from instructseg.config import InstructSegConfig
from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.vision import PROJECTOR_FILE
from instructseg.pretrain import (
    STAGE0_FILE,
    Scene,
    Stage0Config,
    describe,
    mask_classes,
    position_words,
    pretrain_tiny,
)
from instructseg.tiny import make_tiny

SMALL = Stage0Config(scenes=8, mllm_steps=2, mllm_batch=2, mask_steps=2, mask_batch=2)


def _scene(task: str = "res") -> Scene:
    frames = 2 if task == "rvos" else 1
    masks = np.zeros((frames, 32, 32), dtype=bool)
    masks[0, 2:10, 20:30] = True  # top right on frame 0
    if frames == 2:
        masks[1, 22:30, 20:30] = True
    return Scene(
        task=task,
        frames=[np.zeros((32, 32, 3), dtype=np.uint8)] * frames,
        masks={"0": masks},
        objects={"0": {"shape": "star", "colour": "pink", "size": "small", "motion": "down"}},
        queries=[],
        values={"colour": ["red", "pink"], "shape": ["circle", "star"], "size": ["small", "large"]},
    )


def test_position_words_and_descriptions():
    scene = _scene()
    assert position_words(scene.masks["0"][0]) == "at the top right"
    middle = np.zeros((30, 30), dtype=bool)
    middle[12:18, 12:18] = True
    assert position_words(middle) == "in the middle"
    assert describe(scene, "0", 0) == "the small pink star at the top right"
    assert describe(_scene("rvos"), "0", 1) == "the small pink star at the bottom right moving down"


def test_patch_labels_name_the_object_under_each_patch_centre():
    labels = _scene().patch_labels(0, grid=4)  # patch centres at pixels 4, 12, 20, 28
    assert labels.shape == (16, 3)
    on_object = {int(i) for i in torch.nonzero((labels != torch.tensor([2, 2, 2])).all(1))}
    assert on_object == {2, 3}  # row 0 (y = 4), columns 2 and 3 (x = 20, 28)
    assert labels[3].tolist() == [1, 1, 0]  # pink, star, small
    assert labels[0].tolist() == [2, 2, 2]  # background is the last class of each attribute


@pytest.mark.slow
def test_stage0_is_deterministic_reused_and_loads_through_from_pretrained(tmp_path):
    lines: list[str] = []
    first = pretrain_tiny(tmp_path / "a", seed=3, image_size=64, config=SMALL, log=lines.append)
    second = pretrain_tiny(tmp_path / "b", seed=3, image_size=64, config=SMALL, log=lines.append)
    assert any("mllm step 2/2" in line for line in lines)
    for part in ("siglip/model.safetensors", "llm/model.safetensors", "mask2former/model.safetensors"):
        a, b = load_file(first / part), load_file(second / part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    summary = json.loads((first / STAGE0_FILE).read_text())
    assert summary["settings"]["seed"] == 3 and set(summary["final"]) == {"mllm", "mask2former"}

    stamp = (first / "llm" / "model.safetensors").stat().st_mtime_ns
    lines.clear()
    pretrain_tiny(first, seed=3, image_size=64, config=SMALL, log=lines.append)
    assert "reusing" in lines[0] and (first / "llm" / "model.safetensors").stat().st_mtime_ns == stamp
    pretrain_tiny(first, seed=4, image_size=64, config=SMALL, log=lines.append)  # other settings: trained again
    assert json.loads((first / STAGE0_FILE).read_text())["settings"]["seed"] == 4

    model = InstructSeg.from_config(InstructSegConfig.from_name("tiny").with_pretrained_root(second))
    projector = load_file(second / "siglip" / PROJECTOR_FILE)
    assert all(torch.equal(model.siglip.projector.state_dict()[k], v) for k, v in projector.items())
    queries = load_file(second / "mask2former" / "model.safetensors")["transformer_module.queries_embedder.weight"]
    assert torch.equal(model.mask_decoder.query_position.weight, queries)  # the trained Mask2Former, 8 queries


def test_mask_classes_name_every_attribute_combination_in_object_class_order():
    scene = _scene()
    names = mask_classes(scene.values, ("colour", "shape"))
    assert names == ("red circle", "red star", "pink circle", "pink star")
    assert names[scene.object_class("0", ("colour", "shape"))] == "pink star"
    assert mask_classes(scene.values, ()) == ("object",) and scene.object_class("0", ()) == 0


def test_stage0_with_attribute_classes_trains_a_mask2former_on_them(tmp_path):
    config = Stage0Config(**{**SMALL.__dict__, "mask_labels": ("colour", "shape")})
    root = pretrain_tiny(tmp_path / "classes", seed=0, image_size=64, config=config, log=lambda line: None)
    stored = json.loads((root / "mask2former" / "config.json").read_text())
    assert len(stored["id2label"]) == 40 and stored["id2label"]["0"] == "red circle"
    assert json.loads((root / STAGE0_FILE).read_text())["settings"]["config"]["mask_labels"] == ["colour", "shape"]
    lines: list[str] = []
    pretrain_tiny(root, seed=0, image_size=64, config=config, log=lines.append)
    assert "reusing" in lines[0]  # the tuple setting matches its JSON record
    InstructSeg.from_config(InstructSegConfig.from_name("tiny").with_pretrained_root(root))  # loads as usual


def test_random_parts_stay_the_default(tmp_path):
    root = make_tiny(tmp_path / "random", image_size=32)
    assert not (root / STAGE0_FILE).exists() and not (root / "siglip" / PROJECTOR_FILE).exists()
    config = InstructSegConfig.from_name("tiny", vision={"image_size": 32}, mask={"image_size": 32})
    assert InstructSeg.from_config(config.with_pretrained_root(root)).siglip.tower.config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="multiple of 32"):
        make_tiny(tmp_path / "bad", image_size=48)
