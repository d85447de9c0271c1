"""Stage 2 — the multimodal LLM (Phi-2 + peft LoRA): sequence assembly, co-decoding and hidden-state extraction.

Legend: B batch, L_t text tokens (with placeholders), S assembled sequence length, D LLM width, K_o OVP tokens,
N SigLIP tokens, Q mask queries, L instruction tokens, H_d decoder hidden size.

The tokenized prompt (:func:`instructseg.processing.tokenize_query`) holds exactly one of each placeholder token;
:meth:`InstructSegLLM.assemble` replaces them by embeddings::

    [system, "USER: ..."] <ovp>→K_o OVP tokens  <image>→N key-frame tokens  [template, instruction]
    [" ASSISTANT: ...", [SEG]]  <seg>→Q mask-query tokens

The base LM is frozen. Trainable here: LoRA, the embeddings of the added tokens (kept in a small separate table
and output head, so the frozen vocabulary matrices stay bit-identical), the Q mask-query embeddings and their
projection to the decoder width.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instructseg.config import LoraConfig
from instructseg.constants import IGNORE_INDEX, IMAGE_TOKEN, OVP_TOKEN, SEG_QUERY_TOKEN, SPECIAL_TOKENS


@dataclass
class CoDecodeOutput:
    """What stage 3 needs from the LLM pass.

    Attributes:
        mask_queries: ``(B, Q, H_d)`` decoder content queries from the mask-query hidden states.
        text_global: ``(B, D)`` mean instruction hidden state.
        text_detailed: ``(B, L, D)`` instruction hidden states (zero-padded).
        text_mask: ``(B, L)`` bool, True = real instruction token.
        lm_loss: scalar text cross-entropy over supervised answer tokens, or ``None`` without labels.
    """

    mask_queries: torch.Tensor
    text_global: torch.Tensor
    text_detailed: torch.Tensor
    text_mask: torch.Tensor
    lm_loss: torch.Tensor | None = None

    def index(self, idx: torch.Tensor | list[int]) -> CoDecodeOutput:
        """Select / repeat rows along the batch dimension (e.g. one instruction decoded on several frames)."""
        return CoDecodeOutput(
            self.mask_queries[idx], self.text_global[idx], self.text_detailed[idx], self.text_mask[idx], self.lm_loss
        )


def gather_spans(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-align the masked positions of each row: ``(B, L, D), (B, L) → (B, L_max, D), (B, L_max)``."""
    counts = mask.sum(1)
    length = max(int(counts.max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, :length]  # masked positions first
    out = torch.gather(values, 1, order[..., None].expand(-1, -1, values.shape[-1]))
    out_mask = torch.arange(length, device=mask.device)[None] < counts[:, None]
    return out * out_mask[..., None].to(out.dtype), out_mask


class InstructSegLLM(nn.Module):
    """The causal LM with LoRA, placeholder expansion and the mask-query tokens.

    Args:
        lm: a ``transformers`` causal LM (frozen here).
        special_token_ids: ids of :data:`instructseg.processing.SPECIAL_TOKENS` in the tokenizer.
        num_queries: ``Q``.
        decoder_dim: ``H_d``.
        lora: LoRA settings, or ``None`` for an LM whose LoRA is already merged (exports).
        gradient_checkpointing: recompute LM activations in the backward pass.
    """

    def __init__(
        self,
        lm: nn.Module,
        special_token_ids: dict[str, int],
        num_queries: int,
        decoder_dim: int,
        lora: LoraConfig | None,
        gradient_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        missing = [t for t in SPECIAL_TOKENS if t not in special_token_ids]
        if missing:
            raise ValueError(f"special_token_ids: missing {missing}; add them with add_instructseg_tokens().")
        lm.requires_grad_(False)
        if gradient_checkpointing:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora is not None:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model

            peft_config = PeftLoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=list(lora.target_modules),
                bias="none",
            )
            lm = get_peft_model(lm, peft_config)
        self.lm = lm
        self.hidden_size = self.base_model.config.hidden_size
        self.max_positions = getattr(self.base_model.config, "max_position_embeddings", None)
        ids = [special_token_ids[t] for t in SPECIAL_TOKENS]
        self.special_ids = ids
        self.register_buffer("new_token_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.ovp_id, self.image_id, self.seg_id = (
            special_token_ids[t] for t in (OVP_TOKEN, IMAGE_TOKEN, SEG_QUERY_TOKEN)
        )
        base_embed = self.base_model.get_input_embeddings().weight
        init = torch.randn(len(ids), self.hidden_size) * 0.02
        if base_embed.device.type != "meta":
            init = init + base_embed.detach().float().mean(0).cpu()
        self.new_token_embed = nn.Parameter(init)
        self.new_token_head = nn.Linear(self.hidden_size, len(ids), bias=False)
        self.mask_queries = nn.Parameter(torch.randn(num_queries, self.hidden_size) * 0.02)
        self.query_proj = nn.Linear(self.hidden_size, decoder_dim)

    @property
    def base_model(self) -> nn.Module:
        """The underlying ``transformers`` causal LM (inside the peft wrapper if any)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def merge_lora(self) -> None:
        """Fold LoRA into the base weights (peft ``merge_and_unload``); afterwards the LM has no adapters."""
        if hasattr(self.lm, "merge_and_unload"):
            self.lm = self.lm.merge_and_unload()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings ``(B, L_t) → (B, L_t, D)`` with the added tokens taken from the trainable table."""
        table = self.base_model.get_input_embeddings()
        embeds = table(input_ids.clamp(max=table.num_embeddings - 1))
        is_new = input_ids[..., None] == self.new_token_ids  # (B, L_t, n_new)
        if is_new.any():
            new = torch.einsum("bln,nd->bld", is_new.to(embeds.dtype), self.new_token_embed.to(embeds.dtype))
            embeds = torch.where(is_new.any(-1, keepdim=True), new, embeds)
        return embeds

    def assemble(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None,
        ovp_tokens: torch.Tensor,
        ovp_mask: torch.Tensor,
        image_tokens: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Expand the three placeholders into embeddings.

        Args:
            input_ids: ``(B, L_t)`` with exactly one ``<ovp>``, ``<image>`` and ``<seg>`` per row.
            attention_mask: ``(B, L_t)`` bool (right padding).
            labels: ``(B, L_t)`` or ``None``.
            ovp_tokens: ``(B, K_o, D)``; ovp_mask ``(B, K_o)`` bool (invalid OVP tokens are masked out).
            image_tokens: ``(B, N, D)`` key-frame tokens.

        Returns:
            ``inputs_embeds (B, S, D)``, ``attention_mask (B, S)``, ``labels (B, S)`` or ``None``, and
            ``positions (B, L_t)``: the assembled position of each text token (start of its slot).
        """
        b, length = input_ids.shape
        for name, tid in ((OVP_TOKEN, self.ovp_id), (IMAGE_TOKEN, self.image_id), (SEG_QUERY_TOKEN, self.seg_id)):
            count = (input_ids == tid).sum(1)
            if not torch.all(count == 1):
                raise ValueError(
                    f"input_ids: every row needs exactly one {name} placeholder token, got counts {count.tolist()}; "
                    "build prompts with instructseg.processing.tokenize_query."
                )
        q = self.mask_queries.shape[0]
        widths = torch.ones_like(input_ids)
        widths = torch.where(input_ids == self.ovp_id, ovp_tokens.shape[1], widths)
        widths = torch.where(input_ids == self.image_id, image_tokens.shape[1], widths)
        widths = torch.where(input_ids == self.seg_id, q, widths)
        positions = widths.cumsum(1) - widths  # (B, L_t) start of each token's slot
        total = int(widths[0].sum())  # same for every row: padding tokens have width 1
        if self.max_positions is not None and total > self.max_positions:
            raise ValueError(
                f"input_ids: the assembled sequence has {total} tokens, more than the LLM's context of "
                f"{self.max_positions}; shorten the instruction (it has {length} text tokens incl. the template)."
            )
        dtype = ovp_tokens.dtype
        text = self.embed(input_ids).to(dtype)  # (B, L_t, D)
        embeds = text.new_zeros(b, total, self.hidden_size)
        mask = torch.zeros(b, total, dtype=torch.bool, device=input_ids.device)
        rows = torch.arange(b, device=input_ids.device)[:, None]
        embeds[rows, positions] = text
        mask[rows, positions] = attention_mask.bool()
        for tid, content, valid in (
            (self.ovp_id, ovp_tokens, ovp_mask),
            (self.image_id, image_tokens, None),
            (self.seg_id, self.mask_queries.to(dtype).expand(b, -1, -1), None),
        ):
            start = positions[input_ids == tid]  # (B,)
            slot = start[:, None] + torch.arange(content.shape[1], device=input_ids.device)  # (B, width)
            embeds[rows, slot] = content
            mask[rows, slot] = True if valid is None else valid
        full_labels = None
        if labels is not None:
            full_labels = torch.full((b, total), IGNORE_INDEX, dtype=torch.long, device=input_ids.device)
            full_labels[rows, positions] = torch.where(widths == 1, labels, IGNORE_INDEX)
        return embeds, mask, full_labels, positions

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        instruction_mask: torch.Tensor,
        ovp_tokens: torch.Tensor,
        ovp_mask: torch.Tensor,
        image_tokens: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> CoDecodeOutput:
        """Run the LLM once and read the mask queries, text embeddings and (optionally) the text loss.

        Shapes as in :meth:`assemble`; ``instruction_mask`` is ``(B, L_t)`` bool.
        """
        embeds, mask, full_labels, positions = self.assemble(
            input_ids, attention_mask, labels, ovp_tokens, ovp_mask, image_tokens
        )
        decoder = self.base_model.get_decoder()
        hidden = decoder(inputs_embeds=embeds, attention_mask=mask.long()).last_hidden_state  # (B, S, D)
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None]
        seg_start = positions[input_ids == self.seg_id]  # (B,)
        q_pos = seg_start[:, None] + torch.arange(self.mask_queries.shape[0], device=input_ids.device)
        mask_queries = self.query_proj(hidden[rows, q_pos])  # (B, Q, H_d)
        instr_hidden, instr_mask = gather_spans(hidden[rows, positions], instruction_mask.bool())  # (B, L, D)
        denom = instr_mask.sum(1, keepdim=True).clamp(min=1).to(hidden.dtype)
        text_global = instr_hidden.sum(1) / denom  # (B, D)
        lm_loss = self.text_loss(hidden, full_labels) if full_labels is not None else None
        return CoDecodeOutput(mask_queries, text_global, instr_hidden, instr_mask, lm_loss)

    def text_loss(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Next-token cross-entropy over supervised positions: ``(B, S, D), (B, S) → scalar`` (None if none)."""
        targets = labels[:, 1:]
        supervised = targets != IGNORE_INDEX
        if not supervised.any():
            return None
        h = hidden[:, :-1][supervised]  # (M, D)
        head = self.base_model.get_output_embeddings()
        base_logits = head(h.to(head.weight.dtype)).float()  # (M, V)
        new_logits = self.new_token_head(h.to(self.new_token_head.weight.dtype)).float()  # (M, n_new)
        vocab = max(base_logits.shape[1], int(self.new_token_ids.max()) + 1)
        logits = F.pad(base_logits, (0, vocab - base_logits.shape[1]), value=float("-inf"))
        logits = logits.index_copy(1, self.new_token_ids, new_logits)
        return F.cross_entropy(logits, targets[supervised])
