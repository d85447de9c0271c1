"""SAM2 mask propagation: spread key-frame masks forward and backward through a video (VISA's object tracker).

    tracker = Sam2Tracker.from_pretrained("facebook/sam2.1-hiera-tiny")        # Hub id or local directory
    for t, masks, scores in tracker.propagate(frame_at, key=40, masks=key_masks, span=range(num_frames)):
        ...                                                                  # masks (K, H, W) bool, scores (K,)

Legend: K objects, T frames, H x W original frame size, S = SAM2's input side (``config.image_size``).

The model is ``transformers``' ``Sam2VideoModel`` driven through its ``Sam2VideoInferenceSession`` in streaming mode.
``Sam2VideoProcessor`` is not used: its image and video processors need torchvision, which this project does not
install; :meth:`Sam2Tracker.pixels` and :meth:`Sam2Tracker.mask_input` apply the same rules (RGB resized bilinearly
to ``S x S``, ImageNet mean/std on a 0-255 scale; input masks resized bilinearly with antialiasing and kept where
>= 0.5), and output logits go back to ``H x W`` with the two bilinear steps of ``post_process_masks``.

Memory is bounded for long videos: frames are read one at a time (``frame_at(t)``), the session keeps only the
current frame, the key frame's conditioning output and the last ``max(num_maskmem, max_object_pointers_in_encoder)``
tracked frames' memories; on an accelerator the session state lives on ``state_device`` (CPU by default: offloaded).
A frame is "no target" for an object when SAM2's object score logit is <= 0; scores are its sigmoid.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instructseg.constants import MASK_PIXEL_MEAN, MASK_PIXEL_STD
from instructseg.modeling.loading import resolve_model_path
from instructseg.processing import postprocess_mask_logits

DEFAULT_SAM2 = "facebook/sam2.1-hiera-tiny"


class Sam2Tracker:
    """Bidirectional mask propagation with a ``Sam2VideoModel``.

    Args:
        model: a ``transformers.Sam2VideoModel`` (put in eval mode on ``device``).
        device: where SAM2 runs.
        dtype: weights and session dtype (default float32; e.g. ``torch.bfloat16`` on GPU).
        state_device: where the session keeps memories and outputs (default: CPU, i.e. offloaded from an
            accelerator).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        state_device: str | torch.device = "cpu",
    ) -> None:
        self.device, self.dtype = torch.device(device), dtype or torch.float32
        self.state_device = torch.device(state_device)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        config = model.config
        self.size = int(config.image_size if isinstance(config.image_size, int) else config.image_size[0])
        self.window = max(config.num_maskmem, config.max_object_pointers_in_encoder)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_SAM2,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        state_device: str | torch.device = "cpu",
    ) -> Sam2Tracker:
        """Load SAM2 weights from a local directory or a Hugging Face Hub id (``resolve_model_path``)."""
        from transformers import Sam2VideoModel

        path = resolve_model_path(name_or_path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"tracker weights: {path} has no config.json; give a SAM2 directory written by "
                f"Sam2VideoModel.save_pretrained or a Hub id such as {DEFAULT_SAM2}."
            )
        try:
            model = Sam2VideoModel.from_pretrained(path)
        except (OSError, ValueError, KeyError) as err:
            raise ValueError(f"tracker weights: cannot load {path} as a Sam2VideoModel: {err}") from None
        return cls(model, device, dtype, state_device)

    def pixels(self, frame: np.ndarray) -> torch.Tensor:
        """``(H, W, 3)`` uint8 RGB → ``(3, S, S)`` SAM2 input on the tracker's device."""
        resized = np.array(Image.fromarray(frame).resize((self.size, self.size), Image.BILINEAR))
        pixels = torch.from_numpy(resized).permute(2, 0, 1).float()
        mean, std = (torch.tensor(v).view(3, 1, 1) for v in (MASK_PIXEL_MEAN, MASK_PIXEL_STD))
        return ((pixels - mean) / std).to(self.device, self.dtype)

    def mask_input(self, mask: np.ndarray) -> torch.Tensor:
        """``(H, W)`` bool → ``(1, 1, S, S)`` float 0/1 mask prompt."""
        resized = F.interpolate(
            torch.from_numpy(mask).float()[None, None], (self.size, self.size), mode="bilinear", antialias=True
        )
        return (resized >= 0.5).float()

    def propagate(
        self, frame_at: Callable[[int], np.ndarray], key: int, masks: np.ndarray, span: range
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Propagate the key-frame masks through ``span``: the key frame, forward to the end, then backward.

        Args:
            frame_at: ``t -> (H, W, 3)`` uint8 RGB frame (called once per frame of ``span``).
            key: the key frame (inside ``span``).
            masks: ``(K, H, W)`` bool key-frame masks, one per object.
            span: the frames to fill (a contiguous ``range``).

        Yields:
            ``(t, masks (K, H, W) bool, scores (K,) float32)`` for every ``t`` in ``span``, key frame first.
        """
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        if key not in span or span.step != 1:
            raise ValueError(f"key: frame {key} must lie in the contiguous span {span}.")
        masks = np.asarray(masks, dtype=bool)
        if masks.ndim != 3 or masks.shape[0] == 0:
            raise ValueError(f"masks: expected (K, H, W) key-frame masks with K >= 1, got {masks.shape}.")
        hw = masks.shape[1:]
        session = Sam2VideoInferenceSession(
            video_height=hw[0],
            video_width=hw[1],
            inference_device=self.device,
            inference_state_device=self.state_device,
            video_storage_device=self.state_device,
            dtype=self.dtype,
        )
        for obj, mask in enumerate(masks):
            session.add_mask_inputs(session.obj_id_to_idx(obj), key, self.mask_input(mask))
        session.obj_with_new_inputs = list(range(len(masks)))
        with torch.inference_mode():
            for reverse, order in ((False, range(key, span.stop)), (True, range(key - 1, span.start - 1, -1))):
                for t in order:
                    out = self.model(session, frame_idx=t, frame=self.pixels(frame_at(t)), reverse=reverse)
                    self._forget(session, t)
                    logits = postprocess_mask_logits(out.pred_masks[:, 0], (self.size,) * 2, self.size, hw)
                    scores = out.object_score_logits.float().sigmoid().reshape(-1).cpu().numpy()
                    yield t, (logits > 0).cpu().numpy() & (scores > 0.5)[:, None, None], scores
                self._forget(session, None)

    def _forget(self, session, t: int | None) -> None:
        """Drop the frames and tracked memories the next step cannot use (all tracked ones when ``t`` is None)."""
        for index in [i for i in session.processed_frames if i != t]:
            del session.processed_frames[index]
        for obj in range(session.get_obj_num()):
            tracked = session.output_dict_per_obj[obj]["non_cond_frame_outputs"]
            for index in [i for i in tracked if t is None or abs(i - t) >= self.window]:
                del tracked[index]
            session.frames_tracked_per_obj[obj].clear()


def save_tiny_sam2(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``Sam2VideoModel`` (64 px input, about 1 M parameters) with ``save_pretrained``.

    For tests and timing only: its masks mean nothing.
    """
    from transformers import Sam2HieraDetConfig, Sam2VideoConfig, Sam2VideoModel, Sam2VisionConfig

    size, hidden = 64, 128  # SAM2 hard-codes 64 memory channels and needs a wider hidden size
    backbone = Sam2HieraDetConfig(
        hidden_size=12,
        image_size=size,
        blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[12, 24, 48, 96],
        window_size_per_stage=[4, 4, 4, 2],
        global_attention_blocks=[3],
    )
    vision = Sam2VisionConfig(
        backbone_config=backbone,
        backbone_channel_list=[96, 48, 24, 12],
        backbone_feature_sizes=[[16, 16], [8, 8], [4, 4]],
        fpn_hidden_size=hidden,
    )
    config = Sam2VideoConfig(
        vision_config=vision,
        prompt_encoder_config={"hidden_size": hidden, "image_size": size, "patch_size": 16, "mask_input_channels": 8},
        mask_decoder_config={"hidden_size": hidden, "mlp_dim": 64, "num_attention_heads": 4, "iou_head_hidden_dim": 32},
        image_size=size,
        num_maskmem=3,
        max_object_pointers_in_encoder=4,
        memory_attention_hidden_size=hidden,
        memory_attention_num_layers=1,
        memory_attention_feed_forward_hidden_size=64,
        memory_attention_rope_feat_sizes=[4, 4],
        memory_encoder_hidden_size=hidden,
        memory_encoder_output_channels=64,
        mask_downsampler_embed_dim=hidden,
        memory_fuser_embed_dim=hidden,
        memory_fuser_intermediate_dim=64,
    )
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    Sam2VideoModel(config).save_pretrained(out_dir)
    return out_dir
