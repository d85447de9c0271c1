"""Clip sampling: key inside the video, references distinct and ordered where possible, short videos, determinism."""

import numpy as np
import pytest

from instructseg.sampling import (
    global_reference_frames,
    reference_frames_for_key,
    sample_clip_global_local,
    sample_clip_sparse,
)

SAMPLERS = [sample_clip_sparse, sample_clip_global_local]


def monotone(values):
    return values == sorted(values) or values == sorted(values, reverse=True)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("num_ref", [1, 2, 4])
def test_long_videos(sampler, num_ref):
    rng = np.random.default_rng(0)
    for n in (num_ref + 1, 8, 30, 200):
        for _ in range(100):
            key, refs = sampler(n, num_ref, rng)
            assert 0 <= key < n and len(refs) == num_ref
            assert all(0 <= r < n for r in refs)
            assert len(set(refs)) == num_ref and key not in refs  # distinct when the video is long enough
            assert monotone(refs)


def test_sparse_key_is_middle_and_jumps_are_bounded():
    rng = np.random.default_rng(1)
    reversed_count = 0
    for _ in range(2000):
        key, refs = sample_clip_sparse(100, 4, rng)
        clip = [*refs[:2], key, *refs[2:]]
        assert monotone(clip)
        gaps = np.diff(sorted(clip))
        assert gaps.max() <= 9  # each frame lies within max_jump (<= 9) of an earlier one
        reversed_count += clip[0] > clip[-1]
    assert abs(reversed_count / 2000 - 0.3) < 0.04


def test_global_local_has_a_local_neighbour_and_spread():
    rng = np.random.default_rng(2)
    spans = []
    for _ in range(500):
        key, refs = sample_clip_global_local(60, 4, rng)
        assert min(abs(r - key) for r in refs) <= 3
        spans.append(max(refs) - min(refs))
    assert np.mean(spans) > 30  # global references cover the video


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_short_videos_repeat_frames(sampler, n):
    rng = np.random.default_rng(3)
    for _ in range(50):
        key, refs = sampler(n, 4, rng)
        assert len(refs) == 4 and all(0 <= r < n for r in [key, *refs])
        assert monotone(refs)
        if sampler is sample_clip_sparse:
            assert set([key, *refs]) == set(range(n))  # every available frame is used


def test_images_are_their_own_reference():
    rng = np.random.default_rng(0)
    assert sample_clip_sparse(1, 1, rng) == (0, [0])
    assert sample_clip_global_local(1, 1, rng) == (0, [0])
    assert sample_clip_sparse(1, 3, rng) == (0, [0, 0, 0])


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_deterministic_with_seed(sampler):
    first = [sampler(40, 4, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    second = [sampler(40, 4, rng) for rng in [np.random.default_rng(7)] for _ in range(20)]
    other = [sampler(40, 4, rng) for rng in [np.random.default_rng(8)] for _ in range(20)]
    assert first == second and first != other


@pytest.mark.parametrize(
    ("n", "key", "num_ref", "expected"),
    [
        (10, 5, 4, [3, 4, 6, 7]),
        (10, 0, 4, [1, 2, 3, 4]),
        (10, 1, 4, [0, 2, 3, 4]),
        (10, 9, 4, [5, 6, 7, 8]),
        (10, 5, 2, [4, 6]),
        (10, 5, 3, [4, 6, 7]),
        (3, 1, 4, [0, 0, 2, 2]),
        (2, 0, 4, [1, 1, 1, 1]),
        (1, 0, 4, [0, 0, 0, 0]),
    ],
)
def test_reference_frames_for_key(n, key, num_ref, expected):
    assert reference_frames_for_key(n, key, num_ref) == expected


def test_global_reference_frames():
    assert global_reference_frames(10, 4) == [0, 3, 6, 9]
    assert global_reference_frames(1, 3) == [0, 0, 0]
    assert global_reference_frames(100, 1) == [0]


def test_invalid_arguments():
    with pytest.raises(ValueError, match="frame"):
        sample_clip_sparse(0, 4, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_ref"):
        sample_clip_sparse(5, 0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside"):
        reference_frames_for_key(5, 5, 2)
