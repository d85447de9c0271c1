"""Convert the released InstructSeg checkpoint (``weic22/InstructSeg``) into an instructseg export directory.

The release is a Mipha/LLaVA-style directory: ``config.json`` (``model_type: mipha_phi``, a ``PhiConfig`` plus
``vision_config.vision_tower`` / ``vision_config.mm_projector``), ``model.safetensors.index.json`` with its shards (or
one ``model.safetensors``) and the Phi-2 tokenizer files with ``[SEG]`` added. Its tensor names are those of the
official module tree (``shared/reference/official-weights.md`` §2). :data:`RULES` places every one of them explicitly:

* **rename**: same tensor, our name;
* **split**: a fused ``(3C, ...)`` projection (Swin ``attn.qkv``, the decoder self-attention ``in_proj``) becomes
  ``q``, ``k``, ``v`` in that order;
* **vocab**: ``model.embed_tokens`` / ``lm_head`` fill the base tables (rows the release lacks are 0) and the rows of
  our added tokens (:data:`~instructseg.constants.SPECIAL_TOKENS`) fill ``llm.new_token_embed`` /
  ``llm.new_token_head`` (``[SEG]`` keeps its trained row; placeholders the release has no row for get 0);
* **index**: a Swin ``relative_position_index`` buffer, checked against the standard index (ours is recomputed) and
  dropped;
* **drop**: tensors the released code never uses (the SigLIP pooling head, ``query_feat``, ``SEG_query_embed``).

Tensors of ours the release has no counterpart for are filled with constants (:data:`FILLS`): the ``lm_head`` bias
(the released head has none) and the unused final LayerNorm of ``transformers``' ``SwinModel``.

The part configs come from the release itself: Phi from the top level of ``config.json``, SigLIP (activation,
LayerNorm eps, layer count, select layer) from ``vision_config.vision_tower``, the Mask2Former / Swin / OVP / VMTF
sizes from the tensor shapes, and the few sizes no shape determines (attention heads) from the released code
(:data:`RELEASED_CODE_CONSTANTS`). The model config gets ``profile: "official"`` and ``fusion.reference_kv: true``.

Conversion plans every tensor from the shard headers first (unplaced keys, missing tensors and wrong shapes fail
before any data is read), then streams one tensor at a time into the model (plain reads, no memory map: peak memory is
about one copy of the converted model plus its largest tensor), checks every value is finite, and writes the export
atomically (nothing is left at ``out`` on failure).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from instructseg.config import InstructSegConfig
from instructseg.constants import SEG_ANSWER_TOKEN, SPECIAL_TOKENS

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from instructseg.modeling.instructseg import InstructSeg

RELEASE_MODEL_TYPE = "mipha_phi"
CONFIG_NAME = "config.json"
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "special_tokens_map.json",
)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
#: Sizes of the released code that no tensor shape determines (``official-weights.md`` §0 and §2).
RELEASED_CODE_CONSTANTS = {
    "mask2former_heads": 8,  # deformable encoder and masked-attention decoder
    "perceiver_heads": 8,  # OVP and VMTF (dim_head = inner width / 8)
    "mask_image_size": 1024,
    "num_reference_frames": 4,
    "swin_drop_path": 0.3,
}
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class OfficialFormatError(ValueError):
    """The source directory is not a complete, consistent InstructSeg release."""


@dataclass(frozen=True)
class Rule:
    """One line of the table: a release key matching ``pattern`` (``re.fullmatch``) goes to ``targets``.

    Attributes:
        pattern: regular expression over the release key.
        kind: ``"rename"``, ``"split"``, ``"vocab"``, ``"index"`` or ``"drop"`` (see the module docstring).
        targets: our keys, formatted with the match groups (``{0}``, ``{1}``, ...).
    """

    pattern: str
    kind: str
    targets: tuple[str, ...] = ()


SIGLIP_PREFIX = "model.vision_tower.vision_model."
SWIN_PREFIX = "model.vision_tower_mask."
_PHI = (
    r"model\.layers\.(\d+)\."
    r"((?:self_attn\.(?:q_proj|k_proj|v_proj|dense)|mlp\.fc1|mlp\.fc2|input_layernorm)\.(?:weight|bias))"
)
_SIG = re.escape(SIGLIP_PREFIX)
_SIG_LAYER = (
    r"((?:self_attn\.(?:q_proj|k_proj|v_proj|out_proj)|layer_norm1|layer_norm2|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))"
)
_SIG_HEAD = (
    r"(?:probe|attention\.in_proj_(?:weight|bias)|(?:attention\.out_proj|layernorm|mlp\.fc1|mlp\.fc2)\.(?:weight|bias))"
)
_SWIN = re.escape(SWIN_PREFIX)
_SWIN_BLOCK = _SWIN + r"layers\.(\d+)\.blocks\.(\d+)\."
_OUR_BLOCK = "swin.tower.swin.encoder.layers.{0}.blocks.{1}."
_WB = r"(weight|bias)"
_DEFORM = r"(sampling_offsets|attention_weights|value_proj|output_proj)"
_DEC = "mask_decoder.decoder.layers.{0}."


def _perceiver_rules(ours: str, release: str) -> tuple[Rule, ...]:
    layer = release + r"\.layers\.(\d+)\."
    return (
        Rule(layer + r"0\.norm_media\." + _WB, "rename", (ours + ".layers.{0}.norm_x.{1}",)),
        Rule(layer + r"0\.norm_latents\." + _WB, "rename", (ours + ".layers.{0}.norm_latents.{1}",)),
        Rule(layer + r"0\.(to_q|to_kv|to_out)\.weight", "rename", (ours + ".layers.{0}.{1}.weight",)),
        Rule(layer + r"1\.0\." + _WB, "rename", (ours + ".layers.{0}.ff.0.{1}",)),
        Rule(layer + r"1\.(1|3)\.weight", "rename", (ours + ".layers.{0}.ff.{1}.weight",)),
        Rule(release + r"\.norm\." + _WB, "rename", (ours + ".norm.{0}",)),
    )


#: The explicit table: every tensor of the release matches exactly one rule.
# fmt: off
RULES: tuple[Rule, ...] = (
    # Phi-2 (LoRA merged), the added-token rows and the mask queries
    Rule(r"model\.embed_tokens\.weight", "vocab", ("llm.lm.model.embed_tokens.weight", "llm.new_token_embed")),
    Rule(_PHI, "rename", ("llm.lm.model.layers.{0}.{1}",)),
    Rule(r"model\.final_layernorm\." + _WB, "rename", ("llm.lm.model.final_layernorm.{0}",)),
    Rule(r"lm_head\.weight", "vocab", ("llm.lm.lm_head.weight", "llm.new_token_head.weight")),
    Rule(r"seg_query", "rename", ("llm.mask_queries",)),
    Rule(r"seg_query_projector\." + _WB, "rename", ("llm.query_proj.{0}",)),
    # SigLIP tower (no `vision_model.` level in transformers 5) and the mlp2x_gelu projector
    Rule(_SIG + r"embeddings\.((?:patch_embedding\.(?:weight|bias))|position_embedding\.weight)", "rename",
         ("siglip.tower.embeddings.{0}",)),
    Rule(_SIG + r"encoder\.layers\.(\d+)\." + _SIG_LAYER, "rename", ("siglip.tower.encoder.layers.{0}.{1}",)),
    Rule(_SIG + r"post_layernorm\." + _WB, "rename", ("siglip.tower.post_layernorm.{0}",)),
    Rule(_SIG + r"head\." + _SIG_HEAD, "drop"),
    Rule(r"model\.mm_projector\.(0|2)\." + _WB, "rename", ("siglip.projector.{0}.{1}",)),
    # Swin-B (detectron2 layout)
    Rule(_SWIN + r"patch_embed\.proj\." + _WB, "rename",
         ("swin.tower.swin.embeddings.patch_embeddings.projection.{0}",)),
    Rule(_SWIN + r"patch_embed\.norm\." + _WB, "rename", ("swin.tower.swin.embeddings.norm.{0}",)),
    Rule(_SWIN_BLOCK + r"norm1\." + _WB, "rename", (_OUR_BLOCK + "layernorm_before.{2}",)),
    Rule(_SWIN_BLOCK + r"attn\.qkv\." + _WB, "split",
         tuple(_OUR_BLOCK + f"attention.{p}_proj.{{2}}" for p in "qkv")),
    Rule(_SWIN_BLOCK + r"attn\.proj\." + _WB, "rename", (_OUR_BLOCK + "attention.o_proj.{2}",)),
    Rule(_SWIN_BLOCK + r"attn\.relative_position_bias_table", "rename",
         (_OUR_BLOCK + "attention.relative_position_bias.relative_position_bias_table",)),
    Rule(_SWIN_BLOCK + r"attn\.relative_position_index", "index"),
    Rule(_SWIN_BLOCK + r"norm2\." + _WB, "rename", (_OUR_BLOCK + "layernorm_after.{2}",)),
    Rule(_SWIN_BLOCK + r"mlp\.(fc1|fc2)\." + _WB, "rename", (_OUR_BLOCK + "mlp.{2}.{3}",)),
    Rule(_SWIN + r"layers\.(\d+)\.downsample\.reduction\.weight", "rename",
         ("swin.tower.swin.encoder.layers.{0}.downsample.reduction.weight",)),
    Rule(_SWIN + r"layers\.(\d+)\.downsample\.norm\." + _WB, "rename",
         ("swin.tower.swin.encoder.layers.{0}.downsample.norm.{1}",)),
    Rule(_SWIN + r"norm0\." + _WB, "rename", ("swin.tower.hidden_states_norms.stage1.{0}",)),
    Rule(_SWIN + r"norm1\." + _WB, "rename", ("swin.tower.hidden_states_norms.stage2.{0}",)),
    Rule(_SWIN + r"norm2\." + _WB, "rename", ("swin.tower.hidden_states_norms.stage3.{0}",)),
    Rule(_SWIN + r"norm3\." + _WB, "rename", ("swin.tower.hidden_states_norms.stage4.{0}",)),
    # Pixel decoder (Mask2Former_Simplify MSDeformAttnPixelDecoder; the FPN biases need profile "official")
    Rule(r"pixel_decoder\.input_proj\.(\d+)\.(0|1)\." + _WB, "rename",
         ("pixel_decoder.decoder.input_projections.{0}.{1}.{2}",)),
    Rule(r"pixel_decoder\.transformer\.level_embed", "rename", ("pixel_decoder.decoder.level_embed",)),
    Rule(r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.self_attn\." + _DEFORM + r"\." + _WB, "rename",
         ("pixel_decoder.decoder.encoder.layers.{0}.self_attn.{1}.{2}",)),
    Rule(r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\." + _WB, "rename",
         ("pixel_decoder.decoder.encoder.layers.{0}.self_attn_layer_norm.{1}",)),
    Rule(r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear1\." + _WB, "rename",
         ("pixel_decoder.decoder.encoder.layers.{0}.fc1.{1}",)),
    Rule(r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.linear2\." + _WB, "rename",
         ("pixel_decoder.decoder.encoder.layers.{0}.fc2.{1}",)),
    Rule(r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm2\." + _WB, "rename",
         ("pixel_decoder.decoder.encoder.layers.{0}.final_layer_norm.{1}",)),
    Rule(r"pixel_decoder\.mask_features\." + _WB, "rename", ("pixel_decoder.decoder.mask_projection.{0}",)),
    Rule(r"pixel_decoder\.(adapter_1|layer_1)\.(0|1)\." + _WB, "rename", ("pixel_decoder.decoder.{0}.{1}.{2}",)),
    # Masked-attention decoder (nn.MultiheadAttention self-attention -> q, k, v projections)
    Rule(r"predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.in_proj_(weight|bias)", "split",
         tuple(_DEC + f"self_attn.{p}_proj.{{1}}" for p in "qkv")),
    Rule(r"predictor\.transformer_self_attention_layers\.(\d+)\.self_attn\.out_proj\." + _WB, "rename",
         (_DEC + "self_attn.out_proj.{1}",)),
    Rule(r"predictor\.transformer_self_attention_layers\.(\d+)\.norm\." + _WB, "rename",
         (_DEC + "self_attn_layer_norm.{1}",)),
    Rule(r"predictor\.transformer_cross_attention_layers\.(\d+)\.multihead_attn\."
         r"(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)", "rename", (_DEC + "cross_attn.{1}",)),
    Rule(r"predictor\.transformer_cross_attention_layers\.(\d+)\.norm\." + _WB, "rename",
         (_DEC + "cross_attn_layer_norm.{1}",)),
    Rule(r"predictor\.transformer_ffn_layers\.(\d+)\.linear1\." + _WB, "rename", (_DEC + "fc1.{1}",)),
    Rule(r"predictor\.transformer_ffn_layers\.(\d+)\.linear2\." + _WB, "rename", (_DEC + "fc2.{1}",)),
    Rule(r"predictor\.transformer_ffn_layers\.(\d+)\.norm\." + _WB, "rename", (_DEC + "final_layer_norm.{1}",)),
    Rule(r"predictor\.decoder_norm\." + _WB, "rename", ("mask_decoder.decoder.layernorm.{0}",)),
    Rule(r"predictor\.query_embed\.weight", "rename", ("mask_decoder.query_position.weight",)),
    Rule(r"predictor\.level_embed\.weight", "rename", ("mask_decoder.level_embed.weight",)),
    Rule(r"predictor\.mask_embed\.layers\.(\d+)\." + _WB, "rename",
         ("mask_decoder.decoder.mask_predictor.mask_embedder.{0}.0.{1}",)),
    Rule(r"predictor\.SEG_proj\.layers\.0\." + _WB, "rename", ("mask_decoder.score_proj.0.{0}",)),
    Rule(r"predictor\.SEG_proj\.layers\.1\." + _WB, "rename", ("mask_decoder.score_proj.2.{0}",)),
    Rule(r"predictor\.(query_feat|SEG_query_embed)\.weight", "drop"),
    # OVP, VMTF and their projections
    Rule(r"temporal_query", "rename", ("perceiver.latents",)),
    *_perceiver_rules("perceiver", "ovp_layers"),
    *_perceiver_rules("fusion", "vmtf_layers"),
    Rule(r"local_project\." + _WB, "rename", ("fusion.image_proj.{0}",)),
    Rule(r"text_vmtf_projector\." + _WB, "rename", ("fusion.text_proj.{0}",)),
    Rule(r"origin_SEG_token_projector\." + _WB, "rename", ("fusion.global_proj.{0}",)),
    Rule(r"SEG_token_projector\." + _WB, "rename", ("fusion.out.{0}",)),
)
# fmt: on

#: Our tensors with no counterpart in the release, and their constant value.
FILLS: dict[str, float] = {
    "llm.lm.lm_head.bias": 0.0,  # the released lm_head is nn.Linear(..., bias=False)
    "swin.tower.swin.layernorm.weight": 1.0,  # transformers' SwinModel final norm, unused by the backbone
    "swin.tower.swin.layernorm.bias": 0.0,
}
_COMPILED = [(re.compile(rule.pattern), rule) for rule in RULES]


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the release as its shard header describes it."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    file: str
    offsets: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Step:
    """One release tensor and where it goes."""

    source: str
    kind: str
    targets: tuple[str, ...]


def _match(key: str) -> tuple[Rule, tuple[str, ...]] | None:
    for pattern, rule in _COMPILED:
        found = pattern.fullmatch(key)
        if found:
            return rule, tuple(t.format(*found.groups()) for t in rule.targets)
    return None


def _shape_error(step: Step, info: TensorInfo, expected: str) -> OfficialFormatError:
    return OfficialFormatError(
        f"{info.file}: tensor `{step.source}` has shape {info.shape}; expected {expected} "
        f"(for {', '.join(step.targets)})."
    )


def plan_conversion(sources: dict[str, TensorInfo], target_shapes: dict[str, tuple[int, ...]]) -> list[Step]:
    """Place every release tensor by :data:`RULES` and check the shapes, without reading any data.

    Args:
        sources: release key → header info.
        target_shapes: our key → shape (the ``state_dict`` of the model being filled).

    Returns:
        One :class:`Step` per release tensor, in ``sources`` order.

    Raises:
        OfficialFormatError: a release tensor matches no rule or lands on a key we do not have, two release tensors
            fill the same key, a shape is wrong, or one of our tensors is left unfilled.
    """
    steps, unplaced, filled_by = [], [], {}
    for key, info in sources.items():
        found = _match(key)
        if found is None:
            unplaced.append(f"{key} ({info.file})")
            continue
        rule, targets = found
        step = Step(key, rule.kind, targets)
        for target in targets:
            if target not in target_shapes:
                raise OfficialFormatError(f"{info.file}: `{key}` maps to `{target}`, which the model does not have.")
            if target in filled_by:
                raise OfficialFormatError(f"{info.file}: `{key}` and `{filled_by[target]}` both map to `{target}`.")
            filled_by[target] = key
        _check_shapes(step, info, target_shapes)
        steps.append(step)
    if unplaced:
        more = f" ... (+{len(unplaced) - 5} more)" if len(unplaced) > 5 else ""
        raise OfficialFormatError(
            f"{len(unplaced)} release tensor(s) match no conversion rule: {', '.join(unplaced[:5])}{more}; "
            "is this the weic22/InstructSeg release?"
        )
    unfilled = sorted(set(target_shapes) - set(filled_by) - set(FILLS))
    if unfilled:
        raise OfficialFormatError(
            f"the release has no tensor for {len(unfilled)} of our tensor(s): {', '.join(unfilled[:5])}; "
            "is a shard missing from model.safetensors.index.json?"
        )
    return steps


def _check_shapes(step: Step, info: TensorInfo, target_shapes: dict[str, tuple[int, ...]]) -> None:
    shapes = [target_shapes[t] for t in step.targets]
    if step.kind == "rename" and info.shape != shapes[0]:
        raise _shape_error(step, info, str(shapes[0]))
    if step.kind == "split":
        fused = (3 * shapes[0][0], *shapes[0][1:])
        if info.shape != fused or len(set(shapes)) != 1:
            raise _shape_error(step, info, f"{fused} (q, k, v stacked)")
    if step.kind == "vocab":
        base, added = shapes
        if len(info.shape) != 2 or info.shape[1] != base[1] or info.shape[0] > base[0] or added[1] != base[1]:
            raise _shape_error(step, info, f"(rows <= {base[0]}, {base[1]})")
    if step.kind == "index" and (len(info.shape) != 2 or info.shape[0] != info.shape[1]):
        raise _shape_error(step, info, "(window², window²)")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise OfficialFormatError(f"{path} is missing; expected the InstructSeg release's {path.name}.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise OfficialFormatError(f"{path} is not valid JSON ({err}).") from None


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Key → :class:`TensorInfo` from a safetensors file's header, checking the file holds all the data it lists.

    Raises:
        OfficialFormatError: the file is missing, unreadable, or shorter than its header says (truncated).
    """
    if not path.is_file():
        raise OfficialFormatError(f"{path} is missing (listed by the release); download the release again.")
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(f.read(n))
    except (ValueError, UnicodeDecodeError) as err:
        raise OfficialFormatError(f"{path} is not a readable safetensors file ({err}); truncated download?") from None
    header.pop("__metadata__", None)
    infos, end = {}, 0
    for key, entry in header.items():
        dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
        if dtype is None:
            raise OfficialFormatError(f"{path}: tensor `{key}` has unsupported dtype {entry.get('dtype')!r}.")
        begin, stop = entry["data_offsets"]
        shape = tuple(entry["shape"])
        if stop - begin != math.prod(shape) * dtype.itemsize:
            raise OfficialFormatError(f"{path}: tensor `{key}` has {stop - begin} bytes for shape {shape}.")
        infos[key] = TensorInfo(shape, dtype, path.name, (8 + n + begin, 8 + n + stop))
        end = max(end, 8 + n + stop)
    if end > size:
        raise OfficialFormatError(
            f"{path} is truncated: its header lists {end} bytes of data, the file has {size}; download it again."
        )
    return infos


def read_release_tensors(src: Path) -> dict[str, TensorInfo]:
    """Every tensor of the release from ``model.safetensors.index.json`` and its shards (or ``model.safetensors``).

    Raises:
        OfficialFormatError: no weights, a missing or truncated shard, or an index that disagrees with its shards.
    """
    index_path = src / INDEX_NAME
    if not index_path.is_file():
        if not (src / SINGLE_NAME).is_file():
            raise OfficialFormatError(
                f"{src} has neither {INDEX_NAME} nor {SINGLE_NAME}; expected the release's weights."
            )
        return read_safetensors_header(src / SINGLE_NAME)
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise OfficialFormatError(f"{index_path} has no `weight_map`.")
    infos: dict[str, TensorInfo] = {}
    for shard in dict.fromkeys(weight_map.values()):
        header = read_safetensors_header(src / shard)
        listed = {k for k, v in weight_map.items() if v == shard}
        if set(header) != listed:
            missing = sorted(listed - set(header))[:3]
            extra = sorted(set(header) - listed)[:3]
            raise OfficialFormatError(
                f"{src / shard} disagrees with {INDEX_NAME}: missing {missing}, not listed {extra}; download again."
            )
        infos.update(header)
    return {k: infos[k] for k in weight_map}


def _require(section: dict, keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in section]
    if missing:
        raise OfficialFormatError(f"{where} lacks {missing}; expected the release's config.json.")


def read_release_config(src: Path) -> dict:
    """``config.json`` of the release, checked to be an InstructSeg (``mipha_phi``) checkpoint.

    Raises:
        OfficialFormatError: missing / invalid file, a plain Phi checkpoint, or another architecture.
    """
    path = src / CONFIG_NAME
    if not src.is_dir():
        raise OfficialFormatError(f"{src} is not a directory; expected the downloaded weic22/InstructSeg release.")
    config = _read_json(path)
    model_type = config.get("model_type")
    if model_type == "phi" or (model_type == RELEASE_MODEL_TYPE and "vision_config" not in config):
        raise OfficialFormatError(
            f"{path}: a plain Phi language model (model_type {model_type!r}, no vision_config), not the InstructSeg "
            "release; download weic22/InstructSeg."
        )
    if model_type != RELEASE_MODEL_TYPE:
        raise OfficialFormatError(
            f"{path}: unknown architecture model_type {model_type!r}; expected {RELEASE_MODEL_TYPE!r} "
            "(weic22/InstructSeg)."
        )
    _require(config, ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"), str(path))
    vision = config["vision_config"]
    if not isinstance(vision, dict) or not isinstance(vision.get("vision_tower"), dict):
        raise OfficialFormatError(f"{path}: `vision_config.vision_tower` is missing.")
    tower = vision["vision_tower"]
    _require(
        tower,
        ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size", "patch_size"),
        f"{path}: vision_config.vision_tower",
    )
    projector = vision.get("mm_projector", {}).get("mm_projector_type", "mlp2x_gelu")
    if projector != "mlp2x_gelu":
        raise OfficialFormatError(f"{path}: mm_projector_type {projector!r}; only 'mlp2x_gelu' is supported.")
    return config


def _count(sources: dict[str, TensorInfo], pattern: str) -> int:
    found = {m.group(1) for k in sources if (m := re.fullmatch(pattern, k))}
    return len(found)


def _shape(sources: dict[str, TensorInfo], key: str) -> tuple[int, ...]:
    if key not in sources:
        raise OfficialFormatError(f"the release has no tensor `{key}`; is a shard missing?")
    return sources[key].shape


def build_part_configs(config: dict, sources: dict[str, TensorInfo]) -> dict:
    """The ``transformers`` part configs and our model config, from the release's config and tensor shapes.

    Returns:
        ``{"siglip": SiglipVisionConfig, "llm": PhiConfig, "mask2former": Mask2FormerConfig,
        "model": InstructSegConfig, "embed_rows": int}``.
    """
    from transformers import Mask2FormerConfig, PhiConfig, SiglipVisionConfig, SwinConfig

    tower = config["vision_config"]["vision_tower"]
    siglip = SiglipVisionConfig(
        hidden_size=tower["hidden_size"],
        intermediate_size=tower["intermediate_size"],
        num_hidden_layers=tower["num_hidden_layers"],
        num_attention_heads=tower["num_attention_heads"],
        image_size=tower["image_size"],
        patch_size=tower["patch_size"],
        num_channels=tower.get("num_channels", 3),
        # MiphaVisionConfig defaults, used by the released code when the release does not set them
        hidden_act=tower.get("hidden_act", "quick_gelu"),
        layer_norm_eps=tower.get("layer_norm_eps", 1e-5),
        attention_dropout=tower.get("attention_dropout", 0.0),
        vision_use_head=False,
    )
    select_layer = int(tower.get("mm_vision_select_layer", -2))
    rows = max(_shape(sources, "lm_head.weight")[0], _shape(sources, "model.embed_tokens.weight")[0])
    optional = ("rope_theta", "resid_pdrop", "embd_pdrop", "attention_dropout", "qk_layernorm", "num_key_value_heads")
    phi = PhiConfig(
        vocab_size=rows,
        hidden_size=config["hidden_size"],
        intermediate_size=config["intermediate_size"],
        num_hidden_layers=config["num_hidden_layers"],
        num_attention_heads=config["num_attention_heads"],
        partial_rotary_factor=config.get("partial_rotary_factor", 0.5),
        layer_norm_eps=config.get("layer_norm_eps", 1e-5),
        hidden_act=config.get("hidden_act", "gelu_new"),
        max_position_embeddings=config.get("max_position_embeddings", 2048),
        tie_word_embeddings=False,
        **{k: config[k] for k in optional if config.get(k) is not None},
    )
    swin = SWIN_PREFIX
    table = _shape(sources, f"{swin}layers.0.blocks.0.attn.relative_position_bias_table")
    stages = _count(sources, re.escape(swin) + r"layers\.(\d+)\.blocks\.0\.norm1\.weight")
    embed = _shape(sources, f"{swin}patch_embed.proj.weight")
    swin_config = SwinConfig(
        image_size=384,
        patch_size=embed[2],
        embed_dim=embed[0],
        depths=[
            _count(sources, re.escape(f"{swin}layers.{s}.blocks.") + r"(\d+)\.norm1\.weight") for s in range(stages)
        ],
        num_heads=[
            _shape(sources, f"{swin}layers.{s}.blocks.0.attn.relative_position_bias_table")[1] for s in range(stages)
        ],
        window_size=(math.isqrt(table[0]) + 1) // 2,
        mlp_ratio=_shape(sources, f"{swin}layers.0.blocks.0.mlp.fc1.weight")[0] / embed[0],
        drop_path_rate=RELEASED_CODE_CONSTANTS["swin_drop_path"],
        out_features=[f"stage{s + 1}" for s in range(stages)],
    )
    query_embed = _shape(sources, "predictor.query_embed.weight")
    mask2former = Mask2FormerConfig(
        backbone_config=swin_config,
        feature_size=_shape(sources, "pixel_decoder.input_proj.0.0.weight")[0],
        mask_feature_size=_shape(sources, "pixel_decoder.mask_features.weight")[0],
        hidden_dim=query_embed[1],
        encoder_feedforward_dim=_shape(sources, "pixel_decoder.transformer.encoder.layers.0.linear1.weight")[0],
        encoder_layers=_count(sources, r"pixel_decoder\.transformer\.encoder\.layers\.(\d+)\.norm1\.weight"),
        decoder_layers=_count(sources, r"predictor\.transformer_ffn_layers\.(\d+)\.norm\.weight") + 1,
        dim_feedforward=_shape(sources, "predictor.transformer_ffn_layers.0.linear1.weight")[0],
        num_attention_heads=RELEASED_CODE_CONSTANTS["mask2former_heads"],
        num_queries=query_embed[0],
        use_pretrained_backbone=False,
    )
    heads = RELEASED_CODE_CONSTANTS["perceiver_heads"]

    def perceiver(release: str) -> dict:
        inner, dim = _shape(sources, f"{release}.layers.0.0.to_q.weight")
        return {
            "depth": _count(sources, re.escape(release) + r"\.layers\.(\d+)\.0\.to_q\.weight"),
            "heads": heads,
            "dim_head": inner // heads,
            "ff_mult": _shape(sources, f"{release}.layers.0.1.1.weight")[0] // dim,
        }

    model = InstructSegConfig.from_dict(
        {
            "vision": {"image_size": siglip.image_size, "select_layer": select_layer},
            "mask": {"image_size": RELEASED_CODE_CONSTANTS["mask_image_size"]},
            "perceiver": {"num_latents": _shape(sources, "temporal_query")[0], **perceiver("ovp_layers")},
            "llm": {"max_length": phi.max_position_embeddings},
            "fusion": {
                "dim": _shape(sources, "text_vmtf_projector.weight")[0],
                "reference_kv": True,
                **perceiver("vmtf_layers"),
            },
            "decoder": {"num_queries": _shape(sources, "seg_query")[0], "no_target_threshold": 0.0},
            "num_reference_frames": RELEASED_CODE_CONSTANTS["num_reference_frames"],
            "profile": "official",
            "name": "official",
        }
    )
    embed_rows = _shape(sources, "model.embed_tokens.weight")[0]
    return {"siglip": siglip, "llm": phi, "mask2former": mask2former, "model": model, "embed_rows": embed_rows}


def load_release_tokenizer(src: Path, embed_rows: int) -> PreTrainedTokenizerBase:
    """The release's tokenizer (its files only, so ``config.json``'s custom model type is never consulted).

    Raises:
        OfficialFormatError: no tokenizer files, or a tokenizer whose ``[SEG]`` has no row in ``model.embed_tokens``.
    """
    from transformers import AutoTokenizer

    files = [src / name for name in TOKENIZER_FILES if (src / name).is_file()]
    if not files:
        raise OfficialFormatError(f"{src} has no tokenizer files (expected some of {list(TOKENIZER_FILES)}).")
    with tempfile.TemporaryDirectory() as tmp:
        for file in files:
            shutil.copy(file, tmp)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        except (OSError, ValueError) as err:
            raise OfficialFormatError(f"{src}: cannot load the tokenizer files ({err}).") from None
    seg = tokenizer.convert_tokens_to_ids(SEG_ANSWER_TOKEN)
    if SEG_ANSWER_TOKEN not in tokenizer.get_vocab() or len(tokenizer) != embed_rows:
        raise OfficialFormatError(
            f"{src}: the tokenizer ({len(tokenizer)} tokens, {SEG_ANSWER_TOKEN} id {seg}) does not match "
            f"model.embed_tokens ({embed_rows} rows); expected the release's own tokenizer files."
        )
    return tokenizer


def build_skeleton(parts: dict, tokenizer: PreTrainedTokenizerBase | None = None) -> InstructSeg:
    """Our model for the part configs on the ``meta`` device (no memory), LoRA merged, official profile."""
    from transformers import Mask2FormerModel, PhiForCausalLM, SiglipVisionModel

    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.processing import add_instructseg_tokens

    if tokenizer is not None:
        ids = dict(zip(SPECIAL_TOKENS, add_instructseg_tokens(tokenizer)))
    else:  # key checks without a tokenizer: [SEG] is the release's last row, the placeholders follow it
        seg = parts["embed_rows"] - 1
        ids = {t: seg + 1 + i for i, t in enumerate(SPECIAL_TOKENS[:-1])} | {SEG_ANSWER_TOKEN: seg}
    with torch.device("meta"):
        return InstructSeg(
            parts["model"],
            SiglipVisionModel(parts["siglip"]),
            PhiForCausalLM(parts["llm"]),
            ids,
            Mask2FormerModel(parts["mask2former"]),
            with_lora=False,
            tokenizer=tokenizer,
        )


def _read_tensor(src: Path, info: TensorInfo) -> torch.Tensor:
    buffer = torch.empty(info.offsets[1] - info.offsets[0], dtype=torch.uint8)
    with (src / info.file).open("rb") as f:
        f.seek(info.offsets[0])
        if f.readinto(buffer.numpy()) != buffer.numel():
            raise OfficialFormatError(f"{src / info.file}: could not read tensor data (file changed while reading?).")
    return buffer.view(info.dtype).reshape(info.shape)


def _convert(step: Step, raw: torch.Tensor, shapes: dict, added_ids: list[int], dtype: torch.dtype) -> list:
    """The target tensors of one step in ``dtype`` (each with its own storage), in ``step.targets`` order."""
    if step.kind == "rename":
        return [raw.to(dtype)]
    if step.kind == "split":  # q, k, v: the row order of nn.MultiheadAttention's in_proj and of Swin's qkv
        return [part.to(dtype, copy=True) for part in raw.chunk(3, dim=0)]
    base_shape, added_shape = shapes[step.targets[0]], shapes[step.targets[1]]
    if tuple(raw.shape) == base_shape:
        base = raw.to(dtype)
    else:  # rows the release lacks (e.g. the embedding resized to len(tokenizer)) stay 0
        base = torch.zeros(base_shape, dtype=dtype)
        base[: raw.shape[0]].copy_(raw)
    added = torch.zeros(added_shape, dtype=dtype)
    for row, token_id in enumerate(added_ids):
        if token_id < raw.shape[0]:
            added[row].copy_(raw[token_id])
    return [base, added]


def _check_index(step: Step, tensor: torch.Tensor, file: str) -> None:
    window = math.isqrt(tensor.shape[0])
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    if window**2 != tensor.shape[0] or not torch.equal(tensor.long(), rel[..., 0] * (2 * window - 1) + rel[..., 1]):
        raise OfficialFormatError(
            f"{file}: `{step.source}` is not the standard Swin relative position index for window {window}; "
            "this converter recomputes it and cannot keep a different one."
        )


def _summary(steps: list[Step], sources: dict[str, TensorInfo], n_targets: int, seconds: float) -> str:
    kinds = Counter(step.kind for step in steps)
    out = Counter()
    for step in steps:
        out[step.kind] += len(step.targets)
    size = sum(i.offsets[1] - i.offsets[0] for i in sources.values()) / 1e9
    rows = [
        ("release tensors", len(steps), f"{size:.2f} GB in {len({i.file for i in sources.values()})} file(s)"),
        ("  renamed", kinds["rename"], f"-> {out['rename']} tensors"),
        ("  split q, k, v", kinds["split"], f"-> {out['split']} tensors"),
        ("  vocabulary + added-token rows", kinds["vocab"], f"-> {out['vocab']} tensors"),
        ("  dropped (Swin index, checked)", kinds["index"], "recomputed by the model"),
        ("  dropped (unused)", kinds["drop"], "SigLIP pooling head, query_feat, SEG_query_embed"),
        ("filled with constants", len(FILLS), ", ".join(FILLS)),
        ("export tensors", n_targets, f"written in {seconds:.1f} s"),
    ]
    return "\n".join(f"{name:<32} {count:>6}  {note}" for name, count, note in rows)


def convert_official(
    src: Path, out: Path, dtype: str = "float32", overwrite: bool = False, quiet: bool = False
) -> Path:
    """Convert the released InstructSeg checkpoint (``weic22/InstructSeg``) into an instructseg export directory.

    Every release tensor is placed by an explicit rule table (renames, q/k/v splits of the fused Swin and decoder
    self-attention projections, ``[SEG]`` rows into the added-token tables, dropped unused tensors) and the export
    gets the ``"official"`` profile. Tensors are streamed one at a time (peak memory about one copy of the converted
    model) and the export is written atomically. Load the result with ``InstructSeg.from_pretrained(out)``.

    Args:
        src: the downloaded release directory (``config.json``, ``model.safetensors.index.json`` + shards or
            ``model.safetensors``, tokenizer files).
        out: the export directory to write (an existing export is replaced only with ``overwrite``; any other
            existing path is refused).
        dtype: dtype of the exported floating-point weights: ``float32`` (parity with the released evaluation),
            ``bfloat16`` or ``float16`` (half the size).
        overwrite: replace an existing export at ``out``.
        quiet: do not print the conversion table.

    Returns:
        ``out``.

    Raises:
        OfficialFormatError: ``src`` is not a complete, consistent release (the message names the file or tensor and
            what was expected).
        WeightsMismatchError: a release tensor holds NaN or inf.
        FileExistsError: ``out`` exists and is not an export, or is one and ``overwrite`` is not set.
        Nothing is written at ``out`` when any of these is raised.
    """
    from instructseg.io import check_export_destination, check_finite

    src, out = Path(src), Path(out)
    if dtype not in DTYPES:
        raise OfficialFormatError(f"dtype: expected one of {list(DTYPES)}, got {dtype!r}.")
    check_export_destination(out, overwrite)
    start = time.perf_counter()
    config = read_release_config(src)
    sources = read_release_tensors(src)
    parts = build_part_configs(config, sources)
    model = build_skeleton(parts, load_release_tokenizer(src, parts["embed_rows"]))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    steps = plan_conversion(sources, shapes)
    target_dtype = DTYPES[dtype]
    state = {k: torch.full(shapes[k], value, dtype=target_dtype) for k, value in FILLS.items()}
    for step in steps:
        info = sources[step.source]
        tensor = _read_tensor(src, info)
        check_finite({step.source: tensor}, str(src / info.file))
        if step.kind == "index":
            _check_index(step, tensor, info.file)
        if step.kind in ("index", "drop"):
            continue
        state.update(zip(step.targets, _convert(step, tensor, shapes, model.llm.special_ids, target_dtype)))
        del tensor
    model.load_state_dict(state, strict=True, assign=True)
    del state
    model.save_pretrained(out, training_config={"converted_from": str(src), "dtype": dtype}, overwrite=overwrite)
    if not quiet:
        print(_summary(steps, sources, len(shapes), time.perf_counter() - start))
    return out


def is_release_dir(path: Path) -> bool:
    """Whether ``path`` is a directory holding the release's ``config.json`` (``model_type: mipha_phi``)."""
    try:
        return json.loads((Path(path) / CONFIG_NAME).read_text()).get("model_type") == RELEASE_MODEL_TYPE
    except (OSError, ValueError, AttributeError):
        return False


def converted_cache_dir(src: Path, dtype: str = "float32") -> Path:
    """Where :func:`cached_export` keeps the conversion of release ``src``: ``$INSTRUCSEG_CACHE`` (default
    ``~/.cache/instructseg``) ``/official/<name>-<fingerprint>-<dtype>``; the fingerprint covers the resolved path and
    the size and mtime of every weight file, so a changed release converts again."""
    import hashlib
    import os

    src = Path(src).resolve()
    digest = hashlib.sha256(str(src).encode())
    for file in sorted(src.glob("*.safetensors")):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    root = Path(os.environ.get("INSTRUCSEG_CACHE", Path.home() / ".cache" / "instructseg")).expanduser()
    return root / "official" / f"{src.name}-{digest.hexdigest()[:12]}-{dtype}"


def cached_export(src: Path, dtype: str = "float32") -> Path:
    """The export of release ``src``, converted on first use into :func:`converted_cache_dir` and reused after."""
    from instructseg.io import is_export_dir

    out = converted_cache_dir(src, dtype)
    if not is_export_dir(out):
        print(f"converting the released checkpoint {src} into {out} (once)", flush=True)
        convert_official(Path(src), out, dtype=dtype, overwrite=out.exists())
    return out
