"""Clip sampling: which frames of an ``n``-frame video form a clip of 1 key frame + ``R`` reference frames.

Every function returns ``(key_index, ref_indices)`` with exactly ``num_ref`` reference indices in clip order
(ascending time, or descending when a training clip is reversed). When the video has fewer than ``num_ref + 1``
frames, frames are repeated so that ``ref_indices`` still has ``num_ref`` entries; a 1-frame video gives
``(0, [0] * num_ref)``.

Images need no sampling: their clip is the key frame alone and the model uses the image's own encoding as its single
reference frame (see :class:`datamodules.pipeline.SampleBuilder`).

* :func:`sample_clip_sparse` — the reference training scheme (``reference/instructseg-reference.md`` §6, from XMem):
  a random ``max_jump`` in 2..9, the first frame uniform, each further frame drawn uniformly from the union of the
  ``±max_jump`` windows around the frames chosen so far, sorted, reversed with p = 0.3; the key frame is the middle.
* :func:`sample_clip_global_local` — VISA-style: a uniform key frame, one local neighbour within 3 frames, and the
  other references spread over the whole video (one random frame per equal segment).
* :func:`reference_frames_for_key` — deterministic neighbours of a given key frame for inference
  (``t-2, t-1, t+1, t+2`` for ``R = 4``, shifted inwards at the video boundaries).
* :func:`global_reference_frames` — ``R`` frames evenly spread over the video.
* :func:`global_local_reference_frames` — VISA's inference references around a chosen key frame: ``R - R // 2``
  contiguous neighbours (:func:`reference_frames_for_key`) and ``R // 2`` frames evenly spread over the video.
* :func:`adaptive_reference_frames` — ViLLa's adaptive sampling for a key segment: ``round(R / 3)`` frames evenly
  spread over the whole video and the other ``R - round(R / 3)`` (about two thirds) evenly spread over the segment
  widened by ``LOCAL_RADIUS`` frames on each side (its preceding and following neighbours).
"""

from __future__ import annotations

import numpy as np

REVERSE_PROBABILITY = 0.3
MAX_JUMP_RANGE = (2, 10)
LOCAL_RADIUS = 3


def _check(n: int, num_ref: int) -> None:
    if n < 1:
        raise ValueError(f"n: a video needs at least one frame, got {n}.")
    if num_ref < 1:
        raise ValueError(f"num_ref: expected >= 1 reference frame, got {num_ref}.")


def _stretch(indices: list[int], length: int) -> list[int]:
    """Repeat the (sorted) ``indices`` evenly to ``length`` entries, keeping their order: [0, 1] → [0, 0, 1, 1]."""
    return [indices[i * len(indices) // length] for i in range(length)]


def _split_key(clip: list[int], key_position: int, num_ref: int) -> tuple[int, list[int]]:
    """Key = ``clip[key_position]``; the other entries (stretched to ``num_ref`` when short) are the references."""
    key = clip[key_position]
    refs = clip[:key_position] + clip[key_position + 1 :]
    return key, _stretch(refs, num_ref) if refs else [key] * num_ref


def sample_clip_sparse(n: int, num_ref: int, rng: np.random.Generator) -> tuple[int, list[int]]:
    """The reference training clip sampler (see the module docstring).

    Args:
        n: number of frames in the video.
        num_ref: number of reference frames ``R``.
        rng: random generator.

    Returns:
        ``(key_index, ref_indices)``; the key is the middle frame of the sorted (maybe reversed) clip.
    """
    _check(n, num_ref)
    length = num_ref + 1
    max_jump = min(n, int(rng.integers(*MAX_JUMP_RANGE)))
    chosen = [int(rng.integers(n))]
    acceptable: set[int] = set()
    while len(chosen) < min(length, n):
        last = chosen[-1]
        acceptable |= set(range(max(0, last - max_jump), min(n, last + max_jump + 1)))
        acceptable -= set(chosen)
        chosen.append(int(rng.choice(sorted(acceptable))))
    clip = _stretch(sorted(chosen), length)
    if rng.random() < REVERSE_PROBABILITY:
        clip.reverse()
    return _split_key(clip, length // 2, num_ref)


def sample_clip_global_local(n: int, num_ref: int, rng: np.random.Generator) -> tuple[int, list[int]]:
    """VISA-style clip: uniform key, one local neighbour, the other references spread over the video.

    Args:
        n: number of frames in the video.
        num_ref: number of reference frames ``R`` (1 local + ``R - 1`` global).
        rng: random generator.

    Returns:
        ``(key_index, ref_indices)`` with the references in ascending time.
    """
    _check(n, num_ref)
    if n == 1:
        return 0, [0] * num_ref
    key = int(rng.integers(n))
    local_window = [i for i in range(max(0, key - LOCAL_RADIUS), min(n, key + LOCAL_RADIUS + 1)) if i != key]
    refs = [int(rng.choice(local_window))]
    others = [i for i in range(n) if i != key and i != refs[0]]
    num_global = min(num_ref - 1, len(others))
    if num_global:
        refs += [int(rng.choice(segment)) for segment in np.array_split(np.array(others), num_global)]
    return key, _stretch(sorted(refs), num_ref)


def reference_frames_for_key(n: int, key: int, num_ref: int) -> list[int]:
    """Deterministic reference frames around ``key`` for inference.

    The clip is the window of ``num_ref + 1`` consecutive frames centred on ``key`` (``t-2 .. t+2`` for
    ``num_ref = 4``), shifted inwards at the video boundaries; videos shorter than the window repeat frames.

    Args:
        n: number of frames in the video.
        key: key frame index in ``[0, n)``.
        num_ref: number of reference frames ``R``.

    Returns:
        ``num_ref`` frame indices in ascending time.
    """
    _check(n, num_ref)
    if not 0 <= key < n:
        raise ValueError(f"key: frame index {key} outside [0, {n}).")
    length = num_ref + 1
    start = min(max(0, key - num_ref // 2), max(0, n - length))
    window = list(range(start, min(n, start + length)))
    return _split_key(window, window.index(key), num_ref)[1]


def global_reference_frames(n: int, num_ref: int) -> list[int]:
    """``num_ref`` frame indices evenly spread over an ``n``-frame video (first and last included)."""
    _check(n, num_ref)
    return [int(i) for i in np.linspace(0, n - 1, num_ref).round()]


def global_local_reference_frames(n: int, key: int, num_ref: int) -> list[int]:
    """VISA's global-local references for a chosen key frame (deterministic, for inference).

    Args:
        n: number of frames in the video.
        key: key frame index in ``[0, n)``.
        num_ref: number of reference frames ``R``: ``R - R // 2`` local (the window of
            :func:`reference_frames_for_key`) and ``R // 2`` global (:func:`global_reference_frames`).

    Returns:
        ``num_ref`` frame indices in ascending time (repeats allowed in short videos).
    """
    num_global = num_ref // 2
    local = reference_frames_for_key(n, key, num_ref - num_global)
    return sorted(local + (global_reference_frames(n, num_global) if num_global else []))


def adaptive_reference_frames(n: int, segment: tuple[int, int], num_ref: int) -> list[int]:
    """ViLLa's adaptive references for the key segment ``[start, stop)`` (deterministic, for inference).

    ``round(R / 3)`` references are spread evenly over the whole video, the other ``R - round(R / 3)`` evenly over
    the segment widened by ``LOCAL_RADIUS`` frames on each side (clipped to the video).

    Args:
        n: number of frames in the video.
        segment: ``(start, stop)`` with ``0 <= start < stop <= n``.
        num_ref: number of reference frames ``R``.

    Returns:
        ``num_ref`` frame indices in ascending time (repeats allowed in short segments or videos).
    """
    _check(n, num_ref)
    start, stop = segment
    if not 0 <= start < stop <= n:
        raise ValueError(f"segment: expected 0 <= start < stop <= {n}, got {segment}.")
    num_global = round(num_ref / 3)
    low, high = max(0, start - LOCAL_RADIUS), min(n, stop + LOCAL_RADIUS)
    local = [low + int(i) for i in np.linspace(0, high - low - 1, num_ref - num_global).round()]
    return sorted(local + (global_reference_frames(n, num_global) if num_global else []))
