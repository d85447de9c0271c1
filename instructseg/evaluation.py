"""Evaluate a checkpoint or an export on the validation shards of a data config (``instructseg evaluate``).

Every query of every validation record is predicted with :class:`instructseg.InstructSegPredictor` at the original
resolution (videos: every frame, the paper's per-frame protocol with cached encodings by default), then scored with
the official formulas (:mod:`instructseg.metrics`): cIoU / gIoU for image tasks, J / F / J&F for video tasks and the
ReVOS report (referring / reasoning / overall, robustness R on no-target queries). One row per dataset and task.

Writes into ``out``: ``metrics.json``, ``metrics.csv`` (one row per query), optional masks in the official submission
layout (``submission/Annotations/<video>/<exp_id>/<frame>.png``, 0/255) and overlay pictures (PNG for images, GIF for
videos; prediction left, ground truth right). Every name that comes from the data (record keys, query ids, frame
names) is sanitised before it becomes part of a path, so nothing is written outside ``out``. A record that cannot be
read or predicted is skipped, counted and logged; it never stops the evaluation.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm.auto import tqdm

from instructseg.constants import VIDEO_TASKS
from instructseg.metrics import ImageSegMetric, VideoSegMetric
from instructseg.visualize import save_overlay_gif, save_overlay_png, save_submission_masks

log = logging.getLogger(__name__)

IMAGE_COLUMNS = ("queries", "cIoU", "gIoU")
VIDEO_COLUMNS = ("queries", "J", "F", "J&F", "referring/J&F", "reasoning/J&F", "overall/J&F", "R", "overall/R")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: Any, fallback: str = "_") -> str:
    """A single path component made from a data-provided name: no separators, no ``..``, no leading dot.

    ``"../../etc"`` → ``"etc"``; ``"a/b c"`` → ``"a_b_c"``; an empty result becomes ``fallback``.
    """
    cleaned = _UNSAFE.sub("_", str(name)).strip("._")
    return cleaned or fallback


def val_urls(data_config: str | Path) -> list[tuple[str, list[str]]]:
    """``(name, shard URLs)`` of each ``val`` shard set of a data YAML (``data.init_args.val[*]``)."""
    from datamodules.shards import expand_urls

    path = Path(data_config)
    if not path.is_file():
        raise FileNotFoundError(f"--data: no data config at {path}.")
    try:
        init = (yaml.safe_load(path.read_text()) or {}).get("data", {}).get("init_args", {})
    except yaml.YAMLError as err:
        raise ValueError(f"--data: {path} is not valid YAML: {' '.join(str(err).split())}") from None
    sets = init.get("val") or []
    if not sets:
        raise ValueError(f"--data: {path} has no `data.init_args.val` shard sets to evaluate.")
    return [(str(s.get("name", f"val{i}")), expand_urls(s["urls"])) for i, s in enumerate(sets)]


class _Overlays:
    """Writes up to ``limit`` overlay pictures."""

    def __init__(self, out_dir: Path, limit: int) -> None:
        self.out_dir, self.limit, self.count = out_dir / "overlays", limit, 0

    def add(self, record: Any, query_id: str, query: dict, frames: list, masks: np.ndarray, targets: np.ndarray,
            scores: list[float], no_target: list[bool]) -> None:
        if self.count >= self.limit:
            return
        caption = f"{query['text']} ({query['type']})"
        stem = self.out_dir / f"{self.count:03d}_{record.task}_{safe_name(record.key)}_{safe_name(query_id)}"
        if record.task in VIDEO_TASKS:
            save_overlay_gif(stem.with_suffix(".gif"), frames, masks, caption, targets=targets, scores=scores,
                             no_target=no_target)
        else:
            save_overlay_png(stem.with_suffix(".png"), frames[0], masks[0], caption, target=targets[0],
                             score=scores[0], no_target=no_target[0])
        self.count += 1


def _predict_record(predictor: Any, record: Any, strategy: str, threshold: float | None) -> tuple[list, list]:
    """``(frames, predictions)`` of every query of one record."""
    frames = list(record.frames)
    texts = [q["text"] for q in record.queries]
    if record.task in VIDEO_TASKS:
        return frames, predictor.predict_video(frames, texts, strategy=strategy, task=record.task, threshold=threshold)
    return frames, predictor.predict_image(frames[0], texts, task=record.task, threshold=threshold)


def evaluate_sets(
    predictor: Any,
    shard_sets: list[tuple[str, list[str]]],
    out_dir: str | Path,
    strategy: str = "per_frame",
    max_records: int | None = None,
    overlays: int = 16,
    submission: bool = False,
    threshold: float | None = None,
) -> dict[str, dict[str, float]]:
    """Predict and score every query; returns ``{"<set>/<task>": {metric: value}}`` and writes the reports.

    Args:
        predictor: an :class:`~instructseg.predictor.InstructSegPredictor`.
        shard_sets: ``(name, urls)`` pairs, e.g. from :func:`val_urls`.
        out_dir: output directory (created).
        strategy: video strategy (see :data:`instructseg.constants.STRATEGIES`).
        max_records: stop after this many records per shard set.
        overlays: number of overlay pictures to write.
        submission: also write masks in the official submission layout.
        threshold: no-target threshold (default: the model's).
    """
    from datamodules.shards import SkipCounter, iter_records

    out_dir = Path(out_dir)
    image_metrics: dict[str, ImageSegMetric] = defaultdict(ImageSegMetric)
    video_metrics: dict[str, VideoSegMetric] = defaultdict(VideoSegMetric)
    counts: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    pictures = _Overlays(out_dir, overlays)
    skipped: Counter[str] = Counter()
    for set_name, urls in shard_sets:
        counter = SkipCounter()
        bar = tqdm(iter_records(urls, counter), desc=f"evaluating {set_name}", unit="record", mininterval=5)
        for index, record in enumerate(bar):
            if max_records is not None and index >= max_records:
                break
            if record.task == "vqa":
                continue
            try:
                frames, preds = _predict_record(predictor, record, strategy, threshold)
                targets_by_query = [
                    np.stack([record.target_mask(q["object_ids"], t) for t in range(record.num_frames)])
                    for q in record.queries
                ]
                foreground = None
                if record.task in VIDEO_TASKS:
                    foreground = np.stack([record.foreground_mask(t) for t in range(record.num_frames)])
            except (ValueError, OSError) as err:
                skipped["bad_record"] += 1
                log.warning("skipped record %s of %s: %s", record.key, set_name, " ".join(str(err).split()))
                continue
            group = f"{set_name}/{record.task}"
            for qi, (query, pred, targets) in enumerate(zip(record.queries, preds, targets_by_query)):
                query_id = str(query.get("id", qi))
                video = record.task in VIDEO_TASKS
                masks = np.asarray(pred.masks if video else pred.mask[None])  # (T, H, W)
                scores = list(np.atleast_1d(pred.scores if video else pred.score).astype(float))
                no_target = list(np.atleast_1d(pred.no_target).astype(bool))
                row = {"set": set_name, "key": record.key, "task": record.task, "query_id": query_id,
                       "type": query["type"], "text": query["text"]}
                if video:
                    video_metrics[group].update(masks, targets, expression_type=query["type"], foreground=foreground,
                                                expression_id=f"{set_name}/{record.key}/{query_id}")
                    if submission:
                        names = record.meta.get("frame_names") or [f"{t:05d}" for t in range(len(frames))]
                        names = [safe_name(n, f"{t:05d}") for t, n in enumerate(names)]
                        save_submission_masks(out_dir / "submission", safe_name(record.key), safe_name(query_id),
                                              names, masks)
                else:
                    inter, union = int((masks & targets).sum()), int((masks | targets).sum())
                    row.update({"I": inter, "U": union, "IoU": inter / union if union else 1.0})
                    image_metrics[group].update(masks, targets)
                counts[group] += 1
                rows.append(row)
                pictures.add(record, query_id, query, frames, masks, targets, scores, no_target)
        skipped.update(counter.totals)
    per_expression = {row["id"]: row for metric in video_metrics.values() for row in metric.per_expression()}
    for row in rows:
        row.update(per_expression.get(f"{row['set']}/{row['key']}/{row['query_id']}", {}))
    results: dict[str, dict[str, float]] = {}
    for group, metric in [*image_metrics.items(), *video_metrics.items()]:
        results[group] = {"queries": counts[group], **metric.compute()}
    if skipped:
        log.warning("skipped during evaluation: %s", dict(skipped))
        results["skipped"] = dict(skipped)
    write_reports(results, rows, out_dir)
    return results


def write_reports(results: dict[str, Any], rows: list[dict], out_dir: Path) -> None:
    """Write ``metrics.json`` (summary) and ``metrics.csv`` (one row per query)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("set", "key", "task", "query_id"), k))
    with open(out_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def format_table(results: dict[str, Any]) -> str:
    """Markdown tables (image tasks, then video tasks): one row per dataset/task, scores in [0, 1]."""
    tables = []
    for columns in (IMAGE_COLUMNS, VIDEO_COLUMNS):
        rows = {name: s for name, s in sorted(results.items()) if isinstance(s, dict) and columns[1] in s}
        if not rows:
            continue
        lines = ["| dataset/task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, scores in rows.items():
            cells = [f"{scores[c]:.3f}" if isinstance(scores.get(c), float) else str(scores.get(c, "–")) for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)
