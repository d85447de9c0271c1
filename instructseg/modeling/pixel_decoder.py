"""Stage 3a — the multi-scale deformable-attention pixel decoder (Mask2Former) + FPN.

Legend: B batch, C_i Swin channels, S input side, C hidden size of the Mask2Former checkpoint (256 full size).

The module is ``transformers``' ``Mask2FormerPixelDecoder`` taken from the same checkpoint as the Swin backbone, so
detectron2-trained weights load as released: a 6-layer deformable-attention encoder over the stride 8/16/32 maps
(pure-PyTorch ``multi_scale_deformable_attention``, no compiled op needed) and one FPN level up to stride 4.
"""

from __future__ import annotations

import torch
from torch import nn


class PixelDecoder(nn.Module):
    """Wraps ``Mask2FormerModel.pixel_level_module.decoder``.

    Args:
        decoder: a ``transformers`` ``Mask2FormerPixelDecoder``.
    """

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.hidden_size = decoder.config.feature_size
        self.mask_dim = decoder.config.mask_feature_size

    def forward(self, pyramid: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Decode the Swin pyramid.

        Args:
            pyramid: 4 maps ``(B, C_i, S/s_i, S/s_i)`` for strides 4, 8, 16, 32.

        Returns:
            ``mask_features (B, C_mask, S/4, S/4)`` and 3 multi-scale maps ``(B, C, S/s, S/s)`` for s = 32, 16, 8.
        """
        if len(pyramid) != 4:
            raise ValueError(f"pyramid: expected 4 feature maps (strides 4/8/16/32), got {len(pyramid)}.")
        dtype = self.decoder.mask_projection.weight.dtype
        out = self.decoder([f.to(dtype) for f in pyramid], return_dict=True)
        return out.mask_features, list(out.multi_scale_features)
