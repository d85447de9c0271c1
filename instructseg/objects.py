"""Several objects per instruction at inference: up to K masks above the score threshold, overlaps suppressed.

Legend: B samples (frames), Q mask queries, K = ``max_objects``, h x w decoder resolution, T frames, H x W original.

:func:`select_objects` generalises :meth:`InstructSeg.select`: queries are ranked by the same number
(``sigmoid(s_q)`` x mean in-mask probability); slot 0 is always the query ``select`` picks (so ``max_objects=1`` is
exactly ``select``), slots 1.. take the next ranked queries whose score reaches the threshold, whose mask is not empty
and overlaps every kept mask by less than ``overlap`` (mask IoU at decoder resolution, greedy non-maximum
suppression).

In videos, objects are ranked per frame (slot j of frame t is that frame's j-th object); a tracker keeps each
key-frame object's identity instead. :class:`VideoCollector` gathers the slots frame by frame; a prediction's
``masks`` / ``scores`` / ``no_target`` stay the union / best over the objects (the single answer when K = 1).

:func:`object_recall` is the per-object score of multi-object instructions: the fraction of ground-truth objects
matched one-to-one (Hungarian on IoU over all frames) by a predicted object with IoU >= 0.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from instructseg.modeling.mask_decoder import MaskPrediction


@dataclass
class ObjectSelection:
    """Up to K objects per sample.

    Attributes:
        mask_logits: ``(B, K, h, w)`` logits (``-inf`` where ``no_target``).
        score: ``(B, K)`` sigmoid scores (0 for empty slots).
        no_target: ``(B, K)`` bool, the slot holds no object (score below the threshold, or no candidate left).
        query: ``(B, K)`` query index of each slot (-1 for empty slots).
    """

    mask_logits: torch.Tensor
    score: torch.Tensor
    no_target: torch.Tensor
    query: torch.Tensor


@dataclass
class ImageObject:
    """One object found in an image: ``mask`` ``(H, W)`` bool at the original resolution and its ``score``."""

    mask: np.ndarray
    score: float


@dataclass
class VideoObject:
    """One object slot of a video.

    Attributes:
        masks: ``(T, H, W)`` bool at the original resolution (empty where ``no_target``).
        scores: ``(T,)`` float32.
        no_target: ``(T,)`` bool.
    """

    masks: np.ndarray
    scores: np.ndarray
    no_target: np.ndarray


def mask_iou(masks: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU ``(Q, Q)`` of ``(Q, h, w)`` boolean masks (0 for two empty masks)."""
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    return inter / (area[:, None] + area[None, :] - inter).clamp(min=1.0)


@torch.no_grad()
def select_objects(
    prediction: MaskPrediction,
    max_objects: int,
    threshold: float,
    overlap: float = 0.5,
    ranking: torch.Tensor | None = None,
) -> ObjectSelection:
    """Pick up to ``max_objects`` non-overlapping objects per sample (see the module docstring).

    Args:
        prediction: decoder output (the last step is used).
        max_objects: K >= 1.
        threshold: no-target threshold on the sigmoid score.
        overlap: a candidate whose mask IoU with a kept object is at least this is suppressed.
        ranking: ``(B, Q)`` values to order the queries by (the official profile's
            :func:`~instructseg.processing.official_query_ranking`); default: score x mean in-mask probability at the
            decoder's resolution.
    """
    if max_objects < 1:
        raise ValueError(f"max_objects: expected >= 1, got {max_objects}.")
    if not 0.0 < overlap <= 1.0:
        raise ValueError(f"overlap: expected a mask IoU in (0, 1], got {overlap}.")
    logits = prediction.mask_logits[-1].float()  # (B, Q, h, w)
    scores = prediction.scores[-1].float().sigmoid()  # (B, Q)
    fg = logits > 0
    fg_f = fg.float()
    in_mask = (logits.sigmoid() * fg_f).flatten(2).sum(-1) / fg_f.flatten(2).sum(-1).clamp(min=1.0)
    rank = scores * in_mask if ranking is None else ranking.to(scores)
    order = torch.sort(rank, dim=1, descending=True, stable=True).indices  # (B, Q); col 0 = argmax
    b, k = logits.shape[0], max_objects
    query = torch.full((b, k), -1, dtype=torch.long, device=logits.device)
    for row in range(b):
        kept = [int(order[row, 0])]
        iou = mask_iou(fg[row]) if k > 1 else None
        for q in order[row, 1:].tolist():
            if len(kept) == k:
                break
            if scores[row, q] < threshold or not fg[row, q].any():
                continue
            if all(iou[q, j] < overlap for j in kept if scores[row, j] >= threshold):
                kept.append(q)
        query[row, : len(kept)] = torch.tensor(kept, device=logits.device)
    rows = torch.arange(b, device=logits.device)[:, None]
    filled = query >= 0
    safe = query.clamp(min=0)
    score = torch.where(filled, scores[rows, safe], torch.zeros_like(scores[:, :1]))
    no_target = ~filled | (score < threshold)
    mask_logits = logits[rows, safe].masked_fill(no_target[..., None, None], float("-inf"))
    return ObjectSelection(mask_logits, score, no_target, query)


def object_recall(predicted: Sequence[np.ndarray], targets: Sequence[np.ndarray], iou: float = 0.5) -> float:
    """Fraction of ``targets`` matched by a distinct ``predicted`` object with IoU >= ``iou``.

    Args:
        predicted: object masks, each ``(T, H, W)`` (or ``(H, W)``) bool.
        targets: ground-truth object masks of the same shape.
        iou: the matching threshold.

    Returns:
        Recall in [0, 1] (1.0 when there is no target object).
    """
    from scipy.optimize import linear_sum_assignment

    if not targets:
        return 1.0
    if not predicted:
        return 0.0
    pred = torch.from_numpy(np.stack([np.asarray(m, dtype=bool).reshape(-1) for m in predicted]))
    gt = torch.from_numpy(np.stack([np.asarray(m, dtype=bool).reshape(-1) for m in targets]))
    table = mask_iou(torch.cat([pred, gt]))[: len(pred), len(pred) :].numpy()  # (P, G)
    rows, cols = linear_sum_assignment(-table)
    return float((table[rows, cols] >= iou).sum() / len(targets))


class VideoCollector:
    """Per-instruction object slots ``(K, T, H, W)``, scores and no-target flags, filled chunk by chunk.

    Args:
        num_queries: instructions.
        num_frames: ``T``.
        max_objects: K.
    """

    def __init__(self, num_queries: int, num_frames: int, max_objects: int) -> None:
        self.masks: list[np.ndarray | None] = [None] * num_queries  # (K, T, H, W) each, allocated on first add
        self.scores = np.zeros((num_queries, max_objects, num_frames), dtype=np.float32)
        self.no_target = np.ones((num_queries, max_objects, num_frames), dtype=bool)

    def add(self, k: int, keys: Sequence[int], masks: np.ndarray, scores: np.ndarray, no_target: np.ndarray) -> None:
        """Store frames ``keys`` of instruction ``k``: masks ``(B, K, H, W)`` bool, scores and flags ``(B, K)``."""
        if self.masks[k] is None:
            self.masks[k] = np.zeros((self.scores.shape[1], self.scores.shape[2], *masks.shape[2:]), dtype=bool)
        index = list(keys)
        self.masks[k][:, index] = masks.transpose(1, 0, 2, 3)
        self.scores[k][:, index] = np.asarray(scores, dtype=np.float32).T
        self.no_target[k][:, index] = np.asarray(no_target, dtype=bool).T

    def absent(self, k: int, keys: Sequence[int], scores: np.ndarray) -> None:
        """Frames ``keys`` of instruction ``k`` hold no target; ``scores`` ``(B,)`` are reported for slot 0."""
        index = list(keys)
        self.scores[k][:, index] = 0.0
        self.scores[k][0, index] = scores
        self.no_target[k][:, index] = True

    def result(self, k: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[VideoObject]]:
        """``masks (T, H, W)`` (union of the objects), ``scores (T,)`` (best), ``no_target (T,)`` (no object) and
        the object slots present in at least one frame."""
        num_objects, num_frames = self.scores.shape[1:]
        masks = self.masks[k]
        if masks is None:
            masks = np.zeros((num_objects, num_frames, *hw), dtype=bool)
        objects = [
            VideoObject(masks[j], self.scores[k, j], self.no_target[k, j])
            for j in range(num_objects)
            if not self.no_target[k, j].all()
        ]
        union = masks[0] if num_objects == 1 else masks.any(0)
        return union, self.scores[k].max(0), self.no_target[k].all(0), objects
