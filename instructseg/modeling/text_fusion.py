"""Vision-guided Multi-granularity Text Fusion (VMTF, paper §3.3).

Legend: B batch, L instruction tokens, D LLM width, E fusion width, C_5 channels of the stride-32 Swin map,
H_d decoder hidden size.

Latents = ``[global ; detailed_1..L]`` text embeddings (projected to E) attend to ``[image tokens ; latents]`` for
``depth`` perceiver layers; the updated global latent, concatenated with the projected global embedding, becomes the
classifier ``e`` whose dot product with each decoder query gives the query's score.

``reference_kv=True`` reproduces the released code, where only the global latent enters keys/values, so the
detailed text tokens cannot influence the output. The default follows the paper and lets all text latents be
keys/values.
"""

from __future__ import annotations

import torch
from torch import nn

from instructseg.modeling.perceiver import PerceiverLayer


class VisionGuidedTextFusion(nn.Module):
    """Fuse multi-granularity text embeddings with coarse image features into one classifier vector.

    Args:
        llm_dim: ``D``.
        image_channels: ``C_5`` of the stride-32 Swin feature map.
        dim: fusion width ``E``.
        depth, heads, dim_head, ff_mult: perceiver sizes.
        out_dim: decoder hidden size ``H_d``.
        reference_kv: only the global latent is a key/value (released-code behaviour).
    """

    def __init__(
        self,
        llm_dim: int,
        image_channels: int,
        dim: int,
        depth: int,
        heads: int,
        dim_head: int,
        ff_mult: int,
        out_dim: int,
        reference_kv: bool = False,
    ) -> None:
        super().__init__()
        self.reference_kv = reference_kv
        self.image_proj = nn.Conv2d(image_channels, dim, kernel_size=1)
        self.text_proj = nn.Linear(llm_dim, dim)
        self.global_proj = nn.Linear(llm_dim, dim)
        self.layers = nn.ModuleList(PerceiverLayer(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(2 * dim, out_dim)
        nn.init.xavier_uniform_(self.image_proj.weight)
        nn.init.zeros_(self.image_proj.bias)

    def forward(
        self,
        image_features: torch.Tensor,
        text_global: torch.Tensor,
        text_detailed: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Compute the classifier embedding.

        Args:
            image_features: ``(B, C_5, h, w)`` stride-32 Swin features of the frame being decoded.
            text_global: ``(B, D)`` mean of the instruction hidden states.
            text_detailed: ``(B, L, D)`` instruction hidden states.
            text_mask: ``(B, L)`` bool, True = real token.

        Returns:
            ``(B, H_d)`` classifier embedding ``e``.
        """
        b = image_features.shape[0]
        x = self.image_proj(image_features.to(self.image_proj.weight.dtype)).flatten(2).transpose(1, 2)  # (B, hw, E)
        latents = self.text_proj(torch.cat([text_global[:, None], text_detailed], dim=1))  # (B, 1+L, E)
        latent_mask = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=x.device), text_mask], dim=1)
        kv_latents = 1 if self.reference_kv else None
        for layer in self.layers:
            latents = layer(x, latents, latent_mask=latent_mask, kv_latents=kv_latents)
        fused = self.norm(latents[:, 0])  # (B, E)
        return self.out(torch.cat([self.global_proj(text_global), fused], dim=-1))  # (B, H_d)
