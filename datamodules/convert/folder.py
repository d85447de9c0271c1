"""Your own data: a folder you can make by hand (images or frame folders, PNG masks, a JSONL or CSV of instructions).

Layout (``--root`` is the folder)::

    <root>/images/<name>.jpg|png              one image per record
    <root>/videos/<name>/<frame>.jpg|png      or one folder of frames per video (frames in natural order)
    <root>/masks/<name>/<object>.png          image masks: any nonzero pixel is the object (palette: index)
    <root>/masks/<name>/<object>/<frame>.png  video masks, one PNG per frame (a missing frame = object absent)
    <root>/queries.jsonl                      one instruction per line (or queries.csv with the same columns)

A line of ``queries.jsonl``::

    {"name": "dog1", "text": "the dog on the left", "objects": ["left"], "type": "referring", "task": "res",
     "split": "train", "answer": "..."}

* ``name`` (required): the image stem (``images/dog1.jpg``) or the video folder (``videos/dog1/``);
* ``text`` (required): the instruction, a referring phrase or a question;
* ``objects``: the target is the union of these mask names (``masks/<name>/<object>.png``); empty or missing:
  nothing is meant (a ``no_target`` query);
* ``type``: ``referring`` (default), ``reasoning`` or ``no_target`` (default when ``objects`` is empty);
* ``task``: ``res`` / ``reasonseg`` for images, ``rvos`` / ``reasonvos`` for videos (default ``res`` / ``rvos``, or
  ``reasonseg`` / ``reasonvos`` for a ``reasoning`` query);
* ``split``: ``train`` (default), ``val``, or any name;
* ``answer``: optional text answer (trained with the text loss for ``reasonseg``).

The query ``id`` in the records is the line number.

``queries.csv`` has a header row with these column names; ``objects`` holds the mask names separated by ``;``.

Records: one per (split, name, task) with every object of ``masks/<name>/``, keyed by the name (``<name>-<task>``
when one name has queries of several tasks); the frame names are the file stems. Every line is checked before
anything is written: a line naming an unknown image or video, a missing mask, a bad type or task stops the
conversion with the file and line number.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from instructseg.constants import IMAGE_TASKS, QUERY_TYPES, VIDEO_TASKS
from instructseg.video_io import natural_key

from ..rle import encode_rle
from ..schema import RecordError
from .base import Converted, Converter, ConvertError, Item, Report
from .inputs import ordered_splits, read_frames, require_dir, unique_keys

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
QUERY_FILES = ("queries.jsonl", "queries.csv")
FIELDS = ("name", "text", "objects", "type", "task", "split", "answer")


def _frame_files(folder: Path) -> list[Path]:
    """The image files of ``folder`` in natural order."""
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in FRAME_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def _read_lines(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(where, row)`` of each instruction in a JSONL or CSV file (``where`` = ``file:line``).

    Raises:
        ConvertError: a line that is not a JSON object, or a CSV without a ``name`` / ``text`` column.
    """
    rows: list[tuple[str, dict[str, Any]]] = []
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = [c for c in ("name", "text") if c not in (reader.fieldnames or [])]
            if missing:
                raise ConvertError(f"{path}: the header row needs the column(s) {missing} (columns: {FIELDS}).")
            for row in reader:
                objects = (row.get("objects") or "").replace(",", ";")
                row["objects"] = [o.strip() for o in objects.split(";") if o.strip()]
                rows.append((f"{path}:{reader.line_num}", {k: v for k, v in row.items() if v not in (None, "")}))
        return rows
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConvertError(f"{path}:{number}: not a JSON object ({exc.msg}).") from None
        if not isinstance(row, dict):
            raise ConvertError(f"{path}:{number}: expected a JSON object with 'name' and 'text'.")
        rows.append((f"{path}:{number}", row))
    return rows


class FolderConverter(Converter):
    """Your own data: images/ or videos/, masks/ PNGs and queries.jsonl / queries.csv.

    See the module docstring.

    Args:
        root: the folder.
        splits: splits to convert (default: every split named in the queries).
        queries: the instruction file (default ``<root>/queries.jsonl``, else ``<root>/queries.csv``).

    Raises:
        ConvertError: a missing folder or file, or a bad line (named with its line number).
    """

    name = "folder"
    task = "res"
    default_maxcount = 500

    def __init__(self, root: str | Path, splits: Sequence[str] | None = None, queries: str | Path | None = None):
        self.root = require_dir(Path(root), "data folder")
        self.images = {p.stem: p for p in _frame_files(self.root / "images")} if (self.root / "images").is_dir() else {}
        videos_dir = self.root / "videos"
        self.videos = {p.name: p for p in videos_dir.iterdir() if p.is_dir()} if videos_dir.is_dir() else {}
        if not self.images and not self.videos:
            raise ConvertError(f"{self.root}: no images/ (image files) or videos/ (frame folders) found.")
        both = sorted(set(self.images) & set(self.videos))
        if both:
            raise ConvertError(f"{self.root}: {both[0]!r} is both an image and a video; rename one.")
        path = (
            Path(queries) if queries else next((self.root / n for n in QUERY_FILES if (self.root / n).is_file()), None)
        )
        if path is None or not path.is_file():
            raise ConvertError(f"{self.root}: no instructions found; write {QUERY_FILES[0]} or {QUERY_FILES[1]}.")
        self.queries_path = path
        self.groups: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for where, row in _read_lines(path):
            split, name, task, query = self._check(where, row)
            self.groups[split][name, task].append(query)
        self.splits = self.resolve_splits(splits, ordered_splits(list(self.groups)), path)

    def _check(self, where: str, row: dict[str, Any]) -> tuple[str, str, str, dict[str, Any]]:
        """``(split, name, task, query)`` of one line, checked against the folder."""
        unknown = sorted(set(row) - set(FIELDS))
        if unknown:
            raise ConvertError(f"{where}: unknown field(s) {unknown}; the fields are {FIELDS}.")
        name, text = row.get("name"), row.get("text")
        if not isinstance(name, str) or not name:
            raise ConvertError(f"{where}: 'name' must be the image stem or video folder name.")
        if not isinstance(text, str) or not text.strip():
            raise ConvertError(f"{where}: 'text' must be a non-empty instruction.")
        video = name in self.videos
        if not video and name not in self.images:
            raise ConvertError(f"{where}: no image images/{name}.* or frame folder videos/{name}/ in {self.root}.")
        objects = row.get("objects") or []
        if isinstance(objects, str):
            objects = [objects]
        if not isinstance(objects, list) or not all(isinstance(o, str) and o for o in objects):
            raise ConvertError(f"{where}: 'objects' must be a list of mask names.")
        for object_id in objects:
            mask = self.root / "masks" / name / (object_id if video else f"{object_id}.png")
            if not mask.exists():
                raise ConvertError(f"{where}: object {object_id!r} has no mask at {mask}.")
        query_type = row.get("type") or ("referring" if objects else "no_target")
        if query_type not in QUERY_TYPES:
            raise ConvertError(f"{where}: 'type' must be one of {QUERY_TYPES}, got {query_type!r}.")
        if (query_type == "no_target") != (not objects):
            raise ConvertError(f"{where}: a {query_type} query needs {'no' if objects else 'at least one'} object.")
        allowed = VIDEO_TASKS if video else IMAGE_TASKS
        task = row.get("task") or allowed[1 if query_type == "reasoning" else 0]
        if task not in allowed:
            kind = "video" if video else "image"
            raise ConvertError(f"{where}: 'task' for the {kind} {name!r} must be one of {allowed}, got {task!r}.")
        line = where.rsplit(":", 1)[1]
        query: dict[str, Any] = {"text": text.strip(), "object_ids": objects, "type": query_type, "id": line}
        if row.get("answer"):
            query["answer"] = str(row["answer"])
        return str(row.get("split") or "train"), name, task, query

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--queries", type=Path, help="instruction file (default <root>/queries.jsonl or .csv)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FolderConverter:
        return cls(args.root, args.split, queries=args.queries)

    def split_info(self, split: str) -> dict[str, Any]:
        return {"queries_file": str(self.queries_path)}

    def items(self, split: str, report: Report) -> list[Item]:
        groups = sorted(self.groups[split])
        tasks_per_name = defaultdict(set)
        for name, task in groups:
            tasks_per_name[name].add(task)
        names = [name if len(tasks_per_name[name]) == 1 else f"{name}-{task}" for name, task in groups]
        return [Item(key, group) for key, group in zip(unique_keys(names), groups)]

    def convert(self, split: str, item: Item, report: Report) -> Converted:
        name, task = item.source
        video = name in self.videos
        paths = _frame_files(self.videos[name]) if video else [self.images[name]]
        frames = read_frames(paths, f"{split}/{name}")
        stems = [p.stem for p in paths]
        mask_dir = self.root / "masks" / name
        objects: dict[str, dict[str, Any]] = {}
        entries = sorted(mask_dir.iterdir()) if mask_dir.is_dir() else []
        for entry in entries:
            if video and entry.is_dir():
                masks = [self._mask(entry / f"{stem}.png", frames.height, frames.width) for stem in stems]
                objects[entry.name] = {"masks": masks}
            elif not video and entry.suffix.lower() == ".png":
                objects[entry.stem] = {"masks": [self._mask(entry, frames.height, frames.width)]}
        meta = {
            "dataset": self.name,
            "task": task,
            "frames": len(paths),
            "height": frames.height,
            "width": frames.width,
            "frame_names": stems,
            "objects": objects,
            "queries": self.groups[split][name, task],
        }
        return Converted(meta, frames)

    @staticmethod
    def _mask(path: Path, height: int, width: int) -> dict[str, Any] | None:
        """The RLE of a mask PNG (any nonzero pixel is the object), or None for a missing (absent) frame.

        Raises:
            RecordError: ``"bad_mask"`` for an unreadable PNG, ``"mask_size"`` for a size other than the frames'.
        """
        if not path.is_file():
            return None
        try:
            with Image.open(path) as image:  # palette PNGs by index, any other mode by its gray level
                mask = np.asarray(image if image.mode == "P" else image.convert("L")) > 0
        except (OSError, SyntaxError) as exc:
            raise RecordError("bad_mask", f"{path} is not a readable PNG ({exc}).") from None
        if mask.shape != (height, width):
            raise RecordError("mask_size", f"{path} is {mask.shape}, the frames ({height}, {width}).")
        return encode_rle(mask)
