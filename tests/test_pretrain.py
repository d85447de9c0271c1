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
    mean_pointing,
    pointing,
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


def test_patch_labels_name_the_object_covering_each_patch():
    labels = _scene().patch_labels(0, grid=4)  # 8 x 8-pixel patches; the object covers rows 2:10, columns 20:30
    assert labels.shape == (16, 3)
    on_object = {int(i) for i in torch.nonzero((labels != torch.tensor([2, 2, 2])).all(1))}
    assert on_object == {2, 3}  # row 0 covered 6/8 x 4/8 and 6/8 x 6/8; row 1 only 2/8 x . (below PATCH_COVERAGE)
    assert labels[3].tolist() == [1, 1, 0]  # pink, star, small
    assert labels[0].tolist() == [2, 2, 2]  # background is the last class of each attribute


def test_a_small_object_between_patch_centres_still_owns_its_most_covered_patch():
    scene = _scene()
    small = np.zeros((1, 32, 32), dtype=bool)
    small[0, 5:10, 5:10] = True  # 5 x 5 pixels across the corner of four patches, no patch centre (4 or 12) on it
    scene.masks["0"] = small
    assert int(scene.patch_mask(["0"], 0, grid=4).sum()) == 1
    assert bool(scene.patch_mask(["0"], 0, grid=4)[0])  # patch (0, 0) holds 3 x 3 of its pixels, the most
    assert (scene.patch_labels(0, grid=4)[0] == torch.tensor([1, 1, 0])).all()
    with pytest.raises(ValueError, match="does not split into 5x5"):
        scene.patch_mask(["0"], 0, grid=5)


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


def test_pointing_is_the_softmax_mass_on_the_target_or_the_no_object_slot():
    keys, no_object = torch.eye(3), torch.zeros(3)  # 3 patches, one-hot keys; logits = query / sqrt(3)
    query = torch.tensor([3.0, 0.0, 0.0])
    loss, hit = pointing(query, keys, no_object, torch.tensor([True, False, False]))
    logits = torch.tensor([3.0, 0.0, 0.0, 0.0]) / 3**0.5
    assert torch.isclose(loss, -torch.log_softmax(logits, 0)[0]) and hit == 1.0
    two = torch.tensor([False, True, True])  # mass on either target patch counts
    loss, hit = pointing(query, keys, no_object, two)
    assert torch.isclose(loss, -torch.logsumexp(torch.log_softmax(logits, 0)[1:3], 0)) and hit == 0.0
    no_target = torch.zeros(3, dtype=torch.bool)
    _, hit = pointing(-torch.ones(3), keys, no_object, no_target)  # patches' logits < the slot's 0: the slot wins
    assert hit == 1.0
    assert mean_pointing([], torch.ones(2)) == (0.0, 0.0)


def test_stage0_points_from_the_instructions_mean_hidden_state():
    """The pointing query reads the LM's final hidden states over exactly the instruction's tokens (prompt layout:
    before, key frame + second frame tokens, after, instruction, " ASSISTANT:"), averaged, or the last of them."""
    import random

    from instructseg.pretrain import ASSISTANT, TinyMLLM, mllm_example
    from instructseg.tiny import build_tiny_parts

    parts = build_tiny_parts(pretrained_sizes=True)
    scene = _scene()
    scene.frames = [np.zeros((64, 64, 3), dtype=np.uint8)]
    scene.masks = {"0": np.pad(scene.masks["0"], ((0, 0), (0, 32), (0, 32)))}
    scene.queries = [{"text": "the small pink star", "object_ids": ["0"], "type": "referring"}]
    example = mllm_example(scene, random.Random(0), 0.0, grid=8)
    tok = parts.tokenizer
    sizes = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in (example.before, example.after)]
    start = sizes[0] + 64 + sizes[1]  # one frame of 8 x 8 tokens
    length = len(tok(" the small pink star", add_special_tokens=False)["input_ids"])
    for point_from, span in (
        ("mean", slice(start, start + length)),
        ("last", slice(start + length - 1, start + length)),
    ):
        model = TinyMLLM(parts.siglip, parts.llm, -2, [3, 3, 3], point_from=point_from).eval()
        seen = {}
        model.point_query.register_forward_hook(lambda m, args, out: seen.update(query=args[0]))
        model.lm.register_forward_hook(lambda m, args, out: seen.update(last=out.hidden_states[-1]))
        with torch.no_grad():
            model([example], tok, 64)
        assert torch.allclose(seen["query"], seen["last"][0, span].mean(0))
    assert ASSISTANT == " ASSISTANT:"
    with pytest.raises(ValueError, match="point_from"):
        TinyMLLM(parts.siglip, parts.llm, -2, [3, 3, 3], point_from="first")


def test_every_visible_target_of_the_synthetic_scenes_owns_a_patch():
    """With patch-centre labels one visible target in ten had no patch and was taught as "no object"."""
    import random

    from instructseg.pretrain import mllm_example, synthetic_scenes

    rng, checked = random.Random(0), 0
    for scene in synthetic_scenes(40, seed=0, image_size=64):
        for _ in range(3):
            example = mllm_example(scene, rng, 0.0, grid=8)
            if example.answer.strip() != "there is no such object":
                assert example.target_patches.any(), example.instruction
                checked += 1
    assert checked > 80
