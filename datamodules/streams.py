"""Iterable datasets over shard sets: the weighted training mixture and the finite evaluation stream.

**Training** (:class:`MixtureStream`): every shard set is an infinite WebDataset pipeline
(``ResampledShards`` → records → shuffle buffer → samples); a seeded RNG picks the set of each sample with
probability proportional to its weight, so one batch can mix images and videos of several tasks. Each epoch has a
fixed number of samples per rank. All randomness is seeded by ``(seed, epoch, rank, worker, set)``, so a run is
reproducible for a given seed, world size and ``num_workers``.

**Evaluation** (:class:`EvalStream`): the sorted shards of all sets are split by rank, then by DataLoader worker
(like WebDataset's ``split_by_node`` / ``split_by_worker``), and every sample is produced exactly once.

Ranks: a stream uses its ``rank`` / ``world_size`` attributes (the datamodule sets them from the trainer); when
they are ``None`` it asks ``webdataset.utils.pytorch_worker_info`` (env ``RANK`` / ``WORLD_SIZE`` or an initialised
``torch.distributed``). Workers come from ``torch.utils.data.get_worker_info``. To look at one partition directly
(e.g. to simulate 2 ranks x 2 workers in a test), call ``MixtureStream.iter_partition(rank, worker, num_workers)``
or ``EvalStream.iter_partition(rank, world_size, worker, num_workers)``.

Every sample carries ``skipped``: the ``reason -> count`` of data its stream skipped since the previous sample;
:func:`~datamodules.pipeline.collate_samples` sums them into ``batch["skipped"]``.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from .pipeline import SampleBuilder
from .schema import RecordError
from .shards import SkipCounter, expand_urls, shard_records

MAX_FAILED_RECORDS = 1000
"""A training set fails after this many records in a row could not be decoded."""
MIN_EMPTY_SHARDS = 64
"""A training set fails after ``max(MIN_EMPTY_SHARDS, 20 x its shard count)`` shards in a row without a record."""


@dataclass
class ShardSetConfig:
    """One named set of shards.

    Args:
        name: name used in logs, errors and ``batch["shard_set"]``.
        urls: shard pattern(s): globs (``data/train/*.tar``), braces (``refcoco-{000000..000127}.tar``) or a list.
        weight: relative sampling weight in the training mixture.
        task: override the records' ``task`` (one of ``instructseg.processing.TASKS``); ``None`` keeps it.
    """

    name: str
    urls: str | list[str]
    weight: float = 1.0
    task: str | None = None

    def shard_urls(self) -> list[str]:
        """The expanded shard list (raises ``FileNotFoundError`` naming the pattern when nothing matches)."""
        return expand_urls(self.urls)


def weighted_mix(sources: Sequence[Iterator[Any]], weights: Sequence[float], rng: random.Random) -> Iterator[Any]:
    """Draw from ``sources`` with probabilities proportional to ``weights`` until the drawn source is exhausted."""
    if len(sources) != len(weights) or not sources:
        raise ValueError("weighted_mix: need one weight per source and at least one source.")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weighted_mix: weights must be >= 0 with a positive sum, got {list(weights)}.")
    choices = range(len(sources))
    while True:
        try:
            yield next(sources[rng.choices(choices, weights)[0]])
        except StopIteration:
            return


def _seed(*parts: int) -> int:
    """A 32-bit seed from integer parts (independent of Python's string hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def _zero_worker_seed() -> int:
    """Worker seed for ``ResampledShards``: rank and worker are already part of our seed."""
    return 0


def _resolve_partition(rank: int | None, world_size: int | None) -> tuple[int, int, int, int]:
    """``(rank, world_size, worker, num_workers)`` of the calling process."""
    if rank is None or world_size is None:
        rank, world_size = wds.utils.pytorch_worker_info()[:2]
    info = torch.utils.data.get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    return rank, world_size, worker, num_workers


def _build_samples(
    record_source: Iterable[Any],
    builder: SampleBuilder,
    rng: np.random.Generator,
    counter: SkipCounter,
    max_failures: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Samples of each record; records that fail to decode are counted and skipped.

    Raises:
        RuntimeError: after ``max_failures`` records in a row failed (``None``: never).
    """
    failures = 0
    for record in record_source:
        try:
            samples = builder(record, rng)
        except RecordError as exc:
            counter.add(exc.reason, record.url, record.key, exc.message)
            failures += 1
            if max_failures is not None and failures >= max_failures:
                raise RuntimeError(
                    f"{failures} records in a row could not be decoded (last: {record.where}); "
                    f"skip counts: {dict(counter.totals)}."
                ) from exc
            continue
        failures = 0
        yield from samples


def attach_skips(samples: Iterable[dict[str, Any]], counter: SkipCounter) -> Iterator[dict[str, Any]]:
    """Each sample with ``skipped``: the ``reason -> count`` of data skipped since the previous sample.

    One sample is held back, so that what is skipped after the last sample (bad records at the end of the last
    shard) is added to the last sample instead of being lost.
    """
    held: dict[str, Any] | None = None
    for sample in samples:
        if held is not None:
            yield held
        sample["skipped"] = counter.pop_recent()
        held = sample
    if held is not None:
        late = counter.pop_recent()
        held["skipped"] = dict(Counter(held["skipped"]) + Counter(late)) if late else held["skipped"]
        yield held


def _tag(samples: Iterable[dict[str, Any]], shard_set: str) -> Iterator[dict[str, Any]]:
    """Add ``shard_set`` (the set's name) to each sample."""
    for sample in samples:
        sample["shard_set"] = shard_set
        yield sample


def _records_of_shards(
    shards: Iterable[dict[str, str]], counter: SkipCounter, shard_set: ShardSetConfig, max_empty_shards: int
) -> Iterator[Any]:
    """Records of each ``{"url": ...}``; raises after ``max_empty_shards`` shards in a row without a valid record."""
    empty = 0
    for shard in shards:
        found = False
        for record in shard_records(shard["url"], counter, shard_set.task):
            found = True
            yield record
        empty = 0 if found else empty + 1
        if empty >= max_empty_shards:
            raise RuntimeError(
                f"shard set {shard_set.name!r} ({shard_set.urls!r}) yielded no valid record from {empty} shards in "
                f"a row; skip counts: {dict(counter.totals)} (see the 'instructseg.data' warnings)."
            )


def check_readable(shard_set: ShardSetConfig, builder: SampleBuilder, counter: SkipCounter | None = None) -> None:
    """Make sure a shard set gives at least one sample, reading its shards in order until one does.

    Raises:
        FileNotFoundError: when the pattern matches no shard.
        RuntimeError: naming the set and its pattern when no shard has a usable record.
    """
    counter = counter or SkipCounter()
    urls = shard_set.shard_urls()
    for url in urls:
        for record in shard_records(url, counter, shard_set.task):
            try:
                if builder(record, np.random.default_rng(0)):
                    return
            except RecordError as exc:
                counter.add(exc.reason, url, record.key, exc.message)
    raise RuntimeError(
        f"shard set {shard_set.name!r} ({shard_set.urls!r}) has no usable record in its {len(urls)} shard(s); "
        f"skip counts: {dict(counter.totals)} (see the 'instructseg.data' warnings)."
    )


class MixtureStream(IterableDataset):
    """Infinite weighted mixture of shard sets, cut into epochs of ``samples_per_epoch`` samples per rank.

    The epoch is rounded up to whole batches; worker ``w`` of ``W`` produces its share of the batches, so a
    ``DataLoader(batch_size=batch_size)`` yields exactly ``len(stream) // batch_size`` full batches per epoch.

    Args:
        sets: shard sets (weights need not sum to 1).
        builder: turns records into samples (training mode).
        samples_per_epoch: samples per epoch on each rank.
        batch_size: DataLoader batch size (for the per-worker split).
        seed: base seed.
        shuffle_buffer: records held in each set's shuffle buffer (0 or 1: no shuffling).
        rank: this process's rank (``None``: resolved at iteration, see the module docstring).
        world_size: number of ranks (``None``: resolved at iteration).
    """

    def __init__(
        self,
        sets: Sequence[ShardSetConfig],
        builder: SampleBuilder,
        samples_per_epoch: int,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        if not sets:
            raise ValueError("MixtureStream: no training shard sets given.")
        if samples_per_epoch < 1 or batch_size < 1:
            raise ValueError("MixtureStream: samples_per_epoch and batch_size must be >= 1.")
        self.sets = list(sets)
        self.urls = [s.shard_urls() for s in self.sets]
        self.weights = [float(s.weight) for s in self.sets]
        self.builder = builder
        self.num_batches = math.ceil(samples_per_epoch / batch_size)
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose samples the next iteration yields."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Samples per epoch on this rank (a whole number of batches)."""
        return self.num_batches * self.batch_size

    def worker_share(self, worker: int, num_workers: int) -> int:
        """Samples that worker ``worker`` of ``num_workers`` yields per epoch."""
        batches = self.num_batches // num_workers + (worker < self.num_batches % num_workers)
        return batches * self.batch_size

    def _set_stream(self, index: int, rank: int, worker: int, counter: SkipCounter) -> Iterator[dict[str, Any]]:
        shard_set = self.sets[index]
        parts = (self.seed, self.epoch, rank, worker, index)
        stages: list[Callable | IterableDataset] = [
            wds.ResampledShards(
                self.urls[index], seed=_seed(*parts, 0), worker_seed=_zero_worker_seed, deterministic=True
            ),
            partial(
                _records_of_shards,
                counter=counter,
                shard_set=shard_set,
                max_empty_shards=max(MIN_EMPTY_SHARDS, 20 * len(self.urls[index])),
            ),
        ]
        if self.shuffle_buffer > 1:
            initial = min(self.shuffle_buffer, 100)
            stages.append(wds.shuffle(self.shuffle_buffer, initial, rng=random.Random(_seed(*parts, 1))))
        rng = np.random.default_rng(_seed(*parts, 2))
        stages += [
            partial(_build_samples, builder=self.builder, rng=rng, counter=counter, max_failures=MAX_FAILED_RECORDS),
            partial(_tag, shard_set=shard_set.name),
        ]
        return iter(wds.DataPipeline(*stages))

    def iter_partition(self, rank: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """The samples of one (rank, worker) for the current epoch."""
        counter = SkipCounter()
        streams = [self._set_stream(i, rank, worker, counter) for i in range(len(self.sets))]
        rng = random.Random(_seed(self.seed, self.epoch, rank, worker, len(self.sets), 3))
        chosen = islice(weighted_mix(streams, self.weights, rng), self.worker_share(worker, num_workers))
        return attach_skips(chosen, counter)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        rank, _, worker, num_workers = _resolve_partition(self.rank, self.world_size)
        return self.iter_partition(rank, worker, num_workers)


class EvalStream(IterableDataset):
    """Finite evaluation stream: every sample of every shard exactly once across ranks and workers.

    Shards (each set's shards sorted, sets in the given order) are dealt to ranks round-robin, then to the workers
    of each rank. Give at least ``world_size * num_workers`` shards to keep every worker busy.

    Args:
        sets: shard sets.
        builder: turns records into samples (evaluation mode: every query, deterministic clips).
        rank: this process's rank (``None``: resolved at iteration).
        world_size: number of ranks (``None``: resolved at iteration).
    """

    def __init__(
        self,
        sets: Sequence[ShardSetConfig],
        builder: SampleBuilder,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        super().__init__()
        self.sets = list(sets)
        self.shards = [(url, s) for s in self.sets for url in sorted(s.shard_urls())]
        self.builder = builder
        self.rank = rank
        self.world_size = world_size

    def iter_partition(self, rank: int, world_size: int, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        """The samples of one (rank, worker): shards ``rank::world_size``, then ``worker::num_workers`` of those."""
        counter = SkipCounter()
        rng = np.random.default_rng(0)

        def samples() -> Iterator[dict[str, Any]]:
            for url, shard_set in self.shards[rank::world_size][worker::num_workers]:
                records = shard_records(url, counter, shard_set.task)
                yield from _tag(_build_samples(records, self.builder, rng, counter), shard_set.name)

        return attach_skips(samples(), counter)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.iter_partition(*_resolve_partition(self.rank, self.world_size))
