"""The shard schema: one record per image or video (an image is a 1-frame video).

A record is a group of files with the same key in a WebDataset ``.tar`` shard::

    <key>.json                   metadata (below)
    <key>.000.jpg, <key>.001.jpg, ...   the frames, in order (``.png`` for lossless frames)

``<key>.json``::

    {
      "dataset": "refcoco",                       # source name
      "task": "res",                              # res | reasonseg | rvos | reasonvos | vqa
      "frames": 1, "height": 480, "width": 640,   # n frames of H x W pixels
      "frame_names": ["00000"],                   # optional, n names (for submission files)
      "objects": {"7": {"masks": [RLE | null]}},  # per object one COCO RLE (or null = absent) per frame
      "ignore": [RLE | null],                     # optional per-frame region excluded from the loss
      "queries": [{
          "text": "the man on the left",
          "object_ids": ["7"],                    # the target is the union of these objects
          "type": "referring",                    # referring | reasoning | no_target
          "answer": "...",                        # optional (reasoning explanations); required for vqa
          "id": "0",                              # optional expression id (evaluation)
          "type_id": 0                            # optional ReVOS expression type
      }],
      ...                                         # any extra keys are kept
    }

Rules (checked by :func:`validate_record`): each mask list has one entry per frame; every RLE has size ``[H, W]``;
query object ids exist; ``no_target`` queries have no object ids while ``referring`` / ``reasoning`` queries of
segmentation tasks have at least one; ``vqa`` queries have an answer; the number of frame files equals ``frames``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from instructseg.constants import QUERY_TYPES, TASKS

from .rle import rle_counts, rle_size

FRAME_EXTENSIONS = ("jpg", "jpeg", "png")


class RecordError(ValueError):
    """A record that breaks the schema or cannot be decoded.

    Args:
        reason: short category key used to count skipped records, e.g. ``"bad_json"``, ``"frame_count"``,
            ``"mask_size"``, ``"missing_object"``, ``"bad_task"``, ``"bad_rle"``, ``"empty_text"``.
        message: human-readable details (where and what).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"[{reason}] {message}")
        self.reason = reason
        self.message = message


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_rle_size(rle: Any, height: int, width: int, where: str) -> None:
    """Check an RLE's header against the record size.

    Raises:
        RecordError: ``"bad_rle"`` for a malformed RLE header, ``"mask_size"`` if it is not ``height x width``.
    """
    try:
        size = rle_size(rle)
    except ValueError as exc:
        raise RecordError("bad_rle", f"{where}: {exc}") from None
    if size != (height, width):
        raise RecordError("mask_size", f"{where}: RLE size {list(size)} != record size [{height}, {width}].")


def _check_rle(rle: Any, height: int, width: int, where: str) -> None:
    """An RLE of the record size whose counts parse (alphabet ``'0'..'o'``) and cover ``height * width`` pixels."""
    check_rle_size(rle, height, width, where)
    try:
        rle_counts(rle)
    except ValueError as exc:
        raise RecordError("bad_rle", f"{where}: {exc}") from None


def _check_mask_list(masks: Any, frames: int, height: int, width: int, where: str) -> None:
    if not isinstance(masks, list):
        kind = type(masks).__name__
        raise RecordError("bad_mask_list", f"{where}: expected a list of {frames} RLE or null, got {kind}.")
    if len(masks) != frames:
        raise RecordError("frame_count", f"{where}: {len(masks)} masks for {frames} frames.")
    for index, rle in enumerate(masks):
        if rle is not None:
            _check_rle(rle, height, width, f"{where}[{index}]")


def _check_query(query: Any, task: str, objects: Mapping[str, Any], where: str) -> None:
    if not isinstance(query, Mapping):
        raise RecordError("bad_query", f"{where}: expected an object, got {type(query).__name__}.")
    text = query.get("text")
    if not isinstance(text, str) or not text.strip():
        raise RecordError("empty_text", f"{where}: 'text' must be a non-empty string.")
    query_type = query.get("type")
    if query_type not in QUERY_TYPES:
        raise RecordError("bad_query_type", f"{where}: 'type' must be one of {QUERY_TYPES}, got {query_type!r}.")
    object_ids = query.get("object_ids", [])
    if not isinstance(object_ids, list) or not all(isinstance(i, str) for i in object_ids):
        raise RecordError("bad_query", f"{where}: 'object_ids' must be a list of object id strings.")
    missing = [i for i in object_ids if i not in objects]
    if missing:
        raise RecordError("missing_object", f"{where}: object ids {missing} are not in 'objects'.")
    answer = query.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise RecordError("bad_query", f"{where}: 'answer' must be a string.")
    if task == "vqa":
        if not answer or not answer.strip():
            raise RecordError("missing_answer", f"{where}: vqa queries need an 'answer'.")
    elif query_type == "no_target" and object_ids:
        raise RecordError("no_target_objects", f"{where}: a no_target query must not name objects.")
    elif query_type != "no_target" and not object_ids:
        raise RecordError("no_objects", f"{where}: a {query_type} query needs at least one object id.")


def validate_record(meta: Any, num_frame_files: int, where: str) -> None:
    """Check one record's metadata against the schema (see the module docstring).

    Masks are checked for structure and size only; their counts are verified when they are decoded.

    Args:
        meta: the parsed ``<key>.json``.
        num_frame_files: number of frame files found for the record.
        where: record location for messages, e.g. ``"shards/train-000000.tar:vid42"``.

    Raises:
        RecordError: on the first violated rule, with a short ``reason``.
    """
    if not isinstance(meta, Mapping):
        raise RecordError("bad_json", f"{where}: the metadata must be a JSON object, got {type(meta).__name__}.")
    task = meta.get("task")
    if task not in TASKS:
        raise RecordError("bad_task", f"{where}: 'task' must be one of {TASKS}, got {task!r}.")
    frames, height, width = meta.get("frames"), meta.get("height"), meta.get("width")
    if not (_positive_int(frames) and _positive_int(height) and _positive_int(width)):
        raise RecordError("bad_size", f"{where}: 'frames', 'height' and 'width' must be positive ints.")
    if num_frame_files != frames:
        raise RecordError("frame_count", f"{where}: {num_frame_files} frame files for 'frames' = {frames}.")
    names = meta.get("frame_names")
    if names is not None and (not isinstance(names, list) or len(names) != frames):
        raise RecordError("frame_count", f"{where}: 'frame_names' must list {frames} names.")
    objects = meta.get("objects", {})
    if not isinstance(objects, Mapping):
        raise RecordError("bad_json", f"{where}: 'objects' must be a JSON object.")
    for object_id, entry in objects.items():
        if not isinstance(entry, Mapping) or "masks" not in entry:
            raise RecordError("bad_mask_list", f"{where}: object {object_id!r} needs a 'masks' list.")
        _check_mask_list(entry["masks"], frames, height, width, f"{where}: object {object_id!r} masks")
    if meta.get("ignore") is not None:
        _check_mask_list(meta["ignore"], frames, height, width, f"{where}: ignore")
    queries = meta.get("queries")
    if not isinstance(queries, list) or not queries:
        raise RecordError("no_queries", f"{where}: 'queries' must be a non-empty list.")
    for index, query in enumerate(queries):
        _check_query(query, task, objects, f"{where}: query {index}")
