"""From records to model-ready samples and batches.

:class:`SampleBuilder` turns one :class:`~datamodules.shards.Record` into (query, clip) samples and
:func:`collate_samples` stacks samples of any tasks (images and videos, with or without masks) into one batch.

Sample dict (one query on one clip; ``S`` = ``mask_size``, ``S_c`` = ``clip_size``, ``R'`` = references,
``L`` = prompt tokens):

- ``pixel_values`` float ``(3, S, S)``: key frame, mask-branch input (longest side ``S``, zero-padded).
- ``clip_pixel_values`` float ``(1 + R', 3, S_c, S_c)``: SigLIP inputs, index 0 the key frame, then the ``R'``
  references (``R' = num_ref_frames`` for video tasks; 0 for images: the model uses the image's own encoding as its
  single reference frame, so the image is encoded once).
- ``frame_indices`` long ``(1 + R',)``: record frame index of each clip frame (key first).
- ``target_mask`` float ``(S, S)``: 0/1 union of the query's objects on the key frame (all 0 for ``no_target`` and
  ``vqa``), resized and padded like ``pixel_values``.
- ``ignore_mask`` bool ``(S, S)``: region excluded from the mask loss (the record's ``ignore``).
- ``object_masks`` float ``(K, S, S)`` (only with ``target_mode="objects"``): one 0/1 target per object the query
  names, on the key frame, resized like ``target_mask``; objects empty there are dropped (``K`` may be 0).
- ``has_target`` bool: the resized target is non-empty. ``has_mask`` bool: mask supervision (False for ``vqa``).
- ``valid_hw`` ``(h, w)``: unpadded region of ``pixel_values``. ``orig_hw`` ``(H, W)``: original frame size.
- ``task``, ``query_type`` (referring | reasoning | no_target), ``text`` (the instruction), ``key`` (record key),
  ``query_id`` (the query's ``id``, else its index; unique within the record), ``dataset``: str.
- ``input_ids`` long ``(L,)``, ``instruction_mask`` bool ``(L,)``, ``labels`` long ``(L,)``: the prompt of
  :func:`instructseg.processing.tokenize_query` (``labels`` = ``IGNORE_INDEX`` outside the supervised answer).

Streams add ``shard_set`` (str) and ``skipped`` (dict reason -> count), see :mod:`datamodules.streams`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from instructseg.constants import TASKS, VIDEO_TASKS
from instructseg.processing import (
    FrameProcessor,
    ReservedTokenError,
    TokenizedQuery,
    collate_tokens,
    mask_branch_target,
    tokenize_query,
)
from instructseg.sampling import reference_frames_for_key, sample_clip_global_local, sample_clip_sparse

from .schema import RecordError
from .shards import Record

CLIP_SAMPLERS = {"sparse": sample_clip_sparse, "global_local": sample_clip_global_local}
STRING_FIELDS = ("task", "query_type", "text", "key", "query_id", "dataset")
TARGET_MODES = ("union", "objects")


class SampleBuilder:
    """Turns records into samples (see the module docstring for the sample keys).

    Training (``training=True``): each query gets a random clip from ``clip_sampling``; a referring or reasoning
    query whose target is empty on the key frame gets a new clip, up to ``max_resample`` times (the reference
    retries 200 times; ``no_target`` queries keep their empty targets). Evaluation: the key frame is the middle
    frame and the references are its neighbours (:func:`~instructseg.sampling.reference_frames_for_key`).

    Args:
        tokenizer: Hugging Face tokenizer holding the InstructSeg special tokens
            (:func:`instructseg.processing.add_instructseg_tokens`).
        mask_size: side ``S`` of the mask-branch input and the target masks.
        clip_size: side ``S_c`` of the SigLIP input.
        num_ref_frames: reference frames ``R`` per video clip (images have none: the image is its own reference).
        clip_sampling: ``"sparse"`` (reference scheme) or ``"global_local"`` (VISA-style), for training.
        text_loss_tasks: tasks whose answer tokens always get the text loss; queries with an ``answer`` get it too.
        one_query_per_record: emit one random query per record instead of one sample per query.
        training: random clips (True) or deterministic evaluation clips (False).
        max_resample: clip draws for a query whose key-frame target is empty (training).
        max_text_tokens: most prompt tokens a sample may have (``instructseg fit`` links the model's budget); a
            longer query is skipped and counted as ``"query_too_long"``. ``None``: no limit.
        seed: seed of the generator used when :meth:`__call__` gets no ``rng``.
        target_mode: ``"union"`` (one target per query, the union of its objects: the paper) or ``"objects"`` (also
            ``object_masks``, one target per named object, for Hungarian matching of several objects per query).
    """

    def __init__(
        self,
        tokenizer: Any,
        mask_size: int,
        clip_size: int,
        num_ref_frames: int,
        clip_sampling: str = "sparse",
        text_loss_tasks: Sequence[str] = ("reasonseg", "vqa"),
        one_query_per_record: bool = True,
        training: bool = True,
        max_resample: int = 10,
        seed: int = 0,
        max_text_tokens: int | None = None,
        target_mode: str = "union",
    ) -> None:
        if target_mode not in TARGET_MODES:
            raise ValueError(f"target_mode: expected one of {TARGET_MODES}, got {target_mode!r}.")
        if clip_sampling not in CLIP_SAMPLERS:
            raise ValueError(f"clip_sampling: expected one of {sorted(CLIP_SAMPLERS)}, got {clip_sampling!r}.")
        unknown = set(text_loss_tasks) - set(TASKS)
        if unknown:
            raise ValueError(f"text_loss_tasks: unknown tasks {sorted(unknown)}; expected a subset of {TASKS}.")
        if num_ref_frames < 1:
            raise ValueError(f"num_ref_frames: expected >= 1, got {num_ref_frames}.")
        self.tokenizer = tokenizer
        self.mask_size = mask_size
        self.clip_size = clip_size
        self.num_ref_frames = num_ref_frames
        self.clip_sampling = clip_sampling
        self.text_loss_tasks = tuple(text_loss_tasks)
        self.one_query_per_record = one_query_per_record
        self.training = training
        self.max_resample = max_resample
        self.max_text_tokens = max_text_tokens
        self.target_mode = target_mode
        self.rng = np.random.default_rng(seed)

    def num_refs(self, task: str) -> int:
        """``R'``: ``num_ref_frames`` for video tasks, 0 for image tasks (the model reuses the key frame)."""
        return self.num_ref_frames if task in VIDEO_TASKS else 0

    def _clip(self, record: Record, query: dict[str, Any], rng: np.random.Generator) -> tuple[int, list[int]]:
        """Key and reference frame indices for one query."""
        num_ref = self.num_refs(record.task)
        if num_ref == 0:
            return 0, []
        if not self.training:
            key = record.num_frames // 2
            return key, reference_frames_for_key(record.num_frames, key, num_ref)
        sampler = CLIP_SAMPLERS[self.clip_sampling]
        needs_target = record.task != "vqa" and query["type"] != "no_target" and record.num_frames > 1
        for _ in range(self.max_resample if needs_target else 1):
            key, refs = sampler(record.num_frames, num_ref, rng)
            if not needs_target or record.target_mask(query["object_ids"], key).any():
                break
        return key, refs

    def _sample(self, record: Record, index: int, key: int, refs: list[int], frames: FrameProcessor) -> dict[str, Any]:
        """One sample of query ``index`` on the clip ``(key, refs)``."""
        query = record.queries[index]
        task = record.task
        pixel_values, valid_hw = frames.mask_input(key), frames.valid_hw
        clip = torch.stack([frames.siglip_input(i) for i in (key, *refs)])
        has_mask = task != "vqa"
        object_ids = query.get("object_ids", []) if has_mask else []
        target = mask_branch_target(record.target_mask(object_ids, key), self.mask_size)
        ignore = mask_branch_target(record.ignore_mask(key), self.mask_size) > 0.5
        answer = query.get("answer")
        where = f"{record.where} query {index}"
        try:
            tokens = tokenize_query(
                self.tokenizer,
                task,
                query["text"],
                answer,
                supervise_answer=task in self.text_loss_tasks or bool(answer),
            )
        except ReservedTokenError as err:
            raise RecordError("reserved_token", f"{where}: {err}") from None
        if self.max_text_tokens is not None and len(tokens.input_ids) > self.max_text_tokens:
            raise RecordError(
                "query_too_long",
                f"{where}: {len(tokens.input_ids)} prompt tokens, more than the {self.max_text_tokens} that fit the "
                "LLM's context next to the visual tokens.",
            )
        sample = {
            "pixel_values": pixel_values,
            "clip_pixel_values": clip,
            "frame_indices": torch.tensor([key, *refs], dtype=torch.long),
            "target_mask": target,
            "ignore_mask": ignore,
            "has_target": bool(target.any()),
            "has_mask": has_mask,
            "valid_hw": valid_hw,
            "orig_hw": record.size,
            "task": task,
            "query_type": query["type"],
            "text": query["text"],
            "key": record.key,
            "query_id": str(query.get("id", index)),
            "dataset": str(record.meta.get("dataset", "")),
            "input_ids": tokens.input_ids,
            "instruction_mask": tokens.instruction_mask,
            "labels": tokens.labels,
        }
        if self.target_mode == "objects":
            sample["object_masks"] = self._object_masks(record, object_ids, key)
        return sample

    def _object_masks(self, record: Record, object_ids: Sequence[str], key: int) -> torch.Tensor:
        """``(K, S, S)`` float 0/1 targets of the objects non-empty on frame ``key`` (``K`` may be 0)."""
        masks = [mask_branch_target(record.object_mask(object_id, key), self.mask_size) for object_id in object_ids]
        masks = [mask for mask in masks if mask.any()]
        return torch.stack(masks) if masks else torch.zeros(0, self.mask_size, self.mask_size)

    def __call__(self, record: Record, rng: np.random.Generator | None = None) -> list[dict[str, Any]]:
        """Samples of one record: one random query (``one_query_per_record``) or every query.

        Raises:
            RecordError: ``"bad_frame"`` / ``"bad_rle"`` when a needed frame or mask cannot be decoded.
        """
        rng = self.rng if rng is None else rng
        indices = range(len(record.queries))
        if self.one_query_per_record:
            indices = [int(rng.integers(len(record.queries)))]
        frames = FrameProcessor(record.frames, self.clip_size, self.mask_size, cache=True)
        samples = []
        for index in indices:
            key, refs = self._clip(record, record.queries[index], rng)
            samples.append(self._sample(record, index, key, refs, frames))
        return samples


def collate_samples(samples: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Stack samples of any tasks (images and videos mixed) into a batch.

    Clips are padded to the longest one, ``T_max = 1 + max R'``, and ``clip_frame_mask`` marks the real frames.
    Text is right-padded with ``pad_id`` (:func:`instructseg.processing.collate_tokens`).

    Returns:
        A dict with (``B`` samples, ``T_max`` clip frames, ``L`` longest prompt):

        - ``pixel_values`` float ``(B, 3, S, S)``; ``target_mask`` float ``(B, S, S)``; ``ignore_mask`` bool
          ``(B, S, S)``;
        - ``clip_pixel_values`` float ``(B, T_max, 3, S_c, S_c)``, zeros where padded; ``clip_frame_mask`` bool
          ``(B, T_max)``; ``frame_indices`` long ``(B, T_max)``, -1 where padded;
        - ``has_target``, ``has_mask`` bool ``(B,)``; ``valid_hw``, ``orig_hw`` long ``(B, 2)``;
        - ``input_ids`` long ``(B, L)``, ``attention_mask`` bool ``(B, L)``, ``instruction_mask`` bool ``(B, L)``,
          ``labels`` long ``(B, L)``;
        - ``task``, ``query_type``, ``text``, ``key``, ``query_id``, ``dataset``, ``shard_set`` (``""`` when the
          sample has none): lists of ``B`` str;
        - ``skipped``: dict ``reason -> count`` of data the producing stream skipped since its previous batch (the
          sum of the samples' ``skipped`` entries; empty when nothing was skipped);
        - with ``object_masks`` in the samples (``target_mode="objects"``): ``object_masks`` float
          ``(B, K_max, S, S)``, zero-padded, and ``object_count`` long ``(B,)``, the real targets of each row.
    """
    if not samples:
        raise ValueError("collate_samples: got an empty list of samples.")
    batch_size = len(samples)
    lengths = [s["clip_pixel_values"].shape[0] for s in samples]
    max_len = max(lengths)
    clip_shape = samples[0]["clip_pixel_values"].shape[1:]
    clip = torch.zeros(batch_size, max_len, *clip_shape)
    clip_mask = torch.zeros(batch_size, max_len, dtype=torch.bool)
    frame_indices = torch.full((batch_size, max_len), -1, dtype=torch.long)
    for row, (sample, length) in enumerate(zip(samples, lengths)):
        clip[row, :length] = sample["clip_pixel_values"]
        clip_mask[row, :length] = True
        frame_indices[row, :length] = sample["frame_indices"]
    tokens = collate_tokens(
        [TokenizedQuery(s["input_ids"], s["instruction_mask"], s["labels"]) for s in samples], pad_id
    )
    skipped: Counter[str] = Counter()
    for sample in samples:
        skipped.update(sample.get("skipped", {}))
    batch = {
        "pixel_values": torch.stack([s["pixel_values"] for s in samples]),
        "clip_pixel_values": clip,
        "clip_frame_mask": clip_mask,
        "frame_indices": frame_indices,
        "target_mask": torch.stack([s["target_mask"] for s in samples]),
        "ignore_mask": torch.stack([s["ignore_mask"] for s in samples]),
        "has_target": torch.tensor([s["has_target"] for s in samples], dtype=torch.bool),
        "has_mask": torch.tensor([s["has_mask"] for s in samples], dtype=torch.bool),
        "valid_hw": torch.tensor([s["valid_hw"] for s in samples], dtype=torch.long),
        "orig_hw": torch.tensor([s["orig_hw"] for s in samples], dtype=torch.long),
        **tokens,
        **{name: [s[name] for s in samples] for name in STRING_FIELDS},
        "shard_set": [s.get("shard_set", "") for s in samples],
        "skipped": dict(skipped),
    }
    if "object_masks" in samples[0]:
        batch.update(collate_object_masks([s["object_masks"] for s in samples]))
    return batch


def collate_object_masks(masks: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pad per-sample ``(K_b, S, S)`` object targets to ``object_masks (B, K_max, S, S)`` + ``object_count (B,)``."""
    counts = [m.shape[0] for m in masks]
    out = masks[0].new_zeros(len(masks), max(counts), *masks[0].shape[1:])
    for row, (mask, count) in enumerate(zip(masks, counts)):
        out[row, :count] = mask
    return {"object_masks": out, "object_count": torch.tensor(counts, dtype=torch.long)}
