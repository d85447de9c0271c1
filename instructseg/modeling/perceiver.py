"""Object-aware Video Perceiver (OVP, paper §3.2) and the perceiver layer it shares with VMTF.

Legend: B batch, R reference frames, N tokens per frame, L instruction tokens, K latents per frame, D width.

One :class:`PerceiverLayer` (Flamingo perceiver-resampler style)::

    latents ──LN──► q ─┐
                       ├─► multi-head attention ─► W_out ─► (+ latents) ─► FF ─► (+)
    [LN(x); LN(latents)[:kv]] ─► k, v ┘

OVP: K learned latents per reference frame attend to ``[frame tokens ; instruction embeddings ; latents]``; every
reference frame is processed independently (frames fold into the batch), output ``(B, R*K, D)`` frame-major.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerceiverLayer(nn.Module):
    """Cross-attention of latents to ``[x ; latents]`` followed by a feed-forward block, both residual.

    Args:
        dim: width of ``x`` and the latents.
        heads: attention heads.
        dim_head: width per head.
        ff_mult: hidden width multiplier of the feed-forward block.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.norm_x = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * ff_mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * ff_mult, dim, bias=False),
        )

    def forward(
        self,
        x: torch.Tensor,
        latents: torch.Tensor,
        x_mask: torch.Tensor | None = None,
        latent_mask: torch.Tensor | None = None,
        kv_latents: int | None = None,
    ) -> torch.Tensor:
        """Update the latents.

        Args:
            x: ``(B, M, D)`` context tokens.
            latents: ``(B, K, D)``.
            x_mask: ``(B, M)`` bool, True = valid context token.
            latent_mask: ``(B, K)`` bool, True = valid latent (padded latents are never keys).
            kv_latents: only the first ``kv_latents`` latents enter keys/values (``None`` = all).

        Returns:
            ``(B, K, D)`` updated latents.
        """
        b, m, _ = x.shape
        k = latents.shape[1]
        n_kv = k if kv_latents is None else kv_latents
        normed = self.norm_latents(latents)
        context = torch.cat([self.norm_x(x), normed[:, :n_kv]], dim=1)  # (B, M + n_kv, D)
        valid = torch.ones(b, m + n_kv, dtype=torch.bool, device=x.device)
        if x_mask is not None:
            valid[:, :m] = x_mask
        if latent_mask is not None:
            valid[:, m:] = latent_mask[:, :n_kv]
        q = self.to_q(normed).unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, h, K, d)
        key, value = self.to_kv(context).chunk(2, dim=-1)
        key = key.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # (B, h, M+n_kv, d)
        value = value.unflatten(-1, (self.heads, -1)).transpose(1, 2)
        attn = F.scaled_dot_product_attention(q, key, value, attn_mask=valid[:, None, None, :])
        latents = latents + self.to_out(attn.transpose(1, 2).flatten(2))  # (B, K, D)
        return latents + self.ff(latents)


class ObjectAwareVideoPerceiver(nn.Module):
    """Compress each reference frame into ``num_latents`` instruction-aware object tokens.

    Args:
        dim: LLM width ``D`` (frame tokens and instruction embeddings are already in it).
        num_latents: ``K`` latents per reference frame (128 in the paper).
        depth: number of perceiver layers (3).
        heads, dim_head, ff_mult: attention and feed-forward sizes.
    """

    def __init__(self, dim: int, num_latents: int, depth: int, heads: int, dim_head: int, ff_mult: int) -> None:
        super().__init__()
        self.num_latents = num_latents
        self.latents = nn.Parameter(torch.randn(num_latents, dim) * 0.02)
        self.layers = nn.ModuleList(PerceiverLayer(dim, heads, dim_head, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        frame_tokens: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Run the perceiver over every reference frame.

        Args:
            frame_tokens: ``(B, R, N, D)`` projected SigLIP tokens of the reference frames.
            text: ``(B, L, D)`` instruction token embeddings (input embeddings, not contextualised).
            text_mask: ``(B, L)`` bool, True = real instruction token.

        Returns:
            ``(B, R*K, D)`` object tokens, frame-major.
        """
        b, r, n, d = frame_tokens.shape
        if text.shape[0] != b or text.shape[-1] != d or text_mask.shape != text.shape[:2]:
            raise ValueError(
                f"OVP: frame_tokens {tuple(frame_tokens.shape)}, text {tuple(text.shape)} and text_mask "
                f"{tuple(text_mask.shape)} must share batch B and width D (text_mask = text.shape[:2])."
            )
        x = torch.cat([frame_tokens, text[:, None].expand(b, r, -1, -1)], dim=2).flatten(0, 1)  # (B*R, N+L, D)
        x_mask = torch.cat(
            [torch.ones(b, r, n, dtype=torch.bool, device=x.device), text_mask[:, None].expand(b, r, -1)], dim=2
        ).flatten(0, 1)  # (B*R, N+L)
        latents = self.latents.to(x.dtype).expand(b * r, -1, -1)  # (B*R, K, D)
        for layer in self.layers:
            latents = layer(x, latents, x_mask=x_mask)
        return self.norm(latents).reshape(b, r * self.num_latents, d)  # (B, R*K, D)
