"""Tiny "pretrained" parts for CPU tests and the synthetic benchmark: random, or trained on the synthetic domain.

Nothing can be downloaded at run time, so the ``tiny`` preset loads its three pretrained parts from directories
written here with ``save_pretrained``: a tiny SigLIP vision tower, a tiny Phi causal LM with a small byte-level BPE
tokenizer trained on a built-in corpus, and a tiny Mask2Former with a Swin backbone. They go through exactly the
same ``from_pretrained`` code path as the real checkpoints. The unit tests use random parts
(:func:`save_tiny_pretrained`); the README main job trains them first on the synthetic benchmark's scenes
(:func:`make_tiny` with ``pretrain=True``, stage 0 in :mod:`instructseg.pretrain`).

    instructseg make-tiny --out checkpoints/tiny-pretrained [--pretrain true]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from instructseg.constants import SPECIAL_TOKENS
from instructseg.processing import SYSTEM_PROMPT, TASK_TEMPLATES

_WORDS = """
the a an of on in at to is are was which what who where that this one object shape thing there it its
red green blue yellow orange purple pink white black gray grey cyan brown colour color coloured colored
small large big tiny medium little huge circle square triangle rectangle star disk ball box diamond
left right top bottom upper lower middle center centre corner side first last biggest smallest largest
moving moves going goes up down towards away still static stationary fast slow staying stays
could would should roll stack hold holding like ripe banana sky grass fire snow night sun tomato leaf
ocean lemon cherry frog coal milk cloud emerald sapphire ruby gold with three four five sides no corners
pointy round shaped looks resembles please find segment show me answer question image video frame frames
sure result segmentation reasoning referring expression because nothing none here not present
"""


def tiny_corpus() -> list[str]:
    """Sentences the tiny tokenizer is trained on: the prompt templates plus a shape/colour vocabulary."""
    lines = [SYSTEM_PROMPT, "USER: ASSISTANT: Text Prompt: This is an image a video with reference frames"]
    lines += list(TASK_TEMPLATES.values())
    words = _WORDS.split()
    lines += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    lines += [w.capitalize() for w in words]
    return lines


def build_tiny_tokenizer(vocab_size: int = 768):
    """A deterministic byte-level BPE tokenizer wrapped as a ``PreTrainedTokenizerFast`` (eos = pad = <|endoftext|>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    eos = "<|endoftext|>"
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=eos, bos_token=eos, unk_token=eos, pad_token=eos)


@dataclass
class TinyParts:
    """The three tiny pretrained parts before they are saved.

    Attributes:
        siglip: a ``SiglipVisionModel``.
        llm: a ``PhiForCausalLM``.
        tokenizer: its ``PreTrainedTokenizerFast`` (:func:`build_tiny_tokenizer`).
        mask2former: a ``Mask2FormerModel``, or a ``Mask2FormerForUniversalSegmentation`` (classes ``mask_classes``)
            when built for stage-0 pretraining; :meth:`save` writes its ``Mask2FormerModel`` either way.
    """

    siglip: Any
    llm: Any
    tokenizer: Any
    mask2former: Any

    def save(self, root: str | Path) -> Path:
        """``save_pretrained`` into ``root/{siglip,llm,mask2former}`` (the layout every preset loads from)."""
        root = Path(root)
        self.siglip.save_pretrained(root / "siglip")
        self.llm.save_pretrained(root / "llm")
        self.tokenizer.save_pretrained(root / "llm")
        getattr(self.mask2former, "model", self.mask2former).save_pretrained(root / "mask2former")
        return root


#: Architecture overrides of the parts that stage 0 trains (instructseg.pretrain): a 3-layer SigLIP, so that the
#: penultimate hidden state the model reads has two trained layers behind it; as many Mask2Former queries as the
#: tiny preset's mask queries, and a point-sampled loss sized for 64-pixel images.
PRETRAINED_SIZES: dict[str, dict[str, Any]] = {
    "siglip": {"num_hidden_layers": 3},
    "llm": {},
    "mask2former": {"num_queries": 8, "train_num_points": 1024},
}


def build_tiny_parts(
    image_size: int = 64, seed: int = 0, pretrained_sizes: bool = False, mask_classes: tuple[str, ...] = ("object",)
) -> TinyParts:
    """Tiny SigLIP, Phi + tokenizer and Mask2Former (Swin backbone) with random weights drawn from ``seed``.

    Args:
        image_size: input side of the tiny SigLIP and Swin (must be a multiple of 32).
        seed: weight initialisation seed.
        pretrained_sizes: apply :data:`PRETRAINED_SIZES` and build the Mask2Former with its segmentation head, for
            stage-0 pretraining (:mod:`instructseg.pretrain`); False gives the random parts of the unit tests.
        mask_classes: class names of that segmentation head (with ``pretrained_sizes``).
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerModel,
        PhiConfig,
        PhiForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
        SwinConfig,
    )

    sizes = PRETRAINED_SIZES if pretrained_sizes else {"siglip": {}, "llm": {}, "mask2former": {}}
    torch.manual_seed(seed)
    siglip_config = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=8,
        vision_use_head=False,
    )
    siglip = SiglipVisionModel(SiglipVisionConfig(**{**siglip_config, **sizes["siglip"]}))

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer) + len(SPECIAL_TOKENS)
    llm_config = dict(
        vocab_size=(vocab + 63) // 64 * 64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        partial_rotary_factor=0.5,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    llm = PhiForCausalLM(PhiConfig(**{**llm_config, **sizes["llm"]}))

    swin = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    mask2former_config = dict(
        backbone_config=swin,
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=128,
        dim_feedforward=128,
        encoder_layers=2,
        decoder_layers=4,
        num_attention_heads=4,
        num_queries=16,
        use_pretrained_backbone=False,
    )
    config = Mask2FormerConfig(**{**mask2former_config, **sizes["mask2former"]})
    if pretrained_sizes:
        config.num_labels = len(mask_classes)
        config.id2label = dict(enumerate(mask_classes))
        config.label2id = {name: i for i, name in enumerate(mask_classes)}
        mask2former = Mask2FormerForUniversalSegmentation(config)
    else:
        mask2former = Mask2FormerModel(config)
    return TinyParts(siglip, llm, tokenizer, mask2former)


def save_tiny_pretrained(root: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """Write ``root/{siglip,llm,mask2former}`` with tiny random weights; returns ``root``.

    Args:
        root: output directory (created).
        image_size: input side of the tiny SigLIP and Swin (must be a multiple of 32).
        seed: weight initialisation seed.
    """
    return build_tiny_parts(image_size, seed).save(root)


def make_tiny(
    out: Path = Path("checkpoints/tiny-pretrained"), pretrain: bool = False, seed: int = 0, image_size: int = 64
) -> Path:
    """Write the tiny preset's three pretrained parts (SigLIP, Phi + tokenizer, Mask2Former) into ``out``.

    Without ``pretrain`` the parts are random (what the unit tests use; a second run overwrites them). With
    ``pretrain`` they are trained on the synthetic benchmark's training scenes first (stage 0, a few CPU minutes,
    deterministic for ``seed``): SigLIP + projector + Phi as a small multimodal LM that describes the scene's objects
    and the object an instruction points at, and Mask2Former for class-agnostic object masks. A second run with the
    same settings reuses ``out`` (``out/stage0.json`` records them). Progress is printed one line at a time.

    Args:
        out: output directory; ``out/{siglip,llm,mask2former}`` are written with ``save_pretrained``.
        pretrain: train the parts on the synthetic domain (stage 0) instead of leaving them random.
        seed: seed of the initial weights (and of stage 0's scenes and batches).
        image_size: input side of SigLIP and Swin, a multiple of 32 (the tiny preset uses 64).

    Returns:
        ``out``.
    """
    if image_size <= 0 or image_size % 32:
        raise ValueError(f"make_tiny: image_size must be a positive multiple of 32, got {image_size}.")
    if pretrain:
        from instructseg.pretrain import pretrain_tiny

        return pretrain_tiny(Path(out), seed=seed, image_size=image_size)
    return save_tiny_pretrained(out, image_size, seed)
