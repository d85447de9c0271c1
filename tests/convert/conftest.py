"""Helpers for the converter tests: run the CLI in-process and read the shards back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from datamodules.convert.__main__ import main
from datamodules.rle import decode_rle
from datamodules.shards import Record, SkipCounter, iter_records


@pytest.fixture
def convert() -> Callable[..., dict[str, Any]]:
    """``convert(name, root, out, *options)``: run ``python -m datamodules.convert`` in-process; returns the summary."""

    def run(name: str, root: Path, out: Path, *options: Any) -> dict[str, Any]:
        code = main([name, "--root", str(root), "--out", str(out), "--no-progress", *map(str, options)])
        assert code == 0
        return json.loads((out / "summary.json").read_text())

    return run


@pytest.fixture
def read_split() -> Callable[[Path, str, str], dict[str, Record]]:
    """``read_split(out, name, split)``: the records of one shard series by key (none may be skipped on reading)."""

    def read(out: Path, name: str, split: str) -> dict[str, Record]:
        counter = SkipCounter()
        records = list(iter_records(str(out / f"{name}-{split}-*.tar"), counter=counter))
        assert counter.total() == 0, counter.totals
        return {r.key: r for r in records}

    return read


def masks_of(record: Record, object_id: str) -> list[np.ndarray]:
    """Decoded masks of one object, one per frame."""
    return [record.object_mask(object_id, t) for t in range(record.num_frames)]


def decode_list(rles: list[dict[str, Any] | None], size: tuple[int, int]) -> list[np.ndarray]:
    """Decode a per-frame RLE list (null = empty)."""
    return [np.zeros(size, dtype=bool) if r is None else decode_rle(r) for r in rles]


@pytest.fixture
def masks() -> Callable[[Record, str], list[np.ndarray]]:
    """:func:`masks_of` as a fixture."""
    return masks_of


@pytest.fixture
def decode() -> Callable[[list[dict[str, Any] | None], tuple[int, int]], list[np.ndarray]]:
    """:func:`decode_list` as a fixture."""
    return decode_list
