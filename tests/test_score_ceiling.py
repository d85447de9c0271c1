"""benchmarks/score_ceiling.py: query kinds, the bag of words, the offline scorer and the per-kind means."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from score_ceiling import (  # noqa: E402
    KINDS,
    bag_of_words,
    fit_scorer,
    main,
    picked_iou,
    query_kind,
    standardize,
)

from datamodules.synthetic import make_scene, referring_candidates  # noqa: E402


def test_query_kind_matches_the_kind_the_generator_built_each_phrase_as():
    rng = np.random.default_rng(0)
    seen = set()
    for index in range(60):
        video = index % 2 == 1
        objects = make_scene(rng, 64, 6 if video else 1)
        for target in range(len(objects)):
            for kind, phrases in referring_candidates(objects, target, video, 64).items():
                for phrase in phrases:
                    assert query_kind("referring", phrase) == kind, phrase
                    seen.add(kind)
    assert seen == {"attribute", "spatial", "motion"}
    assert query_kind("reasoning", "the object that is coloured like grass") == "reasoning"
    assert query_kind("no_target", "the object that has five points") == "reasoning"


def test_bag_of_words_marks_the_known_words_of_each_text():
    vocabulary = {"red": 0, "circle": 1, "the": 2}
    x = bag_of_words(["The red circle", "a blue square", "red, red!"], vocabulary)
    assert x.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]


def _colour_task(n: int, queries: int, colours: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query shows one colour (one-hot, all different); the text names one; the best query shows it."""
    generator = torch.Generator().manual_seed(seed)
    shown = torch.stack([torch.randperm(colours, generator=generator)[:queries] for _ in range(n)])  # (n, Q)
    best = torch.randint(queries, (n,), generator=generator)
    text = torch.nn.functional.one_hot(shown[torch.arange(n), best], colours).float()
    return torch.nn.functional.one_hot(shown, colours).float(), text, best


def test_the_scorer_learns_a_planted_binding_and_not_one_that_is_absent():
    query, text, best = _colour_task(2000, 4, 8, seed=0)
    val_query, val_text, val_best = _colour_task(500, 4, 8, seed=1)
    query, val_query = standardize(query, val_query)
    scorer = fit_scorer(query, text, best, steps=400)
    with torch.no_grad():
        accuracy = (scorer(val_query, val_text).argmax(1) == val_best).float().mean()
    assert accuracy > 0.95
    blind = fit_scorer(query, torch.zeros_like(text), best, steps=400)  # the text says nothing
    with torch.no_grad():
        accuracy = (blind(val_query, torch.zeros_like(val_text)).argmax(1) == val_best).float().mean()
    assert accuracy < 0.4  # chance is 1 / 4


def test_picked_iou_is_the_mean_iou_of_the_picked_query_overall_and_per_kind():
    iou = torch.tensor([[0.9, 0.1], [0.2, 0.6], [0.5, 0.0]])
    values = picked_iou(iou, torch.tensor([0, 0, 1]), ["attribute", "spatial", "attribute"])
    assert math.isclose(values[0], (0.9 + 0.2 + 0.0) / 3, rel_tol=1e-6)
    by_kind = dict(zip(KINDS, values[1:]))
    assert math.isclose(by_kind["attribute"], 0.45, rel_tol=1e-6)
    assert math.isclose(by_kind["spatial"], 0.2, rel_tol=1e-6)
    assert math.isnan(by_kind["motion"]) and math.isnan(by_kind["reasoning"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--checkpoint", "/nonexistent/last.ckpt"], "No training checkpoint at /nonexistent/last.ckpt"),
        (["--checkpoint", "x.ckpt", "--sizes", "3200,many"], "--sizes: expected comma-separated positive integers"),
        (["--checkpoint", "x.ckpt", "--sizes", "0"], "--sizes: expected comma-separated positive integers"),
    ],
)
def test_bad_arguments_are_one_error_line_with_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
