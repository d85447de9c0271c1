"""Tiny random "pretrained" parts for CPU tests and the synthetic benchmark.

Nothing can be downloaded at run time, so the ``tiny`` preset loads its three pretrained parts from directories
written here with ``save_pretrained``: a tiny SigLIP vision tower, a tiny Phi causal LM with a small byte-level BPE
tokenizer trained on a built-in corpus, and a tiny Mask2Former with a Swin backbone. They go through exactly the
same ``from_pretrained`` code path as the real checkpoints.

    python -m instructseg.tiny --out checkpoints/tiny-pretrained
"""

from __future__ import annotations

import argparse
from pathlib import Path

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


def save_tiny_pretrained(root: str | Path, image_size: int = 64, seed: int = 0) -> Path:
    """Write ``root/{siglip,llm,mask2former}`` with tiny random weights; returns ``root``.

    Args:
        root: output directory (created).
        image_size: input side of the tiny SigLIP and Swin (must be a multiple of 32).
        seed: weight initialisation seed.
    """
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerModel,
        PhiConfig,
        PhiForCausalLM,
        SiglipVisionConfig,
        SiglipVisionModel,
        SwinConfig,
    )

    root = Path(root)
    torch.manual_seed(seed)
    siglip = SiglipVisionModel(
        SiglipVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=image_size,
            patch_size=8,
            vision_use_head=False,
        )
    )
    siglip.save_pretrained(root / "siglip")

    tokenizer = build_tiny_tokenizer()
    vocab = len(tokenizer) + len(SPECIAL_TOKENS)
    llm = PhiForCausalLM(
        PhiConfig(
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
    )
    llm.save_pretrained(root / "llm")
    tokenizer.save_pretrained(root / "llm")

    swin = SwinConfig(
        image_size=image_size,
        patch_size=4,
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 2, 2, 4],
        window_size=4,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    mask2former = Mask2FormerModel(
        Mask2FormerConfig(
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
    )
    mask2former.save_pretrained(root / "mask2former")
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="checkpoints/tiny-pretrained", help="output directory")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote tiny pretrained parts to {save_tiny_pretrained(args.out, args.image_size, args.seed)}")


if __name__ == "__main__":
    main()
