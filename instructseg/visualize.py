"""Mask overlays (PNG / animated GIF) and masks in the official submission layout.

* :func:`overlay_mask` draws a mask on an image so that it stays visible on any object: a tint whose colour is
  chosen against the masked pixels' mean colour, diagonal hatching and a 2-px outline in that colour. A caption
  strip **above** the frame (never over it) carries the instruction and a label with the score and the no-target
  answer. :func:`save_overlay_png` and :func:`save_overlay_gif` save such overlays for one image or one video.
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

#: Tint candidates; :func:`contrast_color` picks the one farthest from the object's mean colour.
PALETTE = (
    (255, 40, 40),  # red
    (40, 220, 40),  # green
    (40, 120, 255),  # blue
    (255, 220, 0),  # yellow
    (255, 0, 255),  # magenta
    (0, 230, 230),  # cyan
)
STRIP_COLOR = (24, 24, 24)
HATCH_PERIOD = 8  # px between hatching lines (after enlargement)
HATCH_WIDTH = 2


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


def _color_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ "Redmean" weighted RGB distance (a cheap approximation of perceived colour difference); broadcasts."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mean_red = (a[..., 0] + b[..., 0]) / 2
    weights = np.stack([2 + mean_red / 256, np.full_like(mean_red, 4.0), 2 + (255 - mean_red) / 256], axis=-1)
    return np.sqrt((weights * (a - b) ** 2).sum(-1))


def contrast_color(image: np.ndarray, mask: np.ndarray) -> tuple[int, int, int]:
    """The :data:`PALETTE` colour farthest from the mean colour of ``image``'s pixels under ``mask``.

    Args:
        image: (H, W, 3) uint8.
        mask: (H, W) bool; an empty mask gives the first palette colour.
    """
    if not mask.any():
        return PALETTE[0]
    mean = image[mask].reshape(-1, 3).mean(0)
    return PALETTE[int(np.argmax(_color_distance(np.asarray(PALETTE), mean)))]


def prediction_label(score: float | None, no_target: bool | None, empty: bool) -> str:
    """The answer written under the caption: ``"score 0.87 | target"``, ``"score 0.12 | no target"``.

    A target with an empty mask (the selected query's mask has no pixel above 0.5) says so.
    """
    parts = [] if score is None else [f"score {score:.2f}"]
    if no_target is not None:
        parts.append("no target" if no_target else ("target, empty mask" if empty else "target"))
    return " | ".join(parts)


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


def add_caption_strip(
    image: Image.Image, caption: str | None, label: str = "", max_lines: int = 6, padding: int = 6
) -> Image.Image:
    """``image`` below a dark strip holding ``caption`` (white, word-wrapped) and ``label`` (yellow, own line).

    The strip is added above the frame, so no pixel of the picture is covered. The font size follows the image
    width; captions longer than ``max_lines`` lines end with "...".

    Returns:
        A new (H + strip, W) RGB image; ``image`` itself when there is no text.
    """
    if not caption and not label:
        return image
    font = ImageFont.load_default(size=max(11, min(22, image.width // 28)))
    draw = ImageDraw.Draw(image)
    width = image.width - 2 * padding
    lines = _wrap_text(draw, caption or "", font, width)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] += " ..."
    rows = [(line, (255, 255, 255)) for line in lines] + [
        (line, (255, 220, 0)) for line in _wrap_text(draw, label, font, width)
    ]
    line_height = round(font.size * 1.3)
    canvas = Image.new("RGB", (image.width, 2 * padding + line_height * len(rows) + image.height), STRIP_COLOR)
    text = ImageDraw.Draw(canvas)
    for row, (line, fill) in enumerate(rows):
        text.text((padding, padding + row * line_height), line, font=font, fill=fill)
    canvas.paste(image, (0, canvas.height - image.height))
    return canvas


def draw_mask(
    image: ImageLike,
    mask: np.ndarray,
    color: tuple[int, int, int] | None = None,
    alpha: float = 0.45,
    min_size: int = 256,
) -> Image.Image:
    """Tints ``mask`` on ``image``, hatches it diagonally and outlines it (2 px), all in one contrasting colour.

    Images whose longest side is below ``min_size`` are first enlarged by an integer factor (nearest neighbour, so
    mask edges stay exact) to keep small frames and their captions readable.

    Args:
        image: PIL image or (H, W, 3) uint8 array.
        mask: (H, W) bool or 0/1 array (or tensor).
        color: RGB of the tint, hatching and outline; default :func:`contrast_color` of the masked pixels.
        alpha: opacity of the tint inside the mask (the hatching lines and the outline are opaque).
        min_size: enlarge smaller images by ``ceil(min_size / max(H, W))``.

    Returns:
        The (k*H, k*W) RGB picture, k >= 1 the enlargement factor.
    """
    rgb = _as_rgb_array(image)
    region = _as_numpy(mask).astype(bool)
    if region.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {region.shape} != image shape {rgb.shape[:2]}")
    tint = np.asarray(color if color is not None else contrast_color(rgb, region), dtype=np.float32)
    factor = max(1, -(-min_size // max(rgb.shape[:2])))
    rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)
    region = region.repeat(factor, axis=0).repeat(factor, axis=1)
    rgb[region] = (rgb[region] * (1 - alpha) + tint * alpha).round().astype(np.uint8)
    rows, cols = np.indices(region.shape)
    hatch = region & ((rows + cols) % HATCH_PERIOD < HATCH_WIDTH)
    contour = region & ~binary_erosion(region, iterations=2, border_value=1)
    rgb[hatch | contour] = tint.astype(np.uint8)
    return Image.fromarray(rgb)


def overlay_mask(
    image: ImageLike,
    mask: np.ndarray,
    caption: str | None = None,
    score: float | None = None,
    no_target: bool | None = None,
    color: tuple[int, int, int] | None = None,
    alpha: float = 0.45,
    min_size: int = 256,
) -> Image.Image:
    """:func:`draw_mask` below a caption strip with the instruction and the score / no-target label.

    Args:
        image: PIL image or (H, W, 3) uint8 array.
        mask: (H, W) bool or 0/1 array (or tensor).
        caption: text on the strip above the frame (e.g. the instruction), wrapped to the image width.
        score: the prediction's score, written under the caption.
        no_target: the no-target answer, written under the caption.
        color: tint colour, default :func:`contrast_color` (see :func:`draw_mask`).
        alpha: tint opacity (see :func:`draw_mask`).
        min_size: smaller images are enlarged (see :func:`draw_mask`).

    Returns:
        The RGB overlay (the strip is added only when there is some text; see :func:`add_caption_strip`).
    """
    picture = draw_mask(image, mask, color, alpha, min_size)
    label = prediction_label(score, no_target, empty=not _as_numpy(mask).any())
    return add_caption_strip(picture, caption, label)


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
    image: ImageLike,
    mask: np.ndarray,
    target: np.ndarray | None = None,
    caption: str | None = None,
    score: float | None = None,
    no_target: bool | None = None,
) -> Image.Image:
    """:func:`overlay_mask`, with the ground truth side by side (right, one shared caption strip) when given."""
    if target is None:
        return overlay_mask(image, mask, caption, score, no_target)
    label = prediction_label(score, no_target, empty=not _as_numpy(mask).any())
    label = f"{label} | right: ground truth" if label else "right: ground truth"
    return add_caption_strip(side_by_side([draw_mask(image, mask), draw_mask(image, target)]), caption, label)


def save_overlay_png(
    path: str | Path,
    image: ImageLike,
    mask: np.ndarray,
    caption: str | None = None,
    target: np.ndarray | None = None,
    score: float | None = None,
    no_target: bool | None = None,
) -> Path:
    """Saves :func:`overlay_with_target` as a PNG, creating parent directories; returns ``path`` as a ``Path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    overlay_with_target(image, mask, target, caption, score, no_target).save(path)
    return path


def _pad_top(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """``image`` at the bottom-left of a ``size`` canvas of the strip colour (frames stay aligned in a GIF)."""
    if image.size == size:
        return image
    canvas = Image.new("RGB", size, STRIP_COLOR)
    canvas.paste(image, (0, size[1] - image.height))
    return canvas


def save_overlay_gif(
    path: str | Path,
    frames: Sequence[ImageLike],
    masks: Sequence[np.ndarray],
    caption: str | None = None,
    fps: float = 4,
    targets: Sequence[np.ndarray] | None = None,
    scores: Sequence[float] | None = None,
    no_target: Sequence[bool] | None = None,
) -> Path:
    """Saves the overlays of a video as a looping animated GIF, creating parent directories.

    Args:
        path: output ``.gif`` path.
        frames: T PIL images or (H, W, 3) uint8 arrays.
        masks: T (H, W) masks, or a (T, H, W) array.
        caption: text written on every frame.
        fps: frames per second. Pillow merges consecutive identical frames into one longer frame.
        targets: optional T ground-truth masks shown side by side.
        scores: optional T scores, written on their frames.
        no_target: optional T no-target answers, written on their frames.

    Returns:
        ``path`` as a ``Path``.
    """
    n = len(frames)
    if not n or any(x is not None and len(x) != n for x in (masks, targets, scores, no_target)):
        raise ValueError(
            f"need as many masks (targets, scores, no-target flags) as frames (at least one), got {n} frames, "
            f"{len(masks)} masks"
        )
    per_frame = [[None] * n if x is None else list(x) for x in (targets, scores, no_target)]
    overlays = [overlay_with_target(f, m, t, caption, s, e) for f, m, t, s, e in zip(frames, masks, *per_frame)]
    size = (max(o.width for o in overlays), max(o.height for o in overlays))  # labels may wrap differently
    overlays = [_pad_top(o, size) for o in overlays]
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
