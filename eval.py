"""Evaluate a checkpoint or an export on the validation shards of a data config.

    python eval.py --model runs/.../last.ckpt --data configs/data/synthetic.yaml --out outputs/eval

Every query of every validation record is predicted with :class:`instructseg.InstructSegPredictor` at the original
resolution (videos: every frame, the paper's per-frame protocol with cached encodings by default), then scored with
the official formulas: cIoU / gIoU for image tasks, J / F / J&F for video tasks and the ReVOS report (referring /
reasoning / overall, robustness R on no-target queries). Writes ``metrics.json``, ``metrics.csv`` (one row per
query), optional masks in the official submission layout (``Annotations/<video>/<exp_id>/<frame>.png``, 0/255) and
overlay pictures (PNG for images, GIF for videos; prediction left, ground truth right).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

from datamodules.shards import expand_urls, iter_records
from instructseg.constants import VIDEO_TASKS
from instructseg.metrics import ImageSegMetric, VideoSegMetric
from instructseg.visualize import save_overlay_gif, save_overlay_png, save_submission_masks


def val_urls(data_config: str) -> list[str]:
    """Shard URLs of the ``val`` sets of a data YAML (``data.init_args.val[*].urls``)."""
    path = Path(data_config)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no data config at {path}.")
    init = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("init_args", {})
    sets = init.get("val") or []
    if not sets:
        raise ValueError(f"--data: {path} has no `data.init_args.val` shard sets to evaluate.")
    urls: list[str] = []
    for shard_set in sets:
        urls += expand_urls(shard_set["urls"])
    return urls


def evaluate(
    predictor,
    urls: list[str],
    out_dir: Path,
    strategy: str = "per_frame",
    max_records: int | None = None,
    overlays: int = 16,
    submission: bool = False,
) -> dict[str, dict[str, float]]:
    """Predict and score every query; returns ``{task: {metric: value}}`` and writes the files described above."""
    image_metrics: dict[str, ImageSegMetric] = defaultdict(ImageSegMetric)
    video_metrics: dict[str, VideoSegMetric] = defaultdict(VideoSegMetric)
    rows = []
    pictures = 0
    records = iter_records(urls)
    for index, record in enumerate(tqdm(records, desc="evaluating", unit="record")):
        if max_records is not None and index >= max_records:
            break
        if record.task == "vqa":
            continue
        frames = list(record.frames)
        queries = record.queries
        texts = [q["text"] for q in queries]
        video = record.task in VIDEO_TASKS
        if video:
            preds = predictor.predict_video(frames, texts, strategy=strategy, task=record.task)
            foreground = np.stack([record.foreground_mask(t) for t in range(record.num_frames)])  # (T, H, W)
        else:
            preds = predictor.predict_image(frames[0], texts, task=record.task)
        for qi, (query, pred) in enumerate(zip(queries, preds)):
            query_id = str(query.get("id", qi))
            ids = query["object_ids"]
            targets = np.stack([record.target_mask(ids, t) for t in range(record.num_frames)])  # (T, H, W)
            masks = np.asarray(pred.masks if video else pred.mask[None])  # (T, H, W)
            row = {"key": record.key, "task": record.task, "query_id": query_id, "type": query["type"],
                   "text": query["text"]}
            if video:
                video_metrics[record.task].update(masks, targets, expression_type=query["type"],
                                                  foreground=foreground, expression_id=f"{record.key}/{query_id}")
                if submission:
                    names = record.meta.get("frame_names") or [f"{t:05d}" for t in range(len(frames))]
                    save_submission_masks(out_dir / "submission", record.key, query_id, names, masks)
            else:
                inter, union = int((masks & targets).sum()), int((masks | targets).sum())
                row.update({"I": inter, "U": union, "IoU": inter / union if union else 1.0})
                image_metrics[record.task].update(masks, targets)
            rows.append(row)
            if pictures < overlays:
                caption = f"{query['text']} ({query['type']})"
                path = out_dir / "overlays" / f"{pictures:03d}_{record.task}_{record.key}_{query_id}"
                if video:
                    save_overlay_gif(path.with_suffix(".gif"), frames, masks, caption, targets=targets)
                else:
                    save_overlay_png(path.with_suffix(".png"), frames[0], masks[0], caption, target=targets[0])
                pictures += 1
    per_expression = {row["id"]: row for metric in video_metrics.values() for row in metric.per_expression()}
    for row in rows:
        row.update(per_expression.get(f"{row['key']}/{row['query_id']}", {}))
    results = {task: metric.compute() for task, metric in image_metrics.items()}
    results.update({task: metric.compute() for task, metric in video_metrics.items()})
    write_reports(results, rows, out_dir)
    return results


def write_reports(results: dict[str, dict[str, float]], rows: list[dict], out_dir: Path) -> None:
    """Write ``metrics.json`` (summary) and ``metrics.csv`` (one row per query)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("key", "task", "query_id"), k))
    with open(out_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


IMAGE_COLUMNS = ("cIoU", "gIoU")
VIDEO_COLUMNS = ("J", "F", "J&F", "referring/J&F", "reasoning/J&F", "overall/J&F", "R", "overall/R")


def format_table(results: dict[str, dict[str, float]]) -> str:
    """Markdown tables (image tasks, then video tasks): one row per task, scores in [0, 1]."""
    tables = []
    for columns in (IMAGE_COLUMNS, VIDEO_COLUMNS):
        rows = {task: scores for task, scores in sorted(results.items()) if columns[0] in scores}
        if not rows:
            continue
        lines = ["| task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for task, scores in rows.items():
            lines.append(f"| {task} | " + " | ".join(f"{scores[c]:.3f}" if c in scores else "–" for c in columns) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory or training checkpoint (.ckpt)")
    parser.add_argument("--data", required=True, help="data config YAML whose `val` shard sets are evaluated")
    parser.add_argument("--out", default="outputs/eval", help="output directory")
    parser.add_argument("--strategy", default="per_frame", choices=["per_frame", "shared", "naive"])
    parser.add_argument("--max-records", type=int, default=None)
    parser.add_argument("--overlays", type=int, default=16, help="number of overlay pictures to write")
    parser.add_argument("--submission", action="store_true", help="write masks in the official submission layout")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    from instructseg.predictor import InstructSegPredictor

    try:
        urls = val_urls(args.data)
        predictor = InstructSegPredictor.from_pretrained(args.model, device=args.device)
    except (FileNotFoundError, ValueError) as err:
        print(f"eval.py: error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    results = evaluate(predictor, urls, out, args.strategy, args.max_records, args.overlays, args.submission)
    print(format_table(results))
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and overlays in {out / 'overlays'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
