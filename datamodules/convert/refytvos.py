"""Ref-YouTube-VOS from its official files.

Layout (``--root`` is the ``ref-youtube-vos`` folder; see :mod:`datamodules.convert.video` for the other accepted
places of ``meta_expressions.json``)::

    <root>/meta_expressions/<split>/meta_expressions.json   {"videos": {vid: {"expressions": {exp_id: {"exp",
                                                             "obj_id"}}, "frames": [names]}}}
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg
    <root>/<split>/Annotations/<vid>/<frame>.png             palette PNG, pixel value = object id (train only)

Records (task ``rvos``): one per video. Pixel value ``v`` (1..254) of the PNGs is object ``str(v)`` (an expression's
``obj_id`` ``"1"`` names object ``"1"``); 255 (void in the DAVIS convention) becomes the record's ``ignore`` region.
Every object seen in the PNGs is kept, with a null mask on the frames where it is absent; an object named by an
expression but absent from every PNG has a null mask on every frame. A split without ``Annotations/`` (``valid``)
gives ``has_annotations: false`` records (:mod:`datamodules.convert.video`). A listed frame without its PNG in an
annotated split skips the video (``missing_annotation``).

Splits as ReferFormer defines them: the competition's ``meta_expressions/valid`` lists the 202 validation videos and
the 305 test videos, so ``valid`` is those videos minus the ones of ``meta_expressions/test/meta_expressions.json``
(when that file exists; the number left out is ``test_videos_excluded`` in the summary), and ``test`` reads its
frames from ``<root>/valid/JPEGImages`` (where the release puts them) unless ``<root>/test/JPEGImages`` exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..rle import encode_rle
from ..schema import RecordError
from .base import ConvertError
from .inputs import load_json
from .video import MetaExpressionsConverter, SplitLayout, VideoAnnotations

VOID = 255


def read_palette_png(path: Path, size: tuple[int, int], where: str) -> np.ndarray:
    """The ``(H, W)`` uint8 index map of a palette (or grayscale) annotation PNG.

    Raises:
        RecordError: ``"missing_annotation"``, ``"bad_annotation"`` (unreadable or not an index image) or
            ``"mask_size"``.
    """
    try:
        with Image.open(path) as image:
            mode, labels = image.mode, np.asarray(image)
    except FileNotFoundError:
        raise RecordError("missing_annotation", f"{where}: annotation {path} is missing.") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise RecordError("bad_annotation", f"{where}: {path} is not a readable PNG ({exc}).") from None
    if mode not in ("P", "L"):
        raise RecordError("bad_annotation", f"{where}: {path} has mode {mode}, expected a palette (P) or L image.")
    if labels.shape != size:
        raise RecordError("mask_size", f"{where}: {path} is {labels.shape}, the frames {size}.")
    return labels


class RefYouTubeVOSConverter(MetaExpressionsConverter):
    """Ref-YouTube-VOS: meta_expressions.json + JPEG frames + palette PNG annotations.

    See the module docstring; arguments as :class:`~.video.MetaExpressionsConverter`.
    """

    name = "refytvos"

    def load_layout(self, split: str) -> SplitLayout:
        """The split's metadata; ``valid`` without the test videos, ``test`` with the frames of ``valid``."""
        layout = super().load_layout(split)
        if split == "valid":
            excluded = self.test_videos() & set(layout.videos)
            layout.videos = {name: video for name, video in layout.videos.items() if name not in excluded}
            self.test_videos_excluded = len(excluded)
        elif split == "test" and not layout.frame_root.is_dir():
            layout.frame_root = self.root / "valid" / "JPEGImages"
        return layout

    def test_videos(self) -> set[str]:
        """The videos of ``meta_expressions/test/meta_expressions.json`` (none when it does not exist).

        Raises:
            ConvertError: for a malformed test metadata file.
        """
        candidates = [meta for meta, _ in self.layout_candidates("test") if meta.is_file()]
        if not candidates:
            return set()
        meta = load_json(candidates[0], f"{self.name} test metadata")
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise ConvertError(f"{self.name} metadata {candidates[0]}: expected an object with a 'videos' mapping.")
        return set(videos)

    def split_info(self, split: str) -> dict[str, Any]:
        info = {**super().split_info(split), "frame_root": str(self.layouts[split].frame_root)}
        if split == "valid":
            info["test_videos_excluded"] = self.test_videos_excluded
        return info

    def annotation_dir(self, split: str) -> Path:
        """The split's ``Annotations`` folder."""
        return self.layouts[split].data_dir / "Annotations"

    def annotated(self, split: str) -> bool:
        return self.annotation_dir(split).is_dir()

    def expression_object_ids(self, expression: dict[str, Any], where: str) -> list[str] | None:
        obj_id = expression.get("obj_id")
        if obj_id is None:
            return None
        try:
            return [str(int(obj_id))]
        except (TypeError, ValueError):
            raise RecordError("bad_object_id", f"{where}: 'obj_id' {obj_id!r} is not an integer.") from None

    def video_annotations(
        self, split: str, video: str, frame_names: list[str], size: tuple[int, int], object_ids: set[str], where: str
    ) -> VideoAnnotations:
        folder = self.annotation_dir(split) / video
        labels = [read_palette_png(folder / f"{name}.png", size, where) for name in frame_names]
        present = set(np.unique(np.stack(labels)).tolist()) - {0, VOID}
        ids = sorted({str(v) for v in present} | object_ids, key=int)
        objects = {}
        for object_id in ids:
            value = int(object_id)
            masks = [labels_t == value for labels_t in labels]
            objects[object_id] = {"masks": [encode_rle(m) if m.any() else None for m in masks]}
        void = [labels_t == VOID for labels_t in labels]
        ignore = [encode_rle(m) if m.any() else None for m in void] if any(m.any() for m in void) else None
        return VideoAnnotations(objects, ignore)
