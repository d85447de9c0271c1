"""ReVOS (reasoning video object segmentation, from VISA) from the ReVOS-api files.

Layout (``--root`` is the ``ReVOS`` folder)::

    <root>/meta_expressions_<split>_.json   {"videos": {vid: {"vid_id", "height", "width", "frames": [names],
                                             "expressions": {exp_id: {"exp", "obj_id": [..], "anno_id": [..],
                                             "type_id": 0|1|2}}}}}
    <root>/mask_dict.json                   {anno_id: [RLE | null per frame]} (shared by the splits)
    <root>/mask_dict_foreground.json        {vid: {"masks_rle": [RLE per frame]}} (optional)
    <root>/JPEGImages/<vid>/<frame>.jpg     (or <root>/<vid>/<frame>.jpg, as the reference loader reads them)

Records (task ``reasonvos``): as MeViS (:mod:`datamodules.convert.mevis`: objects = annotation ids, multi-object
expressions) plus ``type_id`` on every query: 0 ``referring``, 1 ``reasoning``, 2 ``no_target`` (no objects). An
expression with an empty ``anno_id`` list is a ``no_target`` query whatever its ``type_id`` (kept as given, so the
evaluation groups stay those of the official evaluator); a ``type_id`` 2 expression that names objects is dropped
(``type_mismatch``). The video's foreground masks are stored as the extra key ``foreground`` (one RLE or null per
frame), used by the robustness score R.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from instructseg.constants import REVOS_TYPE_IDS, REVOS_TYPE_NAMES

from ..schema import RecordError
from .base import ConvertError, Report
from .inputs import load_json, ordered_splits
from .mevis import MeViSConverter, checked_masks
from .video import SplitLayout

_META_FILE = re.compile(r"^meta_expressions_(.+?)_?\.json$")


class ReVOSConverter(MeViSConverter):
    """ReVOS: meta_expressions_<split>_.json + mask_dict(_foreground).json, type ids 0/1/2.

    See the module docstring; arguments as :class:`~.video.MetaExpressionsConverter`.

    Raises:
        ConvertError: also for a malformed ``mask_dict.json`` or ``mask_dict_foreground.json``.
    """

    name = "revos"
    task = "reasonvos"

    def __init__(self, root: str | Path, splits: list[str] | None = None) -> None:
        super().__init__(root, splits)
        path = self.root / "mask_dict_foreground.json"
        self.foreground_path = path if path.is_file() else None
        self.foreground: dict[str, Any] = {}
        if self.foreground_path is not None:
            self.foreground = load_json(path, "foreground mask dictionary")
            if not isinstance(self.foreground, dict):
                raise ConvertError(f"foreground mask dictionary {path}: expected {{vid: {{'masks_rle': [RLE]}}}}.")

    def find_splits(self) -> list[str]:
        return ordered_splits([m.group(1) for p in self.root.iterdir() if (m := _META_FILE.match(p.name))])

    def layout_candidates(self, split: str) -> list[tuple[Path, Path]]:
        own = [(self.root / f"meta_expressions_{split}{tail}.json", self.root) for tail in ("_", "")]
        return own + super().layout_candidates(split)

    def mask_dict_path(self, split: str) -> Path:
        return self.root / "mask_dict.json"

    def frame_dir(self, layout: SplitLayout, video: str) -> Path:
        folders = [layout.data_dir / "JPEGImages" / video, layout.data_dir / video]
        return next((f for f in folders if f.is_dir()), folders[0])

    def split_info(self, split: str) -> dict[str, Any]:
        foreground = str(self.foreground_path) if self.foreground_path else None
        return {**super().split_info(split), "foreground": foreground}

    def make_query(self, exp_id: str, expression: Any, where: str) -> dict[str, Any]:
        query = super().make_query(exp_id, expression, where)
        type_id = expression.get("type_id")
        if type_id is not None and (not isinstance(type_id, int) or type_id not in REVOS_TYPE_NAMES):
            raise RecordError(
                "bad_type_id", f"{where}: 'type_id' {type_id!r} is not one of {sorted(REVOS_TYPE_NAMES)}."
            )
        query_type = REVOS_TYPE_NAMES.get(type_id, "referring")
        if query["object_ids"] == [] or (query["object_ids"] is None and type_id == REVOS_TYPE_IDS["no_target"]):
            query_type = "no_target"
        elif query_type == "no_target":
            raise RecordError("type_mismatch", f"{where}: a no-target expression (type_id 2) names objects.")
        query["type"] = query_type
        if type_id is not None:
            query["type_id"] = type_id
        return query

    def extra_meta(
        self, split: str, video: str, frame_names: list[str], size: tuple[int, int], report: Report, where: str
    ) -> dict[str, Any]:
        entry = self.foreground.get(video)
        if entry is None:
            return {}
        masks = entry.get("masks_rle") if isinstance(entry, dict) else None
        if not isinstance(masks, list) or len(masks) != len(frame_names):
            report.drop("bad_foreground", f"{where}: foreground 'masks_rle' must list one RLE per frame.")
            return {}
        try:
            return {"foreground": checked_masks(masks, size, f"{where} foreground")}
        except RecordError as exc:
            report.drop(exc.reason, f"foreground: {exc.message}")
            return {}
