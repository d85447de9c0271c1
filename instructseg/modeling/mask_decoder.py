"""Stage 3b — the masked-attention transformer decoder with LLM content queries and text-similarity scores.

Legend: B batch, Q mask queries, C decoder hidden size, h x w mask resolution (S/4), N_l = number of predictions
(initial queries + one per decoder layer).

Built from ``transformers``' ``Mask2FormerTransformerModule`` of the checkpoint (positional encoding, input
projections, level embeddings, masked-attention layers and the mask MLP all keep their pretrained weights). Two
differences from Mask2Former (paper §3.3 / reference §4.3-4.4):

* the **content** queries are the LLM's mask-query hidden states (not a learned table); the **positional** queries
  are the checkpoint's learned query embeddings (first Q rows);
* each query's score is ``s_q = <MLP(norm(query_q)), e>`` with the VMTF classifier ``e`` (no class softmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class MaskPrediction:
    """Decoder outputs for every prediction step (deep supervision); the last entry is the final one.

    Attributes:
        mask_logits: list of ``N_l`` tensors ``(B, Q, h, w)``.
        scores: list of ``N_l`` tensors ``(B, Q)`` (logits of "this query is the target").
    """

    mask_logits: list[torch.Tensor]
    scores: list[torch.Tensor]


class MaskDecoder(nn.Module):
    """Masked-attention decoder driven by LLM queries.

    Args:
        transformer_module: ``Mask2FormerModel.transformer_module`` of the checkpoint.
        num_queries: ``Q`` (the checkpoint's positional table is truncated, or tiled if shorter).
    """

    def __init__(self, transformer_module: nn.Module, num_queries: int) -> None:
        super().__init__()
        self.position_embedder = transformer_module.position_embedder
        self.input_projections = transformer_module.input_projections
        self.level_embed = transformer_module.level_embed
        self.decoder = transformer_module.decoder
        hidden = transformer_module.queries_embedder.weight.shape[1]
        self.hidden_size = hidden
        pretrained = transformer_module.queries_embedder.weight.detach()
        repeats = -(-num_queries // pretrained.shape[0])
        self.query_position = nn.Embedding(num_queries, hidden, device=pretrained.device)
        if pretrained.device.type != "meta":
            with torch.no_grad():
                self.query_position.weight.copy_(pretrained.repeat(repeats, 1)[:num_queries])
        self.score_proj = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(
        self,
        multi_scale_features: list[torch.Tensor],
        mask_features: torch.Tensor,
        content_queries: torch.Tensor,
        classifier: torch.Tensor,
    ) -> MaskPrediction:
        """Decode masks and scores.

        Args:
            multi_scale_features: 3 maps ``(B, C, h_l, w_l)`` at strides 32, 16, 8.
            mask_features: ``(B, C, h, w)`` stride-4 per-pixel embeddings.
            content_queries: ``(B, Q, C)`` from the LLM.
            classifier: ``(B, C)`` VMTF classifier ``e``.

        Returns:
            :class:`MaskPrediction` with ``N_l`` entries.
        """
        b, q, c = content_queries.shape
        if c != self.hidden_size or q != self.query_position.num_embeddings or classifier.shape != (b, c):
            raise ValueError(
                f"content_queries: expected (B, {self.query_position.num_embeddings}, {self.hidden_size}) and "
                f"classifier (B, {self.hidden_size}); got {tuple(content_queries.shape)} and {tuple(classifier.shape)}."
            )
        sizes, features, positions = [], [], []
        for level, feature in enumerate(multi_scale_features):
            sizes.append(feature.shape[-2:])
            pos = self.position_embedder(feature.shape, feature.device, feature.dtype, None).flatten(2)  # (B, C, hw)
            feat = self.input_projections[level](feature).flatten(2) + self.level_embed.weight[level][None, :, None]
            positions.append(pos.permute(2, 0, 1))  # (hw, B, C)
            features.append(feat.permute(2, 0, 1))  # (hw, B, C)
        out = self.decoder(
            inputs_embeds=content_queries.transpose(0, 1),  # (Q, B, C)
            multi_stage_positional_embeddings=positions,
            pixel_embeddings=mask_features,
            encoder_hidden_states=features,
            query_position_embeddings=self.query_position.weight[:, None].expand(-1, b, -1).to(features[0].dtype),
            feature_size_list=sizes,
            return_dict=True,
        )
        scores = [
            torch.einsum("qbc,bc->bq", self.score_proj(h.to(classifier.dtype)), classifier)
            for h in out.intermediate_hidden_states
        ]
        return MaskPrediction(mask_logits=list(out.masks_queries_logits), scores=scores)
