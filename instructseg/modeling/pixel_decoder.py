"""Stage 3a — the multi-scale deformable-attention pixel decoder (Mask2Former) + FPN.

Legend: B batch, C_i Swin channels, S input side, C hidden size of the Mask2Former checkpoint (256 full size).

The module is ``transformers``' ``Mask2FormerPixelDecoder`` taken from the same checkpoint as the Swin backbone, so
detectron2-trained weights load as released: a 6-layer deformable-attention encoder over the stride 8/16/32 maps
(pure-PyTorch ``multi_scale_deformable_attention``, no compiled op needed) and one FPN level up to stride 4.

``official_fpn=True`` (the ``"official"`` profile) rebuilds each FPN level as in the released InstructSeg code
(Mask2Former_Simplify ``msdeformattn.py``): lateral ``Conv1x1(bias) → GN → ReLU`` and output
``Conv3x3(bias) → GN → ReLU``. ``transformers`` builds both convolutions without bias and the lateral branch without
the ReLU. The rebuilt layers keep the checkpoint's conv / GroupNorm weights; the new biases start at 0.
"""

from __future__ import annotations

import torch
from torch import nn


def _with_bias(conv: nn.Conv2d) -> nn.Conv2d:
    """A copy of ``conv`` with a zero bias (same weight, device and dtype)."""
    weight = conv.weight
    new = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=True,
        device=weight.device,
        dtype=weight.dtype,
    )
    if weight.device.type != "meta":
        with torch.no_grad():
            new.weight.copy_(weight)
            new.bias.zero_()
    return new


def use_official_fpn(decoder: nn.Module) -> None:
    """Rebuild the FPN levels of a ``Mask2FormerPixelDecoder`` in place as in the released code (see module doc).

    Keys stay ``adapter_{i}.{0,1}`` / ``layer_{i}.{0,1}`` and gain ``adapter_{i}.0.bias`` / ``layer_{i}.0.bias``.
    """
    lateral, output = [], []
    for idx in range(1, decoder.num_fpn_levels + 1):
        old_lateral, old_output = getattr(decoder, f"adapter_{idx}"), getattr(decoder, f"layer_{idx}")
        new_lateral = nn.Sequential(_with_bias(old_lateral[0]), old_lateral[1], nn.ReLU())
        new_output = nn.Sequential(_with_bias(old_output[0]), old_output[1], nn.ReLU())
        setattr(decoder, f"adapter_{idx}", new_lateral)
        setattr(decoder, f"layer_{idx}", new_output)
        lateral.append(new_lateral)
        output.append(new_output)
    # transformers iterates these plain lists (low to high resolution) in forward
    decoder.lateral_convolutions = lateral[::-1]
    decoder.output_convolutions = output[::-1]


class PixelDecoder(nn.Module):
    """Wraps ``Mask2FormerModel.pixel_level_module.decoder``.

    Args:
        decoder: a ``transformers`` ``Mask2FormerPixelDecoder``.
        official_fpn: rebuild the FPN as in the released code (conv biases, ReLU after the lateral GroupNorm).
    """

    def __init__(self, decoder: nn.Module, official_fpn: bool = False) -> None:
        super().__init__()
        if official_fpn:
            use_official_fpn(decoder)
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
