"""Data for InstructSeg: the shard schema, shard reading/writing, clip sampling, the streaming multi-task
datamodule and the synthetic benchmark generator.

Names are imported on first use, so tools that need only the shard format (the converters) start without importing
Lightning.
"""

from __future__ import annotations

from instructseg.lazy import lazy_getattr

_EXPORTS = {
    "InstructSegDataModule": "datamodules.datamodule",
    "StreamLoader": "datamodules.datamodule",
    "load_tokenizer": "datamodules.datamodule",
    "SampleBuilder": "datamodules.pipeline",
    "collate_samples": "datamodules.pipeline",
    "decode_rle": "datamodules.rle",
    "encode_rle": "datamodules.rle",
    "RecordError": "datamodules.schema",
    "validate_record": "datamodules.schema",
    "Record": "datamodules.shards",
    "RecordWriter": "datamodules.shards",
    "SkipCounter": "datamodules.shards",
    "expand_urls": "datamodules.shards",
    "iter_records": "datamodules.shards",
    "EvalStream": "datamodules.streams",
    "MixtureStream": "datamodules.streams",
    "ShardSetConfig": "datamodules.streams",
}
__all__ = sorted(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
