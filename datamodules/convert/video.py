"""Shared part of the video converters: datasets described by a ``meta_expressions.json``.

``meta_expressions.json`` (Ref-YouTube-VOS, Ref-DAVIS17, MeViS, ReVOS)::

    {"videos": {"<video>": {"frames": ["00000", ...],
                            "expressions": {"<exp_id>": {"exp": "a man riding a bike", ...ids of the target...}}}}}

with the frames in ``<data>/JPEGImages/<video>/<frame>.jpg``. Subclasses say where the masks are (palette PNGs or
``mask_dict.json``) and which expression field names the target (``obj_id`` or ``anno_id``).

Records: one per video with ``frame_names`` = the listed frames, one query per expression (``id`` = ``exp_id``) and
the extra keys ``video`` (the original video name) and ``has_annotations``. A split without masks (e.g. the
Ref-YouTube-VOS and MeViS ``valid`` splits) gives records whose objects have a null mask on every frame and
``has_annotations: false``; an expression that names no object there gets a placeholder object ``exp-<exp_id>``.
"""

from __future__ import annotations

import argparse
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructseg.video_io import natural_key

from ..schema import RecordError
from .base import Converted, Converter, ConvertError, Item, Report
from .inputs import load_json, ordered_splits, read_frames, require_dir, unique_keys

META_NAME = "meta_expressions.json"

Objects = dict[str, dict[str, Any]]


@dataclass
class SplitLayout:
    """Where one split lives.

    Attributes:
        meta_path: its ``meta_expressions.json``.
        data_dir: the folder holding the annotations (and by default ``JPEGImages/``).
        videos: the parsed ``videos`` mapping.
        frame_root: the folder of the video frame folders (default ``<data_dir>/JPEGImages``).
    """

    meta_path: Path
    data_dir: Path
    videos: dict[str, Any]
    frame_root: Path | None = None

    def __post_init__(self) -> None:
        if self.frame_root is None:
            self.frame_root = self.data_dir / "JPEGImages"


@dataclass
class VideoAnnotations:
    """The masks of one video.

    Attributes:
        objects: ``object id -> {"masks": [RLE | null per frame]}``.
        ignore: per-frame void region, or None.
        broken: object ids whose masks could not be read, with the error (their queries are dropped).
    """

    objects: Objects
    ignore: list[dict[str, Any] | None] | None = None
    broken: dict[str, RecordError] | None = None


class MetaExpressionsConverter(Converter):
    """Base of the video converters (see the module docstring).

    Args:
        root: the dataset folder.
        splits: splits to convert (default: every split found).

    Raises:
        ConvertError: for a missing folder, an unknown split or a missing / malformed ``meta_expressions.json``.
    """

    task = "rvos"
    default_maxcount = 100
    frame_suffix = ".jpg"

    def __init__(self, root: str | Path, splits: Sequence[str] | None = None) -> None:
        self.root = require_dir(Path(root), f"{self.name} folder")
        self.splits = self.resolve_splits(splits, self.find_splits(), self.root)
        self.layouts = {split: self.load_layout(split) for split in self.splits}

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MetaExpressionsConverter:
        return cls(args.root, args.split)

    # -- layout -------------------------------------------------------------------------------------------------

    def layout_candidates(self, split: str) -> list[tuple[Path, Path]]:
        """``(meta_expressions.json, data folder)`` places of ``split``, in order of preference.

        The official layout ``<root>/meta_expressions/<split>/meta_expressions.json`` + ``<root>/<split>/``, then
        ``<root>/<split>/meta_expressions.json``, then ``<root>/meta_expressions.json`` when ``root`` is the split's
        own folder.
        """
        candidates = [
            (self.root / "meta_expressions" / split / META_NAME, self.root / split),
            (self.root / split / META_NAME, self.root / split),
        ]
        if split == self.root.name:
            candidates.append((self.root / META_NAME, self.root))
        return candidates

    def find_splits(self) -> list[str]:
        """Splits that have a ``meta_expressions.json`` in one of the known places."""
        found = {p.parent.name for p in self.root.glob(f"meta_expressions/*/{META_NAME}")}
        found |= {p.parent.name for p in self.root.glob(f"*/{META_NAME}")}
        if (self.root / META_NAME).is_file():
            found.add(self.root.name)
        return ordered_splits(found)

    def load_layout(self, split: str) -> SplitLayout:
        """Find and parse the split's metadata.

        Raises:
            ConvertError: naming the file when it is missing or malformed.
        """
        candidates = self.layout_candidates(split)
        meta_path, data_dir = next(((m, d) for m, d in candidates if m.is_file()), candidates[0])
        meta = load_json(meta_path, f"{self.name} {split} metadata")
        videos = meta.get("videos") if isinstance(meta, dict) else None
        if not isinstance(videos, dict):
            raise ConvertError(f"{self.name} metadata {meta_path}: expected an object with a 'videos' mapping.")
        return SplitLayout(meta_path, data_dir, videos)

    def frame_dir(self, layout: SplitLayout, video: str) -> Path:
        """The folder of a video's frames."""
        assert layout.frame_root is not None
        return layout.frame_root / video

    # -- subclass hooks -----------------------------------------------------------------------------------------

    @abstractmethod
    def annotated(self, split: str) -> bool:
        """Whether the split has masks."""

    @abstractmethod
    def expression_object_ids(self, expression: dict[str, Any], where: str) -> list[str] | None:
        """The object ids an expression names (None when it names none, e.g. unannotated splits).

        Raises:
            RecordError: for a malformed id field (the query is dropped).
        """

    @abstractmethod
    def video_annotations(
        self, split: str, video: str, frame_names: list[str], size: tuple[int, int], object_ids: set[str], where: str
    ) -> VideoAnnotations:
        """The masks of the objects of an annotated video (at least those in ``object_ids``).

        Raises:
            RecordError: when the video's annotations cannot be used at all (the record is skipped).
        """

    def make_query(self, exp_id: str, expression: Any, where: str) -> dict[str, Any]:
        """The query of one expression (``object_ids`` may be None; see :meth:`expression_object_ids`).

        Raises:
            RecordError: when the expression is unusable (the query is dropped).
        """
        if not isinstance(expression, dict):
            raise RecordError("bad_expression", f"{where}: expected an object.")
        text = expression.get("exp")
        if not isinstance(text, str) or not text.strip():
            raise RecordError("empty_text", f"{where}: no expression text.")
        object_ids = self.expression_object_ids(expression, where)
        return {"text": text.strip(), "object_ids": object_ids, "type": "referring", "id": str(exp_id)}

    def extra_meta(
        self, split: str, video: str, frame_names: list[str], size: tuple[int, int], report: Report, where: str
    ) -> dict[str, Any]:
        """Extra record keys of a video (none by default)."""
        return {}

    # -- converter interface ------------------------------------------------------------------------------------

    def split_info(self, split: str) -> dict[str, Any]:
        return {"has_annotations": self.annotated(split), "metadata": str(self.layouts[split].meta_path)}

    def items(self, split: str, report: Report) -> list[Item]:
        videos = sorted(self.layouts[split].videos, key=natural_key)
        return [Item(key, video) for key, video in zip(unique_keys(videos), videos)]

    def convert(self, split: str, item: Item, report: Report) -> Converted:
        layout = self.layouts[split]
        video_name = item.source
        where = f"{split}/{video_name}"
        video = layout.videos[video_name]
        frame_names = video.get("frames") if isinstance(video, dict) else None
        expressions = video.get("expressions") if isinstance(video, dict) else None
        if not isinstance(frame_names, list) or not all(isinstance(n, str) for n in frame_names):
            raise RecordError("bad_video", f"{where}: 'frames' must be a list of frame names in {layout.meta_path}.")
        if not isinstance(expressions, dict):
            raise RecordError("bad_video", f"{where}: 'expressions' must be a mapping in {layout.meta_path}.")
        folder = self.frame_dir(layout, video_name)
        frames = read_frames([folder / f"{name}{self.frame_suffix}" for name in frame_names], where)
        size = (frames.height, frames.width)
        queries = []
        for exp_id in sorted(expressions, key=natural_key):
            try:
                queries.append(self.make_query(exp_id, expressions[exp_id], f"{where} expression {exp_id}"))
            except RecordError as exc:
                report.drop(exc.reason, exc.message)
        annotated = self.annotated(split)
        if annotated:
            referenced = {i for q in queries for i in q["object_ids"] or ()}
            annotations = self.video_annotations(split, video_name, frame_names, size, referenced, where)
        else:
            annotations = VideoAnnotations({})
        queries = self._resolve_objects(queries, annotations, annotated, len(frame_names), report, where)
        if not queries:
            raise RecordError("no_queries", f"{where}: no usable expression.")
        meta: dict[str, Any] = {
            "dataset": self.name,
            "task": self.task,
            "frames": len(frame_names),
            "height": frames.height,
            "width": frames.width,
            "frame_names": frame_names,
            "objects": annotations.objects,
            "queries": queries,
            "video": video_name,
            "has_annotations": annotated,
            **self.extra_meta(split, video_name, frame_names, size, report, where),
        }
        if annotations.ignore is not None:
            meta["ignore"] = annotations.ignore
        return Converted(meta, frames)

    @staticmethod
    def _resolve_objects(
        queries: list[dict[str, Any]],
        annotations: VideoAnnotations,
        annotated: bool,
        num_frames: int,
        report: Report,
        where: str,
    ) -> list[dict[str, Any]]:
        """Fill in or check each query's objects; drop the queries whose objects are unusable."""
        kept = []
        broken = annotations.broken or {}
        for query in queries:
            query_where = f"{where} expression {query['id']}"
            object_ids = query["object_ids"]
            if object_ids is None and query["type"] == "no_target":
                object_ids = []
            elif object_ids is None and not annotated:
                object_ids = [f"exp-{query['id']}"]
            if object_ids is None:
                report.drop("missing_object_id", f"{query_where}: the expression names no object.")
                continue
            if not object_ids and query["type"] != "no_target":
                report.drop("no_objects", f"{query_where}: a {query['type']} expression with an empty object list.")
                continue
            if not annotated:
                for object_id in object_ids:
                    annotations.objects.setdefault(object_id, {"masks": [None] * num_frames})
            elif bad := [i for i in object_ids if i in broken]:
                error = broken[bad[0]]
                report.drop(error.reason, f"{query_where}: {error.message}")
                continue
            elif unknown := [i for i in object_ids if i not in annotations.objects]:
                report.drop("unknown_object", f"{query_where}: no masks for object(s) {unknown}.")
                continue
            kept.append({**query, "object_ids": object_ids})
        return kept
