"""Tests of instructseg.metrics against hand-computed numbers and direct implementations of the official formulas.

The references here are written from the official rules (davis2017-evaluation ``f_measure`` / ``db_statistics``,
VISA's ``revos_evaluation.py``, InstructSeg's ``eval_res.py``), independently of the vectorised code under test.
"""

from __future__ import annotations

import math
from operator import itemgetter

import numpy as np
import pytest
import torch
from fixtures.davis_reference import cv2_dilate, davis_f_measure

from instructseg.metrics import (
    ImageSegMetric,
    VideoSegMetric,
    boundary_f_measure,
    boundary_radius,
    davis_decay,
    davis_recall,
    mask_iou,
)


def _box(shape: tuple[int, ...], rows: slice, cols: slice) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[..., rows, cols] = True
    return mask


def _reference_f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008) -> float:
    """Straightforward DAVIS-2017 f_measure: boundaries and dilation by explicit loops."""
    height, width = pred.shape

    def boundary(seg: np.ndarray) -> np.ndarray:
        out = np.zeros((height, width), dtype=bool)
        for y in range(height):
            for x in range(width):
                if y == height - 1 and x == width - 1:
                    continue
                if y == height - 1:
                    out[y, x] = seg[y, x] != seg[y, x + 1]
                elif x == width - 1:
                    out[y, x] = seg[y, x] != seg[y + 1, x]
                else:
                    neighbours = (seg[y, x + 1], seg[y + 1, x], seg[y + 1, x + 1])
                    out[y, x] = any(seg[y, x] != neighbour for neighbour in neighbours)
        return out

    radius = bound_th if bound_th >= 1 else math.ceil(bound_th * math.sqrt(height**2 + width**2))

    def dilate(bmap: np.ndarray) -> np.ndarray:
        points = [(y, x) for y in range(height) for x in range(width) if bmap[y, x]]
        out = np.zeros((height, width), dtype=bool)
        for y in range(height):
            for x in range(width):
                out[y, x] = any((y - py) ** 2 + (x - px) ** 2 <= radius**2 for py, px in points)
        return out

    pred_b, gt_b = boundary(pred), boundary(gt)
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = int((pred_b & dilate(gt_b)).sum()) / n_pred
        recall = int((gt_b & dilate(pred_b)).sum()) / n_gt
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def _blob(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random star-shaped blob (wavy ellipse) somewhere in the frame, possibly cut by the border."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    ry, rx = rng.uniform(0.05, 0.4) * height, rng.uniform(0.05, 0.4) * width
    wave = 1 + 0.25 * np.sin(rng.integers(2, 8) * np.arctan2(yy - cy, xx - cx) + rng.uniform(0, 6))
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < wave**2


def _edge_case_masks(shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Masks that stress the border rules of _seg2bmap and the cropping of the dilation."""
    height, width = shape
    masks = {"empty": np.zeros(shape, bool), "full": np.ones(shape, bool)}
    for name, (y, x) in {
        "px_top_left": (0, 0),
        "px_bottom_right": (height - 1, width - 1),
        "px_top_right": (0, width - 1),
        "px_bottom_left": (height - 1, 0),
        "px_centre": (height // 2, width // 2),
        "px_near_centre": (height // 2 + 3, width // 2 - 2),
    }.items():
        masks[name] = np.zeros(shape, bool)
        masks[name][y, x] = True
    masks["bottom_row"] = _box(shape, slice(height - 1, height), slice(0, width))
    masks["right_column"] = _box(shape, slice(0, height), slice(width - 1, width))
    masks["left_half"] = _box(shape, slice(0, height), slice(0, width // 2))
    masks["bottom_right_corner"] = _box(shape, slice(height // 2, height), slice(width // 3, width))
    masks["frame_border"] = ~_box(shape, slice(1, height - 1), slice(1, width - 1))
    return masks


# ---------------------------------------------------------------------------------------------- functional helpers


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        (np.zeros((4, 5), bool), _box((4, 5), slice(0, 2), slice(0, 2)), 0.0),  # empty prediction
        (_box((4, 5), slice(0, 2), slice(0, 2)), np.zeros((4, 5), bool), 0.0),  # empty target
        (np.zeros((4, 5), bool), np.zeros((4, 5), bool), 1.0),  # both empty
        (_box((4, 5), slice(1, 3), slice(1, 4)), _box((4, 5), slice(1, 3), slice(1, 4)), 1.0),  # identical
        (_box((4, 5), slice(0, 2), slice(0, 2)), _box((4, 5), slice(2, 4), slice(2, 4)), 0.0),  # disjoint
        (_box((4, 5), slice(0, 2), slice(0, 4)), _box((4, 5), slice(0, 2), slice(2, 5)), 2 / 5),  # I=4, U=10
    ],
)
def test_mask_iou_cases(pred: np.ndarray, gt: np.ndarray, expected: float) -> None:
    assert mask_iou(pred, gt) == pytest.approx(expected)
    assert mask_iou(torch.from_numpy(pred), torch.from_numpy(gt).to(torch.uint8) * 255) == pytest.approx(expected)


def test_boundary_radius() -> None:
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(20, 30) == 1
    assert boundary_radius(480, 854, bound_th=3) == 3


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("bound_th", [0.008, 0.1, 2])
def test_boundary_f_matches_loop_reference(seed: int, bound_th: float) -> None:
    rng = np.random.default_rng(seed)
    dense = rng.random((20, 30)) < rng.uniform(0.2, 0.6)
    cases = [
        (rng.random((20, 30)) < rng.uniform(0.01, 0.08), rng.random((20, 30)) < rng.uniform(0.01, 0.08)),  # sparse
        (dense, dense ^ (rng.random((20, 30)) < 0.15)),  # dense and correlated
    ]
    for pred, gt in cases:
        assert abs(boundary_f_measure(pred, gt, bound_th) - _reference_f_measure(pred, gt, bound_th)) < 1e-9
    blob_pred, blob_gt = _box((20, 30), slice(3, 14), slice(5, 20)), _box((20, 30), slice(5, 17), slice(8, 26))
    blob_gt[rng.integers(0, 20, 8), rng.integers(0, 30, 8)] = True
    expected = _reference_f_measure(blob_pred, blob_gt, bound_th)
    assert abs(boundary_f_measure(blob_pred, blob_gt, bound_th) - expected) < 1e-9


def test_boundary_f_edge_cases() -> None:
    empty, square = np.zeros((20, 30), bool), _box((20, 30), slice(5, 10), slice(5, 10))
    assert boundary_f_measure(empty, empty) == 1.0
    assert boundary_f_measure(empty, square) == 0.0
    assert boundary_f_measure(square, empty) == 0.0
    assert boundary_f_measure(square, square) == 1.0
    full = np.ones((20, 30), bool)  # a full mask has an empty boundary map, as in DAVIS
    assert boundary_f_measure(full, full) == 1.0


@pytest.mark.parametrize(("shift", "expected"), [(8, 1.0), (9, 0.5), (10, 0.0)])
def test_boundary_f_tolerance_at_480p(shift: int, expected: float) -> None:
    # One foreground pixel has a 2x2 boundary block (itself plus the pixels left/above it, as in DAVIS); shifting the
    # prediction by `shift` columns puts its blocks `shift - 1 .. shift + 1` pixels away, against a radius of 8.
    gt, pred = np.zeros((480, 854), bool), np.zeros((480, 854), bool)
    gt[100, 100] = True
    pred[100, 100 + shift] = True
    assert boundary_f_measure(pred, gt) == pytest.approx(expected)


@pytest.mark.parametrize("bound_th", [0, 0.008, 0.05, 0.3, 3])
def test_boundary_f_edge_cases_match_direct_reference(bound_th: float) -> None:
    masks = _edge_case_masks((24, 37))
    for pred_name, pred in masks.items():
        for gt_name, gt in masks.items():
            expected = davis_f_measure(pred, gt, bound_th)
            assert davis_f_measure(pred, gt, bound_th, dilate=cv2_dilate) == expected  # the official backend
            assert boundary_f_measure(pred, gt, bound_th) == expected, (pred_name, gt_name)
    assert _reference_f_measure(masks["px_centre"], masks["px_near_centre"], 3) == davis_f_measure(
        masks["px_centre"], masks["px_near_centre"], 3
    )  # the two references agree with each other too


@pytest.mark.parametrize("shape", [(48, 80), (480, 854), pytest.param((720, 1280), marks=pytest.mark.slow)])
def test_boundary_f_matches_direct_reference_on_random_masks(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    cases = []
    for _ in range(3 if shape[0] < 100 else 1):
        gt = _blob(shape, rng)
        cases += [(_blob(shape, rng), gt), (gt ^ (rng.random(shape) < 0.002), gt), (np.roll(gt, 9, axis=1), gt)]
    if shape[0] < 100:
        cases.append((rng.random(shape) < 0.3, rng.random(shape) < 0.3))  # dense noise: boundaries everywhere
    preds, gts = np.stack([p for p, _ in cases]), np.stack([g for _, g in cases])
    expected = [davis_f_measure(pred, gt) for pred, gt in cases]
    assert [davis_f_measure(pred, gt, dilate=cv2_dilate) for pred, gt in cases] == expected
    assert [boundary_f_measure(pred, gt) for pred, gt in cases] == expected
    metric = VideoSegMetric()  # the batched (T, H, W) path of the video metric
    metric.update(preds, gts)
    assert metric.per_expression()[0]["F"] == pytest.approx(np.mean(expected), abs=1e-12)


def test_boundary_radius_rejects_bad_tolerance() -> None:
    assert boundary_radius(720, 1280) == 12
    with pytest.raises(ValueError, match="whole number"):
        boundary_radius(480, 854, bound_th=2.5)
    with pytest.raises(ValueError, match=">= 0"):
        VideoSegMetric(bound_th=-0.1)


# ---------------------------------------------------------------------------------------------- DAVIS statistics


def _official_quarter_ids(num_frames: int) -> list[int]:
    """q_i = round-half-up(1 + i (T - 1) / 4) - 1 in integer arithmetic: (6 + i (T - 1)) // 4 - 1."""
    return [(6 + i * (num_frames - 1)) // 4 - 1 for i in range(5)]


def test_davis_recall_and_decay_planted() -> None:
    values = [0.9, 0.4, 0.6, 0.5, 0.2]  # 0.5 is not > 0.5
    assert davis_recall(values) == pytest.approx(2 / 5)
    assert davis_decay(values) == pytest.approx((0.9 + 0.4) / 2 - (0.5 + 0.2) / 2)  # T=5: Q1 = {0, 1}, Q4 = {3, 4}
    assert _official_quarter_ids(4) == [0, 1, 2, 2, 3]  # T=4: 1, 1.75, 2.5 -> 3 (half up), 3.25, 4
    assert davis_decay([1.0, 1.0, 0.0, 0.0]) == pytest.approx(1.0)
    assert davis_decay([0.7]) == 0.0
    assert davis_decay([0.2, 0.8]) == pytest.approx(-0.6)  # T=2: Q1 = {0}, Q4 = {1}


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5, 6, 7, 9, 13, 50, 101, 300])
def test_davis_decay_matches_integer_quarters(num_frames: int) -> None:
    values = np.random.default_rng(num_frames).random(num_frames)
    q = _official_quarter_ids(num_frames)
    expected = np.mean(values[q[0] : q[1] + 1]) - np.mean(values[q[3] : q[4] + 1])
    assert davis_decay(values) == pytest.approx(expected, abs=1e-12)
    assert davis_recall(values) == pytest.approx(np.count_nonzero(values > 0.5) / num_frames)


# ---------------------------------------------------------------------------------------------- ImageSegMetric


def test_image_metric_ciou_differs_from_giou() -> None:
    preds = np.stack([_box((4, 5), slice(0, 2), slice(0, 2)), _box((4, 5), slice(0, 2), slice(0, 5))])
    targets = np.stack([_box((4, 5), slice(0, 2), slice(1, 3)), _box((4, 5), slice(0, 2), slice(0, 5))])
    # sample 0: I=2, U=6 -> IoU=1/3; sample 1: I=U=10 -> IoU=1.
    metric = ImageSegMetric()
    metric.update(torch.from_numpy(preds), torch.from_numpy(targets))
    scores = metric.compute()
    assert scores["cIoU"] == pytest.approx(12 / 16)
    assert scores["gIoU"] == pytest.approx((1 / 3 + 1) / 2)


def test_image_metric_empty_union_counts_as_one() -> None:
    metric = ImageSegMetric()
    metric.update(np.zeros((2, 3, 3), np.uint8), np.zeros((2, 3, 3), np.uint8))
    assert metric.compute() == {"cIoU": 0.0, "gIoU": 1.0}
    metric.update(np.ones((1, 3, 3)), np.zeros((1, 3, 3)))
    assert metric.compute() == pytest.approx({"cIoU": 0.0, "gIoU": 2 / 3})


def test_image_metric_merge_state_equals_single_pass() -> None:
    rng = np.random.default_rng(0)
    preds, targets = rng.random((6, 8, 9)) < 0.4, rng.random((6, 8, 9)) < 0.4
    full, first, second = ImageSegMetric(), ImageSegMetric(), ImageSegMetric()
    full.update(torch.from_numpy(preds), torch.from_numpy(targets))
    first.update(torch.from_numpy(preds[:2]), torch.from_numpy(targets[:2]))
    second.update(torch.from_numpy(preds[2:]), torch.from_numpy(targets[2:]))
    first.merge_state(second)
    assert first.compute() == pytest.approx(full.compute(), abs=1e-12)


def test_image_metric_official_epsilons_match_eval_res() -> None:
    rng = np.random.default_rng(3)
    preds, targets = rng.random((5, 6, 7)) < 0.4, rng.random((5, 6, 7)) < 0.4
    preds[4], targets[4] = False, False  # an empty union: IoU 1 in both conventions
    # eval_res.py: per sample I/(U+1e-5) with 1 where U == 0; gIoU = sum/(count+1e-5); cIoU = sum I/(sum U+1e-10).
    inter = np.array([(p & t).sum() for p, t in zip(preds, targets)], dtype=np.float64)
    union = np.array([(p | t).sum() for p, t in zip(preds, targets)], dtype=np.float64)
    acc_iou = inter / (union + 1e-5)
    acc_iou[union == 0] = 1.0
    official, exact = ImageSegMetric(official_epsilons=True), ImageSegMetric()
    for metric in (official, exact):
        metric.update(preds[:2], targets[:2])
        metric.update(preds[2:], targets[2:])
    assert official.compute()["gIoU"] == pytest.approx(acc_iou.sum() / (5 + 1e-5), rel=1e-12)
    assert official.compute()["cIoU"] == pytest.approx(inter.sum() / (union.sum() + 1e-10), rel=1e-12)
    exact_iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    assert exact.compute() == pytest.approx({"gIoU": exact_iou.mean(), "cIoU": inter.sum() / union.sum()}, rel=1e-12)
    assert official.compute()["gIoU"] != exact.compute()["gIoU"]


# ---------------------------------------------------------------------------------------------- VideoSegMetric


def _expression(score: str, frames: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(pred, gt) of `frames` 10x10 frames with J = F = 1 ("hit"), 0 ("miss") or 0.5 ("half": frame 1 missed)."""
    gt = _box((frames, 10, 10), slice(2, 6), slice(3, 8))
    pred = gt.copy()
    if score == "miss":
        pred[:] = False
    elif score == "half":
        pred[1] = False
    return pred, gt


def test_video_metric_jf_per_expression_and_mean() -> None:
    metric = VideoSegMetric()
    metric.update(*_expression("half"), expression_id="v0/0")
    metric.update(*_expression("hit"), expression_id="v0/1")
    scores = metric.compute()
    assert scores["J"] == pytest.approx(0.75) and scores["F"] == pytest.approx(0.75)
    assert scores["J&F"] == pytest.approx(0.75)
    rows = metric.per_expression()
    summary = [(row["id"], row["type"], row["J&F"]) for row in rows]
    assert summary == [("v0/0", "referring", 0.5), ("v0/1", "referring", 1.0)]


def test_video_metric_matches_functional_helpers() -> None:
    rng = np.random.default_rng(1)
    preds, targets = rng.random((3, 20, 30)) < 0.3, rng.random((3, 20, 30)) < 0.3
    metric = VideoSegMetric()
    metric.update(torch.from_numpy(preds), torch.from_numpy(targets).to(torch.uint8))
    row = metric.per_expression()[0]
    assert row["J"] == pytest.approx(np.mean([mask_iou(p, g) for p, g in zip(preds, targets)]), abs=1e-12)
    assert row["F"] == pytest.approx(np.mean([_reference_f_measure(p, g) for p, g in zip(preds, targets)]), abs=1e-9)
    assert math.isnan(row["R"])


def test_video_metric_revos_groups_overall_is_mean_of_group_means() -> None:
    metric = VideoSegMetric()
    for score in ("hit", "hit", "half"):
        metric.update(*_expression(score), expression_type="referring")
    metric.update(*_expression("miss"), expression_type="reasoning")
    scores = metric.compute()
    assert scores["referring/J&F"] == pytest.approx(2.5 / 3)
    assert scores["reasoning/J&F"] == pytest.approx(0.0)
    assert scores["overall/J&F"] == pytest.approx(2.5 / 3 / 2)  # mean of the group means, 0.4167
    assert scores["J&F"] == pytest.approx(2.5 / 4)  # mean over expressions, 0.625
    assert "R" not in scores


def test_video_metric_robustness_on_no_target() -> None:
    gt = np.zeros((2, 10, 10), bool)
    pred = gt.copy()
    pred[0, 0, :3] = True  # 3 false-positive pixels in frame 0, none in frame 1
    foreground = _box((2, 10, 10), slice(0, 5), slice(0, 10))  # 50 annotated pixels per frame
    # Official uint8 arithmetic: each false positive weighs 255, so frame 0 scores max(1 - 765/50, 0) = 0.
    for official, expected in ((False, (1 - 3 / 50 + 1) / 2), (True, (0 + 1) / 2)):
        metric = VideoSegMetric(revos_official=official)
        metric.update(*_expression("hit"), expression_type="referring")
        metric.update(pred, gt, expression_type="no_target", foreground=foreground)
        scores = metric.compute()
        assert scores["R"] == pytest.approx(expected, abs=1e-6)
        assert scores["J&F"] == pytest.approx(1.0)  # the no-target expression is excluded from J/F
        assert scores["overall/J&F"] == pytest.approx(1.0)
        assert "reasoning/J&F" not in scores


def test_video_metric_official_group_robustness() -> None:
    # Official ReVOS R: per-group mean of the per-expression R of referring / reasoning expressions, overall = mean.
    gt = _box((1, 10, 10), slice(0, 2), slice(0, 10))  # 20 target pixels
    foreground = _box((1, 10, 10), slice(0, 4), slice(0, 10))  # 40 annotated pixels
    pred_clean, pred_fp = gt.copy(), gt.copy()
    pred_fp[0, 5, :4] = True  # 4 false positives -> R = 1 - 4/40 = 0.9
    metric = VideoSegMetric()
    metric.update(pred_clean, gt, expression_type="referring", foreground=foreground)
    metric.update(pred_fp, gt, expression_type="referring", foreground=foreground)
    metric.update(pred_fp, gt, expression_type="reasoning", foreground=foreground)
    scores = metric.compute()
    assert scores["referring/R"] == pytest.approx(0.95, abs=1e-6)
    assert scores["reasoning/R"] == pytest.approx(0.9, abs=1e-6)
    assert scores["overall/R"] == pytest.approx(0.925, abs=1e-6)
    assert "R" not in scores
    metric.update(*_expression("hit"), expression_type="reasoning")  # no foreground -> no reasoning/overall R
    scores = metric.compute()
    assert "referring/R" in scores and "reasoning/R" not in scores and "overall/R" not in scores


def test_video_metric_rejects_bad_input() -> None:
    metric = VideoSegMetric()
    with pytest.raises(ValueError, match="foreground"):
        metric.update(*_expression("hit"), expression_type="no_target")
    with pytest.raises(ValueError, match="expression_type"):
        metric.update(*_expression("hit"), expression_type="other")
    with pytest.raises(ValueError, match="shape"):
        metric.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="foreground shape"):
        metric.update(*_expression("hit"), expression_type="no_target", foreground=np.ones((1, 10, 10)))


def test_video_metric_merge_state_equals_single_pass() -> None:
    rng = np.random.default_rng(2)
    items = []
    for i, kind in enumerate(["referring", "reasoning", "referring", "no_target", "reasoning"]):
        preds, targets = rng.random((3, 12, 16)) < 0.3, rng.random((3, 12, 16)) < 0.3
        if kind == "no_target":
            targets[:] = False
        foreground = rng.random((3, 12, 16)) < 0.5
        items.append(
            dict(
                preds=preds, targets=targets, expression_type=kind, foreground=foreground, expression_id=f"vid{i}/é{i}"
            )
        )
    full, first, second = VideoSegMetric(), VideoSegMetric(), VideoSegMetric()
    for item in items:
        full.update(**item)
    for item in items[:2]:
        first.update(**item)
    for item in items[2:]:
        second.update(**item)
    first.merge_state(second)
    assert first.compute() == pytest.approx(full.compute(), abs=1e-12)
    groups = ("referring", "reasoning", "overall")
    davis = ("J", "F", "J&F", "A", "J-Recall", "J-Decay", "F-Recall", "F-Decay")
    assert set(full.compute()) == {*davis, "R"} | {f"{g}/{k}" for g in groups for k in (*davis, "R")}
    merged_rows = sorted(first.per_expression(), key=itemgetter("id"))
    full_rows = sorted(full.per_expression(), key=itemgetter("id"))
    assert [row["id"] for row in full_rows] == [f"vid{i}/é{i}" for i in range(5)]
    for merged, reference in zip(merged_rows, full_rows):
        assert merged == pytest.approx(reference, nan_ok=True)


def test_video_metric_empty_compute() -> None:
    metric = VideoSegMetric()
    with pytest.warns(UserWarning):
        assert metric.compute() == {}
    assert metric.per_expression() == []


def _official_revos_scores(gt_count: np.ndarray, pred: np.ndarray, foreground: np.ndarray) -> tuple[float, float]:
    """VISA's get_r2vos_accuracy / get_r2vos_robustness on uint8 arrays: G = object count, P = 0/255 PNG values."""
    gt_u8, pred_u8, fg_u8 = gt_count.astype(np.uint8), pred.astype(np.uint8) * 255, foreground.astype(np.uint8)
    accs = [np.mean(g == p) for g, p in zip(gt_u8, pred_u8)]
    robust = [max(1 - ((1 - g) * p).sum() / (f.sum() + 1e-6), 0.0) for g, p, f in zip(gt_u8, pred_u8, fg_u8)]
    return float(np.mean(accs)), float(np.mean(robust))


def test_video_metric_accuracy_planted() -> None:
    gt = _box((1, 10, 10), slice(0, 2), slice(0, 10))  # 20 target pixels
    pred = gt.copy()
    pred[0, 5, :4] = True  # 4 false positives
    binary, official = VideoSegMetric(), VideoSegMetric(revos_official=True)
    for metric in (binary, official):
        metric.update(pred, gt)
    assert binary.compute()["A"] == pytest.approx(96 / 100)  # pixel accuracy
    assert official.compute()["A"] == pytest.approx(76 / 100)  # 0/255 vs 0/1: only true negatives match
    assert official.compute()["A"] == pytest.approx(_official_revos_scores(gt, pred, gt)[0])


def test_video_metric_official_overlap_robustness() -> None:
    # Two objects of one expression overlap on row 1; the official G is their uint8 sum (2 there).
    first, second = _box((2, 10, 10), slice(0, 2), slice(0, 10)), _box((2, 10, 10), slice(1, 3), slice(0, 10))
    counts = first.astype(np.uint8) + second.astype(np.uint8)
    foreground = _box((2, 10, 10), slice(0, 6), slice(0, 10))  # 60 annotated pixels per frame
    pred = counts > 0  # perfect on both frames ...
    pred[1, 8, :2] = True  # ... plus 2 false positives in frame 1
    official = VideoSegMetric(revos_official=True)
    official.update(pred, counts, expression_type="referring", foreground=foreground, expression_id="v/0")
    binary = VideoSegMetric()
    binary.update(pred, counts, expression_type="referring", foreground=foreground, expression_id="v/0")
    # Official: an overlap pixel weighs (1 - 2) * 255 = 1 in uint8, a false positive 255: frame 0 has 10 overlap
    # pixels, frame 1 has 10 overlap pixels and 2 false positives.
    expected_r = ((1 - 10 / 60) + 0.0) / 2  # frame 1: max(1 - (10 + 2 * 255) / 60, 0) = 0
    assert official.compute()["referring/R"] == pytest.approx(expected_r, abs=1e-6)
    expected_a, reference_r = _official_revos_scores(counts, pred, foreground)
    assert official.compute()["referring/R"] == pytest.approx(reference_r, abs=1e-12)
    assert official.compute()["referring/A"] == pytest.approx(expected_a, abs=1e-12)
    assert binary.compute()["referring/R"] == pytest.approx((1 + (1 - 2 / 60)) / 2, abs=1e-6)  # union semantics
    official_row, binary_row = official.per_expression()[0], binary.per_expression()[0]
    for key in ("J", "F", "J-Recall", "F-Decay"):  # the region and boundary scores do not depend on the semantics
        assert official_row[key] == binary_row[key]
    assert official_row["J"] == pytest.approx((1 + 30 / 32) / 2)


def test_video_metric_official_rejects_255_targets() -> None:
    gt = _box((1, 10, 10), slice(0, 2), slice(0, 10)).astype(np.uint8) * 255
    with pytest.raises(ValueError, match="0/255"):
        VideoSegMetric(revos_official=True).update(gt > 0, gt)
    VideoSegMetric().update(gt > 0, gt)  # the binary formulas read any non-zero value as foreground


def test_video_metric_davis_recall_and_decay() -> None:
    gt = _box((4, 10, 10), slice(2, 6), slice(3, 8))
    falling = gt.copy()
    falling[2:] = False  # J = F = 1, 1, 0, 0: recall 1/2, decay 1 - 0 = 1 (T=4: Q1 = {0, 1}, Q4 = {2, 3})
    rising = gt.copy()
    rising[0] = False  # J = F = 0, 1, 1, 1: recall 3/4, decay 1/2 - 1 = -1/2
    metric = VideoSegMetric()
    metric.update(falling, gt, expression_id="falling")
    metric.update(rising, gt, expression_id="rising")
    rows = {row["id"]: row for row in metric.per_expression()}
    for key, value in {"J-Recall": 0.5, "J-Decay": 1.0, "F-Recall": 0.5, "F-Decay": 1.0}.items():
        assert rows["falling"][key] == pytest.approx(value)
    for key, value in {"J-Recall": 0.75, "J-Decay": -0.5, "F-Recall": 0.75, "F-Decay": -0.5}.items():
        assert rows["rising"][key] == pytest.approx(value)
    scores = metric.compute()
    assert scores["J-Recall"] == pytest.approx(0.625) and scores["F-Decay"] == pytest.approx(0.25)
