"""Converters from the official dataset formats to record shards (:mod:`datamodules.schema`).

    python -m datamodules.convert <name> --root <official dir> --out <shard dir> [--split ...] [--maxcount N]

=============  ==========================================================  =====================================
name           input                                                       records
=============  ==========================================================  =====================================
refcoco        ``refs(unc).p`` + ``instances.json`` + COCO ``train2014/``   one per image, query per sentence
refcoco+       same (``refs(unc).p``)
refcocog       same (``refs(umd).p``, ``--split-by google``)
reasonseg      ``<split>/<name>.jpg`` + LabelMe ``<name>.json``             one per image, query per sentence
refytvos       ``meta_expressions.json`` + ``JPEGImages`` + PNG annotations  one per video, query per expression
refdavis       same layout (Ref-DAVIS17)
mevis          ``meta_expressions.json`` + ``mask_dict.json`` + JPEGImages   one per video, query per expression
revos          ``meta_expressions_<split>_.json`` + ``mask_dict*.json``      one per video, query per expression
llava          LLaVA-Instruct conversation JSON + images                   one per image, query per turn pair
folder         your own data: images/ or videos/, masks/ PNGs, queries.jsonl  one per image / video and task
=============  ==========================================================  =====================================

The shards of split ``<split>`` are ``<shard dir>/<name>-<split>-NNNNNN.tar`` (six digits from ``000000``; e.g.
``refcoco+-testA-000000.tar``), so the shipped ``configs/data/<name>.yaml`` read
``data/shards/<name>/<name>-<split>-*.tar`` after ``--out data/shards/<name>``.

Each module documents its layout and mapping; :mod:`.base` holds the converter interface, :mod:`.inputs` the
helpers for reading the official inputs and :mod:`.runner` the resumable shard runner
(:func:`~.runner.convert_dataset`).
"""

from .base import Converter, ConvertError
from .folder import FolderConverter
from .llava import LLaVAConverter
from .mevis import MeViSConverter
from .reasonseg import ReasonSegConverter
from .refcoco import RefCOCOConverter, RefCOCOgConverter, RefCOCOPlusConverter
from .refdavis import RefDAVISConverter
from .refytvos import RefYouTubeVOSConverter
from .revos import ReVOSConverter
from .runner import convert_dataset

CONVERTERS: dict[str, type[Converter]] = {
    cls.name: cls
    for cls in (
        RefCOCOConverter,
        RefCOCOPlusConverter,
        RefCOCOgConverter,
        ReasonSegConverter,
        RefYouTubeVOSConverter,
        RefDAVISConverter,
        MeViSConverter,
        ReVOSConverter,
        LLaVAConverter,
        FolderConverter,
    )
}

__all__ = [
    "CONVERTERS",
    "ConvertError",
    "Converter",
    "FolderConverter",
    "LLaVAConverter",
    "MeViSConverter",
    "ReVOSConverter",
    "ReasonSegConverter",
    "RefCOCOConverter",
    "RefCOCOPlusConverter",
    "RefCOCOgConverter",
    "RefDAVISConverter",
    "RefYouTubeVOSConverter",
    "convert_dataset",
]
