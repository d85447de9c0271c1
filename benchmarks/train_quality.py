"""Learning curve of the README main job: validation metrics against wall time, tiny preset on CPU.

    python benchmarks/train_quality.py                       # trains like scripts/main_job.sh, validating often
    python benchmarks/train_quality.py --metrics-csv runs/.../metrics.csv   # only print the curve of a past run

Expects the tiny pretrained parts in checkpoints/tiny-pretrained and the synthetic shards in data/synthetic (the
first two steps of scripts/main_job.sh). Prints one row per validation: step, wall time, per-task cIoU.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from instructseg.train_cli import main as train_main

TASKS = ("res", "reasonseg", "rvos", "reasonvos")


def curve(metrics_csv: Path) -> list[dict[str, float]]:
    """Rows of a Lightning CSV log that carry validation metrics."""
    rows = []
    for row in csv.DictReader(open(metrics_csv)):
        if row.get("time/elapsed_s"):
            rows.append({k: float(v) for k, v in row.items() if v and (k.startswith(("val/", "time/")) or k == "step")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-csv", type=Path, default=None, help="print the curve of an existing run")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--out", default="outputs/train-quality")
    args = parser.parse_args()
    metrics_csv = args.metrics_csv
    if metrics_csv is None:
        cli = train_main([
            "fit", "--config", "configs/model/tiny.yaml", "--config", "configs/data/synthetic.yaml",
            "--config", "configs/trainer/cpu.yaml", "--config", "configs/experiments/synthetic-tiny.yaml",
            "--trainer.max_steps", str(args.steps), "--trainer.val_check_interval", str(args.val_every),
            "--trainer.default_root_dir", args.out, "--trainer.enable_progress_bar", "false",
        ])
        metrics_csv = Path(cli.trainer.logger.log_dir) / "metrics.csv"
    print("| step | wall time (s) | " + " | ".join(f"{t} cIoU" for t in TASKS) + " | reasonvos no-target acc |")
    print("|---" * (len(TASKS) + 3) + "|")
    for row in curve(metrics_csv):
        cells = [f"{row.get(f'val/{t}/cIoU', float('nan')):.3f}" for t in TASKS]
        acc = row.get("val/reasonvos/no_target_acc", float("nan"))
        print(f"| {int(row['step']) + 1} | {row['time/elapsed_s']:.0f} | " + " | ".join(cells) + f" | {acc:.3f} |")


if __name__ == "__main__":
    main()
