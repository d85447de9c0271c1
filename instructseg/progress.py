"""Progress that reads well in a log file: periodic training lines and a validation table.

:class:`ProgressLog` is added by :class:`~instructseg.lit_module.InstructSegModule` to every run. When stderr is not
a terminal (``nohup``, SLURM, ``> train.log``) Lightning's progress bar is useless, so it prints one line every
``every_seconds``::

    step 120/1500 (8%) | loss 3.412 class 0.691 bce 0.412 dice 0.733 text 1.102 | 38.2 samples/s | 1m02s, ETA 11m57s

After each validation it prints the per-task metrics as a table (on a terminal too). :data:`QUIET_WARNINGS` lists
the warnings a new user would otherwise see on every run although nothing is wrong, each with the reason.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections import defaultdict
from typing import Any

import lightning as L

#: (message regex, why it is expected here): silenced by :func:`quiet_expected_warnings`.
QUIET_WARNINGS = (
    (r".*module\(s\) in eval mode", "the frozen towers stay in eval mode on purpose (no DropPath / dropout)"),
    (r".*IterableDataset.*__len__", "the streams define __len__ as the per-rank epoch length; workers split it"),
    (r".*tensorboardX.*", "Lightning's note about an optional logger dependency"),
    (r".*is_gradient_checkpointing.*", "a transformers deprecation inside peft"),
    (r".*LeafSpec.*", "a torch deprecation inside Lightning"),
)


def quiet_expected_warnings() -> None:
    """Ignore the warnings of :data:`QUIET_WARNINGS` (every other warning still shows)."""
    for pattern, _ in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def validation_table(metrics: dict[str, Any]) -> str:
    """``val/<task>/<metric>`` entries as a Markdown table: one row per task, one column per metric."""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    for name, value in metrics.items():
        parts = name.split("/")
        if len(parts) == 3 and parts[0] == "val":
            rows[parts[1]][parts[2]] = float(value)
    if not rows:
        return ""
    columns = sorted({c for r in rows.values() for c in r})
    lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for task in sorted(rows):
        lines.append(
            f"| {task} | " + " | ".join(f"{rows[task][c]:.3f}" if c in rows[task] else "–" for c in columns) + " |"
        )
    return "\n".join(lines)


class ProgressLog(L.Callback):
    """Training lines when stderr is not a TTY, and a validation table after every validation.

    Args:
        every_seconds: time between two training lines.
        force: print training lines even on a terminal.
    """

    def __init__(self, every_seconds: float = 30.0, force: bool = False) -> None:
        self.every_seconds = every_seconds
        self.force = force
        self._start = self._last = 0.0
        self._start_step = 0
        self._samples = 0

    def _active(self) -> bool:
        return self.force or not sys.stderr.isatty()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()
        self._start_step, self._samples = trainer.global_step, 0
        if self._active() and trainer.is_global_zero:
            total = trainer.max_steps if trainer.max_steps > 0 else "?"
            print(f"training from step {trainer.global_step} to {total}", flush=True)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._samples += int(batch["input_ids"].shape[0]) * trainer.world_size
        now = time.perf_counter()
        last_step = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if (
            not self._active()
            or not trainer.is_global_zero
            or (now - self._last < self.every_seconds and not last_step)
        ):
            return
        self._last = now
        print(self.line(trainer, now), flush=True)

    def line(self, trainer: L.Trainer, now: float) -> str:
        """One progress line (see the module docstring)."""
        step, total = trainer.global_step, trainer.max_steps
        elapsed = now - self._start
        done = step - self._start_step
        head = f"step {step}/{total} ({100 * step / total:.0f}%)" if total > 0 else f"step {step}"
        metrics = trainer.callback_metrics
        terms = [("loss", "train/loss")] + [(k, f"train/loss_{k}") for k in ("class", "bce", "dice", "text")]
        losses = " ".join(f"{short} {float(metrics[key]):.3f}" for short, key in terms if key in metrics)
        speed = f"{self._samples / elapsed:.1f} samples/s" if elapsed > 0 else ""
        eta = f", ETA {_duration(elapsed / done * (total - step))}" if total > 0 and done > 0 else ""
        return " | ".join(part for part in (head, losses, speed, f"{_duration(elapsed)}{eta}") if part)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        table = validation_table(trainer.callback_metrics)
        if table:
            print(f"validation at step {trainer.global_step}:\n{table}", flush=True)
