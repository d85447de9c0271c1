"""benchmarks/binding_ceiling.py: the random-object baseline, per-task means, and one short run of every pointer."""

from __future__ import annotations

import math
import random
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from binding_ceiling import COLUMNS, POINTERS, by_column, main, random_object_hits  # noqa: E402

from instructseg.pretrain import Scene, mllm_example  # noqa: E402


def _scene(visible: int, hidden: int) -> Scene:
    """A one-frame scene with ``visible`` 8 x 8 squares and ``hidden`` objects absent from the frame."""
    masks = {}
    for i in range(visible + hidden):
        mask = np.zeros((1, 64, 64), dtype=bool)
        if i < visible:
            mask[0, 8 * i : 8 * i + 8, :8] = True
        masks[str(i)] = mask
    objects = {str(i): {"shape": "square", "colour": "red", "size": "small", "motion": "still"} for i in masks}
    return Scene(
        task="res",
        frames=[np.zeros((64, 64, 3), dtype=np.uint8)],
        masks=masks,
        objects=objects,
        queries=[
            {"text": "the top square", "object_ids": ["0"], "type": "referring"},
            {"text": "the green star", "object_ids": [], "type": "no_target"},
        ],
        values={"colour": ["red"], "shape": ["square"], "size": ["small"]},
    )


def test_random_object_baseline_is_one_over_the_visible_objects_and_zero_without_target():
    scene = _scene(visible=4, hidden=1)
    rng = random.Random(0)
    examples = [mllm_example(scene, rng, 0.0, grid=8) for _ in range(20)]
    hits = random_object_hits(examples, [scene] * 20, per_scene=1)
    for example, hit in zip(examples, hits):
        assert hit == (0.25 if example.target_patches.any() else 0.0)
    assert set(hits) == {0.0, 0.25}  # both kinds of query were drawn


def test_by_column_averages_per_task_and_marks_empty_columns():
    scores = by_column([1.0, 0.0, 1.0], ["res", "res", "no target"])
    assert scores["res"] == 0.5 and scores["no target"] == 1.0 and math.isclose(scores["all"], 2 / 3)
    assert math.isnan(scores["rvos"]) and set(scores) == set(COLUMNS)


@pytest.mark.slow
def test_every_pointer_trains_and_is_scored_in_one_table(capsys):
    main(["--steps", "2", "--every", "1", "--scenes", "8", "--val-scenes", "4"])
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| pointer |"))
    rows = [line.strip("|").split("|") for line in lines[header + 2 :] if line.startswith("|")]
    assert rows[0][0].strip() == "random visible object"
    assert [(r[0].strip(), r[1].strip()) for r in rows[1:]] == [(p, s) for p in POINTERS for s in ("1", "2")]
    for row in rows:
        values = [float(v) for v in row[3:] if v.strip() != "–"]
        assert len(row) == 3 + len(COLUMNS) and all(0.0 <= v <= 1.0 for v in values)
    with pytest.raises(SystemExit):
        main(["--pointers", "bag-of-words,nonsense"])
