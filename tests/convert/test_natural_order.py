"""One natural order (``instructseg.video_io.natural_key``) for frame folders and the converters' item ids."""

from __future__ import annotations

import functools
import random

import numpy as np
from PIL import Image

from datamodules.convert import mevis, refcoco, video
from instructseg.video_io import natural_key, open_video


def _compare(a: str, b: str) -> int:
    """An independent statement of the rule, character by character: at each position the end of a name comes
    first, then a digit run (compared by value), then any other character (compared lower-cased); names equal
    under this are ordered by their exact text."""
    x, y, i, j = a.lower(), b.lower(), 0, 0
    while i < len(x) and j < len(y):
        if x[i].isdigit() and y[j].isdigit():
            ri, rj = i, j
            while i < len(x) and x[i].isdigit():
                i += 1
            while j < len(y) and y[j].isdigit():
                j += 1
            if int(x[ri:i]) != int(y[rj:j]):
                return -1 if int(x[ri:i]) < int(y[rj:j]) else 1
        elif x[i].isdigit() != y[j].isdigit():
            return -1 if x[i].isdigit() else 1
        elif x[i] != y[j]:
            return -1 if x[i] < y[j] else 1
        else:
            i, j = i + 1, j + 1
    if (i < len(x)) != (j < len(y)):
        return 1 if i < len(x) else -1
    return (a > b) - (a < b)


def test_rule_on_examples():
    names = ["frame10", "Frame3", "frame2", "10", "2", "a", "x10a", "x9", "a1", "a01", "A1", "", "b", "a.", "a_"]
    expected = ["", "2", "10", "a", "A1", "a01", "a1", "a.", "a_", "b", "frame2", "Frame3", "frame10", "x9", "x10a"]
    assert sorted(names, key=natural_key) == expected


def test_rule_matches_independent_statement():
    rng = random.Random(0)
    alphabet = "aAbB_-.0123456789"
    names = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8))) for _ in range(3000)]
    assert sorted(names, key=natural_key) == sorted(names, key=functools.cmp_to_key(_compare))


def test_frame_folder_and_converters_use_the_rule(tmp_path):
    names = ["frame10", "Frame3", "frame2", "frame1b", "frame1"]
    for name in names:
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / f"{name}.png")
    assert open_video(tmp_path).names == ["frame1", "frame1b", "frame2", "Frame3", "frame10"]
    assert video.natural_key is mevis.natural_key is refcoco.natural_key is natural_key
