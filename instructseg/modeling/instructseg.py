"""InstructSeg: composes the boxes into three public stages.

Legend: B batch, F frames, T clip frames (1 key + up to R references), N SigLIP tokens, D LLM width, Q mask
queries, C decoder hidden size, h x w = S_mask/4.

1. :meth:`InstructSeg.encode_frames` — frozen SigLIP (+ projector), frozen Swin and the pixel decoder, once per
   frame (cacheable; none of it depends on the instruction).
2. :meth:`InstructSeg.co_decode` — OVP over the reference frames, then one LLM pass per (clip, instruction).
3. :meth:`InstructSeg.decode_masks` — VMTF classifier and masked-attention decoder per (frame, instruction).

:meth:`InstructSeg.forward` runs the three stages on a training/eval batch and :meth:`InstructSeg.select` turns the
prediction into one mask per sample (best query by score x mean in-mask probability; "no target" below a
threshold).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from instructseg.config import InstructSegConfig
from instructseg.constants import SPECIAL_TOKENS
from instructseg.io import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_export_dir,
    check_weights,
    export_config_dict,
    model_card,
    read_export_config,
    read_export_weights,
    safetensors_state,
    write_json,
)
from instructseg.modeling.llm import CoDecodeOutput, InstructSegLLM, gather_spans
from instructseg.modeling.loading import full_size_hf_configs, load_part, load_tokenizer, resolve_model_path
from instructseg.modeling.mask_decoder import MaskDecoder, MaskPrediction
from instructseg.modeling.perceiver import ObjectAwareVideoPerceiver
from instructseg.modeling.pixel_decoder import PixelDecoder
from instructseg.modeling.text_fusion import VisionGuidedTextFusion
from instructseg.modeling.vision import SiglipEncoder, SwinPyramid
from instructseg.processing import add_instructseg_tokens


@dataclass
class FrameFeatures:
    """Stage-1 output for F frames.

    Attributes:
        clip_tokens: ``(F, N, D)`` projected SigLIP tokens, or ``None`` if not computed.
        pyramid: 4 Swin maps ``(F, C_i, S/s_i, S/s_i)``, or ``None`` if the mask branch was not run.
        pixel: the pixel decoder's ``(mask_features (F, C, h, w), multi_scale [3 x (F, C, ., .)])``, computed with
            the pyramid (it depends on the frames only, so every instruction decoded on these frames shares it).
    """

    clip_tokens: torch.Tensor | None
    pyramid: list[torch.Tensor] | None
    pixel: tuple[torch.Tensor, list[torch.Tensor]] | None = None


@dataclass
class InstructSegOutput:
    """Output of :meth:`InstructSeg.forward`.

    Attributes:
        prediction: per-step mask logits ``(B, Q, h, w)`` and scores ``(B, Q)``.
        lm_loss: text loss over supervised answer tokens, or ``None``.
    """

    prediction: MaskPrediction
    lm_loss: torch.Tensor | None


@dataclass
class Selection:
    """One mask per sample chosen from the Q queries.

    Attributes:
        mask_logits: ``(B, h, w)`` logits of the best query (all ``-inf`` where ``no_target``).
        score: ``(B,)`` sigmoid score of the best query.
        no_target: ``(B,)`` bool, the score is below the no-target threshold.
        query: ``(B,)`` index of the best query.
    """

    mask_logits: torch.Tensor
    score: torch.Tensor
    no_target: torch.Tensor
    query: torch.Tensor


class InstructSeg(nn.Module):
    """The InstructSeg model.

    Args:
        config: the model configuration.
        siglip: a ``SiglipVisionModel``.
        lm: a causal LM.
        special_token_ids: tokenizer ids of :data:`instructseg.processing.SPECIAL_TOKENS`.
        mask2former: a ``Mask2FormerModel`` (Swin backbone + pixel decoder + transformer decoder).
        with_lora: wrap the LM with LoRA (False for exports whose LoRA is merged).
        tokenizer: optional tokenizer kept for convenience (not a module).
    """

    def __init__(
        self,
        config: InstructSegConfig,
        siglip: nn.Module,
        lm: nn.Module,
        special_token_ids: dict[str, int],
        mask2former: nn.Module,
        with_lora: bool = True,
        tokenizer=None,
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        llm_dim = lm.config.hidden_size
        self.siglip = SiglipEncoder(siglip, llm_dim, config.vision.select_layer)
        self.swin = SwinPyramid(mask2former.pixel_level_module.encoder, frozen=config.mask.freeze_backbone)
        self.pixel_decoder = PixelDecoder(mask2former.pixel_level_module.decoder, config.profile == "official")
        self.mask_decoder = MaskDecoder(mask2former.transformer_module, config.decoder.num_queries)
        p = config.perceiver
        self.perceiver = ObjectAwareVideoPerceiver(llm_dim, p.num_latents, p.depth, p.heads, p.dim_head, p.ff_mult)
        f = config.fusion
        strides = self.swin.strides
        if f.image_stride not in strides:
            allowed = f"{', '.join(map(str, strides[:-1]))} or {strides[-1]}"
            raise ValueError(f"config.fusion.image_stride must be {allowed}, got {f.image_stride}.")
        self.fusion_level = strides.index(f.image_stride)  # index into the Swin pyramid
        self.fusion = VisionGuidedTextFusion(
            llm_dim,
            self.swin.channels[self.fusion_level],
            f.dim,
            f.depth,
            f.heads,
            f.dim_head,
            f.ff_mult,
            self.mask_decoder.hidden_size,
            f.reference_kv,
        )
        self.llm = InstructSegLLM(
            lm,
            special_token_ids,
            config.decoder.num_queries,
            self.mask_decoder.hidden_size,
            config.llm.lora if with_lora else None,
            config.llm.gradient_checkpointing,
        )
        if self.siglip.image_size != config.vision.image_size:
            raise ValueError(
                f"config.vision.image_size={config.vision.image_size} but the SigLIP checkpoint expects "
                f"{self.siglip.image_size}."
            )

    @classmethod
    def from_config(
        cls, config: InstructSegConfig, weights: bool = True, dtype: torch.dtype | None = None, with_lora: bool = True
    ) -> InstructSeg:
        """Load the three pretrained parts from the paths in ``config`` and build the model.

        Args:
            config: model configuration (paths are hub ids or local directories).
            weights: load pretrained weights (False: architectures only, e.g. before loading an export).
            dtype: dtype of the frozen pretrained parts (e.g. ``torch.bfloat16`` on GPU); trainable parts stay fp32.
            with_lora: wrap the LM with LoRA (False for exports whose LoRA is merged).
        """
        from transformers import AutoModelForCausalLM, Mask2FormerModel, SiglipVisionModel

        kwargs = {"dtype": dtype} if (dtype is not None and weights) else {}
        tokenizer = load_tokenizer(config.llm.path)
        ids = add_instructseg_tokens(tokenizer)
        siglip = load_part(SiglipVisionModel, config.vision.siglip_path, "siglip", weights, **kwargs)
        lm = load_part(AutoModelForCausalLM, config.llm.path, "llm", weights, **kwargs)
        mask2former = load_part(Mask2FormerModel, config.mask.mask2former_path, "mask2former", weights, **kwargs)
        return cls(config, siglip, lm, dict(zip(SPECIAL_TOKENS, ids)), mask2former, with_lora, tokenizer)

    @classmethod
    def full_size_on_meta(cls, config: InstructSegConfig | None = None, tokenizer=None) -> InstructSeg:
        """Build the paper-size model on the ``meta`` device (no weights, no download) for counting/planning.

        ``tokenizer`` is an optional stand-in tokenizer (e.g. for timing with random weights): the model then uses its
        special-token ids, which must fall inside Phi-2's vocabulary.
        """
        from transformers import Mask2FormerModel, PhiForCausalLM, SiglipVisionModel

        config = config or InstructSegConfig.from_name("instructseg-phi2")
        hf = full_size_hf_configs()
        vocab = hf["llm"].vocab_size
        if tokenizer is None:
            ids = {token: 50295 + i for i, token in enumerate(SPECIAL_TOKENS)}  # Phi-2 tokenizer has 50295 tokens
        else:
            ids = dict(zip(SPECIAL_TOKENS, add_instructseg_tokens(tokenizer)))
        if max(ids.values()) >= vocab:
            raise ValueError(f"tokenizer: special-token ids {sorted(ids.values())} are outside the vocabulary {vocab}.")
        with torch.device("meta"):
            return cls(
                config,
                SiglipVisionModel(hf["siglip"]),
                PhiForCausalLM(hf["llm"]),
                ids,
                Mask2FormerModel(hf["mask2former"]),
                tokenizer=tokenizer,
            )

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
    ) -> InstructSeg:
        """Load an export directory (or a Hugging Face Hub id of one) strictly.

        Args:
            name_or_path: a directory written by :meth:`save_pretrained`, the authors' released checkpoint
                (``weic22/InstructSeg`` layout: converted once into a cache, see
                :func:`instructseg.official.cached_export`), or a Hub id of either (see
                :func:`~instructseg.modeling.loading.resolve_model_path`).
            device: where to put the model.
            dtype: cast every weight to this dtype (default: as stored, fp32).

        Returns:
            The model in ``eval()`` mode.

        Raises:
            ExportFormatError: incomplete export / other format version / unreadable weights.
            WeightsMismatchError: missing or unexpected keys (all are listed), other shapes, or non-finite values.
        """
        path = resolve_model_path(name_or_path)
        from instructseg import official  # the converter builds this class

        if official.is_release_dir(path):  # the authors' release (e.g. weic22/InstructSeg): convert once, then load
            path = official.cached_export(path)
        from accelerate import init_empty_weights

        config = read_export_config(path)
        with init_empty_weights(include_buffers=False):  # parameters on "meta": no random init, no second copy
            model = cls.from_config(config, weights=False, with_lora=False)
        state = read_export_weights(path)
        expected = {k: v.shape for k, v in model.state_dict().items()}
        check_weights(expected, state, str(path / WEIGHTS_NAME), "The export does not match its own config.json.")
        model.load_state_dict(state, strict=True, assign=True)  # the stored tensors become the parameters
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(
        self,
        out_dir: str | Path,
        metrics: dict | None = None,
        training_config: dict | None = None,
        overwrite: bool = False,
    ) -> Path:
        """Merge LoRA (on a copy; ``self`` is left untouched) and write a self-contained export directory atomically.

        Args:
            out_dir: destination (see :func:`instructseg.io.atomic_export_dir`: an existing export is replaced only
                with ``overwrite``; any other existing path is refused).
            metrics: evaluation metrics for the model card (nested as in ``metrics.json`` or flat).
            training_config: the run's hyper-parameters for the model card.

        Returns:
            ``out_dir`` as a ``Path``.
        """
        from safetensors.torch import save_file

        if self.tokenizer is None:
            raise ValueError("save_pretrained: the model has no tokenizer; build it with InstructSeg.from_config().")
        with atomic_export_dir(out_dir, overwrite) as tmp:
            # merging LoRA needs a copy; a model without LoRA (converted release) is written as is (no 2x memory)
            merged = copy.deepcopy(self) if hasattr(self.llm.lm, "merge_and_unload") else self
            merged.llm.merge_lora()
            save_file(safetensors_state(merged), str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
            merged.siglip.tower.config.save_pretrained(tmp / "siglip")
            merged.llm.base_model.config.save_pretrained(tmp / "llm")
            merged.tokenizer.save_pretrained(tmp / "llm")
            merged.mask_decoder.decoder.config.save_pretrained(tmp / "mask2former")
            n_params = sum(p.numel() for p in merged.parameters())
            (tmp / "README.md").write_text(model_card(self.config, n_params, metrics, training_config))
            write_json(tmp / CONFIG_NAME, export_config_dict(self.config))  # last: the completion marker
        return Path(out_dir)

    def encode_frames(
        self, clip_pixel_values: torch.Tensor | None, mask_pixel_values: torch.Tensor | None = None
    ) -> FrameFeatures:
        """Stage 1: encode F frames once (SigLIP + projector; Swin + pixel decoder).

        Args:
            clip_pixel_values: ``(F, 3, S_clip, S_clip)`` SigLIP inputs, or ``None``.
            mask_pixel_values: ``(F, 3, S_mask, S_mask)`` mask-branch inputs, or ``None``.
        """
        tokens = self.siglip(clip_pixel_values) if clip_pixel_values is not None else None
        if mask_pixel_values is None:
            return FrameFeatures(tokens, None)
        pyramid = self.swin(mask_pixel_values)
        return FrameFeatures(tokens, pyramid, self.pixel_decoder(pyramid))

    def co_decode(
        self,
        key_tokens: torch.Tensor,
        ref_tokens: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        instruction_mask: torch.Tensor,
        ref_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> CoDecodeOutput:
        """Stage 2: OVP over the reference frames, then one LLM pass.

        Args:
            key_tokens: ``(B, N, D)`` key-frame tokens.
            ref_tokens: ``(B, R, N, D)`` reference-frame tokens (images: the image itself, R = 1).
            input_ids, attention_mask, instruction_mask, labels: ``(B, L_t)`` from
                :func:`instructseg.processing.collate_tokens`.
            ref_mask: ``(B, R)`` bool, True = real reference frame (default all True).
        """
        b, n, d = key_tokens.shape
        if ref_tokens.ndim != 4 or ref_tokens.shape[0] != b or ref_tokens.shape[2:] != (n, d):
            raise ValueError(f"ref_tokens: expected (B={b}, R, N={n}, D={d}), got {tuple(ref_tokens.shape)}.")
        if input_ids.ndim != 2 or input_ids.shape[0] != b or instruction_mask.shape != input_ids.shape:
            raise ValueError(
                f"input_ids / instruction_mask: expected (B={b}, L_t) each, got {tuple(input_ids.shape)} and "
                f"{tuple(instruction_mask.shape)}."
            )
        if not instruction_mask.any(1).all():
            raise ValueError("instruction_mask: a row has no instruction token (empty instruction).")
        if ref_mask is None:
            ref_mask = torch.ones(ref_tokens.shape[:2], dtype=torch.bool, device=ref_tokens.device)
        instr, instr_mask = gather_spans(self.llm.embed(input_ids), instruction_mask.bool())  # (B, L, D)
        ovp = self.perceiver(ref_tokens, instr.to(ref_tokens.dtype), instr_mask)  # (B, R*K, D)
        ovp_mask = ref_mask.repeat_interleave(self.perceiver.num_latents, dim=1)  # (B, R*K)
        return self.llm(input_ids, attention_mask, instruction_mask, ovp, ovp_mask, key_tokens, labels)

    def decode_masks(self, features: FrameFeatures, co: CoDecodeOutput) -> MaskPrediction:
        """Stage 3: mask logits and scores for each frame of ``features`` (batch rows aligned with ``co``).

        Args:
            features: stage-1 output with the mask branch (``pyramid`` and ``pixel``) of B frames.
            co: stage-2 output for the same B rows.
        """
        if features.pyramid is None or features.pixel is None:
            raise ValueError("decode_masks: the frame features have no mask branch; pass mask_pixel_values.")
        mask_features, multi_scale = features.pixel
        image = features.pyramid[self.fusion_level]
        classifier = self.fusion(image, co.text_global, co.text_detailed, co.text_mask)  # (B, C)
        return self.mask_decoder(multi_scale, mask_features, co.mask_queries.to(mask_features.dtype), classifier)

    @staticmethod
    def split_clip(
        tokens: torch.Tensor, frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Split encoded clips into key and reference tokens.

        Args:
            tokens: ``(B, T, N, D)``; index 0 is the key frame, 1.. references (zeros where padded).
            frame_mask: ``(B, T)`` bool, True = real frame (default all True).

        Returns:
            ``key (B, N, D)``, ``refs (B, max(T-1, 1), N, D)``, ``ref_mask (B, max(T-1, 1))``; a row without
            reference frames (an image) uses its key frame as its single reference.
        """
        b, t = tokens.shape[:2]
        if frame_mask is None:
            frame_mask = torch.ones(b, t, dtype=torch.bool, device=tokens.device)
        key = tokens[:, 0]
        refs, ref_mask = tokens[:, 1:], frame_mask[:, 1:]
        if t == 1:
            refs, ref_mask = key[:, None], frame_mask[:, :1]
        refs, ref_mask = refs.clone(), ref_mask.clone()
        no_ref = ~ref_mask.any(1)
        refs[no_ref, 0] = key[no_ref]
        ref_mask[no_ref, 0] = True
        return key, refs, ref_mask

    def clip_tokens(
        self, clip_pixel_values: torch.Tensor, clip_frame_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode a padded clip batch (stage 1, real frames only) and :meth:`split_clip` it.

        Args:
            clip_pixel_values: ``(B, T, 3, S, S)``; index 0 is the key frame, 1.. references.
            clip_frame_mask: ``(B, T)`` bool, True = real frame (default all True).
        """
        b, t = clip_pixel_values.shape[:2]
        if clip_frame_mask is None:
            clip_frame_mask = torch.ones(b, t, dtype=torch.bool, device=clip_pixel_values.device)
        if not clip_frame_mask[:, 0].all():
            raise ValueError("clip_frame_mask: frame 0 (the key frame) must be present in every row.")
        encoded = self.encode_frames(clip_pixel_values[clip_frame_mask]).clip_tokens  # (F, N, D)
        tokens = encoded.new_zeros(b, t, *encoded.shape[1:])
        tokens[clip_frame_mask] = encoded
        return self.split_clip(tokens, clip_frame_mask)

    def forward(self, batch: dict) -> InstructSegOutput:
        """Run all three stages on a collated batch (see :func:`datamodules.collate_samples`).

        Uses ``pixel_values (B, 3, S_mask, S_mask)``, ``clip_pixel_values (B, T, 3, S_clip, S_clip)``, optional
        ``clip_frame_mask (B, T)``, ``input_ids``, ``attention_mask``, ``instruction_mask`` and optional ``labels``
        ``(B, L_t)``.
        """
        key, refs, ref_mask = self.clip_tokens(batch["clip_pixel_values"], batch.get("clip_frame_mask"))
        pixel_values = batch["pixel_values"]
        if pixel_values.shape[0] != key.shape[0]:
            raise ValueError(f"pixel_values: batch {pixel_values.shape[0]} != clip batch {key.shape[0]}.")
        features = self.encode_frames(None, pixel_values)
        co = self.co_decode(
            key,
            refs,
            batch["input_ids"],
            batch["attention_mask"],
            batch["instruction_mask"],
            ref_mask=ref_mask,
            labels=batch.get("labels"),
        )
        return InstructSegOutput(self.decode_masks(features, co), co.lm_loss)

    @torch.no_grad()
    def select(self, prediction: MaskPrediction, threshold: float | None = None) -> Selection:
        """Pick the best query per sample: score = sigmoid(s_q) x mean sigmoid(m_q) over pixels with m_q > 0."""
        threshold = self.config.decoder.no_target_threshold if threshold is None else threshold
        logits = prediction.mask_logits[-1].float()  # (B, Q, h, w)
        scores = prediction.scores[-1].float().sigmoid()  # (B, Q)
        fg = (logits > 0).float()
        in_mask = (logits.sigmoid() * fg).flatten(2).sum(-1) / fg.flatten(2).sum(-1).clamp(min=1.0)  # (B, Q)
        best = (scores * in_mask).argmax(1)  # (B,)
        rows = torch.arange(logits.shape[0], device=logits.device)
        score = scores[rows, best]
        no_target = score < threshold
        mask_logits = logits[rows, best].masked_fill(no_target[:, None, None], float("-inf"))
        return Selection(mask_logits, score, no_target, best)

    def text_token_budget(self) -> int | None:
        """Most prompt tokens (template + instruction + answer, each placeholder counted once) that fit the LLM's
        context next to a video clip's visual tokens (R x K OVP latents, N SigLIP tokens, Q mask queries); ``None``
        when the LLM states no context length."""
        if self.llm.max_positions is None:
            return None
        visual = (
            self.config.num_reference_frames * self.perceiver.num_latents
            + self.siglip.num_tokens
            + self.config.decoder.num_queries
        )
        return self.llm.max_positions - visual + 3

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """Name → parameter for everything that trains (LoRA, OVP, VMTF, projections, queries, decoders, tokens)."""
        return {name: p for name, p in self.named_parameters() if p.requires_grad}
