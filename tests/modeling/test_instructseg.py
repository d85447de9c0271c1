"""Shapes of the three stages, trainable/frozen split, bad input, and the full-size preset on meta."""

import pytest
import torch

from instructseg.config import InstructSegConfig
from instructseg.losses import InstructSegCriterion
from instructseg.modeling.instructseg import InstructSeg


def test_forward_shapes_mixed_images_and_videos(tiny_model, batch_factory):
    texts = ["the red square", "the small blue circle moving up towards the top left corner", "what could roll"]
    batch = batch_factory(tiny_model, texts, ["res", "rvos", "reasonvos"], [1, 3, 2])
    out = tiny_model(batch)
    cfg = tiny_model.config
    q, side = cfg.decoder.num_queries, cfg.mask.image_size // 4
    n_steps = tiny_model.mask_decoder.decoder.decoder_layers + 1
    assert len(out.prediction.mask_logits) == len(out.prediction.scores) == n_steps
    for logits, scores in zip(out.prediction.mask_logits, out.prediction.scores):
        assert logits.shape == (3, q, side, side) and scores.shape == (3, q)
    sel = tiny_model.select(out.prediction)
    assert sel.mask_logits.shape == (3, side, side) and sel.score.shape == (3,) and sel.no_target.dtype == torch.bool


def test_stages_separately(tiny_model, batch_factory):
    """encode_frames → co_decode → decode_masks gives the same result as forward."""
    tiny_model.eval()
    batch = batch_factory(tiny_model, ["the red square", "the circle moving up"], ["res", "rvos"], [1, 3])
    with torch.no_grad():
        ref = tiny_model(batch)
        r = tiny_model.config.num_reference_frames
        feats = tiny_model.encode_frames(batch["clip_pixel_values"][1], batch["pixel_values"][1:])
        n, d = feats.clip_tokens.shape[1:]
        assert feats.clip_tokens.shape == (1 + r, n, d)
        assert [f.shape[-1] for f in feats.pyramid] == [16, 8, 4, 2]
        co = tiny_model.co_decode(
            feats.clip_tokens[:1],
            feats.clip_tokens[None, 1:],
            batch["input_ids"][1:],
            batch["attention_mask"][1:],
            batch["instruction_mask"][1:],
        )
        assert co.mask_queries.shape == (1, tiny_model.config.decoder.num_queries, tiny_model.mask_decoder.hidden_size)
        assert co.text_global.shape == (1, d) and co.text_detailed.shape[0] == 1
        pred = tiny_model.decode_masks(feats, co)
    torch.testing.assert_close(pred.mask_logits[-1][0], ref.prediction.mask_logits[-1][1], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(pred.scores[-1][0], ref.prediction.scores[-1][1], atol=1e-4, rtol=1e-4)


def test_padding_does_not_change_a_sample(tiny_model, batch_factory):
    """A row's output is the same alone and next to a longer instruction (right padding is masked)."""
    tiny_model.eval()
    texts = ["the red square", "the small blue circle that is moving slowly to the left of the big green star"]
    batch = batch_factory(tiny_model, texts, ["res", "res"], [1, 1])
    alone = {k: v[:1] for k, v in batch.items()}
    alone["input_ids"] = alone["input_ids"][:, : int(batch["attention_mask"][0].sum())]
    for key in ("attention_mask", "instruction_mask", "labels"):
        alone[key] = alone[key][:, : alone["input_ids"].shape[1]]
    with torch.no_grad():
        both = tiny_model(batch).prediction.scores[-1][0]
        single = tiny_model(alone).prediction.scores[-1][0]
    torch.testing.assert_close(both, single, atol=1e-4, rtol=1e-4)


def test_only_trainable_parameters_change(tiny_model, batch_factory):
    batch = batch_factory(tiny_model, ["the red square", "the circle moving up"], ["reasonseg", "rvos"], [1, 3])
    batch["labels"] = torch.where(batch["attention_mask"], batch["input_ids"], -100)
    tiny_model.train()
    assert not tiny_model.siglip.tower.training and not tiny_model.swin.tower.training
    frozen = {n: p.detach().clone() for n, p in tiny_model.named_parameters() if not p.requires_grad}
    trainable = tiny_model.trainable_parameters()
    assert frozen and trainable
    before = {n: p.detach().clone() for n, p in trainable.items()}
    out = tiny_model(batch)
    target = torch.zeros(2, 64, 64)
    target[:, 8:30, 8:30] = 1
    losses = InstructSegCriterion(tiny_model.config.loss)(
        out.prediction, target, torch.tensor([True, True]), torch.tensor([True, True]), out.lm_loss
    )
    assert losses["loss_text"] > 0
    losses["loss"].backward()
    for name, param in tiny_model.named_parameters():
        if not param.requires_grad:
            assert param.grad is None, name
    missing = [n for n, p in trainable.items() if p.grad is None]
    assert not missing, f"trainable parameters without gradient: {missing}"
    torch.optim.AdamW(trainable.values(), lr=1e-2).step()
    for name, param in tiny_model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), f"frozen {name} changed"
    changed = sum(not torch.equal(p, before[n]) for n, p in trainable.items())
    assert changed == len(trainable)


def test_trainable_groups(tiny_model):
    names = tiny_model.trainable_parameters()
    prefixes = {n.split(".")[0] for n in names}
    assert prefixes == {"siglip", "llm", "perceiver", "fusion", "pixel_decoder", "mask_decoder"}
    assert all(n.startswith("siglip.projector") for n in names if n.startswith("siglip"))
    llm_names = [n for n in names if n.startswith("llm.lm")]
    assert llm_names and all("lora_" in n for n in llm_names)
    assert any("q_proj.lora_A" in n for n in llm_names) and any("v_proj.lora_B" in n for n in llm_names)


def test_bad_inputs_raise_clear_errors(tiny_model, batch_factory):
    batch = batch_factory(tiny_model, ["the red square"], ["res"], [1])
    wrong_size = dict(batch, clip_pixel_values=torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(ValueError, match="clip pixel_values"):
        tiny_model(wrong_size)
    with pytest.raises(ValueError, match="mask pixel_values"):
        tiny_model(dict(batch, pixel_values=torch.randn(1, 3, 50, 50)))
    no_image = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["input_ids"] == tiny_model.llm.image_id, 5))
    with pytest.raises(ValueError, match="<image>"):
        tiny_model(no_image)
    with pytest.raises(ValueError, match="empty instruction"):
        tiny_model(dict(batch, instruction_mask=torch.zeros_like(batch["instruction_mask"])))
    long_text = " ".join(["the red square next to"] * 120)
    with pytest.raises(ValueError, match="context"):
        tiny_model(batch_factory(tiny_model, [long_text], ["res"], [1]))


def test_full_size_preset_on_meta_device():
    model = InstructSeg.full_size_on_meta()
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.trainable_parameters().values())
    materialised = sum(p.numel() for p in model.parameters() if p.device.type != "meta")
    assert materialised < 1e4, materialised  # transformers builds Mask2Former's level_embed with torch.Tensor()
    assert 3.0e9 < total < 4.0e9, total  # paper: ~3B (Phi-2 2.7B + SigLIP 0.4B + Swin-B + heads)
    assert 1.0e8 < trainable < 3.0e8, trainable  # OVP + VMTF + decoders + LoRA, no base LLM weights
    assert sum(p.numel() for p in model.llm.lm.parameters() if p.requires_grad) < 5e6  # LoRA only


def test_text_fusion_reads_the_swin_map_of_its_stride(tiny_root, batch_factory):
    """``fusion.image_stride`` picks the pyramid level the VMTF attends to (its 1x1 projection takes that level's
    channels)."""
    torch.manual_seed(0)
    config = InstructSegConfig.from_name("tiny", fusion={"image_stride": 8}).with_pretrained_root(tiny_root)
    model = InstructSeg.from_config(config).eval()
    assert model.fusion_level == 1 and model.fusion.image_proj.in_channels == model.swin.channels[1]
    seen = []
    model.fusion.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
    batch = batch_factory(model, ["the red square"], ["res"], [1])
    with torch.no_grad():
        model(batch)
    side = model.config.mask.image_size // 8
    assert seen == [torch.Size([1, model.swin.channels[1], side, side])]
    with pytest.raises(ValueError, match="image_stride must be 4, 8, 16 or 32"):
        InstructSeg.from_config(
            InstructSegConfig.from_name("tiny", fusion={"image_stride": 2}).with_pretrained_root(tiny_root)
        )
