"""The multi-task ``LightningDataModule``: weighted training mixture and evaluation over WebDataset shard sets.

LightningCLI configuration::

    data:
      class_path: datamodules.InstructSegDataModule
      init_args:
        train: [{name: synthetic, urls: "data/synthetic/train/*.tar", weight: 1.0}]
        val: [{name: synthetic, urls: "data/synthetic/val/*.tar"}]
        tokenizer_path: checkpoints/tiny-pretrained/llm
        mask_size: 64
        clip_size: 64
        num_ref_frames: 2
        batch_size: 8

Batches are dicts documented in :func:`datamodules.pipeline.collate_samples`, plus ``shard_set`` (list of set names)
in validation. ``batch["skipped"]`` holds the ``reason -> count`` of data the producing worker skipped since its
previous batch: log it from the LightningModule (e.g. ``self.log(f"data/skipped_{reason}", count, reduce_fx="sum")``);
:meth:`InstructSegDataModule.skip_counts` returns the totals over all batches delivered so far.

Lightning warns that the training ``IterableDataset`` defines ``__len__``; the length is exact here, because each
worker produces its own share of the epoch's batches (:meth:`~datamodules.streams.MixtureStream.worker_share`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any

import lightning as L
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from instructseg.constants import TASKS
from instructseg.processing import add_instructseg_tokens

from .pipeline import CLIP_SAMPLERS, SampleBuilder, collate_samples
from .streams import EvalStream, MixtureStream, ShardSetConfig, check_readable

__all__ = ["InstructSegDataModule", "ShardSetConfig", "StreamLoader", "load_tokenizer"]


def load_tokenizer(path: str) -> Any:
    """The model's tokenizer loader (:func:`instructseg.modeling.loading.load_tokenizer`) plus the special tokens.

    Raises:
        PretrainedLoadError: (a ``FileNotFoundError``) when ``path`` holds no tokenizer.
    """
    from instructseg.modeling.loading import load_tokenizer as load_model_tokenizer

    tokenizer = load_model_tokenizer(path)
    add_instructseg_tokens(tokenizer)
    return tokenizer


class StreamLoader(DataLoader):
    """A ``DataLoader`` over a stream that selects the stream's epoch and sums the batches' ``skipped`` counts.

    Args:
        dataset: a :class:`~datamodules.streams.MixtureStream` or :class:`~datamodules.streams.EvalStream`.
        skip_totals: counter that receives every batch's ``skipped`` counts.
        epoch_fn: returns the epoch to stream when an iteration starts (e.g. ``trainer.current_epoch``) or
            ``None``; without it (or on ``None``) iterations count epochs 0, 1, 2, ...
        consumed_fn: returns how many batches of the current epoch the training loop has processed (the loader
            prefetches, so it has yielded more); :meth:`state_dict` records that count.
        **kwargs: ``DataLoader`` arguments.
    """

    def __init__(
        self,
        dataset: IterableDataset,
        skip_totals: Counter,
        epoch_fn: Callable[[], int | None] | None = None,
        consumed_fn: Callable[[], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, **kwargs)
        self.skip_totals = skip_totals
        self.epoch_fn = epoch_fn
        self.consumed_fn = consumed_fn
        self.iterations = 0
        self.epoch: int | None = None
        self.yielded = 0
        self._resume: dict[str, int] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch = self.epoch_fn() if self.epoch_fn is not None else None
        epoch = self.iterations if epoch is None else epoch
        if isinstance(self.dataset, MixtureStream):
            self.dataset.set_epoch(epoch)
        self.iterations += 1
        skip = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            skip = self._resume["batches"]
        self._resume = None
        self.epoch, self.yielded = epoch, 0
        for batch in super().__iter__():
            self.skip_totals.update(batch["skipped"])
            self.yielded += 1
            if self.yielded > skip:
                yield batch

    def state_dict(self) -> dict[str, int]:
        """Where the stream stands: the epoch being streamed and the batches consumed from it (Lightning saves this
        in every checkpoint, so a run resumed from a mid-epoch checkpoint continues with the next batch)."""
        consumed = self.consumed_fn() if self.consumed_fn is not None else None
        batches = self.yielded if consumed is None else min(self.yielded, consumed)
        return {"epoch": -1 if self.epoch is None else self.epoch, "batches": batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next iteration of epoch ``state["epoch"]`` skips the ``state["batches"]`` batches consumed
        before the checkpoint (the stream is deterministic, so the same batches come next)."""
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def _as_configs(sets: Sequence[ShardSetConfig | dict[str, Any]] | None, what: str) -> list[ShardSetConfig]:
    configs = [s if isinstance(s, ShardSetConfig) else ShardSetConfig(**s) for s in sets or []]
    for config in configs:
        if config.task is not None and config.task not in TASKS:
            raise ValueError(f"{what} set {config.name!r}: task must be one of {TASKS}, got {config.task!r}.")
        if config.weight < 0:
            raise ValueError(f"{what} set {config.name!r}: weight must be >= 0, got {config.weight}.")
    return configs


class InstructSegDataModule(L.LightningDataModule):
    """Streams InstructSeg training and validation batches from WebDataset shard sets.

    Training is an infinite, resampled, weighted mixture of the ``train`` sets (one random query and clip per
    record); an epoch is ``epoch_length`` samples per rank. Validation reads every query of every ``val`` record
    once, split over ranks and workers. Each set is checked at :meth:`setup`: a pattern that matches nothing raises
    ``FileNotFoundError``, a set without a usable record raises ``RuntimeError``, both naming the set and pattern.

    Args:
        train: training shard sets (``ShardSetConfig`` or dicts with ``name``, ``urls``, ``weight``, ``task``).
        val: validation shard sets.
        tokenizer: the model's tokenizer (with the special tokens). ``instructseg fit`` links it from the model, so
            model and data can never disagree on token ids.
        tokenizer_path: a tokenizer directory, only when no ``tokenizer`` is given (standalone use of the data).
        mask_size: mask-branch input and target side ``S`` (linked from ``model.config.mask.image_size``).
        clip_size: SigLIP input side ``S_c`` (linked from ``model.config.vision.image_size``).
        num_ref_frames: reference frames per video clip (linked from ``model.config.num_reference_frames``; images
            use the image itself as one reference).
        batch_size: samples per batch.
        num_workers: DataLoader worker processes.
        epoch_length: training samples per epoch per rank (rounded up to whole batches).
        seed: seed of all data randomness (shard choice, shuffling, mixing, clips, queries).
        clip_sampling: ``"sparse"`` (reference scheme) or ``"global_local"`` (VISA-style).
        shuffle_buffer: records in each training set's shuffle buffer.
        text_loss_tasks: tasks whose answer tokens always get the text loss.
        one_query_per_record: in training, one random query per record (else every query).
        max_resample: clip draws for a training query whose key-frame target is empty.
        max_text_tokens: most prompt tokens a sample may have (linked from the model); longer queries are skipped
            and counted.
        pin_memory: pin batches in page-locked memory (GPU training).
        target_mode: ``"union"`` (one target per query) or ``"objects"`` (one target per named object, matched by
            the criterion; see :class:`~datamodules.pipeline.SampleBuilder`).
    """

    def __init__(
        self,
        train: list[ShardSetConfig] | None = None,
        val: list[ShardSetConfig] | None = None,
        tokenizer: Any = None,
        tokenizer_path: str | None = None,
        mask_size: int = 1024,
        clip_size: int = 384,
        num_ref_frames: int = 4,
        batch_size: int = 4,
        num_workers: int = 2,
        epoch_length: int = 10000,
        seed: int = 0,
        clip_sampling: str = "sparse",
        shuffle_buffer: int = 1000,
        text_loss_tasks: tuple[str, ...] = ("reasonseg", "vqa"),
        one_query_per_record: bool = True,
        max_resample: int = 10,
        pin_memory: bool = False,
        max_text_tokens: int | None = None,
        target_mode: str = "union",
    ) -> None:
        super().__init__()
        if clip_sampling not in CLIP_SAMPLERS:
            raise ValueError(f"clip_sampling: expected one of {sorted(CLIP_SAMPLERS)}, got {clip_sampling!r}.")
        self.train_sets = _as_configs(train, "train")
        self.val_sets = _as_configs(val, "val")
        self.tokenizer_path = tokenizer_path
        self.mask_size = mask_size
        self.clip_size = clip_size
        self.num_ref_frames = num_ref_frames
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.epoch_length = epoch_length
        self.seed = seed
        self.clip_sampling = clip_sampling
        self.shuffle_buffer = shuffle_buffer
        self.text_loss_tasks = tuple(text_loss_tasks)
        self.one_query_per_record = one_query_per_record
        self.max_resample = max_resample
        self.max_text_tokens = max_text_tokens
        self.pin_memory = pin_memory
        self.target_mode = target_mode
        if tokenizer is None and tokenizer_path is None:
            raise ValueError(
                "InstructSegDataModule: give the model's `tokenizer` (the CLI links it from the model) or a "
                "`tokenizer_path`."
            )
        self.tokenizer: Any = tokenizer
        self.train_stream: MixtureStream | None = None
        self.val_stream: EvalStream | None = None
        self._skip_totals: Counter[str] = Counter()

    def builder(self, training: bool) -> SampleBuilder:
        """The :class:`SampleBuilder` of the training (``True``) or validation (``False``) stream."""
        return SampleBuilder(
            self.tokenizer,
            mask_size=self.mask_size,
            clip_size=self.clip_size,
            num_ref_frames=self.num_ref_frames,
            clip_sampling=self.clip_sampling,
            text_loss_tasks=self.text_loss_tasks,
            one_query_per_record=self.one_query_per_record and training,
            training=training,
            max_resample=self.max_resample,
            max_text_tokens=self.max_text_tokens,
            seed=self.seed,
            target_mode=self.target_mode,
        )

    def _rank(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return wds.utils.pytorch_worker_info()[:2]

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenizer, expand and check the shard sets, and build the streams for ``stage``."""
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.tokenizer_path)
        rank, world_size = self._rank()
        if stage in (None, "fit") and self.train_stream is None:
            if not self.train_sets:
                raise ValueError("InstructSegDataModule: fitting needs at least one `train` shard set.")
            builder = self.builder(training=True)
            for shard_set in self.train_sets:
                check_readable(shard_set, builder)
            self.train_stream = MixtureStream(
                self.train_sets,
                builder,
                samples_per_epoch=self.epoch_length,
                batch_size=self.batch_size,
                seed=self.seed,
                shuffle_buffer=self.shuffle_buffer,
                rank=rank,
                world_size=world_size,
            )
        if stage in (None, "fit", "validate") and self.val_stream is None and self.val_sets:
            builder = self.builder(training=False)
            for shard_set in self.val_sets:
                check_readable(shard_set, builder)
            self.val_stream = EvalStream(self.val_sets, builder, rank=rank, world_size=world_size)

    def _trainer_epoch(self) -> int | None:
        return self.trainer.current_epoch if self.trainer is not None else None

    def _consumed_batches(self) -> int | None:
        """Training batches of the current epoch whose step has run (``None`` outside a Lightning fit)."""
        trainer = self.trainer
        if trainer is None or not trainer.training:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def _loader(self, stream: IterableDataset) -> StreamLoader:
        if self.num_workers > 0:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        return StreamLoader(
            stream,
            self._skip_totals,
            epoch_fn=self._trainer_epoch,
            consumed_fn=self._consumed_batches if isinstance(stream, MixtureStream) else None,
            # its own generator: starting an iterator must not draw from the global torch RNG, whose state the
            # checkpoint restores (a mid-epoch resume starts an iterator where the uninterrupted run did not)
            generator=torch.Generator().manual_seed(self.seed),
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=partial(collate_samples, pad_id=self.tokenizer.pad_token_id),
            pin_memory=self.pin_memory,
        )

    def train_dataloader(self) -> StreamLoader:
        """Training batches; each epoch streams ``trainer.current_epoch``'s samples (so a resumed run continues)."""
        if self.train_stream is None:
            self.setup("fit")
        return self._loader(self.train_stream)

    def val_dataloader(self) -> StreamLoader | list:
        """Validation batches (an empty list when no ``val`` sets are configured)."""
        if self.val_stream is None and self.val_sets:
            self.setup("validate")
        return self._loader(self.val_stream) if self.val_stream is not None else []

    def skip_counts(self) -> dict[str, int]:
        """``reason -> count`` of data skipped in all batches delivered so far (training and validation)."""
        return dict(self._skip_totals)
