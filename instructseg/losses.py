"""Training losses (paper eq. 4; reference ``instructseg-reference.md`` §5).

Legend: B batch, Q queries, h x w mask-logit resolution, H x W target resolution, P sampled points.

* Hungarian matching per sample on the mask cost only (``mask_weight * BCE + dice_weight * Dice`` on P uniformly
  sampled points shared by all queries), redone for every decoder step.
* Class loss: binary "this query is the target" logits; matched query 1, all others 0; BCE with
  ``pos_weight = (#logits - #positives) / #positives``. **No-target samples** have every class target 0 and no mask
  loss, so they push every score down. Samples without a mask (VQA) get no class or mask loss.
* Mask loss on matched pairs: BCE + Dice on importance-sampled points (PointRend: oversample, keep the most
  uncertain ``importance_sample_ratio`` share, fill with uniform points), summed over masks / number of masks.
* Ignore regions (ReasonSeg's ``ignore``): a sampled point whose bilinear footprint touches an ignored target pixel
  is left out of the matching cost, the BCE and the Dice, so the target under an ignore region changes no term.
* Several objects per query (``object_masks`` / ``object_count`` from ``target_mode="objects"``): the K objects
  of a sample are K targets, Hungarian-matched to K distinct queries, each matched query gets class target 1 and the
  mask loss of its object; without them each sample has one target, the union of its objects (the paper).
* Deep supervision: the same three terms on every decoder step, summed.
* Text loss: next-token cross-entropy on supervised answer tokens (computed by the LLM), weighted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from instructseg.config import LossConfig
from instructseg.modeling.mask_decoder import MaskPrediction


def point_sample(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``values (M, C, h, w)`` at normalised ``coords (M, P, 2)`` in [0, 1] (x, y) → ``(M, C, P)``."""
    grid = (2.0 * coords - 1.0)[:, :, None]  # (M, P, 1, 2)
    return F.grid_sample(values, grid, mode="bilinear", align_corners=False)[..., 0]


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row Dice loss ``1 - (2 Σ p t + 1) / (Σ p + Σ t + 1)``: ``(M, P), (M, P) → (M,)``.

    ``weights`` ``(M, P)`` 0/1 leaves points out of every sum (ignored points).
    """
    probs = logits.sigmoid()
    if weights is not None:
        probs, targets = probs * weights, targets * weights
    return 1.0 - (2.0 * (probs * targets).sum(-1) + 1.0) / (probs.sum(-1) + targets.sum(-1) + 1.0)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row mean sigmoid BCE: ``(M, P), (M, P) → (M,)``; with 0/1 ``weights (M, P)``, the mean over kept points."""
    per_point = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    if weights is None:
        return per_point.mean(-1)
    return (per_point * weights).sum(-1) / weights.sum(-1).clamp(min=1.0)


def kept_points(ignore: torch.Tensor | None, coords: torch.Tensor) -> torch.Tensor | None:
    """0/1 weights ``(M, P)`` of the points whose bilinear footprint has no ignored pixel, or ``None`` (no ignore).

    Args:
        ignore: ``(M, H, W)`` bool ignore masks (or ``None``).
        coords: ``(M, P, 2)`` normalised point coordinates.
    """
    if ignore is None:
        return None
    return (point_sample(ignore[:, None].float(), coords)[:, 0] == 0).float()


def pairwise_mask_cost(
    logits: torch.Tensor, targets: torch.Tensor, bce_weight: float, dice_weight: float
) -> torch.Tensor:
    """Matching cost between every query and every target: ``(Q, P), (K, P) → (Q, K)``."""
    pos = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    neg = F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    bce = (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[-1]
    probs = logits.sigmoid()
    dice = 1.0 - (2.0 * probs @ targets.T + 1.0) / (probs.sum(-1)[:, None] + targets.sum(-1)[None] + 1.0)
    return bce_weight * bce + dice_weight * dice


@torch.no_grad()
def hungarian_match(
    mask_logits: torch.Tensor,
    targets: list[torch.Tensor],
    num_points: int,
    bce_weight: float,
    dice_weight: float,
    generator: torch.Generator | None = None,
    scores: torch.Tensor | None = None,
    class_weight: float = 0.0,
    ignore: list[torch.Tensor | None] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Assign queries to targets per sample with ``scipy.optimize.linear_sum_assignment`` on the mask cost.

    Args:
        mask_logits: ``(B, Q, h, w)``.
        targets: per sample ``(K_b, H, W)`` float masks (``K_b`` may be 0).
        num_points: P uniformly random points shared by queries and targets.
        scores: optional ``(B, Q)`` class logits; with ``class_weight > 0`` the cost adds
            ``-class_weight * sigmoid(score)`` (Mask2Former's class cost for a single foreground class).
        ignore: optional per-sample ``(H, W)`` bool ignore masks (or ``None``); points touching them are left out of
            the cost.

    Returns:
        Per sample ``(query_indices, target_indices)``, each ``(min(Q, K_b),)`` long.
    """
    matches = []
    for b, (logits, target) in enumerate(zip(mask_logits, targets)):
        if target.shape[0] == 0:
            empty = torch.empty(0, dtype=torch.long, device=logits.device)
            matches.append((empty, empty))
            continue
        coords = torch.rand(1, num_points, 2, device=logits.device, generator=generator)
        pred_points = point_sample(logits[:, None].float(), coords.expand(logits.shape[0], -1, -1))[:, 0]
        tgt_points = point_sample(target[:, None].float(), coords.expand(target.shape[0], -1, -1))[:, 0]
        keep = kept_points(None if ignore is None or ignore[b] is None else ignore[b][None], coords)
        if keep is not None:
            pred_points, tgt_points = pred_points[:, keep[0] > 0], tgt_points[:, keep[0] > 0]
        cost = pairwise_mask_cost(pred_points, tgt_points, bce_weight, dice_weight)
        if scores is not None and class_weight > 0:
            cost = cost - class_weight * scores[b].float().sigmoid()[:, None]
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
        matches.append(
            (
                torch.as_tensor(rows, dtype=torch.long, device=logits.device),
                torch.as_tensor(cols, dtype=torch.long, device=logits.device),
            )
        )
    return matches


@torch.no_grad()
def importance_points(
    logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_ratio: float
) -> torch.Tensor:
    """PointRend sampling around uncertain logits: ``(M, 1, h, w) → (M, P, 2)`` coords in [0, 1]."""
    m = logits.shape[0]
    num_sampled = int(num_points * oversample_ratio)
    coords = torch.rand(m, num_sampled, 2, device=logits.device)
    uncertainty = -point_sample(logits.float(), coords)[:, 0].abs()  # (M, num_sampled)
    num_uncertain = int(importance_ratio * num_points)
    idx = uncertainty.topk(num_uncertain, dim=1).indices
    chosen = torch.gather(coords, 1, idx[..., None].expand(-1, -1, 2))
    uniform = torch.rand(m, num_points - num_uncertain, 2, device=logits.device)
    return torch.cat([chosen, uniform], dim=1)


class InstructSegCriterion(nn.Module):
    """Hungarian-matched class + mask losses with deep supervision, plus the weighted text loss.

    Args:
        config: :class:`instructseg.config.LossConfig`.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config

    def step_losses(
        self,
        mask_logits: torch.Tensor,
        scores: torch.Tensor,
        targets: list[torch.Tensor],
        has_mask: torch.Tensor,
        ignore_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Class, BCE and Dice loss of one decoder step.

        Args:
            mask_logits: ``(B, Q, h, w)``.
            scores: ``(B, Q)`` class logits.
            targets: per sample ``(K_b, H, W)`` (``K_b = 0`` for no-target samples).
            has_mask: ``(B,)`` bool; False rows (VQA) are left out of every term.
            ignore_mask: optional ``(B, H, W)`` bool, True = pixel left out of the matching cost and mask losses.
        """
        cfg = self.config
        ignores = list(ignore_mask.bool()) if ignore_mask is not None else None
        matches = hungarian_match(
            mask_logits,
            targets,
            cfg.num_points,
            cfg.mask_weight,
            cfg.dice_weight,
            scores=scores,
            class_weight=cfg.class_cost_weight,
            ignore=ignores,
        )
        class_target = torch.zeros_like(scores, dtype=torch.float32)
        pred_list, tgt_list, ignore_list = [], [], []
        for b, (q_idx, t_idx) in enumerate(matches):
            class_target[b, q_idx] = 1.0
            pred_list.append(mask_logits[b, q_idx])
            tgt_list.append(targets[b][t_idx])
            if ignores is not None:
                ignore_list.append(ignores[b].expand(len(t_idx), -1, -1))
        rows = has_mask.bool()
        num_masks = max(float(class_target[rows].sum()), 1.0)
        zero = scores.sum() * 0.0
        if rows.any():
            n_logits = float(rows.sum()) * scores.shape[1]
            pos_weight = torch.tensor(max(n_logits - num_masks, 1.0) / num_masks, device=scores.device)
            loss_class = F.binary_cross_entropy_with_logits(
                scores[rows].float(), class_target[rows], pos_weight=pos_weight
            )
        else:
            loss_class = zero
        preds = torch.cat(pred_list)[:, None] if pred_list else mask_logits[:0, :1]  # (M, 1, h, w)
        if preds.shape[0] == 0:
            return {"class": loss_class, "bce": zero, "dice": zero}
        tgts = torch.cat(tgt_list)[:, None].to(preds.dtype)  # (M, 1, H, W)
        coords = importance_points(preds, cfg.num_points, cfg.oversample_ratio, cfg.importance_sample_ratio)
        pred_points = point_sample(preds.float(), coords)[:, 0]  # (M, P)
        tgt_points = point_sample(tgts.float(), coords)[:, 0]
        keep = kept_points(torch.cat(ignore_list) if ignores is not None else None, coords)  # (M, P) or None
        return {
            "class": loss_class,
            "bce": bce_loss(pred_points, tgt_points, keep).sum() / num_masks,
            "dice": dice_loss(pred_points, tgt_points, keep).sum() / num_masks,
        }

    def forward(
        self,
        prediction: MaskPrediction,
        target_masks: torch.Tensor,
        has_target: torch.Tensor,
        has_mask: torch.Tensor,
        lm_loss: torch.Tensor | None = None,
        ignore_mask: torch.Tensor | None = None,
        object_masks: torch.Tensor | None = None,
        object_count: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """All loss terms and their weighted sum under ``"loss"``.

        Args:
            prediction: decoder output (``N_l`` steps).
            target_masks: ``(B, H, W)`` float 0/1 target per sample (union of the query's objects).
            has_target: ``(B,)`` bool; False = no-target query (all class targets 0, no mask loss).
            has_mask: ``(B,)`` bool; False = sample without segmentation supervision (VQA).
            lm_loss: text loss from the LLM, or ``None``.
            ignore_mask: optional ``(B, H, W)`` bool, True = pixel excluded from the mask losses and the matching
                cost (ReasonSeg ignore regions; the batch's ``ignore_mask``).
            object_masks: optional ``(B, K_max, H, W)`` float 0/1, one target per object of the query (the batch of
                ``target_mode="objects"``); when given, the K targets of each sample are Hungarian-matched to K
                queries (class target 1 for each matched query) instead of the single union target.
            object_count: ``(B,)`` long, the real targets of each row of ``object_masks`` (required with it).

        Returns:
            ``{"loss", "loss_class", "loss_bce", "loss_dice", "loss_text", "loss_class_0", ...}`` (per-step terms
            with a ``_<step>`` suffix for the auxiliary steps).
        """
        cfg = self.config
        keep = has_target.bool() & has_mask.bool()
        if object_masks is None:
            targets = [m[None] if k else m[None][:0] for m, k in zip(target_masks, keep)]
        elif object_count is None:
            raise ValueError("object_masks needs object_count (B,), the real targets of each row (collate_samples).")
        else:
            targets = [m[: int(n)] if k else m[:0] for m, n, k in zip(object_masks, object_count, keep)]
        steps = range(len(prediction.mask_logits)) if cfg.deep_supervision else [len(prediction.mask_logits) - 1]
        last = len(prediction.mask_logits) - 1
        out: dict[str, torch.Tensor] = {}
        total = target_masks.new_zeros(())
        for step in steps:
            terms = self.step_losses(
                prediction.mask_logits[step], prediction.scores[step], targets, has_mask, ignore_mask
            )
            suffix = "" if step == last else f"_{step}"
            for name, value in terms.items():
                out[f"loss_{name}{suffix}"] = value
            total = total + cfg.class_weight * terms["class"] + cfg.mask_weight * terms["bce"]
            total = total + cfg.dice_weight * terms["dice"]
        out["loss_text"] = lm_loss if lm_loss is not None else total.new_zeros(())
        out["loss"] = total + cfg.text_weight * out["loss_text"]
        return out
