"""Parity of the borrowed Mask2Former parts with ``transformers``' own ``Mask2FormerModel`` on the tiny checkpoint.

Fed the checkpoint's learned content queries (``queries_features``) our Swin → pixel decoder → ``MaskDecoder`` path
must reproduce the reference model's mask logits at every decoder step. This pins the level order, the permutes and
the positional query table, and guards the ``transformers`` internals that ``MaskDecoder`` calls.
"""

import pytest
import torch
from transformers import Mask2FormerModel

from instructseg.config import InstructSegConfig
from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.mask_decoder import MaskDecoder


@pytest.fixture(scope="module")
def reference(tiny_root) -> Mask2FormerModel:
    return Mask2FormerModel.from_pretrained(tiny_root / "mask2former").eval()


def test_mask_decoder_reproduces_mask2former(tiny_root, reference):
    q = reference.config.num_queries
    config = InstructSegConfig.from_name("tiny", decoder={"num_queries": q}).with_pretrained_root(tiny_root)
    model = InstructSeg.from_config(config).eval()  # its own copy of the checkpoint, through the production loader
    pixel_values = torch.randn(
        2, 3, config.mask.image_size, config.mask.image_size, generator=torch.Generator().manual_seed(0)
    )
    with torch.no_grad():
        expected = reference(pixel_values, output_hidden_states=True)
        mask_features, multi_scale = model.pixel_decoder(model.swin(pixel_values))
        content = reference.transformer_module.queries_features.weight.expand(2, -1, -1)
        ours = model.mask_decoder(multi_scale, mask_features, content, torch.randn(2, model.mask_decoder.hidden_size))
    torch.testing.assert_close(mask_features, expected.pixel_decoder_last_hidden_state, atol=1e-5, rtol=1e-5)
    for level, (a, b) in enumerate(zip(multi_scale, expected.pixel_decoder_hidden_states, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, i=level: f"level {i}: {m}")
    assert len(ours.mask_logits) == len(expected.masks_queries_logits) > 1
    for step, (a, b) in enumerate(zip(ours.mask_logits, expected.masks_queries_logits, strict=True)):
        assert a.shape == (2, q, *mask_features.shape[-2:])
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, i=step: f"step {i}: {m}")
    # the same decoder with another content table gives other masks: the queries really drive it
    with torch.no_grad():
        moved = model.mask_decoder(
            multi_scale, mask_features, content.flip(1), torch.randn(2, model.mask_decoder.hidden_size)
        )
    assert (moved.mask_logits[-1] - ours.mask_logits[-1]).abs().max() > 1e-3


def test_positional_queries_are_the_checkpoint_table_truncated_or_tiled(reference):
    table = reference.transformer_module.queries_embedder.weight
    q = table.shape[0]
    short = MaskDecoder(reference.transformer_module, q // 2).query_position.weight
    long = MaskDecoder(reference.transformer_module, q + 3).query_position.weight
    assert torch.equal(short, table[: q // 2])
    assert torch.equal(long, torch.cat([table, table[:3]]))
