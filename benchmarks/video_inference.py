"""Video inference benchmark: the naive reference loop vs cached + batched ``per_frame`` vs ``shared``.

All three strategies of :meth:`instructseg.predictor.InstructSegPredictor.predict_video` run in one process on the
same synthetic video and instruction; the script prints a markdown table (time, frames/s, speed-up vs naive, peak
memory) and whether ``per_frame`` reproduces the naive loop's masks exactly.

    python benchmarks/video_inference.py                                   # tiny preset, CPU, 64 frames
    python benchmarks/video_inference.py --preset instructseg-phi2 --device cuda --dtype bfloat16

The tiny preset writes its random pretrained parts to a temporary directory. ``instructseg-phi2`` has no
downloadable weights here: the paper-size architecture is built on the meta device
(:meth:`InstructSeg.full_size_on_meta`), materialised with ``to_empty`` and initialised at random; the tiny tokenizer
stands in for Phi-2's (only the special-token ids matter for timing, and they fall inside Phi-2's vocabulary).

Peak memory: CUDA ``max_memory_allocated`` above the memory held before the run; on CPU the peak resident set size
above the one before the run, sampled every 2 ms by a background thread.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

import numpy as np
import torch

from instructseg.config import InstructSegConfig
from instructseg.constants import SPECIAL_TOKENS, STRATEGIES
from instructseg.modeling.instructseg import InstructSeg
from instructseg.predictor import InstructSegPredictor, VideoPrediction
from instructseg.tiny import build_tiny_tokenizer, save_tiny_pretrained

TEXT = "the red square moving to the right"


def synthetic_video(num_frames: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """``(T, H, W, 3)`` uint8: a red square moving right over a noisy background."""
    rng = np.random.default_rng(seed)
    video = rng.integers(0, 80, (num_frames, height, width, 3), dtype=np.uint8)
    side = max(4, min(height, width) // 5)
    for t in range(num_frames):
        x = int((width - side) * t / max(num_frames - 1, 1))
        y = (height - side) // 2
        video[t, y : y + side, x : x + side] = (220, 30, 30)
    return video


def randomize_(model: InstructSeg, device: str | torch.device, seed: int = 0) -> InstructSeg:
    """Materialise a meta-device model on ``device`` with random weights and correct buffers (in place).

    Hugging Face sub-models re-run their own initialisation (which also recomputes rotary frequencies, position ids
    and Swin's relative position index); other modules use ``reset_parameters``; bare parameters get N(0, 0.02).
    """
    from transformers import PreTrainedModel

    model.to_empty(device=device)
    torch.manual_seed(seed)
    for item in [*model.modules(), *model.parameters(), *model.buffers()]:
        item.__dict__.pop("_is_hf_initialized", None)
    covered: set[int] = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, PreTrainedModel) and id(module) not in covered:
                module.initialize_weights()
                covered |= {id(m) for m in module.modules()}
        for module in model.modules():
            if id(module) in covered:
                continue
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
            else:
                for param in module.parameters(recurse=False):
                    torch.nn.init.normal_(param, std=0.02)
        model.llm.new_token_ids.copy_(torch.tensor(model.tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    return model


def build_model(preset: str, device: str) -> InstructSeg:
    torch.manual_seed(0)
    if preset == "tiny":
        root = save_tiny_pretrained(tempfile.mkdtemp(prefix="instructseg-tiny-"))
        return InstructSeg.from_config(InstructSegConfig.from_name("tiny").with_pretrained_root(root))
    return randomize_(InstructSeg.full_size_on_meta(tokenizer=build_tiny_tokenizer()), device)


class PeakMemory:
    """Peak memory (bytes) above the starting level while the ``with`` block runs (CUDA allocator or CPU RSS)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._max = max(self._max, self._rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self._start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._start = self._max = self._rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self._start
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, self._rss()) - self._start


def run(
    predictor: InstructSegPredictor, video: np.ndarray, strategy: str, chunk: int, repeats: int
) -> tuple[VideoPrediction, float, int]:
    """Timed ``predict_video`` calls after a short warm-up; returns (prediction, best seconds, largest peak bytes)."""
    predictor.predict_video(video[:3], TEXT, strategy, chunk_size=chunk)
    best, peak = float("inf"), 0
    for _ in range(repeats):
        with PeakMemory(predictor.device) as memory:
            start = time.perf_counter()
            prediction = predictor.predict_video(video, TEXT, strategy, chunk_size=chunk)
            if predictor.device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        peak = max(peak, memory.peak)
    return prediction, best, peak


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=("tiny", "instructseg-phi2"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--frames", type=int, default=64)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--chunk-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per strategy; the best time is reported")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(args.preset, args.device)
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    predictor = InstructSegPredictor(model, device=args.device, dtype=dtype)
    video = synthetic_video(args.frames, args.height, args.width)
    results = {strategy: run(predictor, video, strategy, args.chunk_size, args.repeats) for strategy in STRATEGIES}

    naive_pred, naive_time, _ = results["naive"]
    per_frame_pred = results["per_frame"][0]
    identical = bool(np.array_equal(per_frame_pred.masks, naive_pred.masks))
    score_diff = float(np.abs(per_frame_pred.scores - naive_pred.scores).max())
    on_cuda = predictor.device.type == "cuda"
    device_name = torch.cuda.get_device_name() if on_cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"\npreset `{args.preset}`, {device_name}, {args.dtype}, torch {torch.__version__}; {args.frames} frames of "
        f"{args.width}x{args.height}, R = {model.config.num_reference_frames}, chunk {args.chunk_size}, 1 instruction, "
        f"best of {args.repeats}\n"
    )
    print("| strategy | time (s) | frames/s | speed-up vs naive | peak memory (MiB) | masks == naive |")
    print("|---|---:|---:|---:|---:|---|")
    for strategy, (pred, seconds, peak) in results.items():
        same = "yes" if np.array_equal(pred.masks, naive_pred.masks) else "no"
        print(
            f"| {strategy} | {seconds:.2f} | {args.frames / seconds:.1f} | {naive_time / seconds:.1f}x | "
            f"{peak / 2**20:.0f} | {same} |"
        )
    print(f"\nper_frame masks identical to naive: {identical} (max score difference {score_diff:.2e})")
    if not identical:
        raise SystemExit("per_frame (cached + batched) does not reproduce the naive loop's masks")


if __name__ == "__main__":
    main()
