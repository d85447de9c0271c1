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
"""

from __future__ import annotations

import argparse
import sys
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


def evaluation_rows(args: argparse.Namespace) -> list[list[str]]:
    """Records/s of image and video evaluation and the split of time between model, metrics and I/O.

    To be added with ``instructseg.evaluation`` (tiny preset, CPU); no rows yet.
    """
    return []


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
    args = parser.parse_args(argv)
    cv2.setNumThreads(args.threads)
    print(f"boundary F per frame, best of {args.repeats} x {args.frames} frames, OpenCV threads {args.threads}")
    names = [name for name in IMPLEMENTATIONS if name != "instructseg"]
    header = ["frames", "masks", *(f"{name} ms" for name in IMPLEMENTATIONS), *(f"{n} / ours" for n in names)]
    print_table([*header, "identical"], boundary_rows(args.frames, args.repeats))
    rows = evaluation_rows(args)
    if rows:
        print_table(["task", "records/s", "model %", "metrics %", "I/O %"], rows)


if __name__ == "__main__":
    main()
