"""Nested dataclass configuration of the InstructSeg model, with validation and named presets.

The model is described by one :class:`InstructSegConfig` holding one small dataclass per box of the
architecture (vision towers, perceiver, LLM + LoRA, text fusion, mask decoder, loss weights). Two presets:

* ``"instructseg-phi2"``: the paper's sizes (SigLIP-so400m/384, Phi-2, Swin-B Mask2Former, 128 OVP latents per
  reference frame, 3 OVP + 3 VMTF layers, 100 mask queries, 9 decoder layers, LoRA r=8 / alpha=16 on q/v).
* ``"tiny"``: a few-hundred-thousand-parameter model for CPU tests and the synthetic benchmark. Its pretrained
  parts are tiny random checkpoints written by :func:`instructseg.tiny.save_tiny_pretrained`.

Widths of the pretrained towers (SigLIP width, LLM width, Swin channels, Mask2Former hidden size) are *not*
configured here: they are read from the loaded checkpoints so that a config can never disagree with its weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PRESETS = ("tiny", "instructseg-phi2")
#: Behaviour profiles: ``"instructseg"`` (this project's, for training from scratch) and ``"official"`` (reproduces the
#: released code and weights of ``weic22/InstructSeg``; set by ``instructseg.official.convert_official``).
PROFILES = ("instructseg", "official")


@dataclass
class VisionConfig:
    """CLIP-side (SigLIP) encoder and its projector into the LLM."""

    siglip_path: str = "google/siglip-so400m-patch14-384"
    """Hugging Face id or local directory of a SigLIP (vision) checkpoint."""
    image_size: int = 384
    """Square input side of SigLIP (plain resize, no padding)."""
    select_layer: int = -2
    """Which hidden state of the SigLIP tower feeds the projector (-2 = penultimate, as in the paper)."""


@dataclass
class MaskBackboneConfig:
    """Mask-side encoder: the Swin backbone, pixel decoder and transformer decoder of a Mask2Former checkpoint."""

    mask2former_path: str = "facebook/mask2former-swin-base-IN21k-coco-panoptic"
    """Hugging Face id or local directory of a Mask2Former checkpoint with a Swin backbone."""
    image_size: int = 1024
    """Square side of the mask-branch input (longest side resized to this, then padded)."""
    freeze_backbone: bool = True
    """Keep Swin frozen and in eval mode (the paper trains only the decoders)."""


@dataclass
class PerceiverConfig:
    """Object-aware Video Perceiver (OVP): learned latents per reference frame."""

    num_latents: int = 128
    """K: latents (OVP tokens) per reference frame."""
    depth: int = 3
    """Perceiver layers (cross-attention to the frame tokens + instruction, then feed-forward)."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 128
    """Width of one attention head."""
    ff_mult: int = 2
    """Feed-forward width as a multiple of the LLM width."""


@dataclass
class LoraConfig:
    """peft LoRA on the LLM (targets are matched as module-name suffixes)."""

    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.05
    """Dropout on the LoRA input during training."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    """Module-name suffixes of the LLM that get LoRA (paper: q_proj, v_proj)."""


@dataclass
class LLMConfig:
    """The multimodal LLM (Phi-2 by default) and its adapters."""

    path: str = "microsoft/phi-2"
    """Hugging Face id or local directory of a causal LM checkpoint and its tokenizer."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """The LoRA adapters."""
    max_length: int = 2048
    """Upper bound of the assembled sequence (visual tokens included); longer instructions raise ValueError."""
    gradient_checkpointing: bool = False
    """Recompute the LLM's activations in the backward pass (less memory, about 30 % more time)."""


@dataclass
class TextFusionConfig:
    """Vision-guided Multi-granularity Text Fusion (VMTF)."""

    dim: int = 1024
    """Width of the fusion latents."""
    depth: int = 3
    """Fusion layers."""
    heads: int = 8
    """Attention heads."""
    dim_head: int = 128
    """Width of one attention head."""
    ff_mult: int = 2
    """Feed-forward width as a multiple of ``dim``."""
    reference_kv: bool = False
    """True reproduces the released code: only the global text latent enters keys/values, so the detailed text
    tokens have no effect. False (default) follows the paper: all text latents are keys/values."""
    image_stride: int = 32
    """Stride of the Swin map the text latents attend to: 32 (the paper's res5, a 32 x 32 map at 1024 px), or 16, 8
    or 4 for small inputs, where res5 is a map of a few cells (at the tiny preset's 64 px: 2 x 2 at stride 32, 8 x 8
    at stride 8; ``benchmarks/binding_ablations.py`` compares them)."""


@dataclass
class DecoderConfig:
    """Mask-query tokens and the masked-attention decoder's selection rule."""

    num_queries: int = 100
    """Q: mask-query tokens appended to the prompt (one candidate mask each)."""
    no_target_threshold: float = 0.5
    """A best query whose score sigmoid(s_q) is below this is reported as "no target" (empty mask)."""


@dataclass
class LossConfig:
    """Loss weights and point sampling (paper eq. 4; reference code: class 2, mask 5, dice 5)."""

    class_weight: float = 2.0
    """Weight of the score (class) BCE."""
    mask_weight: float = 5.0
    """Weight of the point-sampled mask BCE."""
    dice_weight: float = 5.0
    """Weight of the point-sampled Dice loss."""
    text_weight: float = 1.0
    """Weight of the LLM's next-token loss on supervised answers."""
    class_cost_weight: float = 0.0
    """Weight of -sigmoid(score) in the Hungarian matching cost (0 = mask cost only, as the reference code)."""
    num_points: int = 12544
    """Points sampled per mask for the mask losses (Mask2Former: 112 x 112)."""
    oversample_ratio: float = 3.0
    """Candidate points per sampled point for importance sampling."""
    importance_sample_ratio: float = 0.75
    """Share of the points taken where the prediction is most uncertain."""
    deep_supervision: bool = True
    """Apply the losses to every decoder layer's prediction, not only the last."""


@dataclass
class InstructSegConfig:
    """Everything needed to build an :class:`~instructseg.modeling.instructseg.InstructSeg` model."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    """The SigLIP encoder."""
    mask: MaskBackboneConfig = field(default_factory=MaskBackboneConfig)
    """The Mask2Former (Swin) mask branch."""
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    """The Object-aware Video Perceiver."""
    llm: LLMConfig = field(default_factory=LLMConfig)
    """The LLM and its LoRA."""
    fusion: TextFusionConfig = field(default_factory=TextFusionConfig)
    """The Vision-guided Multi-granularity Text Fusion."""
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    """Mask queries and selection."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Loss weights."""
    num_reference_frames: int = 4
    """R: reference frames fed to the OVP for videos (images use themselves as their single reference)."""
    profile: str = "instructseg"
    """``"official"`` reproduces the released code where it differs from this project's design: the pixel decoder's
    FPN convolutions have biases and the lateral branch ends in a ReLU (see :data:`PROFILES`)."""
    name: str = "custom"
    """Preset name (``tiny``, ``instructseg-phi2`` or ``custom``); checkpoints of another name are refused."""

    def __post_init__(self) -> None:
        for sub_name, sub_type in _SUBCONFIGS.items():
            value = getattr(self, sub_name)
            if isinstance(value, dict):
                setattr(self, sub_name, _from_dict(sub_type, value, f"config.{sub_name}"))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that is out of range."""
        checks = [
            ("vision.image_size", self.vision.image_size > 0),
            ("mask.image_size", self.mask.image_size >= 32 and self.mask.image_size % 32 == 0),
            ("perceiver.num_latents", self.perceiver.num_latents > 0),
            ("perceiver.depth", self.perceiver.depth > 0),
            ("perceiver.heads", self.perceiver.heads > 0 and self.perceiver.dim_head > 0),
            ("fusion.depth", self.fusion.depth > 0),
            ("fusion.dim", self.fusion.dim > 0 and self.fusion.heads > 0 and self.fusion.dim_head > 0),
            ("llm.lora.r", self.llm.lora.r > 0 and self.llm.lora.alpha > 0),
            ("llm.lora.dropout", 0.0 <= self.llm.lora.dropout < 1.0),
            ("llm.max_length", self.llm.max_length > 0),
            ("decoder.num_queries", self.decoder.num_queries > 0),
            ("decoder.no_target_threshold", 0.0 <= self.decoder.no_target_threshold <= 1.0),
            ("loss.num_points", self.loss.num_points > 0),
            ("loss.importance_sample_ratio", 0.0 <= self.loss.importance_sample_ratio <= 1.0),
            ("loss.oversample_ratio", self.loss.oversample_ratio >= 1.0),
            ("num_reference_frames", self.num_reference_frames >= 1),
            ("profile", self.profile in PROFILES),
        ]
        for name, ok in checks:
            if not ok:
                raise ValueError(f"InstructSegConfig: invalid value for `{name}` ({self._get(name)!r}).")
        if not self.llm.lora.target_modules:
            raise ValueError("InstructSegConfig: `llm.lora.target_modules` must name at least one module.")

    def _get(self, dotted: str) -> Any:
        value: Any = self
        for part in dotted.split("."):
            value = getattr(value, part)
        return value

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> InstructSegConfig:
        """Build a preset (``"tiny"`` or ``"instructseg-phi2"``), optionally overriding nested fields.

        ``overrides`` are nested dicts, e.g. ``from_name("tiny", llm={"path": "/ckpt/phi"})``.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; choose one of {PRESETS}.")
        base = _tiny_dict() if name == "tiny" else {}
        base["name"] = name
        return cls.from_dict(deep_update(base, overrides))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstructSegConfig:
        return _from_dict(cls, data, "config")

    @classmethod
    def from_file(cls, path: str | Path) -> InstructSegConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No config file at {path}.")
        return cls.from_dict(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    def with_pretrained_root(self, root: str | Path) -> InstructSegConfig:
        """Return a copy whose three pretrained paths point at ``root/{siglip,llm,mask2former}``."""
        root = Path(root)
        return dataclasses.replace(
            self,
            vision=dataclasses.replace(self.vision, siglip_path=str(root / "siglip")),
            mask=dataclasses.replace(self.mask, mask2former_path=str(root / "mask2former")),
            llm=dataclasses.replace(self.llm, path=str(root / "llm")),
        )


_SUBCONFIGS: dict[str, type] = {
    "vision": VisionConfig,
    "mask": MaskBackboneConfig,
    "perceiver": PerceiverConfig,
    "llm": LLMConfig,
    "fusion": TextFusionConfig,
    "decoder": DecoderConfig,
    "loss": LossConfig,
}


def _tiny_dict() -> dict[str, Any]:
    return {
        "vision": {"siglip_path": "checkpoints/tiny-pretrained/siglip", "image_size": 64},
        "mask": {"mask2former_path": "checkpoints/tiny-pretrained/mask2former", "image_size": 64},
        "perceiver": {"num_latents": 8, "depth": 1, "heads": 2, "dim_head": 16},
        "llm": {"path": "checkpoints/tiny-pretrained/llm", "max_length": 512, "lora": {"r": 8, "alpha": 16}},
        "fusion": {"dim": 64, "depth": 1, "heads": 2, "dim_head": 16},
        "decoder": {"num_queries": 8},
        "loss": {"num_points": 1024},
        "num_reference_frames": 2,
    }


def deep_update(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in recursively (nested dicts merged, other values replaced).

    The inputs are left unchanged.
    """
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = value
    return out


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclasses; unknown keys are an error."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(known)}.")
    kwargs = {}
    for key, value in data.items():
        sub = _SUBCONFIGS.get(key) if cls is InstructSegConfig else (LoraConfig if key == "lora" else None)
        kwargs[key] = _from_dict(sub, value, f"{where}.{key}") if sub and isinstance(value, dict) else value
    return cls(**kwargs)
