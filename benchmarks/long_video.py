"""Long-video benchmark: every video strategy (and SAM2 propagation) on 60 / 300 / 1000-frame synthetic videos.

    python benchmarks/long_video.py                         # tiny preset, CPU, about 5 minutes on 2 cores
    python benchmarks/long_video.py --lengths 100 1000 --strategies keyframe segments

The videos are drawn with the Synthetic IVS scene functions (:mod:`datamodules.synthetic`: ``Shape``,
``render_mask``, ``COLOURS``): 64 x 64 frames, the target (a red square moving right) is visible only in
``[0.35 T, 0.6 T)``; same-colour distractors (a red circle all along, a red star in ``[0.7 T, 0.9 T)``) and a
same-shape distractor (a blue square) share the frames. Frames are rendered when read, so the input never sits in
memory. The instruction is "the red square"; J&F is scored on all T frames (frames without the target count as
correct when the prediction is empty), R is ReVOS robustness against the union of all shapes (``referring/R``).

The model is the main job's trained demo model
(``outputs/main-job/train/lightning_logs/version_*/checkpoints/last.ckpt``, newest) when it exists, else a random tiny
model (the output says which); ``--model`` names another export or checkpoint. SAM2 rows use a tiny random
``Sam2VideoModel`` unless ``--sam2`` names real weights: with random weights their time and memory are real, their
masks are not.

One torch thread by default: on a loaded 2-core machine two OpenMP threads per process spin against the other
processes and run up to 20x slower. Each row runs in a forked child (the model is loaded once, before the fork):
seconds and frames/s of one ``predict_video`` call after a 3-frame warm-up in the parent, and the child's peak
resident set size (``ru_maxrss``, which includes the loaded model and whatever the parent held at the fork) and that
peak above the child's resident size when it started (what the call added, plus a constant ~50 MiB of library pages
the child faults back in after the fork). A row ``keyframe@8`` runs the
strategy with ``relevance_stride=8``; ``+sam2`` propagates with the tracker.
"""

from __future__ import annotations

import argparse
import glob
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.synthetic import COLOURS, SIZES, Shape, render_mask
from instructseg.metrics import VideoSegMetric
from instructseg.predictor import InstructSegPredictor
from instructseg.tracker import Sam2Tracker, save_tiny_sam2
from instructseg.video_io import VideoFrames

sys.path.insert(0, str(Path(__file__).parent))
from video_inference import build_model  # noqa: E402

SIZE = 64
TEXT = "the red square"
MAIN_JOB_CKPTS = "outputs/main-job/train/lightning_logs/version_*/checkpoints/last.ckpt"
ROWS = (
    "per_frame",
    "shared",
    "naive",
    "keyframe",
    "segments",
    "keyframe@8",
    "segments@8",
    "keyframe@8+sam2",
    "segments@8+sam2",
)


class LongVideo(Sequence):
    """A ``num_frames``-frame scene; frame ``t`` (``(64, 64, 3)`` uint8) is rendered on access."""

    def __init__(self, num_frames: int) -> None:
        self.n = n = num_frames

        def shape(name: str, colour: str, size: str, start: tuple[float, float], velocity=(0.0, 0.0)) -> Shape:
            radius = SIZES[size] * SIZE
            return Shape(name, colour, size, radius, np.array(start), np.array(velocity), "still")

        shown = range(int(0.35 * n), int(0.6 * n))
        travel = 30.0 / max(len(shown) - 1, 1)  # the target crosses 30 px while it is visible
        target = shape("square", "red", "large", (16.0 - shown.start * travel, 40.0), (travel, 0.0))
        self.objects = [
            (shape("circle", "red", "large", (14.0, 14.0)), range(n)),
            (shape("square", "blue", "large", (50.0, 14.0)), range(n)),
            (shape("star", "red", "large", (48.0, 46.0)), range(int(0.7 * n), int(0.9 * n))),
            (target, shown),
        ]

    def __len__(self) -> int:
        return self.n

    def masks(self, t: int) -> list[np.ndarray]:
        """Visible masks of the objects at frame ``t`` (the target, drawn last, is never covered)."""
        return [render_mask(o, t, SIZE) if t in shown else np.zeros((SIZE, SIZE), bool) for o, shown in self.objects]

    def __getitem__(self, t: int) -> np.ndarray:
        frame = np.full((SIZE, SIZE, 3), 40, dtype=np.uint8)
        for (obj, _), mask in zip(self.objects, self.masks(t)):
            frame[mask] = COLOURS[obj.colour]
        return frame


def load_predictor(model: str | None) -> tuple[InstructSegPredictor, str]:
    if model:
        return InstructSegPredictor.from_pretrained(model), f"{model}"
    checkpoints = sorted(glob.glob(MAIN_JOB_CKPTS), key=os.path.getmtime)
    if checkpoints:
        return InstructSegPredictor.from_pretrained(checkpoints[-1]), f"trained demo model {checkpoints[-1]}"
    return InstructSegPredictor(build_model("tiny", "cpu")), "RANDOM tiny model (no main-job checkpoint found)"


def call(predictor: InstructSegPredictor, video, row: str, tracker: Sam2Tracker, chunk: int):
    """Run a row: ``strategy[@relevance_stride][+sam2]``."""
    head, _, track = row.partition("+")
    strategy, _, stride = head.partition("@")
    return predictor.predict_video(
        video, TEXT, strategy, chunk_size=chunk, tracker=tracker if track else None, relevance_stride=int(stride or 1)
    )


def child(predictor, row: str, num_frames: int, tracker: Sam2Tracker, chunk: int, threads: int, out) -> None:
    torch.set_num_threads(threads)
    start_rss = rss()
    video = VideoFrames(LongVideo(num_frames), [f"{t:05d}" for t in range(num_frames)])
    start = time.perf_counter()
    prediction = call(predictor, video, row, tracker, chunk)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    out.send((np.packbits(prediction.masks), seconds, peak, peak - start_rss))


def rss() -> int:
    """Resident set size of this process in bytes."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def score(masks: np.ndarray, video: LongVideo) -> tuple[float, float]:
    """(J&F, R) of ``(T, H, W)`` masks on the video's target."""
    all_masks = np.array([video.masks(t) for t in range(len(video))])  # (T, objects, H, W)
    metric = VideoSegMetric()
    metric.update(masks, all_masks[:, -1], "referring", foreground=all_masks.any(1))
    result = metric.compute()
    return result["J&F"], result["referring/R"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[60, 300, 1000])
    parser.add_argument("--strategies", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--model", default=None, help="export directory or .ckpt (default: the main job's model)")
    parser.add_argument("--sam2", default=None, help="SAM2 weights (Hub id or directory); default: tiny random")
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: no spinning on a shared box)")
    args = parser.parse_args(argv)
    threads = args.threads
    torch.set_num_threads(1)  # the parent never starts an OpenMP pool: a forked child could not use it
    predictor, model_note = load_predictor(args.model)
    tracker = Sam2Tracker.from_pretrained(args.sam2 or save_tiny_sam2(tempfile.mkdtemp(prefix="tiny-sam2-")))
    sam2_note = args.sam2 or "tiny RANDOM SAM2: its rows report time and memory only, quality needs real weights"
    for row in args.strategies:  # warm-up in the parent, so that every child starts warm
        call(predictor, VideoFrames(LongVideo(3), ["0", "1", "2"]), row, tracker, args.chunk_size)
    ctx = mp.get_context("fork")
    print(f"\nmodel: {model_note}\nSAM2: {sam2_note}\nCPU threads: {threads}, 64x64 frames\n")
    print("| frames | strategy | J&F | R | seconds | frames/s | peak RSS (MiB) | peak RSS above start (MiB) |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n in args.lengths:
        video = LongVideo(n)
        for row in args.strategies:
            receive, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=child, args=(predictor, row, n, tracker, args.chunk_size, threads, send))
            process.start()
            packed, seconds, peak, growth = receive.recv()
            process.join()
            masks = np.unpackbits(packed, count=n * SIZE * SIZE).reshape(n, SIZE, SIZE).astype(bool)
            jf, r = score(masks, video)
            quality = "- | -" if row.endswith("+sam2") and not args.sam2 else f"{jf:.3f} | {r:.3f}"
            mib = f"{peak / 2**20:.0f} | {growth / 2**20:.1f}"
            print(f"| {n} | {row} | {quality} | {seconds:.2f} | {n / seconds:.1f} | {mib} |")


if __name__ == "__main__":
    main()
