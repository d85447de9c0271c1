"""Evaluate a checkpoint or an export on the validation shards of a data config (``instructseg evaluate``).

Every query of every validation record is predicted with :class:`instructseg.InstructSegPredictor` at the original
resolution (videos: every frame, the paper's per-frame protocol with cached encodings by default), then scored with
the official formulas (:mod:`instructseg.metrics`): cIoU / gIoU for image tasks, J / F / J&F / A and the DAVIS
recall and decay for video tasks, and the ReVOS report (referring / reasoning / overall, robustness R on no-target
queries). One row per dataset and task.

**Several objects per instruction**: for a query naming two or more objects, the predictor's objects (up to
``max_objects``) are also scored one by one: ``objects/recall@0.5`` is the share of the named objects (those visible
in at least one frame) matched one-to-one by a predicted object with IoU >= 0.5 over all frames
(:func:`instructseg.objects.object_recall`), pooled over those queries and reported next to the union metrics of their
dataset/task (``objects/queries`` of them); the per-query rows carry ``objects`` and ``objects_matched``.

Writes into ``out``: ``metrics.json``, ``metrics.csv`` (one row per query), optional masks in the official submission
layout (``submission/Annotations/<video>/<exp_id>/<frame>.png``, 0/255) and overlay pictures (PNG for images, GIF for
videos; prediction left, ground truth right). Every name that comes from the data (record keys, query ids, frame
names) is sanitised before it becomes part of a path, so nothing is written outside ``out``. A record that cannot be
read or predicted is skipped, counted and logged; it never stops the evaluation.

**Distributed** (:func:`evaluate_model` with ``devices > 1``, through Lightning Fabric): every rank reads the records'
headers in the same order and predicts record ``i`` when ``i % world_size == rank``, so each record is predicted
exactly once.

**Resumable**: each record's result (its queries' CSV rows and their metric contributions, the serialised states of a
one-query :class:`~instructseg.metrics.ImageSegMetric` / :class:`~instructseg.metrics.VideoSegMetric`) is appended to
``out/progress/rank-<r>.jsonl`` as soon as it is scored. A later run with the same settings skips the records found
there. The reports are always built from these files, merging the contributions with ``Metric.merge_state`` in
record order, so a single-process, a distributed and an interrupted-then-resumed evaluation give identical metrics.
(Several machines need ``out`` on a shared filesystem; a missing result is an error, never a silently smaller score.)

**Splits without annotations** (e.g. Ref-YouTube-VOS ``valid``, scored by the official server): a record with
``has_annotations: false`` or only null masks is predicted and its masks are always written to ``submission/``, but
it is never scored; a dataset/task without any annotated record gets no metrics row (``results["unannotated"]``
counts its records).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import sys
import tarfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import yaml
from tqdm.auto import tqdm

from instructseg.constants import VIDEO_TASKS
from instructseg.metrics import ImageSegMetric, VideoSegMetric
from instructseg.objects import object_recall
from instructseg.visualize import save_overlay_gif, save_overlay_png, save_submission_masks

IMAGE_COLUMNS = ("queries", "cIoU", "gIoU")
VIDEO_COLUMNS = ("queries", "J", "F", "J&F", "referring/J&F", "reasoning/J&F", "overall/J&F", "R", "overall/R")
PROGRESS_DIR = "progress"
"""Sub-folder of ``out`` with the per-record results (``rank-<r>.jsonl``) and the run's ``settings.json``."""
LOG_INTERVAL = 30.0
"""Seconds between progress lines when stderr is not a terminal."""
OBJECT_RECALL = "objects/recall@0.5"
"""Per-object recall at IoU 0.5 of the multi-object queries of a dataset/task (see the module docstring)."""
TIMES = ("read", "model", "metrics", "write")
"""Parts of the evaluation time stored per record: shard reading and decoding, prediction, scoring, outputs."""
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SHARD_NAME = re.compile(r"^(?P<dataset>.+)-(?P<split>[^-]+)-\d+\.tar$")


def safe_name(name: Any, fallback: str = "_") -> str:
    """A single path component made from a data-provided name: no separators, no ``..``, no leading dot.

    ``"../../etc"`` → ``"etc"``; ``"a/b c"`` → ``"a_b_c"``; an empty result becomes ``fallback``.
    """
    cleaned = _UNSAFE.sub("_", str(name)).strip("._")
    return cleaned or fallback


def val_urls(data_config: str | Path) -> list[tuple[str, list[str]]]:
    """``(name, shard URLs)`` of each ``val`` shard set of a data YAML (``data.init_args.val[*]``).

    Remote URLs are checked here (:func:`datamodules.shards.check_remote_urls`), before any work starts.
    """
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


def has_annotations(record: Any) -> bool:
    """False for a record of a split without ground truth: ``has_annotations: false`` or objects whose masks are all
    null (the converters' placeholder objects). A record without objects (only no-target queries) is annotated."""
    if record.meta.get("has_annotations") is False:
        return False
    masks = [rle for obj in record.meta["objects"].values() for rle in obj["masks"]]
    return not masks or any(rle is not None for rle in masks)


# ----------------------------------------------------------------------------------------------------------------
# Counting records up front (progress total)


def count_records(urls: list[str]) -> int | None:
    """Number of records in ``urls`` without reading them: the converter's ``summary.json`` next to the shards (local
    or http) when it describes exactly these shards, else the ``.json`` members in local tar headers; ``None`` when
    neither is available (e.g. ``pipe:`` URLs)."""
    by_summary = _count_from_summaries(urls)
    if by_summary is not None:
        return by_summary
    total = 0
    for url in urls:
        if not os.path.isfile(url):
            return None
        try:
            with tarfile.open(url) as archive:
                total += sum(1 for member in archive if member.name.endswith(".json"))
        except (tarfile.TarError, OSError):
            continue  # a broken shard is reported (and its records skipped) when it is read
    return total


def _count_from_summaries(urls: list[str]) -> int | None:
    """Records of ``urls`` from ``summary.json`` (``splits.<split>.records``) when every URL is a converter shard
    ``<dataset>-<split>-NNNNNN.tar`` and each (folder, split) has exactly the summary's number of shards."""
    series: Counter[tuple[str, str]] = Counter()
    for url in urls:
        folder, _, name = url.rpartition("/")
        match = _SHARD_NAME.match(name)
        if match is None or url.startswith("pipe:"):
            return None
        series[folder, match["split"]] += 1
    total = 0
    for (folder, split), shards in series.items():
        summary = _read_summary(folder)
        entry = (summary or {}).get("splits", {}).get(split) if isinstance(summary, dict) else None
        if not isinstance(entry, dict) or entry.get("shards") != shards or not isinstance(entry.get("records"), int):
            return None
        total += entry["records"]
    return total


def _read_summary(folder: str) -> Any:
    """The parsed ``<folder>/summary.json`` (a local folder or an http(s) URL), or ``None``."""
    try:
        if re.match(r"^https?://", folder):
            with urllib.request.urlopen(f"{folder}/summary.json", timeout=10) as response:
                return json.loads(response.read())
        path = Path(folder or ".") / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


class Progress:
    """Records done / total with rate and ETA: a tqdm bar on a terminal, else one line every ``interval`` seconds.

    Args:
        total: records expected (``None``: unknown, no ETA).
        desc: label.
        stream: where to write (default ``sys.stderr``).
        interval: seconds between lines when ``stream`` is not a terminal.
        enabled: False writes nothing (e.g. ranks other than 0).
    """

    def __init__(
        self, total: int | None, desc: str, stream: IO[str] | None = None, interval: float = LOG_INTERVAL,
        enabled: bool = True,
    ) -> None:  # fmt: skip
        self.stream = stream or sys.stderr
        self.total, self.desc, self.interval, self.enabled = total, desc, interval, enabled
        self.done, self.start, self.last = 0, time.perf_counter(), -float("inf")
        tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = tqdm(total=total, desc=desc, unit="record", file=self.stream, mininterval=1) if tty else None

    def update(self, count: int = 1) -> None:
        """Count ``count`` more records done."""
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and time.perf_counter() - self.last >= self.interval:
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        if self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            done = f"{self.done}/{self.total} records ({100 * self.done / self.total:.0f} %)"
            eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "?"
            print(f"{self.desc}: {done}, {rate:.2f} records/s, ETA {eta_text}", file=self.stream, flush=True)
        else:
            print(f"{self.desc}: {self.done} records, {rate:.2f} records/s", file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar (or write the last line)."""
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            self._line()


# ----------------------------------------------------------------------------------------------------------------
# Per-query metric contributions (serialised torchmetrics states)


def _state_to_json(metric: Any) -> dict[str, Any]:
    """A metric's states as JSON: ``{name: {"dtype", "list", "value"}}`` (float64 values round-trip exactly)."""
    out = {}
    for name, value in metric.metric_state.items():
        is_list = isinstance(value, list)
        tensor = torch.cat([v.reshape(-1, *v.shape[1:]) for v in value]) if is_list else value
        out[name] = {"dtype": str(tensor.dtype).removeprefix("torch."), "list": is_list, "value": tensor.tolist()}
    return out


def _state_from_json(state: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`_state_to_json`: the state dict for ``Metric.merge_state``."""
    out = {}
    for name, entry in state.items():
        tensor = torch.tensor(entry["value"], dtype=getattr(torch, entry["dtype"]))
        out[name] = [tensor] if entry["list"] else tensor
    return out


@dataclass(frozen=True)
class MetricOptions:
    """Options of the metrics (part of the settings a resumed run must share).

    Attributes:
        revos_official: ReVOS A and R with the official uint8 arithmetic; targets are per-pixel object counts.
        official_epsilons: the reference image scripts' gIoU / cIoU epsilons.
    """

    revos_official: bool = False
    official_epsilons: bool = False

    def metric(self, video: bool) -> ImageSegMetric | VideoSegMetric:
        """A fresh metric that never syncs across ranks: it holds one query, or states merged from all ranks."""
        if video:
            return VideoSegMetric(revos_official=self.revos_official, distributed_available_fn=_never)
        return ImageSegMetric(official_epsilons=self.official_epsilons, distributed_available_fn=_never)


def _never() -> bool:
    return False


def _targets(record: Any, object_ids: list[str], counts: bool) -> np.ndarray:
    """(T, H, W) target of a query: the bool union of its objects, or with ``counts`` the uint8 per-pixel number of
    its objects (the official ReVOS target, needed by ``revos_official``)."""
    frames = []
    for t in range(record.num_frames):
        if counts:
            count = np.zeros(record.size, dtype=np.uint8)
            for object_id in object_ids:
                count += record.object_mask(object_id, t)
            frames.append(count)
        else:
            frames.append(record.target_mask(object_ids, t))
    return np.stack(frames)


def object_scores(record: Any, object_ids: list[str], pred: Any, video: bool) -> dict[str, int]:
    """``{"objects", "objects_matched"}`` of a query naming several objects: its objects visible in some frame and
    how many of them a distinct predicted object (``pred.objects``) matches with IoU >= 0.5 over all frames."""
    targets = [np.stack([record.object_mask(i, t) for t in range(record.num_frames)]) for i in object_ids]
    targets = [target for target in targets if target.any()]
    predicted = [np.asarray(o.masks if video else o.mask[None]) for o in pred.objects]
    recall = object_recall(predicted, targets, iou=0.5)
    return {"objects": len(targets), "objects_matched": round(recall * len(targets))}


# ----------------------------------------------------------------------------------------------------------------
# The evaluation loop


@dataclass
class _Work:
    """One record in the enumeration order shared by all ranks."""

    uid: str
    index: int
    set_name: str
    record: Any
    first_query: int


@dataclass
class _Runner:
    """Predicts, scores and writes one record at a time (see :func:`evaluate_sets`)."""

    predictor: Any
    out_dir: Path
    strategy: str
    threshold: float | None
    submission: bool
    overlays: int
    options: MetricOptions
    rank: int = 0
    max_objects: int = 1

    def run(self, work: _Work, read_seconds: float) -> dict[str, Any]:
        """The JSONL entry of one record: status, per-query rows and metric states, seconds per part (:data:`TIMES`)
        and the wall-clock time it finished (``finished``, seconds since the epoch)."""
        record, video = work.record, work.record.task in VIDEO_TASKS
        entry: dict[str, Any] = {"uid": work.uid, "set": work.set_name, "task": record.task, "key": record.key,
                                 "rank": self.rank}  # fmt: skip
        clock = time.perf_counter()
        annotated = has_annotations(record)
        try:
            frames = list(record.frames)
            targets = [_targets(record, q["object_ids"], video and self.options.revos_official) for q in record.queries]
            foreground = np.stack([record.foreground_mask(t) for t in range(record.num_frames)]) if video else None
            seconds = {"read": read_seconds + time.perf_counter() - clock}
            clock = time.perf_counter()
            preds = self._predict(record, frames)
        except (ValueError, OSError) as err:
            message = " ".join(str(err).split())
            print(f"skipped record {record.key} of {work.set_name}: {message}", file=sys.stderr)
            return {**entry, "status": "skipped", "reason": "bad_record", "message": message}
        seconds["model"] = time.perf_counter() - clock
        rows, states, seconds["metrics"], seconds["write"] = [], [], 0.0, 0.0
        for qi, (query, pred, target) in enumerate(zip(record.queries, preds, targets)):
            clock = time.perf_counter()
            query_id = str(query.get("id", qi))
            masks = np.asarray(pred.masks if video else pred.mask[None])  # (T, H, W)
            row = {"set": work.set_name, "key": record.key, "task": record.task, "query_id": query_id,
                   "type": query["type"], "text": query["text"]}  # fmt: skip
            if annotated:
                metric = self.options.metric(video)
                if video:
                    metric.update(masks, target, expression_type=query["type"], foreground=foreground,
                                  expression_id=f"{work.set_name}/{record.key}/{query_id}")  # fmt: skip
                    row.update({k: v for k, v in metric.per_expression()[0].items() if k not in ("id", "type")})
                else:
                    inter, union = int((masks & target).sum()), int((masks | target).sum())
                    row.update({"I": inter, "U": union, "IoU": inter / union if union else 1.0})
                    metric.update(masks, target)
                states.append(_state_to_json(metric))
                if len(query["object_ids"]) >= 2:
                    row.update(object_scores(record, query["object_ids"], pred, video))
            seconds["metrics"] += time.perf_counter() - clock
            clock = time.perf_counter()
            self._write(work, qi, query_id, query, frames, masks, target.astype(bool), pred, video, annotated)
            rows.append(row)
            seconds["write"] += time.perf_counter() - clock
        status = "scored" if annotated else "unannotated"
        return {**entry, "status": status, "rows": rows, "states": states, "seconds": seconds, "finished": time.time()}

    def _predict(self, record: Any, frames: list[np.ndarray]) -> list:
        texts = [q["text"] for q in record.queries]
        if record.task in VIDEO_TASKS:
            return self.predictor.predict_video(
                frames,
                texts,
                strategy=self.strategy,
                task=record.task,
                threshold=self.threshold,
                max_objects=self.max_objects,
            )
        return self.predictor.predict_image(
            frames[0], texts, task=record.task, threshold=self.threshold, max_objects=self.max_objects
        )

    def _write(
        self, work: _Work, qi: int, query_id: str, query: dict, frames: list, masks: np.ndarray, target: np.ndarray,
        pred: Any, video: bool, annotated: bool,
    ) -> None:  # fmt: skip
        """Submission masks (always for an unannotated record) and the overlay of the first ``overlays`` queries."""
        record = work.record
        if (video and self.submission) or not annotated:
            names = record.meta.get("frame_names") or [f"{t:05d}" for t in range(len(frames))]
            names = [safe_name(n, f"{t:05d}") for t, n in enumerate(names)]
            save_submission_masks(self.out_dir / "submission", safe_name(record.key), safe_name(query_id), names, masks)
        number = work.first_query + qi
        if number >= self.overlays:
            return
        caption = f"{query['text']} ({query['type']})"
        stem = self.out_dir / "overlays" / f"{number:03d}_{record.task}_{safe_name(record.key)}_{safe_name(query_id)}"
        scores = list(np.atleast_1d(pred.scores if video else pred.score).astype(float))
        no_target = list(np.atleast_1d(pred.no_target).astype(bool))
        shown = target if annotated else None
        if video:
            save_overlay_gif(stem.with_suffix(".gif"), frames, masks, caption, targets=shown, scores=scores,
                             no_target=no_target)  # fmt: skip
        else:
            first = None if shown is None else shown[0]
            save_overlay_png(stem.with_suffix(".png"), frames[0], masks[0], caption, target=first, score=scores[0],
                             no_target=no_target[0])  # fmt: skip


def _enumerate(shard_sets: list[tuple[str, list[str]]], max_records: int | None, counter: Any) -> Iterator[_Work]:
    """Every evaluated record (vqa records are not), in the same order on every rank."""
    from datamodules.shards import iter_records

    index = first_query = 0
    for set_name, urls in shard_sets:
        for position, record in enumerate(iter_records(urls, counter)):
            if max_records is not None and position >= max_records:
                break
            if record.task == "vqa":
                continue
            uid = f"{set_name}|{position}|{record.url.rpartition('/')[2]}|{record.key}"
            yield _Work(uid, index, set_name, record, first_query)
            index += 1
            first_query += len(record.queries)


def _read_progress(folder: Path) -> dict[str, dict[str, Any]]:
    """``uid -> entry`` of every ``rank-*.jsonl`` in ``folder``; a line cut by an interruption is ignored."""
    entries = {}
    for path in sorted(folder.glob("rank-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # the last line of an interrupted run
            entries[entry["uid"]] = entry
    return entries


def _open_log(path: Path) -> IO[str]:
    """``path`` opened for appending, after cutting a last line that an interruption left unfinished."""
    if path.is_file():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)
    return open(path, "a")


def _prepare_progress(folder: Path, settings: dict[str, Any], resume: bool) -> None:
    """Create ``folder`` for these settings: keep earlier results when resuming with the same settings, remove them
    with ``resume=False``; refuse to mix results of other settings."""
    path = folder / "settings.json"
    if folder.is_dir() and not resume:
        shutil.rmtree(folder)
    if path.is_file():
        previous = json.loads(path.read_text())
        if previous != settings:
            changed = sorted(k for k in {*previous, *settings} if previous.get(k) != settings.get(k))
            raise ValueError(
                f"--out: {folder.parent} holds a partial evaluation with other settings ({', '.join(changed)}); "
                "pass --resume false to start again there, or another --out."
            )
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(settings, indent=2))


def evaluate_sets(
    predictor: Any,
    shard_sets: list[tuple[str, list[str]]],
    out_dir: str | Path,
    strategy: str = "per_frame",
    max_records: int | None = None,
    overlays: int = 16,
    submission: bool = False,
    threshold: float | None = None,
    options: MetricOptions | None = None,
    resume: bool = True,
    fabric: Any | None = None,
    identity: dict[str, Any] | None = None,
    progress: bool = True,
    max_objects: int = 1,
) -> dict[str, Any]:
    """Predict and score every query; returns ``{"<set>/<task>": {metric: value}, ...}`` and writes the reports.

    Besides the rows, the result has ``"skipped"`` (reason → records) when data was skipped, ``"unannotated"``
    (``"<set>/<task>"`` → records without ground truth) when there were such records, and ``"seconds"``: the time
    per part (:data:`TIMES`) summed over the records of all ranks and all runs.

    Args:
        predictor: an :class:`~instructseg.predictor.InstructSegPredictor`.
        shard_sets: ``(name, urls)`` pairs, e.g. from :func:`val_urls`.
        out_dir: output directory (created).
        strategy: video strategy (see :data:`instructseg.constants.STRATEGIES`).
        max_records: stop after this many records per shard set.
        overlays: number of overlay pictures to write (the first queries in record order).
        submission: also write the masks of annotated video records in the official submission layout (those of
            records without annotations are always written).
        threshold: no-target threshold (default: the model's).
        options: metric options (default: the binary formulas, exact epsilons).
        resume: continue from the results in ``out_dir/progress`` (same settings); False starts again.
        fabric: a launched ``lightning.fabric.Fabric``; its ranks share the records (``None``: one process).
        identity: further settings a resumed run must share (e.g. the model path and dtype).
        progress: show progress on stderr (rank 0 only).
        max_objects: objects the predictor returns per instruction (``objects/recall@0.5`` of multi-object
            queries scores them; the union metrics score their union).

    Raises:
        ValueError: when ``out_dir`` holds a partial evaluation with other settings.
        RuntimeError: when results of some records are missing after all ranks finished.
    """
    from datamodules.shards import SkipCounter

    options = options or MetricOptions()
    out_dir = Path(out_dir)
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    folder = out_dir / PROGRESS_DIR
    settings = {"sets": shard_sets, "strategy": strategy, "max_records": max_records, "threshold": threshold,
                "submission": submission, "max_objects": max_objects, **vars(options), **(identity or {})}  # fmt: skip
    if rank == 0:
        _prepare_progress(folder, json.loads(json.dumps(settings)), resume)
    _barrier(fabric)
    done = _read_progress(folder)
    totals = [count_records(urls) for _, urls in shard_sets]
    total = None if None in totals else sum(min(n, max_records or n) for n in totals)
    share = None if total is None else max(len(range(rank, total, world)) - len(done) // world, 0)
    bar = Progress(share, "evaluating" + (f" (rank 0 of {world})" if world > 1 else ""), enabled=progress and rank == 0)
    runner = _Runner(predictor, out_dir, strategy, threshold, submission, overlays, options, rank, max_objects)
    counter, order = SkipCounter(), []
    with _open_log(folder / f"rank-{rank}.jsonl") as log:
        clock = time.perf_counter()
        for work in _enumerate(shard_sets, max_records, counter):
            order.append(work.uid)
            if work.index % world != rank or work.uid in done:
                clock = time.perf_counter()
                continue
            entry = runner.run(work, time.perf_counter() - clock)
            log.write(json.dumps(entry) + "\n")
            log.flush()
            bar.update()
            clock = time.perf_counter()
    bar.close()
    _barrier(fabric)
    results = _merge(order, _read_progress(folder), options, out_dir if rank == 0 else None)
    read_skips = dict(counter.totals)  # identical on every rank: all ranks read every record
    if read_skips:
        results.setdefault("skipped", {})
        for reason, count in read_skips.items():
            results["skipped"][reason] = results["skipped"].get(reason, 0) + count
    if rank == 0:
        reported = {key: value for key, value in results.items() if key != "seconds"}
        (out_dir / "metrics.json").write_text(json.dumps(reported, indent=2))
    _barrier(fabric)
    return results


def _barrier(fabric: Any | None) -> None:
    if fabric is not None:
        fabric.barrier()


def _merge(
    order: list[str], entries: dict[str, dict[str, Any]], options: MetricOptions, out_dir: Path | None
) -> dict[str, Any]:
    """Fold the entries of ``order`` (record order) into the results; write ``metrics.csv`` to ``out_dir``."""
    missing = [uid for uid in order if uid not in entries]
    if missing:
        raise RuntimeError(
            f"results of {len(missing)} record(s) are missing from {PROGRESS_DIR}/ (e.g. {missing[0]!r}); on several "
            "machines --out must be on a filesystem all of them share."
        )
    metrics: dict[str, Any] = {}
    queries, unannotated, skipped, seconds = Counter(), Counter(), Counter(), Counter()
    objects: dict[str, Counter] = {}
    rows: list[dict[str, Any]] = []
    for uid in order:
        entry = entries[uid]
        group = f"{entry['set']}/{entry['task']}"
        if entry["status"] == "skipped":
            skipped[entry["reason"]] += 1
            continue
        rows += entry["rows"]
        seconds.update(entry["seconds"])
        if entry["status"] == "unannotated":
            unannotated[group] += 1
            continue
        metric = metrics.setdefault(group, options.metric(entry["task"] in VIDEO_TASKS))
        for state in entry["states"]:
            metric.merge_state(_state_from_json(state))
        metric._update_count += len(entry["states"])  # merged states count as updates (no "compute before update")
        queries[group] += len(entry["states"])
        for row in entry["rows"]:
            if "objects" in row:
                objects.setdefault(group, Counter()).update(
                    {"queries": 1, "objects": row["objects"], "matched": row["objects_matched"]}
                )
    results: dict[str, Any] = {group: {"queries": queries[group], **m.compute()} for group, m in metrics.items()}
    for group, count in objects.items():
        results[group]["objects/queries"] = count["queries"]
        results[group][OBJECT_RECALL] = count["matched"] / count["objects"] if count["objects"] else 1.0
    if skipped:
        results["skipped"] = dict(skipped)
    if unannotated:
        results["unannotated"] = dict(unannotated)
    results["seconds"] = {part: seconds[part] for part in TIMES}
    if out_dir is not None:
        write_csv(rows, out_dir)
    return results


def write_csv(rows: list[dict], out_dir: Path) -> None:
    """Write ``metrics.csv`` (one row per query, in record order)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("set", "key", "task", "query_id"), k))
    with open(out_dir / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def evaluate_model(
    model: str,
    data: str | Path,
    out: str | Path,
    devices: int = 1,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    **kwargs: Any,
) -> dict[str, Any] | None:
    """Load ``model`` on each of ``devices`` processes and run :func:`evaluate_sets` on ``data``'s val sets.

    ``devices > 1`` launches the other ranks through Lightning Fabric (DDP; gloo on CPU, NCCL on CUDA) by running the
    same command again; on CPU each rank uses ``cpu_count // devices`` threads unless ``OMP_NUM_THREADS`` is set.
    The shard URLs are checked before anything starts.

    Args:
        model: export directory, training .ckpt or Hugging Face Hub id.
        data: data config YAML (``data.init_args.val``).
        out: output directory.
        devices: processes (one per GPU on CUDA).
        device: ``cpu``, ``cuda``, ``cuda:N`` (``devices`` must be 1) or ``mps``.
        dtype: autocast dtype (``None``: float32).
        **kwargs: :func:`evaluate_sets` options.

    Returns:
        The results on rank 0, ``None`` on the other ranks.
    """
    from lightning.fabric import Fabric

    from instructseg.predictor import InstructSegPredictor

    shard_sets = val_urls(data)
    kind, _, index = device.partition(":")
    if index and devices != 1:
        raise ValueError(f"--devices {devices} with --device {device}: give --device {kind} to use several devices.")
    if devices > 1 and kind not in ("cpu", "cuda"):
        raise ValueError(f"--devices {devices}: several processes need --device cpu or cuda, not {device}.")
    if kind == "cuda" and devices > torch.cuda.device_count():
        raise ValueError(f"--devices {devices}: this machine has {torch.cuda.device_count()} CUDA device(s).")
    fabric = Fabric(
        accelerator=kind, devices=[int(index)] if index else devices, strategy="ddp" if devices > 1 else "auto"
    )
    fabric.launch()
    if kind == "cpu" and devices > 1 and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // devices))
    predictor = InstructSegPredictor.from_pretrained(model, device=fabric.device, dtype=dtype)
    identity = {"model": str(model), "model_files": model_fingerprint(model), "dtype": str(dtype)}
    results = evaluate_sets(predictor, shard_sets, out, fabric=fabric, identity=identity, **kwargs)
    return results if fabric.global_rank == 0 else None


def model_fingerprint(model: str | Path) -> str | None:
    """A digest of the names, sizes and modification times of a local checkpoint or export (``None`` for a Hub id),
    so that a resumed evaluation never mixes results of a model file that was replaced in between."""
    path = Path(model)
    if not path.exists():
        return None
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stats = [(p.name if p == path else str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()[:16]


def unannotated_note(results: dict[str, Any], out_dir: Path) -> str | None:
    """The one line saying which dataset/tasks had no ground truth and where their submission is, or ``None``."""
    groups = results.get("unannotated")
    if not groups:
        return None
    parts = [f"{group} ({count} records{'' if group not in results else ', the rest scored'})"
             for group, count in groups.items()]  # fmt: skip
    return (
        f"no annotations in {', '.join(parts)}: no metrics for them; their masks are in {out_dir / 'submission'} "
        "for the official evaluation server."
    )


def format_table(results: dict[str, Any]) -> str:
    """Markdown tables (image tasks, then video tasks): one row per dataset/task, scores in [0, 1]."""
    tables = []
    for columns in (IMAGE_COLUMNS, VIDEO_COLUMNS):
        rows = {name: s for name, s in sorted(results.items()) if isinstance(s, dict) and columns[1] in s}
        if not rows:
            continue
        lines = ["| dataset/task | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for name, scores in rows.items():
            cells = [f"{scores[c]:.3f}" if isinstance(scores.get(c), float) else str(scores.get(c, "–"))
                     for c in columns]  # fmt: skip
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables)
