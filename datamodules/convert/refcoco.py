"""RefCOCO, RefCOCO+ and RefCOCOg from the original REFER files.

Layout (``--root`` is the dataset folder or its parent)::

    <root>/refs(unc).p                 RefCOCO, RefCOCO+ (``refs(umd).p`` / ``refs(google).p`` for RefCOCOg)
    <root>/instances.json              COCO images + annotations (polygons, or RLE for iscrowd)
    <image-root>/COCO_train2014_*.jpg  default: the first of <root>/train2014, <root>/../train2014,
                                       <root>/../images/mscoco/images/train2014

``refs(*).p`` is a pickled list of plain dicts (``ref_id``, ``ann_id``, ``image_id``, ``split``, ``sentences``
[``{sent, sent_id, raw, tokens}``], ``category_id``, ``file_name``). It is read with an unpickler that builds no
object, so a tampered file cannot run code (it is rejected with an error naming the file).

Records (task ``res``): one per image and split, holding every referred object of the image (object id = the COCO
annotation id; masks rasterised from the polygons, or taken from the RLE) and one ``referring`` query per sentence
(``id`` = ``sent_id``, extra ``ref_id``). With ``--concat-sentences`` each ref gives one query joining its
sentences (``"s1. s2."``, ``id`` = ``ref_id``, extra ``sent_ids``), as the reference code trains and evaluates.

Polygons are rasterised with pycocotools (``--rasterizer pycocotools``, the default: ``frPyObjects`` + ``merge``, the
masks of the REFER API and of most published RES evaluations) or with InstructSeg's own evaluation rule
(``--rasterizer cv2``: points truncated to int32, ``cv2.fillPoly``, outline included). The two differ along the
outline: on 24-sided polygons of COCO size the cv2 masks are a few percent larger (see the README for the measured
gap); the rule is stored in the shard settings and ``summary.json`` (``options.rasterizer``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from instructseg.video_io import natural_key

from ..schema import RecordError
from .base import Converted, Converter, ConvertError, Item, Report, logger
from .inputs import (
    RASTERIZERS,
    coco_segmentation_rle,
    first_existing,
    load_json,
    load_plain_pickle,
    ordered_splits,
    read_frames,
    require_dir,
)

REF_KEYS = ("ref_id", "ann_id", "image_id", "split", "sentences")


def _index_by_id(entries: Any, path: Path, what: str) -> dict[Any, dict[str, Any]]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "id" in e for e in entries):
        raise ConvertError(f"COCO instances file {path}: '{what}' must be a list of objects with an 'id'.")
    return {entry["id"]: entry for entry in entries}


class RefCOCOConverter(Converter):
    """RefCOCO: refs(unc).p + instances.json + COCO train2014 images (splits train, val, testA, testB).

    Args:
        root: the folder holding ``refs(<split_by>).p`` and ``instances.json``, or its parent.
        image_root: the COCO ``train2014`` image folder (default: searched next to ``root``).
        splits: splits to convert (default: all splits of the refs file).
        split_by: which refs file (``unc``, ``umd``, ``google``; default: the dataset's usual one).
        concat_sentences: one query per ref joining all its sentences (reference-code protocol).
        rasterizer: polygon rule, ``"pycocotools"`` (default) or ``"cv2"`` (InstructSeg's evaluation), see
            :data:`~.inputs.RASTERIZERS`.

    Raises:
        ConvertError: for a missing or malformed refs / instances file or image folder, an unknown split or
            rasterizer.
    """

    name = "refcoco"
    task = "res"
    default_split_by = "unc"
    default_maxcount = 1000

    def __init__(
        self,
        root: str | Path,
        image_root: str | Path | None = None,
        splits: Sequence[str] | None = None,
        split_by: str | None = None,
        concat_sentences: bool = False,
        rasterizer: str = "pycocotools",
    ) -> None:
        if rasterizer not in RASTERIZERS:
            raise ConvertError(f"--rasterizer must be one of {RASTERIZERS}, got {rasterizer!r}.")
        self.rasterizer = rasterizer
        root = Path(root)
        self.split_by = split_by or self.default_split_by
        refs_name = f"refs({self.split_by}).p"
        self.refs_path = first_existing([root / refs_name, root / self.name / refs_name], f"{self.name} refs file")
        data_dir = self.refs_path.parent
        self.instances_path = data_dir / "instances.json"
        refs = load_plain_pickle(self.refs_path, f"{self.name} refs file")
        if not isinstance(refs, list):
            raise ConvertError(f"refs file {self.refs_path}: expected a list of refs, got {type(refs).__name__}.")
        instances = load_json(self.instances_path, "COCO instances file")
        if not isinstance(instances, dict):
            raise ConvertError(f"COCO instances file {self.instances_path}: expected a JSON object.")
        self.images = _index_by_id(instances.get("images"), self.instances_path, "images")
        self.annotations = _index_by_id(instances.get("annotations"), self.instances_path, "annotations")
        if image_root is None:
            candidates = [
                data_dir / "train2014",
                data_dir.parent / "train2014",
                data_dir.parent / "images" / "mscoco" / "images" / "train2014",
            ]
            self.image_root = first_existing(candidates, "COCO train2014 image folder (give --image-root)")
        else:
            self.image_root = require_dir(Path(image_root), "COCO image folder")
        self.concat_sentences = concat_sentences
        self.refs_by_split: dict[str, list[Any]] = defaultdict(list)
        unsplit = 0
        for ref in refs:
            split = ref.get("split") if isinstance(ref, dict) else None
            if isinstance(split, str):
                self.refs_by_split[split].append(ref)
            else:
                unsplit += 1
        if unsplit:
            logger.warning("%s: %d entries without a 'split' (or not a dict) are ignored.", self.refs_path, unsplit)
        self.splits = self.resolve_splits(splits, ordered_splits(self.refs_by_split), self.refs_path)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image-root", type=Path, help="COCO train2014 image folder")
        parser.add_argument(
            "--split-by", choices=("unc", "umd", "google"), help=f"refs file to read (default: {cls.default_split_by})"
        )
        parser.add_argument(
            "--concat-sentences", action="store_true", help="one query per ref joining its sentences (reference)"
        )
        parser.add_argument(
            "--rasterizer",
            choices=RASTERIZERS,
            default="pycocotools",
            help="polygon rule: pycocotools (default; REFER, COCO) or cv2 (InstructSeg's evaluation: int32, fillPoly)",
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RefCOCOConverter:
        return cls(args.root, args.image_root, args.split, args.split_by, args.concat_sentences, args.rasterizer)

    def options(self) -> dict[str, Any]:
        return {"split_by": self.split_by, "concat_sentences": self.concat_sentences, "rasterizer": self.rasterizer}

    def items(self, split: str, report: Report) -> list[Item]:
        by_image: dict[Any, list[dict[str, Any]]] = defaultdict(list)
        for index, ref in enumerate(self.refs_by_split[split]):
            missing = [k for k in REF_KEYS if k not in ref]
            if missing or not isinstance(ref["sentences"], list):
                report.drop("bad_ref", f"{self.refs_path} ref #{index}: missing or malformed {missing or 'sentences'}.")
                continue
            by_image[ref["image_id"]].append(ref)
        return [
            Item(str(image_id), (image_id, sorted(by_image[image_id], key=lambda r: natural_key(str(r["ref_id"])))))
            for image_id in sorted(by_image, key=lambda i: natural_key(str(i)))
        ]

    def convert(self, split: str, item: Item, report: Report) -> Converted:
        image_id, refs = item.source
        where = f"image {image_id}"
        info = self.images.get(image_id)
        if info is None:
            ref_ids = [r["ref_id"] for r in refs]
            raise RecordError("unknown_image", f"{where} (refs {ref_ids}) is not in {self.instances_path}.")
        file_name = info.get("file_name")
        if not isinstance(file_name, str):
            raise RecordError("bad_image_info", f"{where}: no 'file_name' in {self.instances_path}.")
        frames = read_frames([self.image_root / file_name], where)
        height, width = frames.height, frames.width
        expected = (info.get("height", height), info.get("width", width))
        if expected != (height, width):
            message = f"{where}: {file_name} is {height}x{width}, instances.json says {expected[0]}x{expected[1]}."
            raise RecordError("frame_size", message)
        objects: dict[str, dict[str, Any]] = {}
        queries: list[dict[str, Any]] = []
        for ref in refs:
            ref_where = f"{where} ref {ref['ref_id']}"
            ann = self.annotations.get(ref["ann_id"])
            if ann is None:
                report.drop("unknown_annotation", f"{ref_where}: annotation {ref['ann_id']} is not in instances.json.")
                continue
            if ann.get("image_id") != image_id:
                report.drop("annotation_image", f"{ref_where}: annotation {ref['ann_id']} is on another image.")
                continue
            ref_queries = self._queries(ref, str(ref["ann_id"]), report, ref_where)
            if not ref_queries:
                continue
            object_id = str(ref["ann_id"])
            if object_id not in objects:
                try:
                    segmentation, ann_where = ann.get("segmentation"), f"{ref_where} annotation"
                    rle = coco_segmentation_rle(segmentation, height, width, ann_where, self.rasterizer)
                except RecordError as exc:
                    report.drop(exc.reason, exc.message)
                    continue
                objects[object_id] = {
                    "masks": [rle],
                    "category_id": ann.get("category_id"),
                    "iscrowd": ann.get("iscrowd", 0),
                }
            queries.extend(ref_queries)
        if not queries:
            raise RecordError("no_queries", f"{where}: no usable referring expression.")
        meta = {
            "dataset": self.name,
            "task": self.task,
            "frames": 1,
            "height": height,
            "width": width,
            "frame_names": [Path(file_name).stem],
            "objects": objects,
            "queries": queries,
            "image_id": image_id,
            "file_name": file_name,
        }
        return Converted(meta, frames)

    def _queries(self, ref: dict[str, Any], object_id: str, report: Report, where: str) -> list[dict[str, Any]]:
        sentences = []
        for sentence in ref["sentences"]:
            text = sentence.get("sent") if isinstance(sentence, dict) else None
            if not isinstance(text, str) or not text.strip():
                report.drop("empty_text", f"{where}: a sentence without text ({sentence!r}).")
                continue
            sentences.append((text.strip(), sentence.get("sent_id")))
        if not sentences:
            return []
        if self.concat_sentences:
            text = " ".join(f"{s}." for s, _ in sentences)
            query = {"text": text, "object_ids": [object_id], "type": "referring", "id": str(ref["ref_id"])}
            return [{**query, "ref_id": ref["ref_id"], "sent_ids": [i for _, i in sentences]}]
        return [
            {"text": text, "object_ids": [object_id], "type": "referring", "id": str(sent_id), "ref_id": ref["ref_id"]}
            for text, sent_id in sentences
        ]


class RefCOCOPlusConverter(RefCOCOConverter):
    """RefCOCO+: refs(unc).p + instances.json + COCO images (splits train, val, testA, testB).

    Arguments as :class:`RefCOCOConverter`.
    """

    name = "refcoco+"


class RefCOCOgConverter(RefCOCOConverter):
    """RefCOCOg: refs(umd).p (or refs(google).p) + instances.json + COCO images (UMD splits train, val, test).

    Arguments as :class:`RefCOCOConverter`.
    """

    name = "refcocog"
    default_split_by = "umd"
