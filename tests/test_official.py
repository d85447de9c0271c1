"""convert_official: a tiny checkpoint in the release's layout, converted and loaded strictly, computes what the
official modules compute on the release's own tensors (each official module re-implemented here from the released
code's definitions, with the fused q/k/v evaluated directly); bad releases fail with one clear error and leave nothing
behind; the rule table covers the full-size release key list on the meta device."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures.release_layout import FULL, release_config, release_specs, write_release
from safetensors.torch import load_file, save_file
from transformers.models.mask2former.modeling_mask2former import multi_scale_deformable_attention

from instructseg import official
from instructseg.constants import SEG_ANSWER_TOKEN, SPECIAL_TOKENS
from instructseg.io import WeightsMismatchError
from instructseg.modeling.instructseg import InstructSeg
from instructseg.official import OfficialFormatError, TensorInfo, convert_official

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

SW, SIG = official.SWIN_PREFIX, official.SIGLIP_PREFIX
TOL = {"atol": 2e-5, "rtol": 1e-4}


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    return write_release(tmp_path_factory.mktemp("release") / "InstructSeg")


def read_release(root: Path) -> dict[str, torch.Tensor]:
    """Every release tensor, floating point ones in fp32 (the released evaluation casts to fp32)."""
    tensors = {}
    for shard in sorted(root.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> tuple[InstructSeg, dict[str, torch.Tensor], dict]:
    out = convert_official(release, tmp_path_factory.mktemp("export") / "official", quiet=True)
    return InstructSeg.from_pretrained(out), read_release(release), json.loads((release / "config.json").read_text())


# --- the official modules, written from the released code's definitions -------------------------------------------


def official_perceiver(w: dict, prefix: str, x: torch.Tensor, latents: torch.Tensor, kv_first: bool) -> torch.Tensor:
    """OVP (``ovp.py``) / VMTF (``vmtf.py``): max-subtracted softmax; VMTF keys/values see only latent 0."""
    depth = len({k.split(".")[2] for k in w if k.startswith(f"{prefix}.layers.")})
    heads = official.RELEASED_CODE_CONSTANTS["perceiver_heads"]
    dim = x.shape[-1]

    def ln(t, key):
        return F.layer_norm(t, (dim,), w[f"{key}.weight"], w[f"{key}.bias"])

    for n in range(depth):
        p = f"{prefix}.layers.{n}"
        xn, lat = ln(x, f"{p}.0.norm_media"), ln(latents, f"{p}.0.norm_latents")
        q = lat @ w[f"{p}.0.to_q.weight"].T
        kv_in = torch.cat([xn, lat[:, :1] if kv_first else lat], dim=1)
        k, v = (kv_in @ w[f"{p}.0.to_kv.weight"].T).chunk(2, dim=-1)
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
        sim = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
        attn = (sim - sim.amax(-1, keepdim=True)).softmax(-1)
        latents = latents + (attn @ v).transpose(1, 2).flatten(2) @ w[f"{p}.0.to_out.weight"].T
        hidden = F.gelu(ln(latents, f"{p}.1.0") @ w[f"{p}.1.1.weight"].T)
        latents = latents + hidden @ w[f"{p}.1.3.weight"].T
    return ln(latents, f"{prefix}.norm")


def _partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    b, h, w, c = x.shape
    return x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)


def _reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    c = windows.shape[-1]
    return windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, h, w, c)


def official_window_attention(w: dict, blk: str, x: torch.Tensor, heads: int, mask: torch.Tensor | None):
    """Swin ``WindowAttention`` with the fused ``qkv`` and the stored ``relative_position_index``."""
    b_, n, c = x.shape
    qkv = F.linear(x, w[f"{blk}attn.qkv.weight"], w[f"{blk}attn.qkv.bias"]).reshape(b_, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    table = w[f"{blk}attn.relative_position_bias_table"]
    attn = attn + table[w[f"{blk}attn.relative_position_index"].view(-1)].view(n, n, -1).permute(2, 0, 1)[None]
    if mask is not None:
        attn = (attn.view(-1, mask.shape[0], heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    out = (attn.softmax(-1) @ v).transpose(1, 2).reshape(b_, n, c)
    return F.linear(out, w[f"{blk}attn.proj.weight"], w[f"{blk}attn.proj.bias"])


def official_swin(w: dict, pixels: torch.Tensor, ws: int) -> list[torch.Tensor]:
    """detectron2 ``D2SwinTransformer``: shifted windows with padding, patch merging, ``norm{i}`` on each output."""

    def ln(t, key):
        return F.layer_norm(t, t.shape[-1:], w[f"{key}.weight"], w[f"{key}.bias"])

    x = F.conv2d(pixels, w[f"{SW}patch_embed.proj.weight"], w[f"{SW}patch_embed.proj.bias"], stride=4)
    b, c, h, wd = x.shape
    x = ln(x.flatten(2).transpose(1, 2), f"{SW}patch_embed.norm")
    outs, stage = [], 0
    while f"{SW}layers.{stage}.blocks.0.norm1.weight" in w:
        shift = ws // 2
        hp, wp = math.ceil(h / ws) * ws, math.ceil(wd / ws) * ws
        img = torch.zeros(1, hp, wp, 1)
        for i, hs in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
            for j, wsl in enumerate((slice(0, -ws), slice(-ws, -shift), slice(-shift, None))):
                img[:, hs, wsl] = 3 * i + j
        mw = _partition(img, ws).squeeze(-1)
        shift_mask = (mw[:, None, :] - mw[:, :, None]).ne(0).float() * -100.0
        block = 0
        while f"{SW}layers.{stage}.blocks.{block}.norm1.weight" in w:
            blk = f"{SW}layers.{stage}.blocks.{block}."
            heads = w[f"{blk}attn.relative_position_bias_table"].shape[1]
            s = shift if block % 2 else 0
            y = F.pad(ln(x, f"{blk}norm1").view(b, h, wd, c), (0, 0, 0, wp - wd, 0, hp - h))
            y = torch.roll(y, (-s, -s), (1, 2)) if s else y
            y = _reverse(
                official_window_attention(w, blk, _partition(y, ws), heads, shift_mask if s else None), ws, hp, wp
            )
            y = torch.roll(y, (s, s), (1, 2)) if s else y
            x = x + y[:, :h, :wd].reshape(b, h * wd, c)
            mlp = F.gelu(F.linear(ln(x, f"{blk}norm2"), w[f"{blk}mlp.fc1.weight"], w[f"{blk}mlp.fc1.bias"]))
            x = x + F.linear(mlp, w[f"{blk}mlp.fc2.weight"], w[f"{blk}mlp.fc2.bias"])
            block += 1
        outs.append(ln(x, f"{SW}norm{stage}").view(b, h, wd, c).permute(0, 3, 1, 2))
        if f"{SW}layers.{stage}.downsample.reduction.weight" in w:
            y = F.pad(x.view(b, h, wd, c), (0, 0, 0, wd % 2, 0, h % 2))
            y = torch.cat([y[:, 0::2, 0::2], y[:, 1::2, 0::2], y[:, 0::2, 1::2], y[:, 1::2, 1::2]], -1)
            x = ln(y.view(b, -1, 4 * c), f"{SW}layers.{stage}.downsample.norm")
            x = x @ w[f"{SW}layers.{stage}.downsample.reduction.weight"].T
            h, wd, c = math.ceil(h / 2), math.ceil(wd / 2), 2 * c
        stage += 1
    return outs


def sine_position(x: torch.Tensor) -> torch.Tensor:
    """Mask2Former ``PositionEmbeddingSine(C/2, normalize=True)``: ``(B, C, H, W)`` for a feature map ``x``."""
    b, c, h, w = x.shape
    feats = c // 2
    y_embed = torch.arange(1, h + 1, dtype=torch.float32)[None, :, None].expand(b, h, w)
    x_embed = torch.arange(1, w + 1, dtype=torch.float32)[None, None, :].expand(b, h, w)
    y_embed = y_embed / (y_embed[:, -1:, :] + 1e-6) * 2 * math.pi
    x_embed = x_embed / (x_embed[:, :, -1:] + 1e-6) * 2 * math.pi
    dim_t = 10000 ** (2 * (torch.arange(feats) // 2) / feats)
    pos_x, pos_y = x_embed[..., None] / dim_t, y_embed[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


def _gn(x: torch.Tensor, w: dict, key: str) -> torch.Tensor:
    return F.group_norm(x, 32, w[f"{key}.weight"], w[f"{key}.bias"])


def official_pixel_decoder(w: dict, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``MSDeformAttnPixelDecoder.forward_features``: deformable encoder on res5..res3, FPN with biases and ReLUs."""
    heads, points = official.RELEASED_CODE_CONSTANTS["mask2former_heads"], 4
    p = "pixel_decoder"
    srcs, pos = [], []
    for i, feature in enumerate(pyramid[1:][::-1]):  # res5, res4, res3
        proj = F.conv2d(feature, w[f"{p}.input_proj.{i}.0.weight"], w[f"{p}.input_proj.{i}.0.bias"])
        srcs.append(_gn(proj, w, f"{p}.input_proj.{i}.1"))
        pos.append(sine_position(proj) + w[f"{p}.transformer.level_embed"][i].view(1, -1, 1, 1))
    shapes = [tuple(s.shape[-2:]) for s in srcs]
    b, c = srcs[0].shape[:2]
    src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    pos_flat = torch.cat([q.flatten(2).transpose(1, 2) for q in pos], 1)
    refs = []
    for h, wd in shapes:
        ry, rx = torch.meshgrid(
            torch.linspace(0.5, h - 0.5, h) / h, torch.linspace(0.5, wd - 0.5, wd) / wd, indexing="ij"
        )
        refs.append(torch.stack((rx.reshape(-1), ry.reshape(-1)), -1))
    reference = torch.cat(refs)[None, :, None].expand(b, -1, len(shapes), -1)  # valid ratios 1
    normalizer = torch.tensor([[wd, h] for h, wd in shapes], dtype=torch.float32)
    n = 0
    while f"{p}.transformer.encoder.layers.{n}.norm1.weight" in w:
        lay = f"{p}.transformer.encoder.layers.{n}"
        query = src + pos_flat
        value = F.linear(src, w[f"{lay}.self_attn.value_proj.weight"], w[f"{lay}.self_attn.value_proj.bias"])
        offsets = F.linear(
            query, w[f"{lay}.self_attn.sampling_offsets.weight"], w[f"{lay}.self_attn.sampling_offsets.bias"]
        )
        offsets = offsets.view(b, -1, heads, len(shapes), points, 2)
        aw = F.linear(
            query, w[f"{lay}.self_attn.attention_weights.weight"], w[f"{lay}.self_attn.attention_weights.bias"]
        )
        aw = aw.view(b, -1, heads, len(shapes) * points).softmax(-1).view(b, -1, heads, len(shapes), points)
        loc = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        sampled = multi_scale_deformable_attention(value.view(b, -1, heads, c // heads), shapes, loc, aw)
        attn = F.linear(sampled, w[f"{lay}.self_attn.output_proj.weight"], w[f"{lay}.self_attn.output_proj.bias"])
        src = F.layer_norm(src + attn, (c,), w[f"{lay}.norm1.weight"], w[f"{lay}.norm1.bias"])
        ffn = F.linear(
            F.relu(F.linear(src, w[f"{lay}.linear1.weight"], w[f"{lay}.linear1.bias"])),
            w[f"{lay}.linear2.weight"],
            w[f"{lay}.linear2.bias"],
        )
        src = F.layer_norm(src + ffn, (c,), w[f"{lay}.norm2.weight"], w[f"{lay}.norm2.bias"])
        n += 1
    splits = src.split([h * wd for h, wd in shapes], dim=1)
    outs = [z.transpose(1, 2).reshape(b, c, h, wd) for z, (h, wd) in zip(splits, shapes)]
    lateral = F.relu(
        _gn(F.conv2d(pyramid[0], w[f"{p}.adapter_1.0.weight"], w[f"{p}.adapter_1.0.bias"]), w, f"{p}.adapter_1.1")
    )
    y = lateral + F.interpolate(outs[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
    y = F.relu(_gn(F.conv2d(y, w[f"{p}.layer_1.0.weight"], w[f"{p}.layer_1.0.bias"], padding=1), w, f"{p}.layer_1.1"))
    mask_features = F.conv2d(y, w[f"{p}.mask_features.weight"], w[f"{p}.mask_features.bias"])
    return mask_features, outs


def official_predictor(
    w: dict, multi_scale: list, mask_features: torch.Tensor, queries: torch.Tensor, seg_embedding: torch.Tensor
):
    """``forward_woconcat``: masked cross-attention, fused ``in_proj`` self-attention, FFN (post-norm)."""
    heads = official.RELEASED_CODE_CONSTANTS["mask2former_heads"]
    pr = "predictor"
    b, q, c = queries.shape
    srcs = [
        (f.flatten(2) + w[f"{pr}.level_embed.weight"][i][None, :, None]).permute(2, 0, 1)
        for i, f in enumerate(multi_scale)
    ]
    poss = [sine_position(f).flatten(2).permute(2, 0, 1) for f in multi_scale]
    sizes = [f.shape[-2:] for f in multi_scale]
    query_pos = w[f"{pr}.query_embed.weight"][:, None].expand(-1, b, -1)

    def ln(t, key):
        return F.layer_norm(t, (c,), w[f"{key}.weight"], w[f"{key}.bias"])

    def mlp(t, key, n_layers):
        for i in range(n_layers):
            t = F.linear(t, w[f"{key}.layers.{i}.weight"], w[f"{key}.layers.{i}.bias"])
            t = F.relu(t) if i < n_layers - 1 else t
        return t

    def heads_out(output, size):
        decoded = ln(output, f"{pr}.decoder_norm").transpose(0, 1)  # (B, Q, C)
        masks = torch.einsum("bqc,bchw->bqhw", mlp(decoded, f"{pr}.mask_embed", 3), mask_features)
        scores = torch.einsum("bqc,bc->bq", mlp(decoded, f"{pr}.SEG_proj", 2), seg_embedding)
        attn = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        attn = (attn.sigmoid().flatten(2)[:, None].repeat(1, heads, 1, 1).flatten(0, 1) < 0.5).detach()
        return masks, scores, attn

    def mha(key, query, k, v, mask=None):
        return F.multi_head_attention_forward(
            query, k, v, c, heads, w[f"{key}.in_proj_weight"], w[f"{key}.in_proj_bias"], None, None, False, 0.0,
            w[f"{key}.out_proj.weight"], w[f"{key}.out_proj.bias"], training=False, need_weights=False, attn_mask=mask,
        )[0]  # fmt: skip

    output = queries.transpose(0, 1)
    masks, scores, attn_mask = heads_out(output, sizes[0])
    all_masks, all_scores = [masks], [scores]
    n = 0
    while f"{pr}.transformer_ffn_layers.{n}.norm.weight" in w:
        level = n % 3
        attn_mask[attn_mask.sum(-1) == attn_mask.shape[-1]] = False
        cross = f"{pr}.transformer_cross_attention_layers.{n}"
        output = ln(
            output
            + mha(f"{cross}.multihead_attn", output + query_pos, srcs[level] + poss[level], srcs[level], attn_mask),
            f"{cross}.norm",
        )
        selfa = f"{pr}.transformer_self_attention_layers.{n}"
        output = ln(output + mha(f"{selfa}.self_attn", output + query_pos, output + query_pos, output), f"{selfa}.norm")
        ffn = f"{pr}.transformer_ffn_layers.{n}"
        hidden = F.relu(F.linear(output, w[f"{ffn}.linear1.weight"], w[f"{ffn}.linear1.bias"]))
        output = ln(output + F.linear(hidden, w[f"{ffn}.linear2.weight"], w[f"{ffn}.linear2.bias"]), f"{ffn}.norm")
        masks, scores, attn_mask = heads_out(output, sizes[(n + 1) % 3])
        all_masks.append(masks)
        all_scores.append(scores)
        n += 1
    return all_masks, all_scores


# --- the converted model computes what the official layout computes ------------------------------------------------


def check_swin(model: InstructSeg, w: dict) -> None:
    pixels = torch.randn(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))  # maps 24/12/6/3: pads and shifts
    with torch.no_grad():
        ours = model.swin(pixels)
    window = (math.isqrt(w[f"{SW}layers.0.blocks.0.attn.relative_position_bias_table"].shape[0]) + 1) // 2
    for stage, (a, b) in enumerate(zip(ours, official_swin(w, pixels, window), strict=True)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, s=stage: f"Swin stage {s}: {m}")


def _pyramid(model: InstructSeg, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1, c, 24 // 2**i, 24 // 2**i, generator=gen) for i, c in enumerate(model.swin.channels)]


def check_pixel_decoder(model: InstructSeg, w: dict) -> None:
    pyramid = _pyramid(model, 2)
    with torch.no_grad():
        mask_features, multi_scale = model.pixel_decoder(pyramid)
    expected_features, expected_scales = official_pixel_decoder(w, pyramid)
    for level, (a, b) in enumerate(zip(multi_scale, expected_scales, strict=True)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, i=level: f"pixel decoder level {i}: {m}")
    torch.testing.assert_close(mask_features, expected_features, **TOL, msg=lambda m: f"mask features: {m}")


def check_mask_decoder(model: InstructSeg, w: dict) -> None:
    gen = torch.Generator().manual_seed(3)
    c, q = model.mask_decoder.hidden_size, model.config.decoder.num_queries
    multi_scale = [torch.randn(2, c, s, s, generator=gen) for s in (3, 6, 12)]
    mask_features = torch.randn(2, model.pixel_decoder.mask_dim, 24, 24, generator=gen)
    queries, classifier = torch.randn(2, q, c, generator=gen), torch.randn(2, c, generator=gen)
    with torch.no_grad():
        ours = model.mask_decoder(multi_scale, mask_features, queries, classifier)
    masks, scores = official_predictor(w, multi_scale, mask_features, queries, classifier)
    assert len(ours.mask_logits) == len(masks) > 2
    for step, (a, b, s, t) in enumerate(zip(ours.mask_logits, masks, ours.scores, scores, strict=True)):
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, i=step: f"decoder step {i} masks: {m}")
        torch.testing.assert_close(s, t, **TOL, msg=lambda m, i=step: f"decoder step {i} scores: {m}")


def check_perceivers(model: InstructSeg, w: dict) -> None:
    gen = torch.Generator().manual_seed(4)
    d, n = model.llm.hidden_size, model.siglip.num_tokens
    frames, text = torch.randn(1, 2, n, d, generator=gen), torch.randn(1, 5, d, generator=gen)
    with torch.no_grad():
        ours = model.perceiver(frames, text, torch.ones(1, 5, dtype=torch.bool))
    latents = w["temporal_query"][None]
    expected = [
        official_perceiver(w, "ovp_layers", torch.cat([frames[:, r], text], 1), latents, False) for r in range(2)
    ]
    torch.testing.assert_close(ours, torch.cat(expected, 1), **TOL, msg=lambda m: f"OVP: {m}")

    res5 = torch.randn(1, model.swin.channels[-1], 3, 3, generator=gen)
    text_global, detailed = torch.randn(1, d, generator=gen), torch.randn(1, 4, d, generator=gen)
    with torch.no_grad():
        ours = model.fusion(res5, text_global, detailed, torch.ones(1, 4, dtype=torch.bool))
    x = F.conv2d(res5, w["local_project.weight"], w["local_project.bias"]).flatten(2).transpose(1, 2)
    lat = F.linear(
        torch.cat([text_global[:, None], detailed], 1), w["text_vmtf_projector.weight"], w["text_vmtf_projector.bias"]
    )
    fused = official_perceiver(w, "vmtf_layers", x, lat, True)[:, 0]
    origin = F.linear(text_global, w["origin_SEG_token_projector.weight"], w["origin_SEG_token_projector.bias"])
    expected = F.linear(torch.cat([origin, fused], -1), w["SEG_token_projector.weight"], w["SEG_token_projector.bias"])
    torch.testing.assert_close(ours, expected, **TOL, msg=lambda m: f"VMTF classifier: {m}")


def check_siglip(model: InstructSeg, w: dict, config: dict) -> None:
    from transformers import SiglipVisionConfig, SiglipVisionModel

    tower = config["vision_config"]["vision_tower"]
    fields = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
              "patch_size", "hidden_act", "layer_norm_eps")  # fmt: skip
    reference = SiglipVisionModel(SiglipVisionConfig(**{k: tower[k] for k in fields}, vision_use_head=True))
    reference.load_state_dict({k[len(SIG) :]: v for k, v in w.items() if k.startswith(SIG)}, strict=True)
    pixels = torch.randn(2, 3, tower["image_size"], tower["image_size"], generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        features = reference.eval()(pixels, output_hidden_states=True).hidden_states[tower["mm_vision_select_layer"]]
        ours = model.siglip(pixels)
    hidden = F.gelu(F.linear(features, w["model.mm_projector.0.weight"], w["model.mm_projector.0.bias"]))
    expected = F.linear(hidden, w["model.mm_projector.2.weight"], w["model.mm_projector.2.bias"])
    torch.testing.assert_close(ours, expected, **TOL, msg=lambda m: f"SigLIP + projector: {m}")


def check_llm(model: InstructSeg, w: dict, config: dict) -> None:
    from transformers import PhiConfig, PhiModel

    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    keep += ("partial_rotary_factor", "rope_theta", "layer_norm_eps", "hidden_act", "max_position_embeddings")
    reference = PhiModel(PhiConfig(**{k: config[k] for k in keep})).eval()
    phi_keys = ("model.layers.", "model.embed_tokens.", "model.final_layernorm.")
    reference.load_state_dict({k[len("model.") :]: v for k, v in w.items() if k.startswith(phi_keys)}, strict=True)
    embeds = torch.randn(1, 7, config["hidden_size"], generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = model.llm.base_model.get_decoder()(inputs_embeds=embeds).last_hidden_state
        expected = reference(inputs_embeds=embeds).last_hidden_state
    torch.testing.assert_close(ours, expected, **TOL, msg=lambda m: f"Phi: {m}")
    # token rows: every release token (including [SEG]) embeds and scores as in the release
    tokenizer = model.tokenizer
    ids = torch.arange(config["vocab_size"])[None]
    with torch.no_grad():
        torch.testing.assert_close(model.llm.embed(ids)[0], w["model.embed_tokens.weight"], atol=0, rtol=0)
        hidden = torch.randn(3, config["hidden_size"], generator=torch.Generator().manual_seed(7))
        logits = hidden @ w["lm_head.weight"].T
        torch.testing.assert_close(model.llm.base_model.get_output_embeddings()(hidden), logits, **TOL)
        new_ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
        torch.testing.assert_close(model.llm.new_token_head(hidden), logits[:, new_ids], **TOL)
    assert torch.equal(model.llm.mask_queries, w["seg_query"])
    torch.testing.assert_close(
        model.llm.query_proj(hidden), F.linear(hidden, w["seg_query_projector.weight"], w["seg_query_projector.bias"])
    )


CHECKS = {
    "swin": lambda m, w, c: check_swin(m, w),
    "pixel_decoder": lambda m, w, c: check_pixel_decoder(m, w),
    "mask_decoder": lambda m, w, c: check_mask_decoder(m, w),
    "ovp_vmtf": lambda m, w, c: check_perceivers(m, w),
    "siglip": check_siglip,
    "llm": check_llm,
}


@pytest.mark.parametrize("module", list(CHECKS))
def test_converted_module_computes_the_official_layout(converted, module):
    CHECKS[module](*converted)


def test_export_config_comes_from_the_release(converted, release):
    model, w, config = converted
    tower = config["vision_config"]["vision_tower"]
    siglip = model.siglip.tower.config
    assert (siglip.hidden_act, siglip.layer_norm_eps, siglip.num_hidden_layers) == (
        tower["hidden_act"], tower["layer_norm_eps"], tower["num_hidden_layers"])  # fmt: skip
    assert model.siglip.select_layer == model.config.vision.select_layer == tower["mm_vision_select_layer"]
    assert model.config.profile == "official" and model.config.fusion.reference_kv
    assert model.config.decoder.num_queries == w["seg_query"].shape[0] == w["predictor.query_embed.weight"].shape[0]
    assert model.config.decoder.no_target_threshold == 0.0  # the released inference takes the top-1 query always
    assert model.config.perceiver.num_latents == w["temporal_query"].shape[0]
    assert model.llm.base_model.config.rope_parameters["partial_rotary_factor"] == config["partial_rotary_factor"]
    ids = model.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    seg = config["vocab_size"] - 1
    assert ids[SPECIAL_TOKENS.index(SEG_ANSWER_TOKEN)] == seg  # [SEG] keeps its trained row
    assert sorted(ids) == list(range(seg, seg + len(SPECIAL_TOKENS)))
    assert not model.pixel_decoder.decoder.adapter_1[0].bias.eq(0).all()  # the trained FPN biases arrived


def test_conversion_prints_the_table(release, tmp_path, capsys):
    out = convert_official(release, tmp_path / "out")
    counts = {line[:32].strip(): int(line[32:39]) for line in capsys.readouterr().out.splitlines()}
    keys = list(json.loads((release / "model.safetensors.index.json").read_text())["weight_map"])
    fused = [
        k
        for k in keys
        if k.endswith(("attn.qkv.weight", "attn.qkv.bias", "self_attn.in_proj_weight", "self_attn.in_proj_bias"))
    ]
    assert counts["release tensors"] == len(keys)
    assert counts["split q, k, v"] == len(fused) > 0
    assert counts["dropped (Swin index, checked)"] == sum(k.endswith("relative_position_index") for k in keys)
    assert counts["export tensors"] == len(load_file(str(out / "model.safetensors")))


#: A wrong rule (two target names swapped for the release keys containing a substring) and the check that catches it.
MUTATIONS = {
    "Swin q/k order": ("swin", "attn.qkv", ("q_proj", "k_proj")),
    "Swin norm1/norm2": ("swin", SW, ("layernorm_before", "layernorm_after")),
    "decoder self-attention k/v order": ("mask_decoder", "self_attn.in_proj", ("k_proj", "v_proj")),
    "decoder cross/self norms": ("mask_decoder", "predictor.", ("self_attn_layer_norm", "cross_attn_layer_norm")),
    "deformable encoder norms": ("pixel_decoder", "pixel_decoder.", ("self_attn_layer_norm", "final_layer_norm")),
    "FPN GroupNorms": ("pixel_decoder", "pixel_decoder.", ("adapter_1.1", "layer_1.1")),
    "OVP norms": ("ovp_vmtf", "ovp_layers", ("norm_x", "norm_latents")),
    "VMTF text/global projections": ("ovp_vmtf", "_projector", ("fusion.text_proj", "fusion.global_proj")),
    "SigLIP norms": ("siglip", SIG, ("layer_norm1", "layer_norm2")),
    "Phi q/k": ("llm", "model.layers.", ("q_proj", "k_proj")),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_a_wrong_rule_fails_the_parity_checks(converted, release, tmp_path, monkeypatch, mutation):
    check, source_part, (a, b) = MUTATIONS[mutation]
    original = official._match

    def swapped(key: str):
        found = original(key)
        if found is None or source_part not in key:
            return found
        rule, targets = found
        return rule, tuple(t.replace(a, "\0").replace(b, a).replace("\0", b) for t in targets)

    monkeypatch.setattr(official, "_match", swapped)
    wrong = InstructSeg.from_pretrained(convert_official(release, tmp_path / "wrong", quiet=True))
    _, w, config = converted
    with pytest.raises(AssertionError):
        CHECKS[check](wrong, w, config)


# --- bad releases -------------------------------------------------------------------------------------------------


def _rewrite_shard(root: Path, key: str, value: torch.Tensor | None, add: str | None = None) -> None:
    """Replace (or with ``add`` also insert) a tensor in the shard that holds ``key``, keeping the index consistent."""
    index_path = root / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = root / index["weight_map"][key]
    tensors = load_file(str(shard))
    if add is None:
        tensors[key] = value
    else:
        tensors[add] = value
        index["weight_map"][add] = shard.name
        index_path.write_text(json.dumps(index))
    save_file(tensors, str(shard))


def _no_rule(root: Path) -> None:
    _rewrite_shard(root, "seg_query", torch.zeros(3), add="model.extra_head.weight")


def _truncate(root: Path) -> None:
    shard = root / "model-00001-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])


def _set_config(**changes):
    def edit(root: Path) -> None:
        config = json.loads((root / "config.json").read_text())
        config.update(changes)
        (root / "config.json").write_text(json.dumps(config))

    return edit


BAD_RELEASES = {
    "no config.json": (lambda r: (r / "config.json").unlink(), r"config\.json is missing"),
    "unknown architecture": (_set_config(model_type="llava_llama"), r"unknown architecture model_type 'llava_llama'"),
    "missing shard": (lambda r: (r / "model-00002-of-00002.safetensors").unlink(), r"model-00002-of-00002.*missing"),
    "truncated shard": (_truncate, r"model-00001-of-00002\.safetensors is truncated"),
    "wrong shape": (
        lambda r: _rewrite_shard(r, "model.layers.1.mlp.fc1.weight", torch.zeros(5, 64, dtype=torch.float16)),
        r"`model\.layers\.1\.mlp\.fc1\.weight` has shape \(5, 64\); expected \(128, 64\)",
    ),
    "wrong fused q/k/v shape": (
        lambda r: _rewrite_shard(
            r, "predictor.transformer_self_attention_layers.0.self_attn.in_proj_bias", torch.zeros(64)
        ),
        r"in_proj_bias` has shape \(64,\); expected \(192,\) \(q, k, v stacked\)",
    ),
    "tensor without a rule": (_no_rule, r"1 release tensor\(s\) match no conversion rule: model\.extra_head\.weight"),
    "no tokenizer": (
        lambda r: [p.unlink() for p in r.iterdir() if p.name.startswith("tokenizer")],
        r"has no tokenizer files",
    ),
}


@pytest.mark.parametrize("case", list(BAD_RELEASES))
def test_bad_release_fails_with_one_clear_error_and_writes_nothing(release, tmp_path, case):
    edit, message = BAD_RELEASES[case]
    bad = tmp_path / "release"
    shutil.copytree(release, bad)
    edit(bad)
    out_parent = tmp_path / "exports"
    out_parent.mkdir()
    with pytest.raises(OfficialFormatError, match=message) as error:
        convert_official(bad, out_parent / "model", quiet=True)
    assert "\n" not in str(error.value)
    assert list(out_parent.iterdir()) == []


def test_plain_phi_checkpoint_is_refused(tiny_root, tmp_path):
    with pytest.raises(OfficialFormatError, match=r"a plain Phi language model .*download weic22/InstructSeg"):
        convert_official(tiny_root / "llm", tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_non_finite_release_tensor_is_refused(release, tmp_path):
    bad = tmp_path / "release"
    shutil.copytree(release, bad)
    value = torch.ones(64, dtype=torch.float32)
    value[3] = float("nan")
    _rewrite_shard(bad, "predictor.decoder_norm.weight", value)
    with pytest.raises(WeightsMismatchError, match=r"NaN or inf values \[predictor\.decoder_norm\.weight\]"):
        convert_official(bad, tmp_path / "out", quiet=True)
    assert not (tmp_path / "out").exists()


def test_single_file_release_and_half_precision(tmp_path):
    single = write_release(tmp_path / "single", shards=1)
    assert not (single / "model.safetensors.index.json").exists()
    out = convert_official(single, tmp_path / "bf16", dtype="bfloat16", quiet=True)
    stored = load_file(str(out / "model.safetensors"))
    assert {v.dtype for v in stored.values()} == {torch.bfloat16}
    model = InstructSeg.from_pretrained(out, dtype=torch.bfloat16)
    assert torch.equal(model.llm.mask_queries, read_release(single)["seg_query"].bfloat16())
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_official(single, out, quiet=True)
    assert convert_official(single, out, overwrite=True, quiet=True) == out


# --- the full-size release key list (meta device, no data) --------------------------------------------------------


def test_rule_table_covers_the_full_size_release():
    specs = release_specs(FULL)
    assert len(specs) == 1640  # official-weights.md §1: the derived key list of weic22/InstructSeg
    assert sum(math.prod(shape) for shape, _ in specs.values()) == 3_465_987_192  # "3.47B" on the model page
    sources = {k: TensorInfo(tuple(shape), dtype, "meta") for k, (shape, dtype) in specs.items()}
    parts = official.build_part_configs(release_config(FULL), sources)
    model = official.build_skeleton(parts, tokenizer=None)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    steps = official.plan_conversion(sources, shapes)  # raises on any unplaced, unfilled or wrongly shaped tensor
    kinds = {kind: sum(s.kind == kind for s in steps) for kind in ("rename", "split", "vocab", "index", "drop")}
    assert kinds == {"rename": 1535, "split": 66, "vocab": 2, "index": 24, "drop": 13}
    produced = {t for s in steps for t in s.targets}
    assert produced | set(official.FILLS) == set(shapes) and len(shapes) == 1740  # 1738 + the two FPN biases
    assert (parts["model"].vision.select_layer, parts["siglip"].hidden_act) == (-2, "gelu_pytorch_tanh")
    assert parts["mask2former"].backbone_config.depths == [2, 2, 18, 2]
    assert parts["mask2former"].backbone_config.window_size == 12
    assert (parts["mask2former"].decoder_layers, parts["model"].perceiver.dim_head) == (10, 128)


def test_official_profile_rebuilds_the_fpn_keeping_the_checkpoint_weights(tiny_config):
    torch.manual_seed(0)
    ours = InstructSeg.from_config(tiny_config)
    official_model = InstructSeg.from_config(dataclasses.replace(tiny_config, profile="official"))
    ours_fpn, official_fpn = ours.pixel_decoder.decoder, official_model.pixel_decoder.decoder
    for name in ("adapter_1", "layer_1"):
        plain, rebuilt = getattr(ours_fpn, name), getattr(official_fpn, name)
        assert plain[0].bias is None and torch.equal(rebuilt[0].bias, torch.zeros_like(rebuilt[0].bias))
        assert torch.equal(plain[0].weight, rebuilt[0].weight) and rebuilt[1] is official_fpn.get_submodule(f"{name}.1")
        assert isinstance(rebuilt[-1], torch.nn.ReLU)
    assert not isinstance(ours_fpn.adapter_1[-1], torch.nn.ReLU)  # the project's profile keeps transformers' FPN
    assert official_fpn.lateral_convolutions == [official_fpn.adapter_1]  # what transformers' forward iterates
    assert official_fpn.output_convolutions == [official_fpn.layer_1]
    with pytest.raises(ValueError, match="profile"):
        dataclasses.replace(tiny_config, profile="paper")


def test_a_release_loads_by_name_converting_once_into_the_cache(release, tmp_path, monkeypatch):
    """`from_pretrained(<release dir or hub id>)` converts into the cache on first use and reuses it after."""
    from instructseg.official import converted_cache_dir
    from instructseg.predictor import InstructSegPredictor

    monkeypatch.setenv("INSTRUCSEG_CACHE", str(tmp_path / "cache"))
    calls = []
    original = official.convert_official
    monkeypatch.setattr(official, "convert_official", lambda *a, **k: calls.append(a) or original(*a, **k))
    first = InstructSegPredictor.from_pretrained(release)
    second = InstructSegPredictor.from_pretrained(str(release))
    assert len(calls) == 1 and converted_cache_dir(release).is_dir()
    assert first.config.profile == second.config.profile == "official"
    image = np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    a, b = first.predict_image(image, "the red square"), second.predict_image(image, "the red square")
    assert np.array_equal(a.mask, b.mask) and a.score == b.score
