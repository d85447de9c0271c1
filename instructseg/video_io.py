"""Reading images and videos for inference: paths, PIL / NumPy / torch inputs, folders of frames, GIF and MP4.

Every frame becomes an ``(H, W, 3)`` uint8 RGB array through :func:`instructseg.processing.to_rgb_uint8`
(grayscale is replicated, alpha dropped, 16-bit scaled by 1/257, float in [0, 1] scaled by 255).

Videos are given as

* a list / tuple of frames (PIL images, arrays, tensors or image paths), or a ``(T, H, W, C)`` / ``(T, C, H, W)``
  array or tensor;
* a folder of image files, read in natural sort order (:func:`natural_key`: ``frame2`` before ``frame10``) and
  **lazily**: a frame is decoded when it is needed, so long videos stream with bounded memory;
* a GIF (read with Pillow) or an MP4 / AVI / MOV / MKV / WebM file (read with ``imageio`` if it is installed:
  ``pip install "imageio[ffmpeg]"``). Video files are decoded up front and held as uint8 frames; for very long
  videos extract the frames into a folder instead.

Huge images are accepted (the model resizes them to its input size anyway); above :data:`HUGE_IMAGE_PIXELS` a
warning is issued. Pillow's decompression-bomb guard still refuses files above ~179 MP.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from instructseg.processing import InputError, to_rgb_uint8

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".gif", ".mp4", ".avi", ".mov", ".mkv", ".webm")
HUGE_IMAGE_PIXELS = 100_000_000

ImageInput = Image.Image | np.ndarray | torch.Tensor | str | Path


def load_image(image: ImageInput) -> np.ndarray:
    """Read / convert one image to ``(H, W, 3)`` uint8 RGB.

    Args:
        image: a path to an image file, a PIL image, a NumPy array or a torch tensor.

    Raises:
        FileNotFoundError: the path does not exist.
        InputError: the file is not a readable image, or the array has an unsupported shape / dtype.
    """
    if isinstance(image, (str, Path)):
        image = _open_image_file(Path(image))
    try:
        array = to_rgb_uint8(image)
    except ValueError as err:
        raise InputError(str(err)) from None
    if array.shape[0] * array.shape[1] > HUGE_IMAGE_PIXELS:
        warnings.warn(
            f"image of {array.shape[1]}x{array.shape[0]} pixels (> {HUGE_IMAGE_PIXELS // 1_000_000} MP): it is "
            "resized to the model's input size anyway; downscale it beforehand to save memory.",
            stacklevel=2,
        )
    return array


def _open_image_file(path: Path) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}.")
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened)  # a copy, upright as the camera's EXIF orientation says
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:
        raise InputError(f"Cannot read {path} as an image: {err}") from None


_DIGIT_RUNS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[int | str, ...], str]:
    """Sort key of the project's one natural order (frame folders, dataset video / object / query ids).

    The rule: split ``name`` into alternating runs of non-digits and digits (``"Frame10b"`` -> ``"Frame"``, ``10``,
    ``"b"``); digit runs compare as integers, other runs case-insensitively, run by run; names whose runs are all
    equal (``"a01"`` / ``"a1"``, ``"A1"`` / ``"a1"``) are ordered by the exact name, so the order is total. Hence
    ``"2" < "10" < "a"``, ``"frame2" < "Frame3" < "frame10"`` and ``"x9" < "x10a"``.

    Args:
        name: a file name or an id (digit runs of any length).

    Returns:
        ``(runs, name)``: the runs (non-digit runs lower-cased, digit runs as ``int``; even positions are always
        strings, odd positions ints, so any two keys compare) and the name itself as the tie-break.
    """
    runs = _DIGIT_RUNS.split(name)
    return tuple(int(run) if i % 2 else run.lower() for i, run in enumerate(runs)), name


class VideoFrames(Sequence):
    """A video as a random-access sequence of ``(H, W, 3)`` uint8 frames with names.

    Args:
        items: the frames, or paths read lazily on access.
        names: one name per frame (used for output file names).
    """

    def __init__(self, items: Sequence, names: Sequence[str]) -> None:
        if len(items) == 0:
            raise InputError("The video has no frames.")
        self._items = items
        self.names = list(names)

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> np.ndarray:
        if isinstance(index, slice):
            raise TypeError("VideoFrames: index with an int.")
        return load_image(self._items[index])


def open_video(video: Sequence[ImageInput] | np.ndarray | torch.Tensor | str | Path) -> VideoFrames:
    """Open any supported video input (see the module docstring) as :class:`VideoFrames` (returned as is).

    Raises:
        FileNotFoundError: a path does not exist.
        InputError: no frames, an unsupported file type, an unreadable file, or MP4 without ``imageio``.
    """
    if isinstance(video, VideoFrames):
        return video
    if isinstance(video, (str, Path)):
        path = Path(video)
        if path.is_dir():
            files = sorted(
                (p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS), key=lambda p: natural_key(p.name)
            )
            if not files:
                raise InputError(f"The folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
            return VideoFrames(files, [p.stem for p in files])
        if not path.is_file():
            raise FileNotFoundError(f"No video file or frame folder at {path}.")
        frames = _read_video_file(path)
        return VideoFrames(frames, [f"{i:05d}" for i in range(len(frames))])
    if isinstance(video, (np.ndarray, torch.Tensor)):
        if video.ndim != 4:
            raise InputError(f"video: expected a (T, H, W, C) or (T, C, H, W) array, got shape {tuple(video.shape)}.")
        video = list(video)
    if not isinstance(video, Sequence):
        raise InputError(f"video: expected frames, a folder or a video file, got {type(video).__name__}.")
    names = [Path(v).stem if isinstance(v, (str, Path)) else f"{i:05d}" for i, v in enumerate(video)]
    return VideoFrames(list(video), names)


def _read_video_file(path: Path) -> list[np.ndarray]:
    suffix = path.suffix.lower()
    if suffix not in VIDEO_EXTENSIONS:
        raise InputError(f"Unsupported video file type {suffix!r} ({path}); use one of {', '.join(VIDEO_EXTENSIONS)}.")
    if suffix == ".gif":
        try:
            with Image.open(path) as gif:
                frames = []
                for index in range(getattr(gif, "n_frames", 1)):
                    gif.seek(index)
                    frames.append(np.asarray(gif.convert("RGB")))
                return frames
        except (OSError, SyntaxError, EOFError) as err:
            raise InputError(f"Cannot read {path} as a GIF: {err}") from None
    try:
        import imageio.v3 as iio
    except ImportError:
        raise InputError(
            f'Reading {suffix} files needs imageio: `pip install "imageio[ffmpeg]"`, or extract the frames into a '
            f"folder (e.g. `ffmpeg -i {path.name} frames/%05d.jpg`) and pass the folder."
        ) from None
    try:
        return [to_rgb_uint8(frame) for frame in iio.imiter(path)]
    except (OSError, RuntimeError, ValueError) as err:
        raise InputError(f"Cannot read {path} as a video: {err}") from None


def is_video_path(path: str | Path) -> bool:
    """True for a folder of frames or a file with a video extension."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS
