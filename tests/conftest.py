"""Shared fixtures: tiny random pretrained parts saved to a temp dir and loaded through the production path."""

from __future__ import annotations

import pytest
import torch

from instructseg.config import InstructSegConfig
from instructseg.modeling.instructseg import InstructSeg
from instructseg.processing import collate_tokens, tokenize_query
from instructseg.tiny import save_tiny_pretrained

# The tiny models are dominated by small ops, which run several times slower when two threads contend for the
# two cores of the CI machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """``<tmp>/{siglip,llm,mask2former}`` written with ``save_pretrained``."""
    return save_tiny_pretrained(tmp_path_factory.mktemp("tiny-pretrained"))


@pytest.fixture(scope="session")
def tiny_config(tiny_root) -> InstructSegConfig:
    return InstructSegConfig.from_name("tiny").with_pretrained_root(tiny_root)


@pytest.fixture
def tiny_model(tiny_config) -> InstructSeg:
    torch.manual_seed(0)
    return InstructSeg.from_config(tiny_config)


def make_batch(model: InstructSeg, texts: list[str], tasks: list[str], num_frames: list[int], seed: int = 0) -> dict:
    """A collated batch of random frames: row i has ``num_frames[i]`` clip frames (1 = image)."""
    gen = torch.Generator().manual_seed(seed)
    tok = model.tokenizer
    batch = collate_tokens([tokenize_query(tok, task, text) for text, task in zip(texts, tasks)], tok.pad_token_id)
    b, t = len(texts), max(num_frames)
    s_clip, s_mask = model.config.vision.image_size, model.config.mask.image_size
    batch["clip_pixel_values"] = torch.randn(b, t, 3, s_clip, s_clip, generator=gen)
    batch["clip_frame_mask"] = torch.arange(t)[None] < torch.tensor(num_frames)[:, None]
    batch["pixel_values"] = torch.randn(b, 3, s_mask, s_mask, generator=gen)
    return batch


@pytest.fixture
def batch_factory():
    """:func:`make_batch` as a fixture (tests call ``batch_factory(model, texts, tasks, num_frames)``)."""
    return make_batch
