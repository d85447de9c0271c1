"""Text-guided frame selection without a second LLM: relevance curves, key frames and key segments.

Legend: T frames.

VISA picks the frame that matters with a separate video LLM (LLaMA-VID) and ViLLa the key segments with another
(Grounded-VideoLLM). Here the InstructSeg model scores the frames itself, cheaply:

1. **Relevance curve** (:class:`RelevanceRecorder`): one co-decode per instruction with the middle frame as key and
   references spread evenly over the video (the ``shared`` strategy's pass), then the mask decoder on every frame
   (or every ``relevance_stride``-th, linearly interpolated in between), chunk by chunk; a frame's relevance is the
   score of the query :meth:`InstructSeg.select` picks there (sigmoid of the text-similarity score, the number the
   no-target threshold applies to). Only ``T`` floats per instruction are kept.
2. **Key frame** (:func:`choose_key_frame`): the maximum of the smoothed curve.
3. **Key segments** (:func:`extract_segments`, :class:`SegmentRule`): the runs where the smoothed curve reaches the
   threshold, gaps of at most ``max_gap`` frames closed, runs shorter than ``min_length`` dropped.

The predictor (``strategy="keyframe"`` / ``"segments"``) then segments the key frame (of each segment) with the
paper's protocol using VISA's global-local (:func:`~instructseg.sampling.global_local_reference_frames`) or ViLLa's
adaptive (:func:`~instructseg.sampling.adaptive_reference_frames`) references.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from instructseg.modeling.mask_decoder import MaskPrediction


@dataclass(frozen=True)
class SegmentRule:
    """How key segments are read off a relevance curve.

    Attributes:
        threshold: a frame is relevant when its smoothed relevance is at least this (``None``: the no-target
            threshold of the call / ``config.decoder.no_target_threshold``).
        smooth: width in frames of the centred moving average applied first (1 = none; edges repeat the end values).
        min_length: segments shorter than this many frames are dropped (after closing gaps).
        max_gap: runs separated by at most this many irrelevant frames are merged into one segment.
    """

    threshold: float | None = None
    smooth: int = 5
    min_length: int = 3
    max_gap: int = 2

    def __post_init__(self) -> None:
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"SegmentRule.threshold: expected None or a score in [0, 1], got {self.threshold}.")
        for name in ("smooth", "min_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"SegmentRule.{name}: expected >= 1, got {getattr(self, name)}.")
        if self.max_gap < 0:
            raise ValueError(f"SegmentRule.max_gap: expected >= 0, got {self.max_gap}.")


def smooth_curve(curve: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of width ``width`` over a ``(T,)`` curve, edges padded with the end values."""
    curve = np.asarray(curve, dtype=np.float64)
    if width <= 1 or curve.size < 2:
        return curve
    padded = np.pad(curve, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.full(width, 1.0 / width), mode="valid")


def choose_key_frame(curve: np.ndarray, smooth: int = SegmentRule.smooth) -> int:
    """The key frame: the first maximum of the smoothed ``(T,)`` relevance curve."""
    curve = np.asarray(curve)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"curve: expected a non-empty (T,) relevance curve, got shape {curve.shape}.")
    return int(np.argmax(smooth_curve(curve, smooth)))


def extract_segments(curve: np.ndarray, rule: SegmentRule, threshold: float) -> list[tuple[int, int]]:
    """Key segments ``[(start, stop), ...]`` (half-open, ascending) of a ``(T,)`` relevance curve.

    Args:
        curve: per-frame relevance in [0, 1].
        rule: smoothing, gap closing and minimum length.
        threshold: used when ``rule.threshold`` is ``None``.
    """
    curve = np.asarray(curve)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"curve: expected a non-empty (T,) relevance curve, got shape {curve.shape}.")
    limit = threshold if rule.threshold is None else rule.threshold
    relevant = smooth_curve(curve, rule.smooth) >= limit
    edges = np.flatnonzero(np.diff(np.concatenate([[0], relevant.astype(np.int8), [0]])))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2])]
    merged: list[tuple[int, int]] = []
    for start, stop in runs:
        if merged and start - merged[-1][1] <= rule.max_gap:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return [(a, b) for a, b in merged if b - a >= rule.min_length]


class RelevanceRecorder:
    """Receives the decoder output of a relevance pass and keeps one score per (instruction, frame).

    Args:
        num_queries: instructions.
        num_frames: ``T``.
        select: :meth:`InstructSeg.select` (the score of the query it picks is the relevance).

    Attributes:
        curves: ``(num_queries, T)`` float32 relevance, filled by :meth:`decoded`.
    """

    def __init__(self, num_queries: int, num_frames: int, select: Callable) -> None:
        self.curves = np.zeros((num_queries, num_frames), dtype=np.float32)
        self._select = select

    def decoded(self, k: int, keys: Sequence[int], prediction: MaskPrediction) -> None:
        """Record the relevance of frames ``keys`` for instruction ``k`` from their decoder output."""
        self.curves[k, list(keys)] = self._select(prediction).score.float().cpu().numpy()

    def interpolated(self, sampled: Sequence[int]) -> np.ndarray:
        """``(num_queries, T)`` curves recorded on the ascending frames ``sampled``, linear in between."""
        frames, sampled = np.arange(self.curves.shape[1]), list(sampled)
        return np.stack([np.interp(frames, sampled, curve[sampled]) for curve in self.curves]).astype(np.float32)
