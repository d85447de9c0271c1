"""Data for InstructSeg: the shard schema, shard reading/writing, clip sampling, the streaming multi-task
datamodule and the synthetic benchmark generator.

Names are imported on first use, so tools that need only the shard format (the converters) start without importing
Lightning.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "InstructSegDataModule": "datamodule",
    "StreamLoader": "datamodule",
    "load_tokenizer": "datamodule",
    "SampleBuilder": "pipeline",
    "collate_samples": "pipeline",
    "decode_rle": "rle",
    "encode_rle": "rle",
    "RecordError": "schema",
    "validate_record": "schema",
    "Record": "shards",
    "RecordWriter": "shards",
    "SkipCounter": "shards",
    "expand_urls": "shards",
    "iter_records": "shards",
    "EvalStream": "streams",
    "MixtureStream": "streams",
    "ShardSetConfig": "streams",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'datamodules' has no attribute {name!r}")
