"""ReasonSeg (LISA) from its LabelMe-style files.

Layout (``--root`` is the ``ReasonSeg`` folder)::

    <root>/<split>/<name>.jpg             split: train / val / test (any other folder of JSON files too)
    <root>/<split>/<name>.json            {"shapes": [{"label", "points": [[x, y], ...]}], "text": [sentences],
                                           "is_sentence": bool}
    <root>/explanatory/<split>.json       optional: [{"image": "<name>.jpg", "query", "outputs"}] (only train exists)

Records (task ``reasonseg``): one per image, masks by LISA's ``get_mask_from_json`` rule (:func:`label_masks`):
points truncated to int32, each polygon painted with ``cv2.polylines`` (closed, 1 pixel) then ``cv2.fillPoly``, in
order of decreasing painted area, so a smaller polygon drawn later wins where they overlap: labels containing
``ignore`` become the record's ``ignore`` region (LISA's 255: excluded from the loss and the evaluation, not
background), labels equal to ``flag`` are skipped and every other label is target. The target is object ``"0"``.
One query per sentence of ``text``: ``reasoning`` when ``is_sentence`` is true, else ``referring`` (``id`` = the
sentence index). An explanatory entry gives its ``outputs`` as the ``answer`` of the query with the same text, or adds
a query (``id`` = ``explanatory-<k>``) when no sentence matches.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..rle import encode_rle
from ..schema import RecordError
from .base import Converted, Converter, ConvertError, Item, Report
from .inputs import flat_coordinates, int32_points, load_json, ordered_splits, read_frames, require_dir, unique_keys

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TARGET_OBJECT = "0"
_TARGET, _IGNORE = 1, 255  # LISA's label values


def _paint(canvas: np.ndarray, points: np.ndarray, value: int) -> None:
    """LISA's stroke: the closed 1-pixel outline (``cv2.polylines``), then the interior (``cv2.fillPoly``)."""
    cv2.polylines(canvas, points, True, value, 1)
    cv2.fillPoly(canvas, points, value)


def label_masks(shapes: Any, height: int, width: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Target and ignore masks of LabelMe ``shapes`` by LISA's ``get_mask_from_json`` rule.

    Shapes labelled ``flag`` (any case) are skipped. Each other polygon's points are truncated to int32 and painted
    with its outline (:func:`_paint`); the polygons are painted in order of decreasing painted area
    (``np.argsort(areas)[::-1]``, as LISA), value 255 (ignore) when the label contains ``ignore``, else 1 (target),
    so a smaller polygon wins where they overlap.

    Returns:
        ``(target, ignore)``: ``(H, W)`` bool masks of the pixels left at 1 and at 255.

    Raises:
        RecordError: ``"bad_annotation"`` for malformed shapes, ``"bad_segmentation"`` for malformed points.
    """
    if not isinstance(shapes, list):
        raise RecordError("bad_annotation", f"{where}: 'shapes' must be a list.")
    polygons: list[tuple[np.ndarray, int]] = []
    for index, shape in enumerate(shapes):
        label = shape.get("label") if isinstance(shape, dict) else None
        if not isinstance(label, str) or "points" not in shape:
            raise RecordError("bad_annotation", f"{where}: shape {index} needs a 'label' and 'points'.")
        if label.lower() == "flag":
            continue
        coordinates = flat_coordinates(shape["points"], f"{where} shape {index}")
        if not coordinates:
            raise RecordError("bad_segmentation", f"{where}: shape {index} has no points.")
        polygons.append((int32_points(coordinates)[None], _IGNORE if "ignore" in label.lower() else _TARGET))
    areas = []
    for points, _ in polygons:
        canvas = np.zeros((height, width), dtype=np.uint8)
        _paint(canvas, points, 1)
        areas.append(canvas.sum())
    labels = np.zeros((height, width), dtype=np.uint8)
    for index in np.argsort(areas)[::-1]:
        _paint(labels, *polygons[index])
    return labels == _TARGET, labels == _IGNORE


class ReasonSegConverter(Converter):
    """ReasonSeg (LISA): <split>/<name>.jpg + LabelMe JSON (+ explanatory answers).

    See the module docstring.

    Args:
        root: the ``ReasonSeg`` folder.
        splits: splits to convert (default: every split folder found).
        explanatory: read ``explanatory/<split>.json`` where it exists.

    Raises:
        ConvertError: for a missing root, an unknown split or a malformed explanatory file.
    """

    name = "reasonseg"
    task = "reasonseg"
    default_maxcount = 500

    def __init__(self, root: str | Path, splits: Sequence[str] | None = None, explanatory: bool = True) -> None:
        self.root = require_dir(Path(root), "ReasonSeg folder")
        found = [
            p.name for p in self.root.iterdir() if p.is_dir() and p.name != "explanatory" and any(p.glob("*.json"))
        ]
        self.splits = self.resolve_splits(splits, ordered_splits(found), self.root)
        self.explanatory = explanatory
        self.explanations: dict[str, tuple[Path, list[Any]]] = {}
        for split in self.splits:
            path = self.root / "explanatory" / f"{split}.json"
            if explanatory and path.is_file():
                entries = load_json(path, "ReasonSeg explanatory file")
                if not isinstance(entries, list):
                    raise ConvertError(f"ReasonSeg explanatory file {path}: expected a list of entries.")
                self.explanations[split] = (path, entries)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--no-explanatory", action="store_true", help="ignore explanatory/<split>.json (no answers)"
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReasonSegConverter:
        return cls(args.root, args.split, explanatory=not args.no_explanatory)

    def options(self) -> dict[str, Any]:
        return {"explanatory": self.explanatory}

    def split_info(self, split: str) -> dict[str, Any]:
        return {"explanatory": str(self.explanations[split][0]) if split in self.explanations else None}

    def items(self, split: str, report: Report) -> list[Item]:
        folder = self.root / split
        stems = sorted({p.stem for p in folder.iterdir() if p.suffix.lower() in (".json", *IMAGE_SUFFIXES)})
        explained = self._explanations(split, set(stems), report)
        return [Item(key, (stem, explained.get(stem, []))) for key, stem in zip(unique_keys(stems), stems)]

    def _explanations(self, split: str, stems: set[str], report: Report) -> dict[str, list[tuple[str, str]]]:
        """``image stem -> [(query, answer)]`` of the split's explanatory file."""
        explained: dict[str, list[tuple[str, str]]] = defaultdict(list)
        if split not in self.explanations:
            return explained
        path, entries = self.explanations[split]
        for index, entry in enumerate(entries):
            fields = [entry.get(k) if isinstance(entry, dict) else None for k in ("image", "query", "outputs")]
            if not all(isinstance(f, str) and f.strip() for f in fields):
                report.drop("bad_explanation", f"{path} entry {index}: needs non-empty 'image', 'query', 'outputs'.")
                continue
            image, query, answer = fields
            stem = Path(image).stem
            if stem not in stems:
                report.drop("unknown_image", f"{path} entry {index}: image {image!r} is not in {self.root / split}.")
                continue
            explained[stem].append((query.strip(), answer.strip()))
        return explained

    def convert(self, split: str, item: Item, report: Report) -> Converted:
        stem, explanations = item.source
        folder = self.root / split
        where = f"{split}/{stem}"
        json_path = folder / f"{stem}.json"
        try:
            annotation = json.loads(json_path.read_bytes())
        except FileNotFoundError:
            raise RecordError("missing_annotation", f"{where}: {json_path} is missing.") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError("bad_json", f"{where}: {json_path} is malformed JSON ({exc}).") from None
        if not isinstance(annotation, dict):
            raise RecordError("bad_annotation", f"{where}: {json_path} must hold a JSON object.")
        images = [folder / f"{stem}{suffix}" for suffix in IMAGE_SUFFIXES]
        image_path = next((p for p in images if p.is_file()), images[0])
        frames = read_frames([image_path], where)
        target, ignore = label_masks(annotation.get("shapes"), frames.height, frames.width, where)
        query_type = "reasoning" if annotation.get("is_sentence") else "referring"
        queries = self._queries(annotation.get("text"), query_type, explanations, report, where)
        meta: dict[str, Any] = {
            "dataset": self.name,
            "task": self.task,
            "frames": 1,
            "height": frames.height,
            "width": frames.width,
            "frame_names": [stem],
            "objects": {TARGET_OBJECT: {"masks": [encode_rle(target)]}},
            "queries": queries,
            "image": image_path.name,
            "is_sentence": bool(annotation.get("is_sentence")),
        }
        if ignore.any():
            meta["ignore"] = [encode_rle(ignore)]
        return Converted(meta, frames)

    @staticmethod
    def _queries(
        texts: Any, query_type: str, explanations: list[tuple[str, str]], report: Report, where: str
    ) -> list[dict[str, Any]]:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list):
            raise RecordError("bad_annotation", f"{where}: 'text' must be a list of sentences.")
        queries = []
        for index, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                report.drop("empty_text", f"{where}: sentence {index} is empty.")
                continue
            queries.append({"text": text.strip(), "object_ids": [TARGET_OBJECT], "type": query_type, "id": str(index)})
        by_text = {q["text"]: q for q in queries}
        for index, (text, answer) in enumerate(explanations):
            if text in by_text:
                by_text[text]["answer"] = answer
            else:
                query = {"text": text, "object_ids": [TARGET_OBJECT], "type": query_type, "answer": answer}
                queries.append({**query, "id": f"explanatory-{index}"})
        if not queries:
            raise RecordError("no_queries", f"{where}: no sentence.")
        return queries
