"""The LLM box: span gathering, placeholder expansion against a token-by-token rebuild, and the added-token table."""

import pytest
import torch

from instructseg.constants import IGNORE_INDEX, OVP_TOKEN, SEG_ANSWER_TOKEN, SPECIAL_TOKENS
from instructseg.modeling.llm import gather_spans


@pytest.mark.parametrize("seed", range(3))
def test_gather_spans_left_aligns_and_zero_pads(seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(4, 7, 3, generator=gen)
    mask = torch.rand(4, 7, generator=gen) > 0.5
    mask[0] = True
    mask[1] = False
    out, out_mask = gather_spans(values, mask)
    length = max(int(mask.sum(1).max()), 1)
    assert out.shape == (4, length, 3) and out_mask.shape == (4, length)
    for row in range(4):
        picked = values[row][mask[row]]  # masked positions in their original order
        n = picked.shape[0]
        assert out_mask[row].tolist() == [True] * n + [False] * (length - n)
        assert torch.equal(out[row, :n], picked)
        assert torch.equal(out[row, n:], torch.zeros(length - n, 3))


def expand_by_hand(llm, input_ids, attention_mask, labels, ovp, ovp_mask, image):
    """The assembled sequence built one token at a time: rows of (embedding, attention, label)."""
    queries = llm.mask_queries.detach()
    rows = []
    for b in range(input_ids.shape[0]):
        seq = []
        for t, tid in enumerate(input_ids[b].tolist()):
            if tid == llm.ovp_id:
                seq += [(ovp[b, i], bool(ovp_mask[b, i]), IGNORE_INDEX) for i in range(ovp.shape[1])]
            elif tid == llm.image_id:
                seq += [(image[b, i], True, IGNORE_INDEX) for i in range(image.shape[1])]
            elif tid == llm.seg_id:
                seq += [(queries[i], True, IGNORE_INDEX) for i in range(queries.shape[0])]
            else:
                embedding = llm.embed(input_ids[b : b + 1, t : t + 1])[0, 0]
                seq.append((embedding, bool(attention_mask[b, t]), int(labels[b, t])))
        rows.append(seq)
    return rows


def test_assemble_places_every_slot_and_keeps_labels_aligned(tiny_model, batch_factory):
    llm = tiny_model.llm
    texts = ["the red square", "the small blue circle moving slowly to the left of the star"]
    batch = batch_factory(tiny_model, texts, ["res", "rvos"], [1, 3])
    ids, attn = batch["input_ids"], batch["attention_mask"]
    labels = torch.where(attn, ids, IGNORE_INDEX)  # supervise every real token, placeholders included
    gen = torch.Generator().manual_seed(0)
    k_o, n, d = 2 * tiny_model.perceiver.num_latents, tiny_model.siglip.num_tokens, llm.hidden_size
    ovp, image = torch.randn(2, k_o, d, generator=gen), torch.randn(2, n, d, generator=gen)
    ovp_mask = torch.ones(2, k_o, dtype=torch.bool)
    ovp_mask[0, k_o // 2 :] = False  # row 0 (an image) has one real reference frame
    with torch.no_grad():
        embeds, mask, full_labels, positions = llm.assemble(ids, attn, labels, ovp, ovp_mask, image)
        expected = expand_by_hand(llm, ids, attn, labels, ovp, ovp_mask, image)
    total = ids.shape[1] - 3 + k_o + n + tiny_model.config.decoder.num_queries
    assert embeds.shape == (2, total, d) and mask.shape == full_labels.shape == (2, total)
    for b, seq in enumerate(expected):
        assert len(seq) == total
        torch.testing.assert_close(embeds[b], torch.stack([e for e, _, _ in seq]), atol=0, rtol=0)
        assert mask[b].tolist() == [m for _, m, _ in seq]
        assert full_labels[b].tolist() == [lab for _, _, lab in seq]
        # each text token's position is where its own embedding sits
        text = ~torch.isin(ids[b], torch.tensor([llm.ovp_id, llm.image_id, llm.seg_id]))
        torch.testing.assert_close(embeds[b, positions[b, text]], llm.embed(ids[b : b + 1])[0, text], atol=0, rtol=0)
    # labels stay aligned: a supervised slot holds the embedding of the token it names (the text loss shifts by one)
    supervised = full_labels != IGNORE_INDEX
    assert int(supervised.sum()) == int((labels != IGNORE_INDEX).sum()) - 3 * 2  # the 3 placeholders lose their label
    with torch.no_grad():
        torch.testing.assert_close(embeds[supervised], llm.embed(full_labels[supervised][None])[0], atol=0, rtol=0)


def test_assemble_rejects_a_missing_placeholder(tiny_model, batch_factory):
    llm = tiny_model.llm
    batch = batch_factory(tiny_model, ["the red square"], ["res"], [1])
    ids = batch["input_ids"].masked_fill(batch["input_ids"] == llm.image_id, tiny_model.tokenizer.pad_token_id)
    d = llm.hidden_size
    with pytest.raises(ValueError, match="exactly one <image> placeholder"):
        llm.assemble(
            ids,
            batch["attention_mask"],
            None,
            torch.zeros(1, 2, d),
            torch.ones(1, 2, dtype=torch.bool),
            torch.zeros(1, 3, d),
        )


def test_added_tokens_train_while_the_frozen_vocabulary_stays_bit_identical(tiny_model, batch_factory):
    llm = tiny_model.llm
    base_in = llm.base_model.get_input_embeddings().weight
    base_out = llm.base_model.get_output_embeddings().weight
    frozen = base_in.detach().clone(), base_out.detach().clone()
    table, head = llm.new_token_embed.detach().clone(), llm.new_token_head.weight.detach().clone()
    seg, ovp_row = SPECIAL_TOKENS.index(SEG_ANSWER_TOKEN), SPECIAL_TOKENS.index(OVP_TOKEN)
    assert base_in.shape[0] > max(llm.special_ids)  # the added ids have rows in the frozen matrices too

    batch = batch_factory(tiny_model, ["the red square"], ["res"], [1])
    ids, attn = batch["input_ids"], batch["attention_mask"]
    labels = torch.where(attn, ids, IGNORE_INDEX)  # the answer ends with [SEG]: the text loss trains its head row
    d, gen = llm.hidden_size, torch.Generator().manual_seed(0)
    ovp, image = torch.randn(1, 4, d, generator=gen), torch.randn(1, 3, d, generator=gen)
    out = llm(ids, attn, batch["instruction_mask"], ovp, torch.ones(1, 4, dtype=torch.bool), image, labels=labels)
    (out.lm_loss + out.mask_queries.square().mean()).backward()  # the queries read [SEG]: its embedding row
    torch.optim.AdamW(tiny_model.trainable_parameters().values(), lr=1e-2, weight_decay=0.0).step()

    assert torch.equal(base_in, frozen[0]) and torch.equal(base_out, frozen[1])
    assert not torch.equal(llm.new_token_embed[seg], table[seg])
    assert not torch.equal(llm.new_token_head.weight[seg], head[seg])
    assert torch.equal(llm.new_token_embed[ovp_row], table[ovp_row])  # a placeholder's own embedding is never read
    # the model reads [SEG] from the trained table and every other token from the untouched vocabulary
    with torch.no_grad():
        assert torch.equal(llm.embed(torch.tensor([[llm.special_ids[seg]]]))[0, 0], llm.new_token_embed[seg])
        plain = ids[0, :5]
        assert torch.equal(llm.embed(plain[None])[0], frozen[0][plain])
