"""The resumable shard runner: :func:`convert_dataset` writes the shards of a :class:`~.base.Converter`.

For every split of the converter, :func:`convert_dataset` lists the items, then:

* item ``i`` of a split goes to shard ``i // maxcount`` (``<out>/<dataset>-<split>-%06d.tar``), so a shard always
  holds the same items whatever happened before;
* each shard is written to ``<shard>.tar.tmp`` through :class:`~datamodules.shards.RecordWriter` (which validates
  every record) and renamed to its final name once complete; a shard whose final name exists is kept on a re-run,
  a ``.tmp`` left by an interrupted run is rewritten;
* the per-shard counts are kept in ``<out>/.convert/`` together with the settings of each shard series; a re-run
  with other settings (``--maxcount``, options, a changed item list) is refused unless ``overwrite`` is set;
* the summary (records, frames, queries, objects, queries by type, skipped records and dropped queries by reason)
  is printed and written to ``<out>/summary.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..schema import RecordError
from ..shards import RecordWriter
from .base import Converted, Converter, ConvertError, Item, Report, logger

STATE_DIR = ".convert"
SUMMARY_FILE = "summary.json"


# ---------------------------------------------------------------------------------------------------------------
# Counting


@dataclass
class Stats:
    """Counts of a shard, a split or a whole run.

    Attributes:
        records: records written.
        frames: frames in them.
        queries: queries in them.
        objects: objects in them.
        query_types: queries by type.
        skipped_records: items that gave no record, by reason.
        dropped: queries or annotations left out of written records (or of the item list), by reason.
    """

    records: int = 0
    frames: int = 0
    queries: int = 0
    objects: int = 0
    query_types: Counter[str] = field(default_factory=Counter)
    skipped_records: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def add_record(self, meta: dict[str, Any]) -> None:
        """Count one written record."""
        self.records += 1
        self.frames += meta["frames"]
        self.queries += len(meta["queries"])
        self.objects += len(meta.get("objects", {}))
        self.query_types.update(q["type"] for q in meta["queries"])

    def merge(self, other: Stats) -> None:
        """Add ``other``'s counts."""
        self.records += other.records
        self.frames += other.frames
        self.queries += other.queries
        self.objects += other.objects
        self.query_types.update(other.query_types)
        self.skipped_records.update(other.skipped_records)
        self.dropped.update(other.dropped)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready counts (counters sorted by name)."""
        return {
            "records": self.records,
            "frames": self.frames,
            "queries": self.queries,
            "objects": self.objects,
            "query_types": dict(sorted(self.query_types.items())),
            "skipped_records": dict(sorted(self.skipped_records.items())),
            "dropped": dict(sorted(self.dropped.items())),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stats:
        """Inverse of :meth:`to_dict`."""
        return cls(
            records=data["records"],
            frames=data["frames"],
            queries=data["queries"],
            objects=data["objects"],
            query_types=Counter(data["query_types"]),
            skipped_records=Counter(data["skipped_records"]),
            dropped=Counter(data["dropped"]),
        )


# ---------------------------------------------------------------------------------------------------------------
# Converting items (optionally in worker processes)


@dataclass
class _Outcome:
    converted: Converted | None
    skipped: tuple[str, str] | None
    dropped: list[tuple[str, str]]


def _convert_item(converter: Converter, split: str, item: Item) -> _Outcome:
    report = Report()
    try:
        return _Outcome(converter.convert(split, item, report), None, report.dropped)
    except RecordError as exc:
        return _Outcome(None, (exc.reason, exc.message), report.dropped)


_WORKER_STATE: tuple[Converter, str, list[Item]] | None = None


def _convert_in_worker(index: int) -> _Outcome:
    assert _WORKER_STATE is not None
    converter, split, items = _WORKER_STATE
    return _convert_item(converter, split, items[index])


@contextmanager
def _item_converter(
    converter: Converter, split: str, items: list[Item], workers: int
) -> Iterator[Callable[[int, int], Iterator[_Outcome]]]:
    """A function ``(start, stop) -> outcomes of items[start:stop]`` in order, run in ``workers`` processes.

    Workers are forked so that they share the loaded metadata; without ``fork`` (or with ``workers <= 1``) the items
    are converted in this process.
    """
    global _WORKER_STATE
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield lambda start, stop: (_convert_item(converter, split, items[i]) for i in range(start, stop))
        return
    _WORKER_STATE = (converter, split, items)
    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        yield lambda start, stop: pool.imap(_convert_in_worker, range(start, stop), chunksize=2)
    finally:
        pool.terminate()
        pool.join()
        _WORKER_STATE = None


# ---------------------------------------------------------------------------------------------------------------
# Writing shards


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _shard_writer(tmp_path: Path, count: int) -> RecordWriter:
    """A :class:`RecordWriter` that writes exactly one shard to ``tmp_path``.

    RecordWriter names its shards ``pattern % shard_number``; the ``%.0s`` field consumes the number and prints
    nothing, so with room for all ``count`` records in one shard the single shard is ``tmp_path`` itself.
    """
    pattern = str(tmp_path).replace("%", "%%") + "%.0s"
    return RecordWriter(pattern, maxcount=max(count, 1), maxsize=math.inf)


@dataclass
class SplitResult:
    """What :func:`convert_dataset` did for one split."""

    split: str
    items: int
    shards: int
    resumed: int
    stats: Stats


class _ShardSeries:
    """The shard series of one split: its items, settings check, resume state and shard writing.

    Args:
        converter: the dataset converter.
        split: the split.
        out: output directory.
        maxcount: items per shard.
    """

    def __init__(self, converter: Converter, split: str, out: Path, maxcount: int) -> None:
        self.converter = converter
        self.split = split
        self.out = out
        self.maxcount = maxcount
        self.prefix = f"{converter.name}-{split}"
        self.state = out / STATE_DIR
        self.scan = Report()
        self.items = converter.items(split, self.scan)
        self.num_shards = math.ceil(len(self.items) / maxcount)

    def shard_path(self, index: int) -> Path:
        return self.out / f"{self.prefix}-{index:06d}.tar"

    def stats_path(self, index: int) -> Path:
        return self.state / f"{self.prefix}-{index:06d}.json"

    def _series_files(self) -> list[Path]:
        pattern = re.compile(rf"^{re.escape(self.prefix)}-\d{{6}}\.(tar|tar\.tmp|json|json\.tmp)$")
        return [p for d in (self.out, self.state) for p in sorted(d.iterdir()) if pattern.match(p.name)]

    def check_settings(self, overwrite: bool) -> None:
        """Store the series settings; refuse (or with ``overwrite`` clear) shards written with other settings.

        Raises:
            ConvertError: when the output holds shards of this series written with other settings.
        """
        settings = {
            "dataset": self.converter.name,
            "split": self.split,
            "maxcount": self.maxcount,
            "items": len(self.items),
            "items_sha1": hashlib.sha1("\n".join(i.key for i in self.items).encode()).hexdigest(),
            "options": self.converter.options(),
        }
        path = self.state / f"{self.prefix}.json"
        previous = json.loads(path.read_text()) if path.is_file() else None
        existing = self._series_files()
        if previous != settings and (existing or previous is not None):
            if not overwrite:
                reason = "other settings" if previous is not None else "unknown settings"
                raise ConvertError(
                    f"{self.out} holds {self.prefix} shards written with {reason} "
                    f"(stored: {previous}, now: {settings}); pass --overwrite to replace them or choose another --out."
                )
            for stale in existing:
                stale.unlink()
        _atomic_write_json(path, settings)

    def finished(self, index: int) -> Stats | None:
        """The counts of shard ``index`` when it was completed by an earlier run."""
        shard, stats = self.shard_path(index), self.stats_path(index)
        if shard.is_file() and stats.is_file():
            return Stats.from_dict(json.loads(stats.read_text()))
        return None

    def write(self, index: int, outcomes: Iterator[_Outcome], advance: Callable[[], None]) -> Stats:
        """Write shard ``index`` from the outcomes of its items (through ``.tmp``, renamed when complete)."""
        chunk = self.items[index * self.maxcount : (index + 1) * self.maxcount]
        final = self.shard_path(index)
        tmp = final.with_name(final.name + ".tmp")
        tmp.unlink(missing_ok=True)
        stats = Stats()
        with _shard_writer(tmp, len(chunk)) as writer:
            for item, outcome in zip(chunk, outcomes, strict=True):
                for reason, message in outcome.dropped:
                    self.log_drop(item.key, reason, message)
                    stats.dropped[reason] += 1
                if outcome.converted is not None:
                    record = outcome.converted
                    try:
                        writer.write(item.key, record.meta, record.frames.frames, record.frames.ext)
                    except RecordError as exc:
                        outcome.skipped = (exc.reason, exc.message)
                    except ValueError as exc:
                        outcome.skipped = ("invalid_record", str(exc))
                    else:
                        stats.add_record(record.meta)
                if outcome.skipped is not None:
                    reason, message = outcome.skipped
                    name, split = self.converter.name, self.split
                    logger.warning("%s/%s: skipped %r (%s): %s", name, split, item.key, reason, message)
                    stats.skipped_records[reason] += 1
                advance()
        _atomic_write_json(self.stats_path(index), stats.to_dict())
        os.replace(tmp, final)
        return stats

    def log_drop(self, key: str | None, reason: str, message: str) -> None:
        """Log one dropped query or annotation."""
        where = f"{self.converter.name}/{self.split}" + (f" {key!r}" if key else "")
        logger.warning("%s: dropped (%s): %s", where, reason, message)

    def run(self, workers: int, progress: bool) -> SplitResult:
        """Write the shards not finished by an earlier run; returns the counts of the whole split."""
        stats = Stats()
        for reason, message in self.scan.dropped:
            self.log_drop(None, reason, message)
            stats.dropped[reason] += 1
        resumed = 0
        name = f"{self.converter.name}/{self.split}"
        bar = tqdm(total=len(self.items), desc=name, unit="item", disable=not progress, leave=False)
        with bar, _item_converter(self.converter, self.split, self.items, workers) as outcomes:
            for index in range(self.num_shards):
                start, stop = index * self.maxcount, min((index + 1) * self.maxcount, len(self.items))
                shard_stats = self.finished(index)
                if shard_stats is not None:
                    resumed += 1
                    bar.update(stop - start)
                else:
                    shard_stats = self.write(index, outcomes(start, stop), lambda: bar.update(1))
                stats.merge(shard_stats)
        return SplitResult(self.split, len(self.items), self.num_shards, resumed, stats)


def convert_dataset(
    converter: Converter,
    out: str | Path,
    maxcount: int | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = print,
) -> dict[str, Any]:
    """Convert every split of ``converter`` into shards under ``out`` and write ``out/summary.json``.

    The items of every split are listed and the stored settings checked before the first shard is written.

    Args:
        converter: a configured converter (its constructor has checked the top-level inputs).
        out: output directory (created).
        maxcount: records per shard (default: the converter's ``default_maxcount``). Fixed per shard series.
        workers: processes converting items (1 = this process).
        overwrite: replace shards of the same series written with other settings instead of refusing.
        progress: show a tqdm progress bar per split.
        echo: where the summary table is printed (None = nowhere).

    Returns:
        The summary (as written to ``summary.json``).

    Raises:
        ConvertError: for bad settings or when ``out`` holds shards written with other settings.
    """
    out = Path(out)
    maxcount = converter.default_maxcount if maxcount is None else maxcount
    if maxcount < 1:
        raise ConvertError(f"--maxcount must be at least 1, got {maxcount}.")
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    series = [_ShardSeries(converter, split, out, maxcount) for split in converter.splits]
    for shard_series in series:
        shard_series.check_settings(overwrite)
    results = [shard_series.run(workers, progress) for shard_series in series]
    elapsed = time.perf_counter() - start
    summary = _write_summary(converter, out, maxcount, results)
    if echo is not None:
        echo(format_summary(converter.name, out, results, elapsed))
    return summary


def _write_summary(converter: Converter, out: Path, maxcount: int, results: list[SplitResult]) -> dict[str, Any]:
    """Write ``summary.json``, keeping the splits of an earlier run of the same dataset into the same directory."""
    path = out / SUMMARY_FILE
    splits: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except json.JSONDecodeError:
            previous = {}
        if isinstance(previous, dict) and previous.get("dataset") == converter.name:
            splits.update(previous.get("splits", {}))
    for result in results:
        splits[result.split] = {
            "items": result.items,
            "shards": result.shards,
            "maxcount": maxcount,
            **converter.split_info(result.split),
            **result.stats.to_dict(),
        }
    total = Stats()
    for entry in splits.values():
        total.merge(Stats.from_dict(entry))
    summary = {
        "dataset": converter.name,
        "task": converter.task,
        "options": converter.options(),
        "splits": dict(sorted(splits.items())),
        "total": total.to_dict(),
    }
    _atomic_write_json(path, summary)
    return summary


def _counter_line(label: str, counter: Counter[str]) -> str:
    return f"{label}: " + (", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none")


def format_summary(name: str, out: Path, results: list[SplitResult], elapsed: float) -> str:
    """A human-readable table of a run."""
    header = ("split", "items", "records", "frames", "queries", "objects", "shards", "resumed")
    rows = [
        (r.split, r.items, r.stats.records, r.stats.frames, r.stats.queries, r.stats.objects, r.shards, r.resumed)
        for r in results
    ]
    widths = [max(len(str(v)) for v in column) for column in zip(header, *rows)]
    lines = [f"{name} -> {out} in {elapsed:.1f} s"]
    lines += ["  " + "  ".join(str(v).rjust(w) for v, w in zip(row, widths)) for row in (header, *rows)]
    total = Stats()
    for result in results:
        total.merge(result.stats)
    lines.append("  " + _counter_line("queries by type", total.query_types))
    lines.append("  " + _counter_line("skipped records", total.skipped_records))
    lines.append("  " + _counter_line("dropped queries/annotations", total.dropped))
    return "\n".join(lines)
