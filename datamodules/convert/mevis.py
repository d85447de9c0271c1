"""MeViS (motion expressions) from its official files.

Layout (``--root`` is the ``mevis`` folder; other places of ``meta_expressions.json`` as in
:mod:`datamodules.convert.video`)::

    <root>/<split>/meta_expressions.json   {"videos": {vid: {"frames": [names], "expressions": {exp_id: {"exp",
                                            "obj_id": [..], "anno_id": [..]}}}}}
    <root>/<split>/mask_dict.json          {anno_id: [RLE | null per frame]}   (train, valid_u; not valid)
    <root>/<split>/JPEGImages/<vid>/<frame>.jpg

Records (task ``rvos``): one per video. Objects are the annotation ids (``anno_id``; their masks are the
``mask_dict.json`` entries, verified and stored as compressed RLE); an expression naming several ``anno_id`` is a
multi-object query (target = their union); the original ``obj_id`` list is kept in the query. A split without
``mask_dict.json`` gives ``has_annotations: false`` records. An expression whose annotation is missing from the mask
dictionary or malformed is dropped and counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from instructseg.video_io import natural_key

from ..schema import RecordError
from .base import ConvertError
from .inputs import checked_rle, load_json
from .video import MetaExpressionsConverter, VideoAnnotations


def checked_masks(masks: list[Any], size: tuple[int, int], where: str) -> list[dict[str, Any] | None]:
    """Verified per-frame RLEs (see :func:`~.inputs.checked_rle`); null entries stay null.

    Raises:
        RecordError: for the first malformed RLE.
    """
    return [None if rle is None else checked_rle(rle, *size, f"{where} frame {t}") for t, rle in enumerate(masks)]


class MeViSConverter(MetaExpressionsConverter):
    """MeViS: meta_expressions.json + mask_dict.json RLEs, multi-object expressions.

    See the module docstring; arguments as :class:`~.video.MetaExpressionsConverter`.

    Raises:
        ConvertError: also for a malformed ``mask_dict.json``.
    """

    name = "mevis"
    default_maxcount = 50

    def __init__(self, root: str | Path, splits: list[str] | None = None) -> None:
        super().__init__(root, splits)
        loaded: dict[Path, dict[str, Any]] = {}
        self.mask_dicts: dict[str, dict[str, Any] | None] = {}
        for split in self.splits:
            path = self.mask_dict_path(split)
            if path.is_file() and path not in loaded:
                loaded[path] = self._load_mask_dict(path)
            self.mask_dicts[split] = loaded.get(path)

    def mask_dict_path(self, split: str) -> Path:
        """The split's ``mask_dict.json``."""
        return self.layouts[split].data_dir / "mask_dict.json"

    @staticmethod
    def _load_mask_dict(path: Path) -> dict[str, Any]:
        masks = load_json(path, "mask dictionary")
        if not isinstance(masks, dict):
            raise ConvertError(f"mask dictionary {path}: expected an object {{anno_id: [RLE | null per frame]}}.")
        return masks

    def annotated(self, split: str) -> bool:
        return self.mask_dicts[split] is not None

    def split_info(self, split: str) -> dict[str, Any]:
        masks = str(self.mask_dict_path(split)) if self.annotated(split) else None
        return {**super().split_info(split), "mask_dict": masks}

    def expression_object_ids(self, expression: dict[str, Any], where: str) -> list[str] | None:
        anno_ids = expression.get("anno_id")
        if anno_ids is None:
            return None
        if not isinstance(anno_ids, list) or not all(isinstance(a, (int, str)) for a in anno_ids):
            raise RecordError("bad_expression", f"{where}: 'anno_id' must be a list of ids.")
        return [str(a) for a in anno_ids]

    def make_query(self, exp_id: str, expression: Any, where: str) -> dict[str, Any]:
        query = super().make_query(exp_id, expression, where)
        if "obj_id" in expression:
            query["obj_id"] = expression["obj_id"]
        return query

    def video_annotations(
        self, split: str, video: str, frame_names: list[str], size: tuple[int, int], object_ids: set[str], where: str
    ) -> VideoAnnotations:
        masks_by_id = self.mask_dicts[split]
        assert masks_by_id is not None
        objects: dict[str, dict[str, Any]] = {}
        broken: dict[str, RecordError] = {}
        for anno_id in sorted(object_ids, key=natural_key):
            masks = masks_by_id.get(anno_id)
            anno_where = f"{where} annotation {anno_id}"
            if masks is None:
                continue
            if not isinstance(masks, list) or len(masks) != len(frame_names):
                count = len(masks) if isinstance(masks, list) else type(masks).__name__
                broken[anno_id] = RecordError(
                    "frame_count", f"{anno_where}: {count} masks for {len(frame_names)} frames."
                )
                continue
            try:
                objects[anno_id] = {"masks": checked_masks(masks, size, anno_where)}
            except RecordError as exc:
                broken[anno_id] = exc
        return VideoAnnotations(objects, broken=broken)
