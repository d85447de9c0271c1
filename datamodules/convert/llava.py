"""LLaVA-Instruct visual conversations (``llava_instruct_150k.json``, ``llava_v1_5_mix665k.json``, ...).

Input: ``--root`` is the JSON file, ``[{"id", "image": "<relative path>", "conversations": [{"from": "human" |
"gpt", "value"}]}]``, and ``--image-root`` the folder the image paths are relative to (default: the JSON file's
folder).

Records (task ``vqa``): one per entry with an image, no objects, one query per human turn followed by a gpt turn:
``text`` = the human turn with the ``<image>`` tags removed, ``answer`` = the gpt turn, type ``no_target`` (nothing
to segment), ``id`` = the turn index. Entries without an image (text-only conversations of the 665k mix) are skipped
with reason ``no_image``; a turn without its answer is dropped (``unpaired_turn``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..schema import RecordError
from .base import Converted, Converter, ConvertError, Item, Report
from .inputs import load_json, read_frames, require_dir, unique_keys

IMAGE_TAG = "<image>"


class LLaVAConverter(Converter):
    """LLaVA-Instruct conversations: one vqa record per image, one query per question-answer turn pair.

    Args:
        root: the conversation JSON file.
        image_root: the folder the ``image`` paths are relative to (default: the JSON file's folder).
        split: the name of the shard series.

    Raises:
        ConvertError: for a missing or malformed JSON file or a missing image folder.
    """

    name = "llava"
    task = "vqa"
    default_maxcount = 2000

    def __init__(self, root: str | Path, image_root: str | Path | None = None, split: str = "train") -> None:
        self.json_path = Path(root)
        entries = load_json(self.json_path, "LLaVA conversation file")
        if not isinstance(entries, list):
            raise ConvertError(f"LLaVA conversation file {self.json_path}: expected a list of conversations.")
        self.entries = entries
        self.image_root = require_dir(Path(image_root) if image_root else self.json_path.parent, "LLaVA image folder")
        self.splits = [split]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--image-root", type=Path, help="folder of the image paths (default: the JSON's folder)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LLaVAConverter:
        if args.split and len(args.split) > 1:
            raise ConvertError("llava: one conversation file is one split; give a single --split name.")
        return cls(args.root, args.image_root, args.split[0] if args.split else "train")

    def items(self, split: str, report: Report) -> list[Item]:
        names = [
            str(entry.get("id", index)) if isinstance(entry, dict) else str(index)
            for index, entry in enumerate(self.entries)
        ]
        return [Item(key, index) for index, key in enumerate(unique_keys(names))]

    def convert(self, split: str, item: Item, report: Report) -> Converted:
        entry = self.entries[item.source]
        where = f"entry {item.source} ({item.key})"
        if not isinstance(entry, dict):
            raise RecordError("bad_entry", f"{where}: expected an object.")
        image = entry.get("image")
        if not image:
            raise RecordError("no_image", f"{where}: no image (text-only conversation).")
        if not isinstance(image, str):
            raise RecordError("bad_entry", f"{where}: 'image' must be one relative path, got {image!r}.")
        frames = read_frames([self.image_root / image], where)
        queries = self._queries(entry.get("conversations"), report, where)
        meta = {
            "dataset": self.name,
            "task": self.task,
            "frames": 1,
            "height": frames.height,
            "width": frames.width,
            "frame_names": [Path(image).stem],
            "objects": {},
            "queries": queries,
            "image": image,
            "source_id": entry.get("id"),
        }
        return Converted(meta, frames)

    @staticmethod
    def _queries(conversations: Any, report: Report, where: str) -> list[dict[str, Any]]:
        if not isinstance(conversations, list):
            raise RecordError("bad_entry", f"{where}: 'conversations' must be a list of turns.")
        turns = [(t.get("from"), t.get("value")) if isinstance(t, dict) else (None, None) for t in conversations]
        queries = []
        index = 0
        while index < len(turns):
            speaker, value = turns[index]
            answer_speaker, answer = turns[index + 1] if index + 1 < len(turns) else (None, None)
            if speaker != "human" or answer_speaker != "gpt":
                report.drop("unpaired_turn", f"{where}: turn {index} ({speaker}) is not a human turn with an answer.")
                index += 1
                continue
            text = value.replace(IMAGE_TAG, "").strip() if isinstance(value, str) else ""
            if not text or not isinstance(answer, str) or not answer.strip():
                report.drop("empty_text", f"{where}: turn {index} has an empty question or answer.")
            else:
                queries.append(
                    {"text": text, "object_ids": [], "type": "no_target", "answer": answer, "id": str(index)}
                )
            index += 2
        if not queries:
            raise RecordError("no_queries", f"{where}: no question-answer pair.")
        return queries
