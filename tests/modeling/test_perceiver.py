"""Object-aware Video Perceiver: shapes, per-frame independence, masked padding and where frame order matters."""

import pytest
import torch

from instructseg.modeling.perceiver import ObjectAwareVideoPerceiver

B, R, N, L, K, D = 2, 3, 5, 6, 4, 32


@pytest.fixture
def perceiver() -> ObjectAwareVideoPerceiver:
    torch.manual_seed(0)
    return ObjectAwareVideoPerceiver(D, num_latents=K, depth=2, heads=2, dim_head=8, ff_mult=2).eval()


def inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randn(B, R, N, D, generator=gen)
    text = torch.randn(B, L, D, generator=gen)
    text_mask = torch.tensor([[True] * L, [True] * 3 + [False] * (L - 3)])
    return frames, text, text_mask


def co_decode_inputs(model, batch_factory, seed: int = 0):
    """Key tokens ``(1, N, D)``, two reference frames ``(1, 2, N, D)`` and the text inputs of one video query."""
    batch = batch_factory(model, ["the small circle moving up"], ["rvos"], [1], seed=seed)
    with torch.no_grad():
        side = model.config.vision.image_size
        tokens = model.siglip(torch.randn(3, 3, side, side, generator=torch.Generator().manual_seed(seed)))
    text = (batch["input_ids"], batch["attention_mask"], batch["instruction_mask"])
    return tokens[:1], tokens[None, 1:], text


def test_output_is_frame_major_with_k_latents_per_frame(perceiver):
    frames, text, text_mask = inputs()
    out = perceiver(frames, text, text_mask)
    assert out.shape == (B, R * K, D)
    with pytest.raises(ValueError, match="must share batch B and width D"):
        perceiver(frames, text[..., :-1], text_mask)
    with pytest.raises(ValueError, match="text_mask"):
        perceiver(frames, text, text_mask[:, :-1])


def test_frames_are_compressed_independently_and_permute_with_their_block(perceiver):
    """Changing frame 1 changes only its K latents; reordering frames reorders the K-blocks exactly."""
    frames, text, text_mask = inputs()
    with torch.no_grad():
        base = perceiver(frames, text, text_mask).unflatten(1, (R, K))
        changed = frames.clone()
        changed[:, 1] = torch.randn(B, N, D)
        other = perceiver(changed, text, text_mask).unflatten(1, (R, K))
        order = [2, 0, 1]
        permuted = perceiver(frames[:, order], text, text_mask).unflatten(1, (R, K))
    torch.testing.assert_close(other[:, [0, 2]], base[:, [0, 2]], atol=1e-6, rtol=0)
    assert (other[:, 1] - base[:, 1]).abs().max() > 1e-2
    torch.testing.assert_close(permuted, base[:, order], atol=1e-6, rtol=0)


def test_padded_instruction_tokens_are_ignored_and_real_ones_are_not(perceiver):
    frames, text, text_mask = inputs()
    with torch.no_grad():
        base = perceiver(frames, text, text_mask)
        padded = text.clone()
        padded[1, 3:] = torch.randn(L - 3, D) * 10  # row 1's padding
        torch.testing.assert_close(perceiver(frames, padded, text_mask), base, atol=1e-6, rtol=0)
        real = text.clone()
        real[1, 0] = torch.randn(D) * 10
        assert (perceiver(frames, real, text_mask)[1] - base[1]).abs().max() > 1e-2


def test_absent_reference_frame_never_reaches_the_llm(tiny_model, batch_factory):
    """With ``ref_mask`` False for frame 2, its latents are masked out: changing its tokens changes nothing."""
    tiny_model.eval()
    key, refs, text = co_decode_inputs(tiny_model, batch_factory)
    noise = refs.clone()
    noise[:, 1] = torch.randn_like(noise[:, 1]) * 10
    with torch.no_grad():
        outputs = {
            (masked, name): tiny_model.co_decode(key, r, *text, ref_mask=torch.tensor([[True, not masked]]))
            for masked in (True, False)
            for name, r in (("refs", refs), ("noise", noise))
        }
    for field in ("mask_queries", "text_global", "text_detailed"):
        same, moved = (getattr(outputs[m, "refs"], field) - getattr(outputs[m, "noise"], field) for m in (True, False))
        assert same.abs().max() < 1e-6, field
        assert moved.abs().max() > 1e-3, field  # the same change matters once the frame is real


def test_absent_clip_frame_is_ignored_end_to_end(tiny_model, batch_factory):
    """Row 1 has 2 of the batch's 3 clip frames: the pixels of its padded frame do not change the prediction."""
    tiny_model.eval()
    batch = batch_factory(tiny_model, ["the small circle moving up", "the red square"], ["rvos", "rvos"], [3, 2])
    assert batch["clip_frame_mask"][1].tolist() == [True, True, False]
    other = dict(batch, clip_pixel_values=batch["clip_pixel_values"].clone())
    other["clip_pixel_values"][1, 2] = torch.randn_like(other["clip_pixel_values"][1, 2]) * 10
    with torch.no_grad():
        base, moved = (tiny_model(b).prediction for b in (batch, other))
    torch.testing.assert_close(moved.scores[-1], base.scores[-1], atol=1e-6, rtol=0)
    torch.testing.assert_close(moved.mask_logits[-1], base.mask_logits[-1], atol=1e-6, rtol=0)


def test_reference_frame_order_reaches_the_llm(tiny_model, batch_factory):
    """The OVP blocks enter the LLM in frame order, so swapping two real reference frames changes the queries."""
    tiny_model.eval()
    key, refs, text = co_decode_inputs(tiny_model, batch_factory)
    with torch.no_grad():
        forward = tiny_model.co_decode(key, refs, *text).mask_queries
        swapped = tiny_model.co_decode(key, refs.flip(1), *text).mask_queries
    assert (forward - swapped).abs().max() > 1e-4
