"""Learning curve of the README main job: validation metrics against wall time, tiny preset on CPU.

    python benchmarks/train_quality.py                       # trains like scripts/main_job.sh, validating often
    python benchmarks/train_quality.py --metrics-csv runs/.../metrics.csv   # only print the curve of a past run
    python benchmarks/train_quality.py --diagnose runs/.../last.ckpt      # is it the masks or the selection?

Expects the tiny pretrained parts in checkpoints/tiny-pretrained and the synthetic shards in data/synthetic (the
first two steps of scripts/main_job.sh). Prints one row per validation: step, wall time, per-task cIoU.

``--diagnose`` compares, on validation key frames with a target, the mean IoU of the selected query with the best of
all Q queries (the "oracle": how good the masks are) and with the query of highest raw score.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch
import torch.nn.functional as F

from instructseg.train_cli import main as train_main

TASKS = ("res", "reasonseg", "rvos", "reasonvos")


def curve(metrics_csv: Path) -> list[dict[str, float]]:
    """Rows of a Lightning CSV log that carry validation metrics."""
    rows = []
    for row in csv.DictReader(open(metrics_csv)):
        if row.get("time/elapsed_s"):
            rows.append({k: float(v) for k, v in row.items() if v and (k.startswith(("val/", "time/")) or k == "step")})
    return rows


@torch.no_grad()
def diagnose(checkpoint: str, val_glob: str = "data/synthetic/val/*.tar", batches: int = 12) -> dict[str, float]:
    """Mean IoU of the selected query, the best query and the top-score query on validation key frames."""
    from datamodules import InstructSegDataModule
    from instructseg.checkpoint import load_training_checkpoint

    model = load_training_checkpoint(checkpoint).eval()
    config = model.config
    data = InstructSegDataModule(
        val=[{"name": "val", "urls": val_glob}], tokenizer_path=config.llm.path, mask_size=config.mask.image_size,
        clip_size=config.vision.image_size, num_ref_frames=config.num_reference_frames, batch_size=16, num_workers=0,
    )
    data.setup("validate")
    sums = {"selected": 0.0, "best query (oracle)": 0.0, "top raw score": 0.0}
    count = 0
    for index, batch in enumerate(data.val_dataloader()):
        if index == batches:
            break
        prediction = model(batch).prediction
        size = batch["target_mask"].shape[-1]
        masks = F.interpolate(prediction.mask_logits[-1], size=(size, size), mode="bilinear") > 0  # (B, Q, S, S)
        target = batch["target_mask"][:, None] > 0.5
        iou = (masks & target).sum((2, 3)) / (masks | target).sum((2, 3)).clamp(min=1)  # (B, Q)
        rows, keep = torch.arange(len(iou)), batch["has_target"] & batch["has_mask"]
        picks = {
            "selected": model.select(prediction, threshold=0.0).query,
            "best query (oracle)": iou.argmax(1),
            "top raw score": prediction.scores[-1].argmax(1),
        }
        for name, pick in picks.items():
            sums[name] += float(iou[rows, pick][keep].sum())
        count += int(keep.sum())
    return {name: value / max(count, 1) for name, value in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics-csv", type=Path, default=None, help="print the curve of an existing run")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--val-every", type=int, default=250)
    parser.add_argument("--out", default="outputs/train-quality")
    parser.add_argument("--diagnose", default=None, help="checkpoint: selected vs best-query IoU on val key frames")
    args = parser.parse_args()
    if args.diagnose:
        print("| query chosen by | mean IoU (val key frames with a target) |\n|---|---|")
        for name, value in diagnose(args.diagnose).items():
            print(f"| {name} | {value:.3f} |")
        return
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
