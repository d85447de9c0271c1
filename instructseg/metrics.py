"""Segmentation metrics that reproduce the official evaluation protocols.

* Image tasks (RefCOCO/+/g, ReasonSeg): :class:`ImageSegMetric` gives cIoU = ΣI / ΣU over the split and gIoU = mean
  per-sample IoU (IoU := 1 when the union is empty), as ``eval_res.py``.
* Video tasks (Ref-DAVIS17, ReVOS, MeViS-style J&F): :class:`VideoSegMetric` scores one (video, expression) per
  ``update``. J = region IoU per frame, F = DAVIS-2017 boundary F-measure per frame, both averaged over the frames of
  the expression; J&F = (J + F) / 2; the dataset score is the mean over expressions. The ReVOS report adds referring /
  reasoning / overall groups and the robustness score R on no-target expressions (VISA paper, after R2-VOS).

Both metrics are ``torchmetrics.Metric`` subclasses whose states are reduced by ``"sum"`` or ``"cat"``, so they are
correct under DDP and with :meth:`torchmetrics.Metric.merge_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat
from torchmetrics.utilities.distributed import gather_all_tensors

EXPRESSION_TYPES = ("referring", "reasoning", "no_target")
"""Expression types of :class:`VideoSegMetric`; the index is the ReVOS ``type_id`` (0, 1, 2)."""

MaskLike = np.ndarray | Tensor


def _as_bool_tensor(mask: MaskLike) -> Tensor:
    """Converts a numpy array or tensor to a bool tensor (non-zero = foreground), keeping its device."""
    return torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask).bool()


def _frame_iou(pred: Tensor, gt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample intersection, union and IoU.

    Args:
        pred: (N, ...) bool predictions.
        gt: (N, ...) bool ground truth, same shape as ``pred``.

    Returns:
        ``(intersection, union, iou)``, each (N,); intersection and union are int64, iou is float64 with
        IoU := 1 where the union is 0.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(gt.shape)}")
    pred, gt = pred.flatten(1), gt.flatten(1)
    inter = (pred & gt).sum(1)
    union = (pred | gt).sum(1)
    iou = torch.where(union == 0, 1.0, inter.double() / union.clamp(min=1).double())
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
    """Boundary tolerance in pixels: ``ceil(bound_th * sqrt(H^2 + W^2))`` if ``bound_th < 1``, else ``bound_th``."""
    return int(bound_th) if bound_th >= 1 else math.ceil(bound_th * math.hypot(height, width))


def _disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) bool disk like ``skimage.morphology.disk``: offsets with x^2 + y^2 <= r^2."""
    offsets = np.arange(-radius, radius + 1)
    return offsets[None, :] ** 2 + offsets[:, None] ** 2 <= radius**2


def _boundary_f_frames(pred: np.ndarray, gt: np.ndarray, bound_th: float) -> np.ndarray:
    """DAVIS-2017 ``f_measure`` for each frame of a stack.

    Args:
        pred: (T, H, W) bool predictions.
        gt: (T, H, W) bool ground truth.
        bound_th: boundary tolerance, a fraction of the image diagonal if < 1, else pixels.

    Returns:
        (T,) float64 boundary F-measures.
    """
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} != target shape {gt.shape}")
    structure = _disk(boundary_radius(pred.shape[-2], pred.shape[-1], bound_th))[None]
    pred_b, gt_b = _seg2bmap(pred), _seg2bmap(gt)
    pred_dil = binary_dilation(pred_b, structure=structure)
    gt_dil = binary_dilation(gt_b, structure=structure)
    n_pred, n_gt = pred_b.sum((1, 2)), gt_b.sum((1, 2))
    precision = np.where(n_pred == 0, 1.0, (pred_b & gt_dil).sum((1, 2)) / np.maximum(n_pred, 1))
    recall = np.where(n_gt == 0, 1.0, (gt_b & pred_dil).sum((1, 2)) / np.maximum(n_gt, 1))
    denom = precision + recall
    return np.where(denom == 0, 0.0, 2 * precision * recall / np.where(denom == 0, 1.0, denom))


def boundary_f_measure(pred: MaskLike, gt: MaskLike, bound_th: float = 0.008) -> float:
    """Boundary F-measure of two (H, W) binary masks, identical to DAVIS-2017 ``f_measure`` (no void pixels).

    Edge cases follow DAVIS: both boundaries empty gives 1; an empty prediction boundary with a non-empty ground
    truth gives P=1, R=0 and an empty ground truth with a non-empty prediction gives P=0, R=1, both F=0.
    """
    pred_np = _as_bool_tensor(pred).cpu().numpy()[None]
    gt_np = _as_bool_tensor(gt).cpu().numpy()[None]
    return float(_boundary_f_frames(pred_np, gt_np, bound_th)[0])


class ImageSegMetric(Metric):
    """cIoU and gIoU of binary image segmentation (RefCOCO-family, ReasonSeg), as the reference ``eval_res.py``.

    ``compute()`` returns ``{"cIoU": ΣI / ΣU, "gIoU": mean per-sample IoU}`` with IoU := 1 for a sample whose
    prediction and target are both empty, and cIoU := 0 when ΣU = 0.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
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
        inter, union, iou = _frame_iou(_as_bool_tensor(preds), _as_bool_tensor(targets))
        self.intersection += inter.sum().to(self.device)
        self.union += union.sum().to(self.device)
        self.iou_sum += iou.sum().to(self.device)
        self.count += iou.numel()

    def compute(self) -> dict[str, float]:
        """Returns ``{"cIoU": float, "gIoU": float}``."""
        ciou = self.intersection.item() / self.union.item() if self.union.item() > 0 else 0.0
        giou = self.iou_sum.item() / self.count.item() if self.count.item() > 0 else 0.0
        return {"cIoU": ciou, "gIoU": giou}


class VideoSegMetric(Metric):
    """J, F and J&F per expression plus the ReVOS group report and robustness score R.

    One ``update`` scores one (video, expression): J and F are the means over its frames of the region IoU and the
    DAVIS-2017 boundary F-measure, J&F = (J + F) / 2. Dataset scores are means over expressions (DAVIS protocol).
    Expressions are typed ``"referring"``, ``"reasoning"`` or ``"no_target"`` (ReVOS ``type_id`` 0, 1, 2):

    * ``"J"``, ``"F"``, ``"J&F"``: means over all referring and reasoning expressions;
    * ``"referring/…"``, ``"reasoning/…"``: the same means within each group, plus ``"<group>/R"`` when every
      expression of the group was given ``foreground``;
    * ``"overall/…"``: the unweighted mean of the group means that exist (not the mean over expressions);
    * ``"R"``: robustness on hallucination queries, the mean over no-target expressions of the per-expression R.

    The per-expression robustness is the mean over frames of ``max(1 - s * Σ((1 - G) · P) / (ΣFg + 1e-6), 0)``, with
    G the target, P the prediction, Fg the mask of all annotated objects of the video and s =
    ``r_false_positive_scale``. No-target expressions never enter J/F or the group keys. Note that the official ReVOS
    script (VISA's ``revos_evaluation.py``) reports R only as ``referring/R``, ``reasoning/R`` and their mean
    ``overall/R`` (the "R" column of the VISA paper); it never scores type-2 expressions.

    Keys without data are omitted. States are per-expression tensors reduced by concatenation, so the metric is
    DDP-safe, also when a rank scored no expression.

    Args:
        bound_th: boundary tolerance of F (fraction of the image diagonal if < 1, else pixels).
        r_false_positive_scale: weight of one false-positive pixel in R. 1.0 is the binary formula. The official
            ReVOS script multiplies uint8 masks whose predictions are read from 0/255 PNGs, so every false-positive
            pixel counts 255 times; pass 255.0 to reproduce published R numbers.
        **kwargs: forwarded to ``torchmetrics.Metric``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    _STATE_DTYPES = {"expr_type": torch.long, "id_length": torch.long, "id_bytes": torch.uint8,
                     "j": torch.float64, "f": torch.float64, "r": torch.float64}

    def __init__(self, bound_th: float = 0.008, r_false_positive_scale: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bound_th = bound_th
        self.r_false_positive_scale = r_false_positive_scale
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
            targets: (T, H, W) bool or 0/1 ground truth (all zeros for a no-target expression).
            expression_type: ``"referring"``, ``"reasoning"`` or ``"no_target"``.
            foreground: (T, H, W) mask of all annotated objects of the video, summed per frame as given (as the
                official script sums the decoded masks). Required for ``"no_target"``; for the other types it gives
                the official ``"<group>/R"`` keys.
            expression_id: free-form identifier reported by :meth:`per_expression`, e.g. ``"<video>/<exp_id>"``.
        """
        if expression_type not in EXPRESSION_TYPES:
            raise ValueError(f"expression_type must be one of {EXPRESSION_TYPES}, got {expression_type!r}")
        if expression_type == "no_target" and foreground is None:
            raise ValueError("a no_target expression needs the foreground masks to compute R")
        pred, gt = _as_bool_tensor(preds), _as_bool_tensor(targets)
        j = _frame_iou(pred, gt)[2].mean().item()
        f = _boundary_f_frames(pred.cpu().numpy(), gt.cpu().numpy(), self.bound_th).mean().item()
        r = math.nan if foreground is None else self._robustness(pred, gt, torch.as_tensor(foreground))
        id_bytes = list(expression_id.encode())
        values = {"expr_type": [EXPRESSION_TYPES.index(expression_type)], "id_length": [len(id_bytes)],
                  "id_bytes": id_bytes, "j": [j], "f": [f], "r": [r]}
        for name, value in values.items():
            getattr(self, name).append(torch.tensor(value, dtype=self._STATE_DTYPES[name], device=self.device))

    def _sync_dist(self, dist_sync_fn: Callable = gather_all_tensors, process_group: Any | None = None) -> None:
        """Gives a rank without expressions typed empty states before the gather.

        torchmetrics would substitute float32 empty tensors, whose dtype differs from the other ranks' states.
        """
        for name, dtype in self._STATE_DTYPES.items():
            if isinstance(getattr(self, name), list) and not getattr(self, name):
                setattr(self, name, [torch.empty(0, dtype=dtype, device=self.device)])
        super()._sync_dist(dist_sync_fn, process_group)

    def _robustness(self, pred: Tensor, gt: Tensor, foreground: Tensor) -> float:
        """Mean over frames of ``max(1 - s * FP / (ΣFg + 1e-6), 0)`` for (T, H, W) masks."""
        if foreground.shape != pred.shape:
            raise ValueError(f"foreground shape {tuple(foreground.shape)} != prediction shape {tuple(pred.shape)}")
        false_pos = (pred & ~gt).flatten(1).sum(1).double() * self.r_false_positive_scale
        fg_area = foreground.flatten(1).double().sum(1).to(false_pos.device)
        return (1 - false_pos / (fg_area + 1e-6)).clamp(min=0).mean().item()

    def _rows(self) -> tuple[list[str], Tensor, Tensor, Tensor, Tensor]:
        """Concatenated states: expression ids and (N,) type codes, J, F and R."""
        if isinstance(self.expr_type, list) and not self.expr_type:
            empty = torch.empty(0, dtype=torch.float64)
            return [], empty.long(), empty, empty, empty
        lengths = dim_zero_cat(self.id_length).tolist()
        chunks = torch.split(dim_zero_cat(self.id_bytes).cpu(), lengths)
        ids = [bytes(chunk.tolist()).decode() for chunk in chunks]
        cat = [dim_zero_cat(state).cpu() for state in (self.expr_type, self.j, self.f, self.r)]
        return ids, *cat

    def compute(self) -> dict[str, float]:
        """Returns the flat score dict described in the class docstring (scores in [0, 1])."""
        _, types, j, f, r = self._rows()
        scores: dict[str, float] = {}
        scored = types != EXPRESSION_TYPES.index("no_target")
        if scored.any():
            scores.update(_jf_means(j[scored], f[scored]))
        groups = {}
        for code, name in enumerate(EXPRESSION_TYPES[:2]):
            selected = types == code
            if selected.any():
                groups[name] = _jf_means(j[selected], f[selected])
                if not r[selected].isnan().any():
                    groups[name]["R"] = r[selected].mean().item()
                scores.update({f"{name}/{key}": value for key, value in groups[name].items()})
        shared_keys = [key for key in ("J", "F", "J&F", "R") if groups and all(key in g for g in groups.values())]
        scores.update({f"overall/{key}": float(np.mean([g[key] for g in groups.values()])) for key in shared_keys})
        if (~scored).any():
            scores["R"] = r[~scored].mean().item()
        return scores

    def per_expression(self) -> list[dict[str, str | float]]:
        """Per-expression rows ``{"id", "type", "J", "F", "J&F", "R"}`` (R is NaN without foreground), for CSV export.

        Under DDP the rows of all ranks are gathered (call it on every rank).
        """
        with self.sync_context():
            ids, types, j, f, r = self._rows()
        return [
            {"id": ids[i], "type": EXPRESSION_TYPES[int(types[i])], "J": j[i].item(), "F": f[i].item(),
             "J&F": (j[i].item() + f[i].item()) / 2, "R": r[i].item()}
            for i in range(len(ids))
        ]


def _jf_means(j: Tensor, f: Tensor) -> dict[str, float]:
    """Means of (N,) per-expression J, F and J&F = (J + F) / 2."""
    return {"J": j.mean().item(), "F": f.mean().item(), "J&F": ((j + f) / 2).mean().item()}
