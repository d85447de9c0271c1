"""Mask overlays (PNG / animated GIF) and masks in the official submission layout.

* :func:`overlay_mask` tints a mask on an image, outlines it and optionally writes the instruction on top;
  :func:`save_overlay_png` and :func:`save_overlay_gif` save such overlays for one image or one video.
* :func:`side_by_side` puts pictures next to each other (prediction vs ground truth).
* :func:`save_submission_masks` writes ``<root>/Annotations/<video>/<exp_id>/<frame>.png`` as 0/255 single-channel
  PNGs, the layout of the Ref-YouTube-VOS server and of the ReVOS evaluation script.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

ImageLike = Image.Image | np.ndarray
Font = ImageFont.ImageFont | ImageFont.FreeTypeFont


def _as_numpy(array) -> np.ndarray:
    """Converts a numpy array or a (possibly CUDA) tensor to numpy."""
    return array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)


def _as_rgb_array(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8 copy of a PIL image or an (H, W, 3) uint8 array."""
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    array = _as_numpy(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {array.shape}")
    return array.astype(np.uint8, copy=True)


def _wrap_text(draw: ImageDraw.ImageDraw, text: str, font: Font, max_width: int) -> list[str]:
    """Greedy word wrap of ``text`` into lines no wider than ``max_width`` pixels (long words stay whole)."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= max_width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


def _draw_caption(image: Image.Image, caption: str, padding: int = 4, spacing: int = 4) -> None:
    """Writes ``caption`` in white on a semi-transparent dark strip across the top of ``image`` (in place).

    The text is word-wrapped to the image width; lines that would take the strip below half the image height are
    dropped and the last kept line ends with "...".
    """
    draw = ImageDraw.Draw(image, "RGBA")
    font = ImageFont.load_default()
    lines = _wrap_text(draw, caption, font, image.width - 2 * padding)
    line_height = draw.textbbox((0, 0), "Ag", font=font)[3] + spacing
    max_lines = max(1, (image.height // 2 - padding) // line_height)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    text = "\n".join(lines)
    text_bottom = draw.multiline_textbbox((padding, padding), text, font=font, spacing=spacing)[3]
    draw.rectangle((0, 0, image.width, text_bottom + padding), fill=(0, 0, 0, 170))
    draw.multiline_text((padding, padding), text, font=font, fill=(255, 255, 255, 255), spacing=spacing)


def overlay_mask(
    image: ImageLike,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 64, 64),
    alpha: float = 0.5,
    caption: str | None = None,
    min_size: int = 256,
) -> Image.Image:
    """Tints ``mask`` on ``image``, outlines it and optionally writes a caption.

    Images whose longest side is below ``min_size`` are first enlarged by an integer factor (nearest neighbour, so
    mask edges stay exact) to keep small frames and their captions readable.

    Args:
        image: PIL image or (H, W, 3) uint8 array.
        mask: (H, W) bool or 0/1 array (or tensor).
        color: RGB tint; the 2-px contour uses the same colour lightened halfway to white.
        alpha: opacity of the tint inside the mask.
        caption: text written on a dark strip at the top (e.g. the instruction), wrapped to the image width.
        min_size: enlarge smaller images by ``ceil(min_size / max(H, W))``.

    Returns:
        The (k*H, k*W) RGB overlay, k >= 1 the enlargement factor.
    """
    rgb = _as_rgb_array(image)
    region = _as_numpy(mask).astype(bool)
    if region.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {region.shape} != image shape {rgb.shape[:2]}")
    factor = max(1, -(-min_size // max(rgb.shape[:2])))
    rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    region = region.repeat(factor, axis=0).repeat(factor, axis=1)
    tint = np.asarray(color, dtype=np.float32)
    rgb[region] = (rgb[region] * (1 - alpha) + tint * alpha).round().astype(np.uint8)
    contour = region & ~binary_erosion(region, iterations=2, border_value=1)
    rgb[contour] = ((tint + 255) / 2).round().astype(np.uint8)
    result = Image.fromarray(rgb)
    if caption:
        _draw_caption(result, caption)
    return result


def side_by_side(images: Sequence[Image.Image], gap: int = 4) -> Image.Image:
    """Concatenates images horizontally, top-aligned on a black canvas, ``gap`` pixels apart."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    canvas = Image.new("RGB", (width, max(image.height for image in images)))
    left = 0
    for image in images:
        canvas.paste(image.convert("RGB"), (left, 0))
        left += image.width + gap
    return canvas


def overlay_with_target(
    image: ImageLike, mask: np.ndarray, target: np.ndarray | None = None, caption: str | None = None
) -> Image.Image:
    """The prediction overlay, with the ground truth (green) side by side when ``target`` is given."""
    picture = overlay_mask(image, mask, caption=caption)
    if target is None:
        return picture
    return side_by_side([picture, overlay_mask(image, target, color=(64, 200, 64), caption="ground truth")])


def save_overlay_png(
    path: str | Path, image: ImageLike, mask: np.ndarray, caption: str | None = None, target: np.ndarray | None = None
) -> Path:
    """Saves :func:`overlay_with_target` as a PNG, creating parent directories; returns ``path`` as a ``Path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_with_target(image, mask, target, caption).save(path)
    return path


def save_overlay_gif(
    path: str | Path,
    frames: Sequence[ImageLike],
    masks: Sequence[np.ndarray],
    caption: str | None = None,
    fps: float = 4,
    targets: Sequence[np.ndarray] | None = None,
) -> Path:
    """Saves the overlays of a video as a looping animated GIF, creating parent directories.

    Args:
        path: output ``.gif`` path.
        frames: T PIL images or (H, W, 3) uint8 arrays.
        masks: T (H, W) masks, or a (T, H, W) array.
        caption: text written on every frame.
        fps: frames per second. Pillow merges consecutive identical frames into one longer frame.
        targets: optional T ground-truth masks shown side by side in green.

    Returns:
        ``path`` as a ``Path``.
    """
    if len(frames) != len(masks) or not len(frames) or (targets is not None and len(targets) != len(frames)):
        raise ValueError(f"need as many masks as frames (at least one), got {len(frames)} frames, {len(masks)} masks")
    targets = [None] * len(frames) if targets is None else targets
    overlays = [overlay_with_target(f, m, t, caption) for f, m, t in zip(frames, masks, targets)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlays[0].save(path, save_all=True, append_images=overlays[1:], duration=round(1000 / fps), loop=0)
    return path


def save_submission_masks(
    root: str | Path, video: str, exp_id: str, frame_names: Sequence[str], masks: Sequence[np.ndarray]
) -> Path:
    """Writes one expression's masks as ``<root>/Annotations/<video>/<exp_id>/<frame>.png`` (0/255, mode "L").

    Args:
        root: submission root directory.
        video: video name.
        exp_id: expression id within the video.
        frame_names: T frame names without extension (e.g. ``"00000"``).
        masks: T (H, W) bool or 0/1 masks, or a (T, H, W) array or tensor.

    Returns:
        The expression directory.
    """
    masks = _as_numpy(masks) if hasattr(masks, "shape") else [_as_numpy(mask) for mask in masks]
    if len(frame_names) != len(masks):
        raise ValueError(f"got {len(frame_names)} frame names but {len(masks)} masks")
    directory = Path(root) / "Annotations" / video / exp_id
    directory.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(frame_names, masks):
        Image.fromarray(np.where(mask.astype(bool), 255, 0).astype(np.uint8)).save(directory / f"{name}.png")
    return directory
