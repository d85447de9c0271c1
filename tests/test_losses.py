"""Reference tests for the matcher and the loss terms on small hand-checkable cases."""

from itertools import permutations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from instructseg.config import LossConfig
from instructseg.losses import (
    InstructSegCriterion,
    bce_loss,
    dice_loss,
    hungarian_match,
    pairwise_mask_cost,
    point_sample,
)
from instructseg.modeling.mask_decoder import MaskPrediction


def brute_force_cost(cost: np.ndarray) -> float:
    q, k = cost.shape
    return min(sum(cost[r, c] for c, r in enumerate(rows)) for rows in permutations(range(q), k))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("q, k", [(3, 1), (4, 2), (5, 3)])
def test_matcher_is_optimal_against_brute_force(seed, q, k):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(1, q, 8, 8, generator=gen) * 3
    targets = (torch.rand(k, 8, 8, generator=gen) > 0.5).float()
    torch.manual_seed(seed)
    ((rows, cols),) = hungarian_match(logits, [targets], num_points=64, bce_weight=5.0, dice_weight=5.0)
    torch.manual_seed(seed)
    coords = torch.rand(1, 64, 2)
    pred = point_sample(logits[0][:, None], coords.expand(q, -1, -1))[:, 0]
    tgt = point_sample(targets[:, None], coords.expand(k, -1, -1))[:, 0]
    cost = pairwise_mask_cost(pred, tgt, 5.0, 5.0).numpy()
    assert len(rows) == k and sorted(cols.tolist()) == list(range(k))
    assert cost[rows.numpy(), cols.numpy()].sum() == pytest.approx(brute_force_cost(cost), abs=1e-5)


def test_pairwise_cost_matches_per_pair_losses():
    gen = torch.Generator().manual_seed(1)
    pred, tgt = torch.randn(3, 50, generator=gen), (torch.rand(2, 50, generator=gen) > 0.5).float()
    cost = pairwise_mask_cost(pred, tgt, 2.0, 3.0)
    for i in range(3):
        for j in range(2):
            p, t = pred[i : i + 1], tgt[j : j + 1]
            expected = 2.0 * bce_loss(p, t) + 3.0 * dice_loss(p, t)
            assert cost[i, j] == pytest.approx(float(expected), abs=1e-5)


def test_dice_and_bce_hand_values():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0]])  # p = 0.5 everywhere
    target = torch.tensor([[1.0, 1.0, 0.0, 0.0]])
    # dice = 1 - (2*1 + 1) / (2 + 2 + 1) = 0.4
    assert float(dice_loss(logits, target)) == pytest.approx(0.4)
    assert float(bce_loss(logits, target)) == pytest.approx(np.log(2.0))
    big = torch.tensor([[20.0, 20.0, -20.0, -20.0]])
    assert float(dice_loss(big, target)) == pytest.approx(0.0, abs=1e-6)
    assert float(bce_loss(big, target)) == pytest.approx(0.0, abs=1e-6)


def test_point_sample_reads_pixel_centres():
    values = torch.arange(16.0).view(1, 1, 4, 4)
    coords = torch.tensor([[[0.125, 0.125], [0.875, 0.375]]])  # centres of (0,0) and (row 1, col 3)
    assert point_sample(values, coords)[0, 0].tolist() == pytest.approx([0.0, 7.0])


def _prediction(b=2, q=4, side=8, steps=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = [torch.randn(b, q, side, side, generator=gen, requires_grad=True) for _ in range(steps)]
    scores = [torch.randn(b, q, generator=gen, requires_grad=True) for _ in range(steps)]
    return MaskPrediction(masks, scores)


def test_no_target_sample_gives_no_mask_loss_and_pushes_scores_down():
    pred = _prediction(b=1)
    crit = InstructSegCriterion(LossConfig(num_points=64))
    out = crit(pred, torch.zeros(1, 32, 32), torch.tensor([False]), torch.tensor([True]))
    assert float(out["loss_bce"]) == 0.0 and float(out["loss_dice"]) == 0.0
    expected = torch.nn.functional.binary_cross_entropy_with_logits(pred.scores[-1], torch.zeros(1, 4))
    assert float(out["loss_class"]) == pytest.approx(float(expected), rel=1e-5)
    out["loss"].backward()
    assert (pred.scores[-1].grad > 0).all()  # gradient descent lowers every score
    assert pred.mask_logits[-1].grad is None or pred.mask_logits[-1].grad.abs().sum() == 0


def test_class_loss_positive_weighting_and_deep_supervision():
    pred = _prediction(b=2, q=4, steps=3)
    target = torch.zeros(2, 32, 32)
    target[:, :16] = 1
    matched = [2, 1]  # in every step this query of each sample predicts the target exactly, so it must be matched
    with torch.no_grad():
        for logits in pred.mask_logits:
            for b, query in enumerate(matched):
                logits[b, query] = -10.0
                logits[b, query, :4] = 10.0  # rows 0-3 of 8 = the top half
    crit = InstructSegCriterion(LossConfig(num_points=64, class_weight=2.0, mask_weight=5.0, dice_weight=5.0))
    out = crit(pred, target, torch.tensor([True, True]), torch.tensor([True, True]))
    assert {"loss_class_0", "loss_class_1", "loss_class", "loss_bce_0", "loss_dice_1"} <= set(out)
    total = sum(
        2.0 * out[f"loss_class{s}"] + 5.0 * out[f"loss_bce{s}"] + 5.0 * out[f"loss_dice{s}"] for s in ("_0", "_1", "")
    )
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-5)
    # BCE written out with pos_weight = (8 logits - 2 positives) / 2 positives = 3 on the matched queries
    is_matched = torch.zeros(2, 4, dtype=torch.bool)
    is_matched[[0, 1], matched] = True
    for suffix, scores in zip(("_0", "_1", ""), pred.scores):
        log_p, log_not_p = F.logsigmoid(scores), F.logsigmoid(-scores)
        expected = -torch.where(is_matched, 3.0 * log_p, log_not_p).mean()
        unweighted = -torch.where(is_matched, log_p, log_not_p).mean()
        assert float(out[f"loss_class{suffix}"]) == pytest.approx(float(expected), rel=1e-5)
        assert abs(float(expected) - float(unweighted)) > 1e-2  # the weighting is visible in this case


def test_vqa_rows_are_left_out():
    pred = _prediction(b=2)
    crit = InstructSegCriterion(LossConfig(num_points=64))
    target = torch.ones(2, 32, 32)
    torch.manual_seed(0)
    both = crit(pred, target, torch.tensor([True, True]), torch.tensor([True, False]))
    torch.manual_seed(0)
    only_first = crit(
        MaskPrediction([m[:1] for m in pred.mask_logits], [s[:1] for s in pred.scores]),
        target[:1],
        torch.tensor([True]),
        torch.tensor([True]),
    )
    assert float(both["loss_class"]) == pytest.approx(float(only_first["loss_class"]), rel=1e-5)
    text = torch.tensor(2.5)
    with_text = crit(pred, target, torch.tensor([True, True]), torch.tensor([False, False]), lm_loss=text)
    assert float(with_text["loss"]) == pytest.approx(2.5) and float(with_text["loss_bce"]) == 0.0


def test_matcher_takes_the_global_optimum_where_greedy_would_not():
    """Hand-checkable stripes: target 0 = columns 0-3, target 1 = columns 0-5 of an 8x8 mask.

    Query 0 (columns 0-4) is the cheapest query for *both* targets, so a per-target greedy choice gives it to
    target 0 (1 + 4 wrong columns); the optimum gives query 1 (columns 0-1) to target 0 (2 + 1 wrong columns).
    """
    targets = torch.zeros(2, 8, 8)
    targets[0, :, :4] = 1
    targets[1, :, :6] = 1
    logits = torch.full((1, 3, 8, 8), -10.0)
    logits[0, 0, :, :5] = 10.0
    logits[0, 1, :, :2] = 10.0
    logits[0, 2, :, 7:] = 10.0  # a bad query
    dense = pairwise_mask_cost(logits[0].flatten(1), targets.flatten(1), 5.0, 5.0)
    assert dense.argmin(0).tolist() == [0, 0]  # the premise: greedy would give query 0 to target 0
    ((rows, cols),) = hungarian_match(logits, [targets], num_points=4096, bce_weight=5.0, dice_weight=5.0)
    assert sorted(zip(cols.tolist(), rows.tolist())) == [(0, 1), (1, 0)]


def test_class_cost_breaks_ties_towards_the_highest_score():
    logits = torch.zeros(1, 4, 8, 8)  # every query predicts the same mask: the mask cost is a tie
    target = torch.ones(1, 8, 8)
    scores = torch.tensor([[-3.0, -1.0, 4.0, 0.0]])
    ((rows, _),) = hungarian_match(logits, [target], 16, 5.0, 5.0, scores=scores, class_weight=2.0)
    assert rows.tolist() == [2]
    ((rows, _),) = hungarian_match(logits, [target], 16, 5.0, 5.0, scores=-scores, class_weight=2.0)
    assert rows.tolist() == [0]


def test_ignored_pixels_change_no_loss_term():
    """Flipping the target under an ignore region leaves every term of every step unchanged; without it, not."""
    pred = _prediction(b=2, q=4, side=8, steps=2)
    target = torch.zeros(2, 32, 32)
    target[:, 8:24, 8:24] = 1
    ignore = torch.zeros(2, 32, 32, dtype=torch.bool)
    ignore[:, :, 18:] = True
    flipped = torch.where(ignore, 1 - target, target)
    crit = InstructSegCriterion(LossConfig(num_points=256))
    yes = torch.tensor([True, True])

    def losses(tgt, ignore_mask):
        torch.manual_seed(0)
        return {k: float(v) for k, v in crit(pred, tgt, yes, yes, ignore_mask=ignore_mask).items()}

    assert losses(flipped, ignore) == losses(target, ignore)
    plain, plain_flipped = losses(target, None), losses(flipped, None)
    assert all(abs(plain[k] - plain_flipped[k]) > 1e-3 for k in ("loss_bce", "loss_dice", "loss_bce_0"))
    nothing_ignored = losses(target, torch.zeros_like(ignore))
    assert nothing_ignored == pytest.approx(plain, rel=1e-5)
