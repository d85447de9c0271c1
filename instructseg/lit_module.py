"""``InstructSegModule``: the LightningModule that trains and validates InstructSeg.

* Training on mixed-task batches (images and videos, referring / reasoning / no-target / VQA in one batch), every
  loss term logged, data-skip counts logged, AdamW + linear warmup + cosine decay (paper supplement A).
* Validation: per-task cIoU / gIoU of the selected key-frame mask and the no-target accuracy.
* Checkpoints hold only the trainable weights (+ optimizer / scheduler / loop state); the frozen towers are
  re-loaded from their pretrained paths, so resuming is exact and checkpoints stay small. The model configuration is
  stored as a plain dict under the top-level key ``"model_config"`` so checkpoints load with
  ``torch.load(weights_only=True)``.
* A non-finite loss stops the run with the step, the batch keys and every loss term in the message; no checkpoint is
  written for that step, so the last good checkpoint stays intact.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric

from instructseg.checkpoint import CONFIG_KEY, absolute_pretrained_paths, check_trainable_state, trainable_state
from instructseg.config import InstructSegConfig
from instructseg.constants import SPECIAL_TOKENS, TASKS
from instructseg.losses import InstructSegCriterion
from instructseg.metrics import ImageSegMetric
from instructseg.modeling.instructseg import InstructSeg
from instructseg.progress import ProgressLog

PAPER_CONFIG = InstructSegConfig.from_name("instructseg-phi2")


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or inf."""


class InstructSegModule(L.LightningModule):
    """Train / validate an :class:`~instructseg.modeling.instructseg.InstructSeg` model.

    Args:
        config: the model configuration (every field shows in ``--help`` / ``--print_config`` and the run's
            ``config.yaml``; ``configs/model/*.yaml`` hold the presets).
        pretrained_root: if set, the three pretrained paths become ``<root>/{siglip,llm,mask2former}``.
        learning_rate: AdamW learning rate (paper: 4e-5).
        weight_decay: AdamW weight decay (paper: 0).
        warmup_ratio: share of the total optimizer steps spent in linear warmup (paper: 0.03).
        min_lr_ratio: final learning rate as a share of ``learning_rate`` at the end of the cosine.
        frozen_dtype: dtype of the frozen pretrained towers (``"bfloat16"`` on GPU saves memory; trainable parts
            stay fp32 and are cast by the trainer's precision plugin).
    """

    def __init__(
        self,
        config: InstructSegConfig = PAPER_CONFIG,
        pretrained_root: str | None = None,
        learning_rate: float = 4e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        min_lr_ratio: float = 0.0,
        frozen_dtype: str | None = None,
    ) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = InstructSegConfig.from_dict(config)
        # the config is stored as a plain dict under CONFIG_KEY (weights_only checkpoints cannot hold dataclasses)
        self.save_hyperparameters(ignore=["config"])
        model_config = config.with_pretrained_root(pretrained_root) if pretrained_root else config
        self.model_config = model_config
        dtype = getattr(torch, frozen_dtype) if frozen_dtype else None
        self.model = InstructSeg.from_config(model_config, dtype=dtype)
        self.criterion = InstructSegCriterion(model_config.loss)
        # one metric per task, created up front so every DDP rank syncs the same set
        self.val_iou = torch.nn.ModuleDict({task: ImageSegMetric() for task in TASKS})
        self.val_no_target = torch.nn.ModuleDict({task: MeanMetric() for task in TASKS})
        self.strict_loading = False

    @property
    def text_token_budget(self) -> int | None:
        """Most prompt tokens a sample may have (see :meth:`InstructSeg.text_token_budget`); linked to the data."""
        return self.model.text_token_budget()

    @property
    def tokenizer(self) -> Any:
        """The model's tokenizer (with the special tokens); the CLI hands it to the datamodule."""
        return self.model.tokenizer

    def setup(self, stage: str) -> None:
        """Check, before any step runs, that the datamodule's sizes and tokenizer match the model."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None:
            return
        expected = {
            "mask_size": self.model_config.mask.image_size,
            "clip_size": self.model_config.vision.image_size,
            "num_ref_frames": self.model_config.num_reference_frames,
        }
        for name, value in expected.items():
            got = getattr(datamodule, name, value)
            if got != value:
                raise ValueError(
                    f"data.{name}={got} does not match the model ({name} must be {value} for preset "
                    f"{self.model_config.name!r}); fix the data config."
                )
        data_tok = getattr(datamodule, "tokenizer", None)
        if data_tok is not None and data_tok is not self.tokenizer:
            ours = self.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
            theirs = data_tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
            if ours != theirs or len(data_tok) != len(self.tokenizer):
                raise ValueError(
                    f"the data tokenizer ({getattr(data_tok, 'name_or_path', '?')}) differs from the model's "
                    f"({getattr(self.tokenizer, 'name_or_path', '?')}): special-token ids {theirs} vs {ours}, "
                    f"vocabulary {len(data_tok)} vs {len(self.tokenizer)}; drop data.tokenizer_path so the data uses "
                    "the model's tokenizer."
                )

    def configure_callbacks(self) -> list[L.Callback]:
        """Progress lines in log files and a validation table (:class:`~instructseg.progress.ProgressLog`)."""
        return [ProgressLog()]

    def on_fit_start(self) -> None:
        self._fit_start = time.perf_counter()

    def forward(self, batch: dict[str, Any]):
        return self.model(batch)

    def _losses(self, batch: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
        out = self.model(batch)
        losses = self.criterion(
            out.prediction,
            batch["target_mask"],
            batch["has_target"],
            batch["has_mask"],
            out.lm_loss,
            ignore_mask=batch.get("ignore_mask"),
            object_masks=batch.get("object_masks"),
            object_count=batch.get("object_count"),
        )
        return out, losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        _, losses = self._losses(batch)
        if not torch.isfinite(losses["loss"]):
            terms = {k: round(float(v), 5) for k, v in losses.items()}
            raise NonFiniteLossError(
                f"non-finite loss at global step {self.global_step} (batch {batch_idx}); batch keys "
                f"{batch.get('key')}; loss terms {terms}. The last saved checkpoint is untouched."
            )
        batch_size = batch["input_ids"].shape[0]
        main_terms = {f"train/{k}": v for k, v in losses.items() if not k[-1].isdigit() and k != "loss"}
        self.log_dict(main_terms, batch_size=batch_size)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=batch_size)
        self._log_skip_totals(batch_size)
        return losses["loss"]

    def _log_skip_totals(self, batch_size: int) -> None:
        """Cumulative ``data/skipped_<reason>`` counts of the datamodule (summed over ranks): the latest value of each
        is the number of items skipped so far, whichever step last saw one."""
        datamodule = getattr(self.trainer, "datamodule", None)
        totals = datamodule.skip_counts() if hasattr(datamodule, "skip_counts") else {}
        for reason, total in sorted(totals.items()):
            self.log(f"data/skipped_{reason}", float(total), reduce_fx="sum", sync_dist=True, batch_size=batch_size)

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        out, losses = self._losses(batch)
        batch_size = batch["input_ids"].shape[0]
        self.log("val/loss", losses["loss"], batch_size=batch_size, add_dataloader_idx=False, sync_dist=True)
        selection = self.model.select(out.prediction)
        size = batch["target_mask"].shape[-1]
        pred = F.interpolate(selection.mask_logits[:, None], size=(size, size), mode="bilinear")[:, 0] > 0
        target = batch["target_mask"] > 0.5
        for i, task in enumerate(batch["task"]):
            if not bool(batch["has_mask"][i]):
                continue
            h, w = (int(v) for v in batch["valid_hw"][i])
            if bool(batch["has_target"][i]):
                self.val_iou[task].update(pred[i : i + 1, :h, :w], target[i : i + 1, :h, :w])
            else:
                self.val_no_target[task].update(selection.no_target[i].float())

    def on_validation_epoch_end(self) -> None:
        if hasattr(self, "_fit_start"):  # wall time so far, for learning curves (benchmarks/train_quality.py)
            self.log("time/elapsed_s", time.perf_counter() - self._fit_start)
        # compute() syncs across DDP ranks, so every rank calls it for every task; only tasks seen are logged
        for task in TASKS:
            iou, no_target = self.val_iou[task], self.val_no_target[task]
            seen_iou, seen_no_target = int(iou.count) > 0, float(no_target.weight) > 0
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "compute before update" for tasks absent from this split
                scores, accuracy = iou.compute(), no_target.compute()
            if seen_iou:
                for name, value in scores.items():
                    self.log(f"val/{task}/{name}", value, add_dataloader_idx=False)
            if seen_no_target:
                self.log(f"val/{task}/no_target_acc", accuracy, add_dataloader_idx=False)
            iou.reset()
            no_target.reset()

    def configure_optimizers(self):
        params = list(self.model.trainable_parameters().values())
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(self.hparams.warmup_ratio * total)
        floor = self.hparams.min_lr_ratio

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only the trainable weights, the model config (absolute pretrained paths) and the RNG state."""
        checkpoint["state_dict"] = trainable_state(self.model, checkpoint["state_dict"])
        checkpoint[CONFIG_KEY] = absolute_pretrained_paths(self.model_config.to_dict())
        # the loss samples points at random and LoRA uses dropout: the RNG state makes resuming exact
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the stored trainable weights against this model strictly and restore the RNG state."""
        check_trainable_state(self.model, checkpoint["state_dict"], checkpoint.get(CONFIG_KEY), "checkpoint")
        rng = checkpoint.get("rng_state", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
