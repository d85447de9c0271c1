"""Helpers of the converters for reading the official inputs.

Top-level readers (``require_*``, :func:`load_json`, :func:`load_plain_pickle`) raise :class:`~.base.ConvertError`:
nothing is written. Per-item helpers (keys, polygons and RLEs, :func:`read_frames`) raise
:class:`~datamodules.schema.RecordError`: the item is skipped and counted.
"""

from __future__ import annotations

import io
import json
import pickle
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pycocotools.mask as mask_api
from PIL import Image

from ..rle import counts_to_string, encode_rle, rle_counts
from ..schema import RecordError, check_rle_size
from ..shards import decode_frame
from .base import ConvertError, FrameSet

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_+-]")


# ---------------------------------------------------------------------------------------------------------------
# Reading the top-level inputs


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file.

    Raises:
        ConvertError: naming ``what`` and the path when it is not.
    """
    if not path.is_file():
        raise ConvertError(f"{what} not found: {path}")
    return path


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a directory.

    Raises:
        ConvertError: naming ``what`` and the path when it is not.
    """
    if not path.is_dir():
        raise ConvertError(f"{what} not found: {path}")
    return path


def first_existing(candidates: Sequence[Path], what: str) -> Path:
    """The first of ``candidates`` that exists.

    Raises:
        ConvertError: listing every candidate when none exists.
    """
    for path in candidates:
        if path.exists():
            return path
    raise ConvertError(f"{what} not found; looked for: " + ", ".join(str(p) for p in candidates))


def load_json(path: Path, what: str) -> Any:
    """Parse a JSON file.

    Raises:
        ConvertError: when the file is missing or is not valid JSON (the message names the file).
    """
    require_file(path, what)
    try:
        with open(path, "rb") as file:
            return json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{what} {path}: malformed JSON ({exc})") from None


class _PlainDataUnpickler(pickle.Unpickler):
    """An unpickler that builds no object: every global lookup (class, function) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(
            f"the pickle wants to build '{module}.{name}'; only plain lists, dicts, strings and numbers are allowed"
        )


def load_plain_pickle(path: Path, what: str) -> Any:
    """Load a pickle that holds only plain data (lists, dicts, tuples, strings, numbers, booleans, None).

    Nothing in the file is imported or called: a pickle that references any class or function (``os.system``,
    ``numpy.ndarray``, ...) is rejected before it runs.

    Raises:
        ConvertError: when the file is missing, truncated, not a pickle, or tries to build an object.
    """
    require_file(path, what)
    try:
        with open(path, "rb") as file:
            return _PlainDataUnpickler(file, encoding="utf-8").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, UnicodeDecodeError) as exc:
        raise ConvertError(f"{what} {path}: rejected, not a plain-data pickle ({exc})") from None


# ---------------------------------------------------------------------------------------------------------------
# Per-item helpers (raise RecordError: the item is skipped and counted)


def sanitize_key(name: str) -> str:
    """A record key from any name: characters other than letters, digits, ``_``, ``+`` and ``-`` become ``_``."""
    return _KEY_UNSAFE.sub("_", name) or "_"


def unique_keys(names: Sequence[str]) -> list[str]:
    """Sanitised keys for ``names`` (in order), made unique by a ``-2``, ``-3``, ... suffix on repeats."""
    used: set[str] = set()
    keys = []
    for name in names:
        base = key = sanitize_key(name)
        number = 1
        while key in used:
            number += 1
            key = f"{base}-{number}"
        used.add(key)
        keys.append(key)
    return keys


def flat_coordinates(polygon: Any, where: str) -> list[float]:
    """``[x1, y1, x2, y2, ...]`` of a COCO polygon (already flat) or a LabelMe one (``[[x1, y1], [x2, y2], ...]``).

    Raises:
        RecordError: ``"bad_segmentation"`` for a polygon that is not an even-length list of numbers.
    """
    if not isinstance(polygon, (list, tuple)):
        raise RecordError("bad_segmentation", f"{where}: a polygon must be a list of coordinates.")
    flat: list[Any] = []
    for value in polygon:
        if isinstance(value, (list, tuple)):
            flat.extend(value)
        else:
            flat.append(value)
    if len(flat) % 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
        raise RecordError("bad_segmentation", f"{where}: a polygon needs an even number of numeric coordinates.")
    return [float(v) for v in flat]


def int32_points(coordinates: list[float]) -> np.ndarray:
    """``(N, 2)`` int32 points of flat coordinates, truncated toward zero (``np.array(poly, dtype=np.int32)``)."""
    return np.array(coordinates, dtype=np.int32).reshape(-1, 2)


RASTERIZERS = ("pycocotools", "cv2")
"""Polygon rules for COCO segmentations: ``pycocotools`` (``frPyObjects`` + ``merge``, as the REFER API and the COCO
tools; half-open pixel coverage, an integer rectangle ``x0..x1`` covers columns ``x0 .. x1 - 1``) or ``cv2``
(InstructSeg's ``eval_res.py``: each polygon's points truncated to int32 and filled with ``cv2.fillPoly``, outline
included, so an integer rectangle covers ``x0 .. x1``)."""


def polygons_rle(polygons: Sequence[Any], height: int, width: int, where: str, rasterizer: str) -> dict[str, Any]:
    """The compressed RLE of the union of COCO polygons, rasterised by the rule ``rasterizer`` (:data:`RASTERIZERS`).

    Args:
        polygons: each ``[x1, y1, x2, y2, ...]``; an empty list gives an empty mask.
        height: mask height.
        width: mask width.
        where: item location for error messages.
        rasterizer: ``"pycocotools"`` or ``"cv2"``. With ``pycocotools``, polygons of fewer than 3 points are left
            out: pycocotools gives them no pixel (and would read a 2-point one as a box); ``cv2`` fills every
            polygon as InstructSeg does (a 1- or 2-point polygon becomes a dot or a line).

    Raises:
        RecordError: ``"bad_segmentation"`` for a polygon that is not a list of numbers.
        ValueError: for an unknown ``rasterizer``.
    """
    coordinates = [flat_coordinates(polygon, where) for polygon in polygons]
    if rasterizer == "pycocotools":
        coordinates = [c for c in coordinates if len(c) >= 6]
        if not coordinates:
            return encode_rle(np.zeros((height, width), dtype=bool))
        rle = mask_api.merge(mask_api.frPyObjects(coordinates, height, width))
        return {"size": [height, width], "counts": rle["counts"].decode("ascii")}
    if rasterizer == "cv2":
        mask = np.zeros((height, width), dtype=np.uint8)
        for points in coordinates:
            if points:
                cv2.fillPoly(mask, [int32_points(points)], 1)
        return encode_rle(mask.astype(bool))
    raise ValueError(f"rasterizer must be one of {RASTERIZERS}, got {rasterizer!r}.")


def checked_rle(rle: Any, height: int, width: int, where: str) -> dict[str, Any]:
    """Verify a COCO RLE (compressed or uncompressed) without decoding it and return it with string counts.

    The run lengths must be non-negative and cover exactly ``height * width`` pixels.

    Raises:
        RecordError: ``"bad_rle"`` for a malformed RLE, ``"mask_size"`` when it is not ``height x width``.
    """
    check_rle_size(rle, height, width, where)
    try:
        counts = rle_counts(rle)
    except ValueError as exc:
        raise RecordError("bad_rle", f"{where}: {exc}") from None
    raw = rle["counts"]
    text = raw.decode("ascii") if isinstance(raw, bytes) else raw
    return {"size": [height, width], "counts": text if isinstance(text, str) else counts_to_string(counts)}


def coco_segmentation_rle(
    segmentation: Any, height: int, width: int, where: str, rasterizer: str = "pycocotools"
) -> dict[str, Any]:
    """The compressed RLE of a COCO ``segmentation``: a polygon list (empty = empty mask) or an RLE (``iscrowd``).

    Polygons are rasterised by :func:`polygons_rle`; an RLE is verified and kept as is (both rules agree on it).

    Raises:
        RecordError: ``"bad_segmentation"``, ``"bad_rle"`` or ``"mask_size"``.
    """
    if isinstance(segmentation, dict):
        return checked_rle(segmentation, height, width, where)
    if isinstance(segmentation, list):
        return polygons_rle(segmentation, height, width, where, rasterizer)
    raise RecordError("bad_segmentation", f"{where}: 'segmentation' must be a polygon list or an RLE dict.")


_FORMAT_OF_EXT = {"jpg": "JPEG", "png": "PNG"}


def read_frames(paths: Sequence[Path], where: str) -> FrameSet:
    """Read frame files (headers only, no decoding unless a format change is needed).

    Raises:
        RecordError: ``"missing_frame"`` (naming the file), ``"bad_frame"`` for an unreadable image, ``"frame_size"``
            when the frames differ in size.
    """
    encoded: list[tuple[bytes, str]] = []
    size: tuple[int, int] | None = None
    for path in paths:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise RecordError("missing_frame", f"{where}: frame file {path} is missing.") from None
        except OSError as exc:
            raise RecordError("bad_frame", f"{where}: cannot read {path} ({exc}).") from None
        try:
            with Image.open(io.BytesIO(data)) as image:
                image_format, image_size = image.format, (image.height, image.width)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise RecordError("bad_frame", f"{where}: {path} is not a readable image ({exc}).") from None
        if size is not None and image_size != size:
            raise RecordError("frame_size", f"{where}: {path} is {image_size}, the first frame {size}.")
        size = image_size
        encoded.append((data, image_format))
    if size is None:
        raise RecordError("no_frames", f"{where}: no frames.")
    ext = "jpg" if encoded[0][1] == "JPEG" else "png"
    frames = [
        data if image_format == _FORMAT_OF_EXT[ext] else decode_frame(data, f"{where} frame {index}")
        for index, (data, image_format) in enumerate(encoded)
    ]
    return FrameSet(frames, ext, size[0], size[1])


SPLIT_ORDER = ("train", "val", "valid", "valid_u", "test", "testA", "testB", "testC")


def ordered_splits(names: Sequence[str]) -> list[str]:
    """Split names in the usual order (train, val(id), test ...), unknown names last in alphabetical order."""
    return sorted(set(names), key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))
