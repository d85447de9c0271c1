"""Segmentation metrics that reproduce the official evaluation protocols, each with its exact formula.

Image tasks (RefCOCO/+/g, ReasonSeg), :class:`ImageSegMetric`, over the N samples of a split with per-sample
intersection I_i and union U_i of the binary prediction and target:

* IoU_i = I_i / U_i, and IoU_i := 1 when U_i = 0 (empty prediction and empty target);
* gIoU = (1/N) Σ_i IoU_i; cIoU = Σ_i I_i / Σ_i U_i (0 when Σ_i U_i = 0).
* ``official_epsilons=True`` reproduces InstructSeg's ``eval_res.py`` / ``eval_reasonseg.py`` (and LISA's) literally:
  IoU_i = I_i / (U_i + 1e-5) (still 1 when U_i = 0), gIoU = Σ_i IoU_i / (N + 1e-5), cIoU = Σ_i I_i / (Σ_i U_i + 1e-10).

Video tasks (Ref-DAVIS17, MeViS, Ref-YouTube-VOS-style J&F and the ReVOS report), :class:`VideoSegMetric`, one
(video, expression) per ``update`` with frames t = 1..T, prediction P_t, target G_t (the union of the expression's
objects) and, for R, Fg_t, the mask of all annotated objects of the video:

* J_t = |P_t ∧ G_t| / |P_t ∨ G_t| (1 when the union is empty), the DAVIS-2017 region similarity;
* F_t = 2·Pr·Rc / (Pr + Rc) (0 when Pr + Rc = 0), the DAVIS-2017 boundary F-measure (:func:`boundary_f_measure`);
* A_t = (1/HW) Σ_pixels [P_t = G_t], ReVOS pixel accuracy;
* R_t = max(1 − Σ((1 − G_t)·P_t) / (ΣFg_t + 1e-6), 0), ReVOS robustness (VISA paper, after R2-VOS);
* per expression: J = mean_t J_t, F = mean_t F_t, J&F = (J + F) / 2, A = mean_t A_t, R = mean_t R_t, and the
  DAVIS statistics J-Recall = :func:`davis_recall` (J_1..J_T), J-Decay = :func:`davis_decay` (J_1..J_T), likewise for F;
* dataset: every score is the mean over expressions (DAVIS: J&F-Mean = (J-Mean + F-Mean) / 2, identical by
  linearity); ReVOS groups referring / reasoning and "overall" = the unweighted mean of the two group means.

Both metrics are ``torchmetrics.Metric`` subclasses whose states are reduced by ``"sum"`` or ``"cat"``, so they are
correct under DDP and with :meth:`torchmetrics.Metric.merge_state`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

from instructseg.constants import QUERY_TYPES, REVOS_TYPE_IDS

MaskLike = np.ndarray | Tensor

GIOU_EPS, GIOU_COUNT_EPS, CIOU_EPS = 1e-5, 1e-5, 1e-10
"""Epsilons of the official image evaluation: IoU_i = I/(U+1e-5), gIoU = ΣIoU/(N+1e-5), cIoU = ΣI/(ΣU+1e-10)."""

R_EPS = 1e-6
"""Epsilon of the ReVOS robustness denominator ΣFg + 1e-6."""

EXPRESSION_SCORES = ("J", "F", "A", "R", "J-Recall", "J-Decay", "F-Recall", "F-Decay")
"""Per-expression scores stored by :class:`VideoSegMetric`, in state column order (J&F is derived)."""
_R_COLUMN = EXPRESSION_SCORES.index("R")


def _as_tensor(mask: MaskLike) -> Tensor:
    """A numpy array or tensor as a tensor (numpy arrays become contiguous first), keeping its device and dtype."""
    return torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask)


def _as_bool_tensor(mask: MaskLike) -> Tensor:
    """Converts a numpy array or tensor to a bool tensor (non-zero = foreground), keeping its device."""
    return _as_tensor(mask).bool()


def _frame_iou(pred: Tensor, gt: Tensor, eps: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample intersection, union and IoU.

    Args:
        pred: (N, ...) bool predictions.
        gt: (N, ...) bool ground truth, same shape as ``pred``.
        eps: added to the union in the IoU denominator (0 is the exact IoU).

    Returns:
        ``(intersection, union, iou)``, each (N,); intersection and union are int64, iou is float64
        ``I / (U + eps)`` with IoU := 1 where the union is 0.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(gt.shape)}")
    pred, gt = pred.flatten(1), gt.flatten(1)
    inter = (pred & gt).sum(1)
    union = (pred | gt).sum(1)
    iou = torch.where(union == 0, 1.0, inter.double() / (union.double() + eps))
    return inter, union, iou


def mask_iou(pred: MaskLike, gt: MaskLike) -> float:
    """IoU of two binary masks of the same shape (numpy or torch); 1.0 when both are empty."""
    return _frame_iou(_as_bool_tensor(pred)[None], _as_bool_tensor(gt)[None])[2].item()


def _seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map of DAVIS-2017 ``_seg2bmap``, batched over leading dimensions.

    A pixel is a boundary pixel if it differs from its right, bottom or bottom-right neighbour (neighbours outside the
    image count as background). In the last row only the right neighbour is compared, in the last column only the
    bottom one, and the bottom-right corner pixel is never a boundary.

    Args:
        seg: (..., H, W) bool mask.

    Returns:
        (..., H, W) bool boundary map.
    """
    east, south, south_east = np.zeros_like(seg), np.zeros_like(seg), np.zeros_like(seg)
    east[..., :, :-1] = seg[..., :, 1:]
    south[..., :-1, :] = seg[..., 1:, :]
    south_east[..., :-1, :-1] = seg[..., 1:, 1:]
    bmap = (seg ^ east) | (seg ^ south) | (seg ^ south_east)
    bmap[..., -1, :] = seg[..., -1, :] ^ east[..., -1, :]
    bmap[..., :, -1] = seg[..., :, -1] ^ south[..., :, -1]
    bmap[..., -1, -1] = False
    return bmap


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> int:
    """Boundary tolerance in pixels, as DAVIS-2017 ``bound_pix``.

    ``ceil(bound_th * sqrt(H^2 + W^2))`` if ``bound_th < 1`` (8 px at 480x854, 12 px at 720x1280), else ``bound_th``
    itself, which must then be a whole number of pixels.
    """
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0 (a fraction of the diagonal below 1, else pixels), got {bound_th}")
    if bound_th >= 1:
        if not float(bound_th).is_integer():
            raise ValueError(f"bound_th >= 1 is a radius in pixels and must be a whole number, got {bound_th}")
        return int(bound_th)
    return math.ceil(bound_th * math.sqrt(height**2 + width**2))


@functools.lru_cache(maxsize=16)
def _disk_rectangles(radius: int) -> tuple[np.ndarray, ...]:
    """The disk {(dx, dy): dx² + dy² ≤ r²} (``skimage.morphology.disk``) as a union of centred rectangles.

    Row dy of the disk spans |dx| ≤ w(dy) = isqrt(r² − dy²), which never grows with |dy|; each run of rows with the
    same width ends at some h and gives the rectangle |dy| ≤ h, |dx| ≤ w(h), which lies inside the disk. Their union
    is the disk, so the OR of the rectangle dilations equals the disk dilation (dilation distributes over a union of
    structuring elements), and OpenCV dilates by rectangles separably, faster than by the disk.

    Returns:
        uint8 all-ones kernels of shape (2h+1, 2w(h)+1).
    """
    widths = [math.isqrt(radius**2 - dy**2) for dy in range(radius + 1)]
    ends = [dy for dy in range(radius + 1) if dy == radius or widths[dy + 1] < widths[dy]]
    return tuple(np.ones((2 * h + 1, 2 * widths[h] + 1), np.uint8) for h in ends)


def _dilate(bmap: np.ndarray, rectangles: tuple[np.ndarray, ...]) -> np.ndarray:
    """(H, W) bool map dilated by the disk given as :func:`_disk_rectangles` (``cv2.dilate``'s border adds nothing)."""
    source = bmap.view(np.uint8)
    out = cv2.dilate(source, rectangles[0])
    for kernel in rectangles[1:]:
        np.bitwise_or(out, cv2.dilate(source, kernel), out=out)
    return out.view(bool)


def _boundary_matches(pred_b: np.ndarray, gt_b: np.ndarray, rectangles: tuple[np.ndarray, ...]) -> tuple[int, int]:
    """``(|B_pred ∩ dil(B_gt)|, |B_gt ∩ dil(B_pred)|)`` of two non-empty (H, W) boundary maps.

    Computed on the bounding box of both boundaries, which is exact: every counted pixel lies in the box, a dilated
    pixel in the box comes only from boundary pixels (all inside the box), and ``cv2.dilate``'s default border
    contributes nothing, like the zero padding outside the box.

    Args:
        pred_b: (H, W) bool predicted boundary map.
        gt_b: (H, W) bool ground-truth boundary map.
        rectangles: the dilation disk as :func:`_disk_rectangles`.
    """
    either = pred_b | gt_b
    rows, cols = np.flatnonzero(either.any(1)), np.flatnonzero(either.any(0))
    box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    pred_crop, gt_crop = np.ascontiguousarray(pred_b[box]), np.ascontiguousarray(gt_b[box])
    pred_hits = np.count_nonzero(pred_crop & _dilate(gt_crop, rectangles))
    gt_hits = np.count_nonzero(gt_crop & _dilate(pred_crop, rectangles))
    return int(pred_hits), int(gt_hits)


def _boundary_f_frames(pred: np.ndarray, gt: np.ndarray, bound_th: float) -> np.ndarray:
    """DAVIS-2017 ``f_measure`` for each frame of a stack (see :func:`boundary_f_measure` for the rule).

    Args:
        pred: (T, H, W) bool predictions.
        gt: (T, H, W) bool ground truth.
        bound_th: boundary tolerance, a fraction of the image diagonal if < 1, else pixels.

    Returns:
        (T,) float64 boundary F-measures.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {gt.shape}")
    rectangles = _disk_rectangles(boundary_radius(pred.shape[-2], pred.shape[-1], bound_th))
    pred_b, gt_b = _seg2bmap(pred), _seg2bmap(gt)
    n_pred, n_gt = np.count_nonzero(pred_b, axis=(1, 2)), np.count_nonzero(gt_b, axis=(1, 2))
    pred_hits, gt_hits = np.zeros(len(pred), np.int64), np.zeros(len(pred), np.int64)
    for t in np.flatnonzero((n_pred > 0) & (n_gt > 0)):
        pred_hits[t], gt_hits[t] = _boundary_matches(pred_b[t], gt_b[t], rectangles)
    # An empty boundary has no matches, which gives the DAVIS edge cases: (P, R) = (1, 0), (0, 1) or (1, 1).
    precision = np.where(n_pred == 0, 1.0, pred_hits / np.maximum(n_pred, 1))
    recall = np.where(n_gt == 0, 1.0, gt_hits / np.maximum(n_gt, 1))
    denom = precision + recall
    return np.where(denom == 0, 0.0, 2 * precision * recall / np.where(denom == 0, 1.0, denom))


def boundary_f_measure(pred: MaskLike, gt: MaskLike, bound_th: float = 0.008) -> float:
    """Boundary F-measure of two (H, W) binary masks, identical to DAVIS-2017 ``f_measure`` (no void pixels).

    B = the 1-pixel boundary map of DAVIS ``_seg2bmap`` (a pixel that differs from its right, bottom or bottom-right
    neighbour); r = :func:`boundary_radius` (``ceil(0.008 · sqrt(H² + W²))``); dil(B) = B dilated by the disk
    {(dx, dy): dx² + dy² ≤ r²}; Pr = |B_pred ∩ dil(B_gt)| / |B_pred|, Rc = |B_gt ∩ dil(B_pred)| / |B_gt| and
    F = 2·Pr·Rc / (Pr + Rc), 0 when Pr + Rc = 0. Edge cases follow DAVIS: both boundaries empty gives 1; an empty
    prediction boundary with a non-empty ground truth gives Pr=1, Rc=0 and an empty ground truth with a non-empty
    prediction gives Pr=0, Rc=1, both F=0. The dilation is ``cv2.dilate``, as in the official code, by the same disk
    decomposed into rectangles, on the bounding box of the two boundaries (both exact, see the helpers).
    """
    pred_np = _as_bool_tensor(pred).cpu().numpy()[None]
    gt_np = _as_bool_tensor(gt).cpu().numpy()[None]
    return float(_boundary_f_frames(pred_np, gt_np, bound_th)[0])


def davis_recall(values: np.ndarray | Sequence[float]) -> float:
    """DAVIS-2017 recall of per-frame scores x_1..x_T (J or F): the fraction of frames with x_t > 0.5.

    ``nanmean([x_t > 0.5])`` as ``davis2017/utils.py`` ``db_statistics`` (a NaN frame counts as not recalled).
    """
    return float(np.mean(np.asarray(values, dtype=np.float64) > 0.5))


def davis_decay(values: np.ndarray | Sequence[float]) -> float:
    """DAVIS-2017 decay of per-frame scores x_1..x_T (J or F): mean of the first quarter minus mean of the last.

    With q_i = round(1 + i·(T − 1)/4) − 1 for i = 0..4 (0-based frame indices, halves rounded up), the quarters
    are the inclusive index ranges Q1 = [q_0, q_1] and Q4 = [q_3, q_4] (neighbouring quarters share their edge
    frame) and Decay = nanmean_{t ∈ Q1} x_t − nanmean_{t ∈ Q4} x_t, as ``db_statistics``. A single frame gives 0.
    The official code stores q in uint8, which wraps for T > 256 frames; here the indices are exact.
    """
    x = np.asarray(values, dtype=np.float64)
    ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64)
    return float(np.nanmean(x[ids[0] : ids[1] + 1]) - np.nanmean(x[ids[3] : ids[4] + 1]))


def _pixel_accuracy(pred: Tensor, target: Tensor, revos_official: bool) -> Tensor:
    """Per-frame ReVOS accuracy A_t = mean over pixels of [P == G].

    Args:
        pred: (T, H, W) bool predictions.
        target: (T, H, W) target as given (bool, 0/1 or per-pixel object counts).
        revos_official: compare as the official script does, uint8 object counts against 0/255 predictions, so only
            pixels where both are 0 match; else compare the binary masks.

    Returns:
        (T,) float64.
    """
    if revos_official:
        equal = target.to(torch.uint8) == pred.to(torch.uint8) * 255
    else:
        equal = target.bool() == pred
    return equal.flatten(1).double().mean(1)


def _robustness(pred: Tensor, target: Tensor, foreground: Tensor, revos_official: bool) -> Tensor:
    """Per-frame ReVOS robustness R_t = max(1 − Σ((1 − G) · P) / (ΣFg + 1e-6), 0).

    Args:
        pred: (T, H, W) bool predictions.
        target: (T, H, W) target as given (bool, 0/1 or per-pixel object counts).
        foreground: (T, H, W) mask of all annotated objects of the video, summed per frame as given.
        revos_official: evaluate ``(1 − G) · P`` in uint8 as the official script does, with P = 255 on predicted
            pixels and G the object count: a predicted pixel then weighs ``(G − 1) mod 256``, i.e. 255 off the target,
            0 on one object, 1 where two objects overlap. Else Σ((1 − G) · P) is the binary false-positive count.

    Returns:
        (T,) float64.
    """
    if foreground.shape != pred.shape:
        raise ValueError(f"foreground shape {tuple(foreground.shape)} != prediction shape {tuple(pred.shape)}")
    if revos_official:
        weighted = (1 - target.to(torch.uint8)) * (pred.to(torch.uint8) * 255)
        false_pos = weighted.flatten(1).sum(1).double()
    else:
        false_pos = (pred & ~target.bool()).flatten(1).sum(1).double()
    fg_area = foreground.flatten(1).double().sum(1).to(false_pos.device)
    return (1 - false_pos / (fg_area + R_EPS)).clamp(min=0)


class ImageSegMetric(Metric):
    """cIoU and gIoU of binary image segmentation (RefCOCO-family, ReasonSeg), as the reference ``eval_res.py``.

    ``compute()`` returns ``{"cIoU": ΣI / ΣU, "gIoU": (1/N) Σ IoU_i}`` with IoU_i := 1 for a sample whose prediction
    and target are both empty, and cIoU := 0 when ΣU = 0.

    Args:
        official_epsilons: use the reference scripts' epsilons, IoU_i = I_i / (U_i + 1e-5),
            gIoU = Σ IoU_i / (N + 1e-5) and cIoU = ΣI / (ΣU + 1e-10) (they shift scores by about 1e-5 relative).
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, official_epsilons: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.official_epsilons = official_epsilons
        self.add_state("intersection", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("iou_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: MaskLike, targets: MaskLike) -> None:
        """Accumulates a batch.

        Args:
            preds: (B, H, W) bool or 0/1 predicted masks.
            targets: (B, H, W) bool or 0/1 ground-truth masks.
        """
        eps = GIOU_EPS if self.official_epsilons else 0.0
        inter, union, iou = _frame_iou(_as_bool_tensor(preds), _as_bool_tensor(targets), eps)
        self.intersection += inter.sum().to(self.device)
        self.union += union.sum().to(self.device)
        self.iou_sum += iou.sum().to(self.device)
        self.count += iou.numel()

    def compute(self) -> dict[str, float]:
        """Returns ``{"cIoU": float, "gIoU": float}``."""
        inter, union = self.intersection.item(), self.union.item()
        iou_sum, count = self.iou_sum.item(), self.count.item()
        if self.official_epsilons:
            return {"cIoU": inter / (union + CIOU_EPS), "gIoU": iou_sum / (count + GIOU_COUNT_EPS)}
        return {"cIoU": inter / union if union > 0 else 0.0, "gIoU": iou_sum / count if count > 0 else 0.0}


class VideoSegMetric(Metric):
    """J, F, J&F, A, R and the DAVIS recall / decay per expression, the DAVIS means and the ReVOS group report.

    One ``update`` scores one (video, expression); the per-expression formulas are in the module docstring.
    Expressions are typed ``"referring"``, ``"reasoning"`` or ``"no_target"`` (ReVOS ``type_id`` 0, 1, 2).
    ``compute()`` returns, as means over expressions:

    * ``"J"``, ``"F"``, ``"J&F"``, ``"A"``, ``"J-Recall"``, ``"J-Decay"``, ``"F-Recall"``, ``"F-Decay"``: over all
      referring and reasoning expressions (the DAVIS-2017 table when every expression is one object);
    * ``"referring/…"``, ``"reasoning/…"``: the same within each group, plus ``"<group>/R"`` when every expression of
      the group was given ``foreground``;
    * ``"overall/…"``: the unweighted mean of the group means that exist (not the mean over expressions), as the
      official ReVOS script;
    * ``"R"``: robustness on hallucination queries, the mean over no-target expressions of the per-expression R.

    No-target expressions never enter J/F/A or the group keys. The official ReVOS script (VISA's
    ``revos_evaluation.py``) reports R only as ``referring/R``, ``reasoning/R`` and their mean ``overall/R`` (the "R"
    column of the VISA paper); it never scores type-2 expressions. Keys without data are omitted. States are
    per-expression tensors reduced by concatenation, so the metric is DDP-safe, also when a rank scored no expression.

    Args:
        bound_th: boundary tolerance of F (fraction of the image diagonal if < 1, else pixels).
        revos_official: A and R with the official ReVOS script's uint8 arithmetic, which reads predictions as 0/255
            PNGs and the target as the per-pixel sum of the expression's object masks: A_t counts only pixels where
            both are 0 (true negatives), and in R a predicted pixel weighs 255 off the target, 0 on one object and
            1 where two objects overlap (``(G − 1) mod 256``). Pass object counts as ``targets`` to reproduce
            published R and A; J and F are unaffected. Default: the binary formulas (A = pixel accuracy,
            R with the false-positive count).
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _STATE_DTYPES = {"expr_type": torch.long, "id_length": torch.long, "id_bytes": torch.uint8, "scores": torch.float64}

    def __init__(self, bound_th: float = 0.008, revos_official: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        boundary_radius(1, 1, bound_th)  # validates bound_th now rather than at the first update
        self.bound_th = bound_th
        self.revos_official = revos_official
        for name in self._STATE_DTYPES:
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(
        self,
        preds: MaskLike,
        targets: MaskLike,
        expression_type: str = "referring",
        foreground: MaskLike | None = None,
        expression_id: str = "",
    ) -> None:
        """Scores one expression.

        Args:
            preds: (T, H, W) bool or 0/1 predicted masks of the expression's frames.
            targets: (T, H, W) ground truth, all zeros for a no-target expression: the union of the expression's
                objects (bool or 0/1), or the per-pixel number of its objects (the sum of their 0/1 masks, as the
                official ReVOS script builds it). Non-zero is foreground; the counts matter only with
                ``revos_official``.
            expression_type: ``"referring"``, ``"reasoning"`` or ``"no_target"``.
            foreground: (T, H, W) mask of all annotated objects of the video, summed per frame as given (as the
                official script sums the decoded masks). Required for ``"no_target"``; for the other types it gives
                the official ``"<group>/R"`` keys.
            expression_id: free-form identifier reported by :meth:`per_expression`, e.g. ``"<video>/<exp_id>"``.
        """
        if expression_type not in QUERY_TYPES:
            raise ValueError(f"expression_type must be one of {QUERY_TYPES}, got {expression_type!r}")
        if expression_type == "no_target" and foreground is None:
            raise ValueError("a no_target expression needs the foreground masks to compute R")
        pred, target = _as_bool_tensor(preds), _as_tensor(targets)
        gt = target.bool()
        if self.revos_official and target.dtype != torch.bool and target.numel() and int(target.max()) == 255:
            raise ValueError(
                "targets look like 0/255 masks; with revos_official pass 0/1 masks or per-pixel object "
                "counts (the sum of the expression's 0/1 object masks)"
            )
        j = _frame_iou(pred, gt)[2].cpu().numpy()
        f = _boundary_f_frames(pred.cpu().numpy(), gt.cpu().numpy(), self.bound_th)
        a = _pixel_accuracy(pred, target, self.revos_official).mean().item()
        if foreground is None:
            r = math.nan
        else:
            r = _robustness(pred, target, _as_tensor(foreground), self.revos_official).mean().item()
        scores = {
            "J": j.mean(),
            "F": f.mean(),
            "A": a,
            "R": r,
            "J-Recall": davis_recall(j),
            "J-Decay": davis_decay(j),
            "F-Recall": davis_recall(f),
            "F-Decay": davis_decay(f),
        }
        id_bytes = list(expression_id.encode())
        values = {
            "expr_type": [REVOS_TYPE_IDS[expression_type]],
            "id_length": [len(id_bytes)],
            "id_bytes": id_bytes,
            "scores": [[float(scores[name]) for name in EXPRESSION_SCORES]],
        }
        for name, value in values.items():
            getattr(self, name).append(torch.tensor(value, dtype=self._STATE_DTYPES[name], device=self.device))

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """Gives a rank without expressions typed empty states before the gather.

        torchmetrics would substitute float32 empty tensors, whose dtype differs from the other ranks' states.
        """
        for name, dtype in self._STATE_DTYPES.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                shape = (0, len(EXPRESSION_SCORES)) if name == "scores" else (0,)
                setattr(self, name, [torch.empty(shape, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def _rows(self) -> tuple[list[str], Tensor, Tensor]:
        """Concatenated states: expression ids, (N,) type codes and (N, len(EXPRESSION_SCORES)) scores."""
        if isinstance(self.expr_type, list) and not self.expr_type:
            return [], torch.empty(0, dtype=torch.long), torch.empty(0, len(EXPRESSION_SCORES), dtype=torch.float64)
        lengths = dim_zero_cat(self.id_length).tolist()
        chunks = torch.split(dim_zero_cat(self.id_bytes).cpu(), lengths)
        ids = [bytes(chunk.tolist()).decode() for chunk in chunks]
        scores = dim_zero_cat(self.scores).cpu().reshape(-1, len(EXPRESSION_SCORES))
        return ids, dim_zero_cat(self.expr_type).cpu(), scores

    def compute(self) -> dict[str, float]:
        """Returns the flat score dict described in the class docstring (scores in [0, 1], decays in [-1, 1])."""
        _, types, scores = self._rows()
        result: dict[str, float] = {}
        scored = types != REVOS_TYPE_IDS["no_target"]
        if scored.any():
            result.update(_means(scores[scored], with_r=False))
        groups = {}
        for name in QUERY_TYPES[:2]:
            selected = types == REVOS_TYPE_IDS[name]
            if selected.any():
                groups[name] = _means(scores[selected], with_r=not scores[selected, _R_COLUMN].isnan().any())
                result.update({f"{name}/{key}": value for key, value in groups[name].items()})
        shared_keys = [key for key in next(iter(groups.values()), {}) if all(key in g for g in groups.values())]
        result.update({f"overall/{key}": float(np.mean([g[key] for g in groups.values()])) for key in shared_keys})
        if (~scored).any():
            result["R"] = scores[~scored, _R_COLUMN].mean().item()
        return result

    def per_expression(self) -> list[dict[str, str | float]]:
        """Per-expression rows ``{"id", "type", "J", "F", "J&F", "A", "R", "J-Recall", …}`` for CSV export.

        R is NaN without foreground. Under DDP the rows of all ranks are gathered (call it on every rank).
        """
        with self.sync_context():
            ids, types, scores = self._rows()
        rows = []
        for i, expression_id in enumerate(ids):
            values = dict(zip(EXPRESSION_SCORES, scores[i].tolist()))
            row = {"id": expression_id, "type": QUERY_TYPES[int(types[i])], "J&F": (values["J"] + values["F"]) / 2}
            rows.append({**row, **values})
        return rows


def _means(scores: Tensor, with_r: bool) -> dict[str, float]:
    """Means over expressions of (N, len(EXPRESSION_SCORES)) scores, plus J&F = mean of (J + F) / 2; R if asked."""
    means = dict(zip(EXPRESSION_SCORES, scores.mean(0).tolist()))
    means["J&F"] = ((scores[:, 0] + scores[:, 1]) / 2).mean().item()
    if not with_r:
        del means["R"]
    return means
