"""The full-size model from a release-layout checkpoint: conversion, loading, image and video prediction.

A random checkpoint in the layout of ``weic22/InstructSeg`` (``tests/fixtures/release_layout.py``: 1640 tensors,
two shards, fp16 LLM/SigLIP and fp32 rest, 7.4 GB; the tiny tokenizer stands in for Phi-2's) is converted by the real
converter (:func:`instructseg.official.convert_official`) once per dtype, loaded with
``InstructSeg.from_pretrained`` and run through :class:`~instructseg.predictor.InstructSegPredictor`: one image, then
an 8-frame video with each strategy. Every measurement runs in a fresh process so its peak RSS is its own.

    python benchmarks/full_size.py                  # full size, CPU, fp32 and bf16 (needs ~24 GB RAM, ~30 GB disk)
    python benchmarks/full_size.py --device cuda    # the same on a GPU
    python benchmarks/full_size.py --smoke          # tiny release-layout checkpoint, 64-px mask branch, 3 frames

Prints one markdown table: conversion time, peak RSS and its ratio to the export size; load time and RSS; image
latency; seconds per video frame and peak RSS per strategy, with the speed-ups of ``per_frame`` and ``shared`` over
``naive`` side by side. Times are the best of ``--repeats`` after a warm-up call.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the release-layout writer
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fixtures.release_layout import FULL, TINY, write_release  # noqa: E402
from video_inference import PeakMemory, synthetic_video  # noqa: E402

TEXT = "the red square moving to the right"
STRATEGIES = ("naive", "per_frame", "shared")
GIB = 2**30


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux


def convert(release: str, out: str, dtype: str, queue) -> None:
    """Child process: one conversion; reports (seconds, peak RSS bytes, export bytes)."""
    from instructseg.official import convert_official

    start = time.perf_counter()
    convert_official(Path(release), Path(out), dtype=dtype, quiet=True)
    seconds = time.perf_counter() - start
    queue.put((seconds, _max_rss(), sum(f.stat().st_size for f in Path(out).rglob("*.safetensors"))))


def infer(
    export: str, dtype: str, device: str, frames: int, size: tuple[int, int], repeats: int, mask_size: int, queue
) -> None:
    """Child process: load, one image, one video per strategy; reports a dict of measurements."""
    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.predictor import InstructSegPredictor

    torch_dtype = getattr(torch, dtype)
    start = time.perf_counter()
    model = InstructSeg.from_pretrained(export, device=device, dtype=torch_dtype)
    result = {"load_s": time.perf_counter() - start, "load_rss": _max_rss()}
    if mask_size:  # smoke runs: a small mask branch instead of the released 1024 px
        model.config = replace(model.config, mask=replace(model.config.mask, image_size=mask_size))
    predictor = InstructSegPredictor(model, device=device, dtype=None if dtype == "float32" else torch_dtype)
    video = synthetic_video(frames, *size)

    def best(call) -> tuple[float, int]:
        call()  # warm-up
        seconds, peak = float("inf"), 0
        for _ in range(repeats):
            with PeakMemory(predictor.device) as memory:
                begin = time.perf_counter()
                call()
                if predictor.device.type == "cuda":
                    torch.cuda.synchronize()
                seconds = min(seconds, time.perf_counter() - begin)
            peak = max(peak, memory.peak)
        return seconds, peak

    result["image"] = best(lambda: predictor.predict_image(video[0], TEXT))
    for strategy in STRATEGIES:
        result[strategy] = best(lambda s=strategy: predictor.predict_video(video, TEXT, s, chunk_size=frames))
    result["peak_rss"] = _max_rss()
    queue.put(result)


def in_child(target, *args):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if proc.exitcode:
        raise SystemExit(f"{target.__name__} failed with exit code {proc.exitcode}")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny release-layout checkpoint (CI)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16", "float16"]
    )
    parser.add_argument("--frames", type=int, default=None, help="video frames (default 8; 3 with --smoke)")
    parser.add_argument("--height", type=int, default=None, help="frame height (default 360; 48 with --smoke)")
    parser.add_argument("--width", type=int, default=None, help="frame width (default 640; 64 with --smoke)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--release", type=Path, default=None, help="an existing release directory (skips writing)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the release and exports go (default: tmp)")
    args = parser.parse_args(argv)
    frames, height, width = (3, 48, 64) if args.smoke else (8, 360, 640)
    args.frames, args.height, args.width = args.frames or frames, args.height or height, args.width or width
    mask_size = 64 if args.smoke else 0

    sizes = TINY if args.smoke else replace(FULL, vocab_tokens=0)  # tokenizer rows from the stand-in tokenizer
    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        release = args.release
        if release is None:
            start = time.perf_counter()
            release = write_release(Path(work) / "release", sizes=sizes)
            print(f"wrote a random release-layout checkpoint to {release} in {time.perf_counter() - start:.0f} s")
        rows = []
        for dtype in args.dtypes:
            export = str(Path(work) / f"export-{dtype}")
            conv_s, conv_rss, export_bytes = in_child(convert, str(release), export, dtype)
            size = (args.height, args.width)
            measured = in_child(infer, export, dtype, args.device, args.frames, size, args.repeats, mask_size)
            rows.append((dtype, conv_s, conv_rss, export_bytes, measured))
            Path(export, "model.safetensors").unlink()  # disk: keep one export at a time

    device = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"\n{'tiny (smoke)' if args.smoke else 'full-size'} release layout, random weights, {device}, torch "
        f"{torch.__version__}; image and {args.frames}-frame video of {args.width}x{args.height}, best of "
        f"{args.repeats}; RSS = process peak resident set, video peak = growth during the call\n"
    )
    print(
        "| dtype | convert (s) | convert peak RSS (GiB) | export (GiB) | RSS / export | load (s) | RSS after load "
        "(GiB) | image (s) | naive (s/frame) | per_frame (s/frame) | shared (s/frame) | per_frame vs naive | "
        "shared vs naive | video peak naive / per_frame / shared (GiB) | process peak RSS (GiB) |"
    )
    print("|---|" + "---:|" * 14)
    for dtype, conv_s, conv_rss, export_bytes, m in rows:
        per = {s: m[s][0] / args.frames for s in STRATEGIES}
        peaks = " / ".join(f"{m[s][1] / GIB:.2f}" for s in ("naive", "per_frame", "shared"))
        print(
            f"| {dtype} | {conv_s:.1f} | {conv_rss / GIB:.2f} | {export_bytes / GIB:.2f} | "
            f"{conv_rss / export_bytes:.2f} | {m['load_s']:.1f} | {m['load_rss'] / GIB:.2f} | {m['image'][0]:.2f} | "
            f"{per['naive']:.2f} | {per['per_frame']:.2f} | {per['shared']:.2f} | "
            f"{per['naive'] / per['per_frame']:.2f}x | {per['naive'] / per['shared']:.2f}x | {peaks} | "
            f"{m['peak_rss'] / GIB:.2f} |"
        )


if __name__ == "__main__":
    main()
