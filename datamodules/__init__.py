"""Data for InstructSeg: the shard schema, shard reading/writing, clip sampling, the streaming multi-task
datamodule and the synthetic benchmark generator."""

from .datamodule import InstructSegDataModule, StreamLoader, load_tokenizer
from .pipeline import SampleBuilder, collate_samples
from .rle import decode_rle, encode_rle
from .schema import RecordError, validate_record
from .shards import Record, RecordWriter, SkipCounter, expand_urls, iter_records
from .streams import EvalStream, MixtureStream, ShardSetConfig

__all__ = [
    "EvalStream",
    "InstructSegDataModule",
    "MixtureStream",
    "Record",
    "RecordError",
    "RecordWriter",
    "SampleBuilder",
    "ShardSetConfig",
    "SkipCounter",
    "StreamLoader",
    "collate_samples",
    "decode_rle",
    "encode_rle",
    "expand_urls",
    "iter_records",
    "load_tokenizer",
    "validate_record",
]
