"""Stage 1 — the two frozen vision towers.

Legend: F frames (flattened batch x time), S input side, N SigLIP tokens per frame, C_* channels, D LLM width.

* :class:`SiglipEncoder`: frozen SigLIP tower (hidden state ``select_layer``, -2 = penultimate) + a trainable
  2-layer GELU MLP projector into the LLM width: ``(F, 3, S_clip, S_clip) -> (F, N, D)``; the projector starts
  from ``<siglip dir>/projector.safetensors`` when the SigLIP directory has one (else random).
* :class:`SwinPyramid`: the frozen Swin backbone of a Mask2Former checkpoint:
  ``(F, 3, S_mask, S_mask) -> [(F, C_i, S/s_i, S/s_i) for s_i in (4, 8, 16, 32)]``.

Both towers stay in ``eval()`` mode whatever the parent's mode (so DropPath / dropout never fire, unlike the
reference code whose frozen Swin keeps DropPath 0.3 active) and run under ``torch.no_grad()``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: A SigLIP directory may ship the projector of the multimodal LLM it was trained in (LLaVA-style ``mm_projector``).
PROJECTOR_FILE = "projector.safetensors"


def make_projector(width: int, out_dim: int) -> nn.Sequential:
    """The 2-layer GELU MLP from SigLIP width to LLM width (Mipha / LLaVA ``mlp2x_gelu``)."""
    return nn.Sequential(nn.Linear(width, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))


class FrozenTower(nn.Module):
    """Base for a frozen pretrained tower: no gradients, always in eval mode."""

    def __init__(self, tower: nn.Module, frozen: bool = True) -> None:
        super().__init__()
        self.tower = tower
        self.frozen = frozen
        if frozen:
            self.tower.requires_grad_(False)
            self.tower.eval()

    def train(self, mode: bool = True) -> FrozenTower:
        super().train(mode)
        if self.frozen:
            self.tower.eval()
        return self


class SiglipEncoder(FrozenTower):
    """Frozen SigLIP vision tower + trainable projector to the LLM width.

    Args:
        tower: a ``transformers.SiglipVisionModel``.
        out_dim: LLM hidden size ``D``.
        select_layer: index into ``hidden_states`` (``-2`` = penultimate layer).
    """

    def __init__(self, tower: nn.Module, out_dim: int, select_layer: int = -2) -> None:
        super().__init__(tower)
        self.select_layer = select_layer
        width = tower.config.hidden_size
        self.projector = make_projector(width, out_dim)
        source = getattr(tower, "name_or_path", "")
        if source and (Path(source) / PROJECTOR_FILE).is_file():
            from safetensors.torch import load_file

            self.projector.load_state_dict(load_file(Path(source) / PROJECTOR_FILE))
        self.image_size = tower.config.image_size
        self.num_tokens = (tower.config.image_size // tower.config.patch_size) ** 2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(F, 3, S, S)`` SigLIP-normalised frames → projected tokens ``(F, N, D)``."""
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, self.image_size, self.image_size):
            raise ValueError(
                f"clip pixel_values: expected (F, 3, {self.image_size}, {self.image_size}), "
                f"got {tuple(pixel_values.shape)}."
            )
        with torch.no_grad():
            dtype = next(self.tower.parameters()).dtype
            out = self.tower(pixel_values.to(dtype), output_hidden_states=True)
            features = out.hidden_states[self.select_layer]  # (F, N, C_siglip)
        return self.projector(features.to(self.projector[0].weight.dtype))


class SwinPyramid(FrozenTower):
    """Frozen Swin backbone of a Mask2Former checkpoint returning the stride-4/8/16/32 pyramid.

    Args:
        backbone: ``Mask2FormerModel.pixel_level_module.encoder`` (a ``SwinBackbone``).
        frozen: keep it frozen and in eval mode.
    """

    strides = (4, 8, 16, 32)

    def __init__(self, backbone: nn.Module, frozen: bool = True) -> None:
        super().__init__(backbone, frozen)
        self.channels = list(backbone.channels)

    def forward(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """``(F, 3, S, S)`` ImageNet-normalised frames → 4 maps ``(F, C_i, S/s_i, S/s_i)``."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or pixel_values.shape[-1] % 32:
            raise ValueError(
                f"mask pixel_values: expected (F, 3, S, S) with S a multiple of 32, got {tuple(pixel_values.shape)}."
            )
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            dtype = next(self.tower.parameters()).dtype
            return list(self.tower(pixel_values.to(dtype)).feature_maps)
