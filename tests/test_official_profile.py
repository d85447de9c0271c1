"""The official profile's preprocessing, each against a direct statement of the released code's rule."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from instructseg.constants import (
    IMAGE_TOKEN,
    MASK_PIXEL_MEAN,
    MASK_PIXEL_STD,
    OVP_TOKEN,
    SEG_ANSWER_TOKEN,
    SEG_QUERY_TOKEN,
)
from instructseg.processing import SYSTEM_PROMPT, add_instructseg_tokens, mask_branch_input, tokenize_official_query
from instructseg.tiny import build_tiny_tokenizer

# Transcribed from the reference (§1.2): conv_phi_v0 and the per-task human / gpt strings of InstructSegDatasets.py.
HUMAN = {
    "res": "This is an image <temporal>\n<image>\n, please doing Referring Segmentation according to the following "
    "instruction:\n<refer>",
    "reasonseg": "This is an image <temporal>\n<image>\n, please doing Reasoning Segmentation according to the "
    "following instruction:\n<refer>",
    "reasonseg+why": "This is an image <temporal>\n<image>\n, please doing Reasoning Segmentation according to the "
    "following instruction and explain why:\n<refer>",
    "rvos": "There are reference frames and key frame <temporal>\n<image>\n. Please doing Referring Segmentation "
    "according to the following instruction.\nThis is all the instruction: <refer>\n",
    "reasonvos": "There are reference frames and key frame <temporal>\n<image>\n. Please doing Reasoning "
    "Segmentation according to the following instruction.\nThis is all the instruction: <refer>\n",
}


def expected_ids(tokenizer, key: str, instruction: str, explanation: str = "") -> tuple[list[int], list[int]]:
    """The released code's ids: the whole conversation string split on its placeholders, chunks tokenized alone."""
    gpt = "\nSure, the segmentation result is " + explanation + "[SEG]<seg>"
    prompt = SYSTEM_PROMPT + " " + "USER: " + HUMAN[key] + " " + "ASSISTANT: " + gpt + "<|endoftext|>"
    ids, span = [], []
    for chunk in re.split(r"(<image>|<seg>|<refer>|<temporal>)", prompt):
        if chunk == "<temporal>":
            new = [tokenizer.convert_tokens_to_ids(OVP_TOKEN)]
        elif chunk == "<image>":
            new = [tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)]
        elif chunk == "<seg>":
            new = [tokenizer.convert_tokens_to_ids(SEG_QUERY_TOKEN)]
        elif chunk == "<refer>":
            new = tokenizer.encode(instruction) + [tokenizer.convert_tokens_to_ids(SEG_ANSWER_TOKEN)]
        elif chunk in ("", "<|endoftext|>"):  # the final eos is masked out of the attention: no effect
            new = []
        else:
            new = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        span += [int(chunk == "<refer>")] * len(new)
        ids += new
    return ids, span


@pytest.fixture(scope="module")
def tokenizer():
    tok = build_tiny_tokenizer()
    add_instructseg_tokens(tok)
    return tok


@pytest.mark.parametrize(
    ("key", "task", "explanation"),
    [
        ("res", "res", None),
        ("reasonseg", "reasonseg", None),
        ("reasonseg+why", "reasonseg", "It is round. "),
        ("rvos", "rvos", None),
        ("reasonvos", "reasonvos", None),
    ],
)
def test_official_prompt_matches_the_released_chunking_token_for_token(tokenizer, key, task, explanation):
    instruction = "the small red circle on the left"
    ids, span = expected_ids(tokenizer, key, instruction, explanation or "")
    got = tokenize_official_query(tokenizer, task, instruction, explanation)
    assert got.input_ids.tolist() == ids
    assert got.instruction_mask.int().tolist() == span
    assert int(got.instruction_mask.sum()) == len(tokenizer.encode(instruction)) + 1  # instruction + [SEG]


def test_official_padding_is_128_before_normalising():
    image = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    out, (h, w) = mask_branch_input(image, 64, official=True)
    assert (h, w) == (32, 64)
    mean, std = torch.tensor(MASK_PIXEL_MEAN)[:, None, None], torch.tensor(MASK_PIXEL_STD)[:, None, None]
    raw = np.full((64, 64, 3), 128.0)
    raw[:32] = np.asarray(Image.fromarray(image).resize((64, 32), Image.BILINEAR), dtype=np.float64)
    expected = (torch.from_numpy(raw).permute(2, 0, 1).float() - mean) / std
    torch.testing.assert_close(out, expected)
    ours, _ = mask_branch_input(image, 64)
    assert torch.all(ours[:, 32:] == 0) and not torch.allclose(out[:, 32:], ours[:, 32:])


def test_official_ranking_is_computed_at_the_original_resolution():
    from instructseg.processing import official_query_ranking

    gen = torch.Generator().manual_seed(0)
    masks, scores = torch.randn(2, 5, 16, 16, generator=gen) * 3, torch.randn(2, 5, generator=gen)
    valid, padded, original = (12, 16), 64, (30, 40)
    got = official_query_ranking(masks, scores, valid, padded, original, chunk=2)
    for b in range(2):  # the rule written out per query: F.interpolate -> crop -> F.interpolate, then the +1e-6 mean
        for q in range(5):
            m = torch.nn.functional.interpolate(masks[b, q][None, None], size=(padded, padded), mode="bilinear")
            m = torch.nn.functional.interpolate(m[..., :12, :16], size=original, mode="bilinear")[0, 0]
            fg = (m > 0).float()
            expected = scores[b, q].sigmoid() * (m.sigmoid() * fg).sum() / (fg.sum() + 1e-6)
            torch.testing.assert_close(got[b, q], expected)


def test_the_predictor_uses_the_official_rules_for_an_official_model(tiny_config, monkeypatch):
    """An official-profile model gets the released prompt, padding and ranking; the default model does not."""
    from dataclasses import replace

    import instructseg.predictor as predictor_module
    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.predictor import InstructSegPredictor

    torch.manual_seed(0)
    model = InstructSeg.from_config(replace(tiny_config, profile="official"))
    calls = {"prompt": 0, "ranking": 0}
    for name in ("tokenize_official_query", "official_query_ranking"):
        original = getattr(predictor_module, name)

        def counted(*args, _original=original, _key="prompt" if "tokenize" in name else "ranking", **kwargs):
            calls[_key] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(predictor_module, name, counted)
    image = np.random.default_rng(0).integers(0, 256, (20, 40, 3), dtype=np.uint8)
    official = InstructSegPredictor(model)
    frames = official._processor([image])
    assert frames.official
    official.predict_image(image, "the red circle")
    assert calls == {"prompt": 1, "ranking": 1}
    torch.manual_seed(0)
    InstructSegPredictor(InstructSeg.from_config(tiny_config)).predict_image(image, "the red circle")
    assert calls == {"prompt": 1, "ranking": 1}
