"""Progress lines for log files and the validation table."""

from types import SimpleNamespace

import torch

from instructseg.progress import ProgressLog, validation_table


def test_validation_table_has_a_row_per_task_and_a_column_per_metric():
    table = validation_table(
        {"val/res/cIoU": torch.tensor(0.5), "val/res/gIoU": 0.25, "val/rvos/cIoU": 0.75, "val/loss": 1.0}
    )
    lines = table.splitlines()
    assert lines[0] == "| task | cIoU | gIoU |"
    assert lines[2:] == ["| res | 0.500 | 0.250 |", "| rvos | 0.750 | – |"]
    assert validation_table({"train/loss": 1.0}) == ""


def test_progress_line_names_step_losses_speed_and_eta():
    log = ProgressLog()
    log._start, log._start_step, log._samples = 100.0, 0, 400
    trainer = SimpleNamespace(
        global_step=50, max_steps=200, callback_metrics={"train/loss": torch.tensor(2.0), "train/loss_dice": 0.5}
    )
    line = log.line(trainer, now=110.0)
    assert line == "step 50/200 (25%) | loss 2.000 dice 0.500 | 40.0 samples/s | 0m10s, ETA 0m30s"
