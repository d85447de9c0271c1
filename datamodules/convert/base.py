"""The converter interface: a :class:`Converter` lists the items of a split and turns each into one record.

A converter knows one official dataset layout. It checks and loads the top-level metadata in its constructor (a
problem there raises :class:`ConvertError` naming the file, before any shard is written), lists the items of each
split in a deterministic order (:meth:`Converter.items`) and turns one item into one record
(:meth:`Converter.convert`); a per-item problem raises :class:`~datamodules.schema.RecordError`, whose ``reason`` is
counted in the summary. :func:`datamodules.convert.runner.convert_dataset` writes the shards.
"""

from __future__ import annotations

import argparse
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

logger = logging.getLogger("instructseg.convert")


class ConvertError(Exception):
    """A problem with the top-level input (a missing or malformed metadata file, a bad option): nothing is written."""


@dataclass
class FrameSet:
    """The frames of one record, ready for :meth:`~datamodules.shards.RecordWriter.write`.

    Attributes:
        frames: the original file bytes where the file already has the record's format, else decoded RGB arrays
            (the writer encodes them).
        ext: ``"jpg"`` when the first frame is a JPEG, else ``"png"`` (lossless).
        height: frame height.
        width: frame width.
    """

    frames: list[bytes | np.ndarray]
    ext: str
    height: int
    width: int


@dataclass(frozen=True)
class Item:
    """One unit of work: becomes one record (or is skipped).

    Attributes:
        key: record key (unique within the split, no ``.``).
        source: whatever the converter needs to build the record (an id, a file name, ...).
    """

    key: str
    source: Any


@dataclass
class Converted:
    """One converted record: metadata in the shard schema and its frames."""

    meta: dict[str, Any]
    frames: FrameSet


@dataclass
class Report:
    """Problems that drop part of an item (a query, an annotation) without skipping the record.

    Attributes:
        dropped: ``(reason, message)`` in order.
    """

    dropped: list[tuple[str, str]] = field(default_factory=list)

    def drop(self, reason: str, message: str) -> None:
        """Record one dropped query or annotation."""
        self.dropped.append((reason, message))


class Converter(ABC):
    """Converts one official dataset layout into records (see the module docstring).

    Subclasses set ``name`` (the dataset name in records and shard names), ``task`` and ``default_maxcount``,
    check their inputs in ``__init__`` (raising :class:`ConvertError`) and implement :meth:`items`,
    :meth:`convert` and the CLI hooks :meth:`add_arguments` / :meth:`from_args`.

    Attributes:
        splits: the splits to convert, in order.
    """

    name: ClassVar[str]
    task: ClassVar[str]
    default_maxcount: ClassVar[int] = 1000
    splits: list[str]

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add the dataset's own command-line options (``--root``, ``--split`` ... are added by the CLI)."""

    @classmethod
    @abstractmethod
    def from_args(cls, args: argparse.Namespace) -> Converter:
        """Build the converter from parsed command-line arguments."""

    @abstractmethod
    def items(self, split: str, report: Report) -> list[Item]:
        """The items of ``split`` in a fixed order; annotations dropped while listing go to ``report``."""

    @abstractmethod
    def convert(self, split: str, item: Item, report: Report) -> Converted:
        """One record; raises :class:`~datamodules.schema.RecordError` to skip the item."""

    def options(self) -> dict[str, Any]:
        """Options that change the records (stored with the shards; a re-run with other options is refused)."""
        return {}

    def split_info(self, split: str) -> dict[str, Any]:
        """Extra facts about a split for the summary (e.g. whether it has annotations)."""
        return {}

    def resolve_splits(self, requested: Sequence[str] | None, available: Sequence[str], where: Path) -> list[str]:
        """Check the requested splits against those found (all found when none is requested).

        Raises:
            ConvertError: for an unknown split or when no split is found.
        """
        if not available:
            raise ConvertError(f"{self.name}: no split found in {where}.")
        if not requested:
            return list(available)
        unknown = [s for s in requested if s not in available]
        if unknown:
            raise ConvertError(f"{self.name}: split(s) {unknown} not found in {where}; available: {list(available)}.")
        return list(dict.fromkeys(requested))
