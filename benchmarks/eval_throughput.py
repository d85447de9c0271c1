"""Evaluation throughput: the boundary F-measure per frame next to direct implementations of the DAVIS rule.

    python benchmarks/eval_throughput.py [--frames 10] [--repeats 3] [--threads 1]

For 480x854 and 720x1280 frames and two kinds of masks ("objects": a moving wavy blob with a shifted, slightly noisy
prediction; "noise": 1 % of the pixels flipped everywhere, so boundaries cover the whole frame), times per frame:

* ``instructseg``: :func:`instructseg.metrics.boundary_f_measure`;
* ``DAVIS cv2``: the DAVIS-2017 rule on the whole frame with ``cv2.dilate``, as davis2017-evaluation runs it;
* ``DAVIS scipy``: the same rule with ``scipy.ndimage.binary_dilation`` (skimage-style disk), the official code's
  commented-out line and the previous instructseg implementation.

Prints one table with the ratios (reference time / instructseg time) and checks that all three give identical values.
Each time is the best of ``--repeats`` passes over ``--frames`` frames; ``--threads`` sets OpenCV's thread count.

Then evaluates the seeded tiny preset on ``--records`` synthetic validation records (made on the fly, all four tasks)
with ``instructseg evaluate --devices 1`` and ``--devices 2`` (CPU, DDP on gloo; ``--eval-threads`` torch threads per
process, 1 by default, so the speed-up measures the sharing of records, not thread contention) and prints records/s
and the split of the per-record time between model, metrics and I/O (shard reading and frame / mask decoding plus
output writing) for image and video records, and the 2-process speed-up. Records/s are steady-state rates from the
records' finishing times (process start and model loading excluded); ``--records 0`` skips this part.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from instructseg.metrics import boundary_f_measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the direct DAVIS reference
from fixtures.davis_reference import cv2_dilate, davis_f_measure, scipy_dilate  # noqa: E402

RESOLUTIONS = {"480p": (480, 854), "720p": (720, 1280)}
FMeasure = Callable[[np.ndarray, np.ndarray], float]
IMPLEMENTATIONS: dict[str, FMeasure] = {
    "instructseg": boundary_f_measure,
    "DAVIS cv2": lambda pred, gt: davis_f_measure(pred, gt, dilate=cv2_dilate),
    "DAVIS scipy": lambda pred, gt: davis_f_measure(pred, gt, dilate=scipy_dilate),
}


def make_frames(shape: tuple[int, int], kind: str, frames: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``frames`` (prediction, target) pairs of (H, W) bool masks of the given kind ("objects" or "noise")."""
    rng = np.random.default_rng(seed)
    height, width = shape
    yy, xx = np.mgrid[:height, :width]
    pairs = []
    for t in range(frames):
        if kind == "noise":
            gt = rng.random(shape) < 0.5
            pairs.append((gt ^ (rng.random(shape) < 0.01), gt))
            continue
        cy, cx = height * (0.4 + 0.2 * t / max(frames - 1, 1)), width * (0.3 + 0.4 * t / max(frames - 1, 1))
        dy, dx, phase = rng.integers(-6, 7), rng.integers(-6, 7), rng.uniform(-0.5, 0.5)
        pairs.append((_blob(yy, xx, cy + dy, cx + dx, t / 3 + phase), _blob(yy, xx, cy, cx, t / 3)))
    return pairs


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, phase: float) -> np.ndarray:
    """(H, W) wavy ellipse centred at (cy, cx) covering about 15 % of the frame; ``yy``, ``xx`` are pixel grids."""
    height, width = yy.shape
    wave = 1 + 0.2 * np.sin(5 * np.arctan2(yy - cy, xx - cx) + phase)
    return ((yy - cy) / (0.25 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 < wave**2


def time_per_frame(function: FMeasure, pairs: list[tuple[np.ndarray, np.ndarray]], repeats: int) -> tuple[float, list]:
    """Best-of-``repeats`` seconds per frame of ``function`` over ``pairs``, and its values."""
    best, values = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        values = [function(pred, gt) for pred, gt in pairs]
        best = min(best, (time.perf_counter() - start) / len(pairs))
    return best, values


def boundary_rows(frames: int, repeats: int) -> list[list[str]]:
    """One row per (resolution, mask kind): ms per frame of each implementation, the ratios, identical values."""
    rows = []
    for resolution, shape in RESOLUTIONS.items():
        for kind in ("objects", "noise"):
            pairs = make_frames(shape, kind, frames)
            timed = {name: time_per_frame(f, pairs, repeats) for name, f in IMPLEMENTATIONS.items()}
            ours, our_values = timed["instructseg"]
            identical = all(values == our_values for _, values in timed.values())
            rows.append(
                [resolution, kind, *(f"{seconds * 1e3:.2f}" for seconds, _ in timed.values())]
                + [f"{timed[name][0] / ours:.1f}x" for name in IMPLEMENTATIONS if name != "instructseg"]
                + ["yes" if identical else "NO"]
            )
    return rows


EVAL_HEADER = ["records", "processes", "count", "records/s", "model %", "metrics %", "I/O %", "speed-up"]


def _tiny_evaluation_inputs(root: Path, records: int) -> tuple[Path, Path]:
    """``(export, data config)``: the seeded tiny preset and ``records`` synthetic validation records under root."""
    import torch

    from datamodules.synthetic import generate
    from instructseg.config import InstructSegConfig
    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.tiny import save_tiny_pretrained

    config = InstructSegConfig.from_name("tiny").with_pretrained_root(save_tiny_pretrained(root / "tiny"))
    torch.manual_seed(0)
    export = InstructSeg.from_config(config).save_pretrained(root / "export")
    generate(root / "synthetic", train=0, val=records, seed=0, size=64, records_per_shard=max(1, records // 4))
    data = root / "data.yaml"
    data.write_text(
        json.dumps({"data": {"init_args": {"val": [{"name": "syn", "urls": str(root / "synthetic/val/*.tar")}]}}})
    )
    return export, data


def _entries(out: Path) -> list[dict]:
    """The per-record results of an evaluation (all ranks)."""
    return [json.loads(line) for path in sorted((out / "progress").glob("rank-*.jsonl")) for line in path.open()]


def _rate(entries: list[dict]) -> float:
    """Steady-state records/s: per rank, (records - 1) over the span of their finishing times, summed over ranks."""
    ranks: dict[str, list[float]] = {}
    for entry in entries:
        ranks.setdefault(entry["rank"], []).append(entry["finished"])
    return sum((len(t) - 1) / (max(t) - min(t)) for t in ranks.values() if len(t) > 1 and max(t) > min(t))


def _split_row(label: str, processes: int, entries: list[dict], rate: float, speedup: str) -> list[str]:
    """One table row: records/s and the model / metrics / I/O percentages of the records' summed time."""
    parts = {part: sum(e["seconds"][part] for e in entries) for part in ("read", "model", "metrics", "write")}
    total = sum(parts.values())
    shares = [parts["model"], parts["metrics"], parts["read"] + parts["write"]]
    return [
        label,
        str(processes),
        str(len(entries)),
        f"{rate:.2f}",
        *(f"{100 * x / total:.1f}" for x in shares),
        speedup,
    ]


def evaluation_rows(args: argparse.Namespace) -> list[list[str]]:
    """Records/s of image and video evaluation, the split of time between model, metrics and I/O, 1 vs 2 processes.

    Image and video rates come from each record's own time (1 process); the "all" rows from finishing times.
    """
    if args.records < 1:
        return []
    from instructseg.constants import VIDEO_TASKS

    rows, single = [], None
    with tempfile.TemporaryDirectory(prefix="eval-throughput-") as tmp:
        export, data = _tiny_evaluation_inputs(Path(tmp), args.records)
        for processes in (1, 2):
            out = Path(tmp) / f"out-{processes}"
            command = [sys.executable, "-m", "instructseg.cli", "evaluate", "--model", str(export), "--data",
                       str(data), "--out", str(out), "--overlays", "0", "--devices", str(processes)]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(args.eval_threads)}
            proc = subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env)
            if proc.returncode:
                raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
            entries = [e for e in _entries(out) if e["status"] == "scored"]
            if processes == 1:
                for label, video in (("image", False), ("video", True)):
                    kind = [e for e in entries if (e["task"] in VIDEO_TASKS) == video]
                    seconds = sum(sum(e["seconds"].values()) for e in kind)
                    rows.append(_split_row(label, 1, kind, len(kind) / seconds, "–"))
            rate = _rate(entries)
            single = single or rate
            rows.append(_split_row("all", processes, entries, rate, f"{rate / single:.2f}x"))
    return rows


def print_table(header: list[str], rows: list[list[str]]) -> None:
    """Prints a right-aligned plain-text table."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, ["-" * w for w in widths], *rows]:
        print("  ".join(value.rjust(width) for value, width in zip(row, widths)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=10, help="frames per resolution and mask kind")
    parser.add_argument("--repeats", type=int, default=3, help="passes; the best is reported")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads (cv2.setNumThreads)")
    parser.add_argument("--records", type=int, default=48, help="synthetic records evaluated (0: skip)")
    parser.add_argument("--eval-threads", type=int, default=1, help="torch threads of each evaluation process")
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    print(f"boundary F per frame, best of {args.repeats} x {args.frames} frames, OpenCV threads {args.threads}")
    names = [name for name in IMPLEMENTATIONS if name != "instructseg"]
    header = ["frames", "masks", *(f"{name} ms" for name in IMPLEMENTATIONS), *(f"{n} / ours" for n in names)]
    print_table([*header, "identical"], boundary_rows(args.frames, args.repeats))
    rows = evaluation_rows(args)
    if rows:
        print(f"\nevaluation of the tiny preset on CPU, {args.records} synthetic records (all four tasks)")
        print_table(EVAL_HEADER, rows)


if __name__ == "__main__":
    main()
