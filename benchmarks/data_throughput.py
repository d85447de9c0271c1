"""Data-loading throughput of the streaming datamodule (decode + resize + tokenize + collate), in samples/s.

Writes temporary shards of 640x480 JPEG records (images: 1 frame, ``res``; videos: 8 frames, ``rvos``), then times
``InstructSegDataModule.train_dataloader()`` at the full-size input resolution (mask branch 1024, SigLIP 384,
4 reference frames) and at the tiny preset (64 / 64, 2 reference frames), in the main process and with workers.

    python benchmarks/data_throughput.py [--workers 0 2] [--full-samples 48] [--tiny-samples 256]

Prints a markdown table; "per worker" divides by the number of processes that produce samples. The main-process
run (0 workers) uses one torch thread, as DataLoader workers do, so its rate is the cost of one worker.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from datamodules import InstructSegDataModule
from datamodules.rle import encode_rle
from datamodules.shards import RecordWriter
from instructseg.processing import add_instructseg_tokens
from instructseg.tiny import build_tiny_tokenizer

HEIGHT, WIDTH = 480, 640


@dataclass
class Preset:
    name: str
    mask_size: int
    clip_size: int
    num_ref_frames: int
    samples: int


def scene(rng: np.random.Generator, frames: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``frames`` photo-like 640x480 frames (gradient, noise, a moving ellipse) and the ellipse's masks."""
    ramp = np.linspace(0, 160, WIDTH)[None, :, None] + np.linspace(0, 60, HEIGHT)[:, None, None]
    images, masks = [], []
    x, y = rng.uniform(150, 450), rng.uniform(120, 300)
    for t in range(frames):
        image = Image.fromarray((ramp + rng.normal(0, 12, (HEIGHT, WIDTH, 3))).clip(0, 255).astype(np.uint8))
        mask = Image.new("L", (WIDTH, HEIGHT), 0)
        box = [x + 6 * t, y + 3 * t, x + 6 * t + 140, y + 3 * t + 100]
        ImageDraw.Draw(image).ellipse(box, fill=(200, 60, 40))
        ImageDraw.Draw(mask).ellipse(box, fill=255)
        images.append(np.asarray(image))
        masks.append(np.asarray(mask) > 0)
    return images, masks


def write_records(folder: Path, task: str, frames: int, count: int) -> str:
    rng = np.random.default_rng(0)
    with RecordWriter(str(folder / f"{task}-%06d.tar"), maxcount=max(1, count // 2)) as writer:
        for index in range(count):
            images, masks = scene(rng, frames)
            meta = {
                "dataset": "bench",
                "task": task,
                "frames": frames,
                "height": HEIGHT,
                "width": WIDTH,
                "objects": {"1": {"masks": [encode_rle(m) for m in masks]}},
                "queries": [{"text": "the red ellipse on the right", "object_ids": ["1"], "type": "referring"}],
            }
            writer.write(f"{task}{index:05d}", meta, images, ext="jpg")
    return str(folder / f"{task}-*.tar")


def measure(urls: str, tokenizer_dir: str, preset: Preset, workers: int, batch_size: int) -> float:
    """Samples/s over one epoch of ``preset.samples`` samples, after the first batch (warm-up, worker start)."""
    module = InstructSegDataModule(
        train=[{"name": "bench", "urls": urls}],
        tokenizer_path=tokenizer_dir,
        mask_size=preset.mask_size,
        clip_size=preset.clip_size,
        num_ref_frames=preset.num_ref_frames,
        batch_size=batch_size,
        num_workers=workers,
        epoch_length=preset.samples + batch_size,
        shuffle_buffer=8,
    )
    module.setup("fit")
    batches = iter(module.train_dataloader())
    next(batches)
    start = time.perf_counter()
    count = sum(batch["pixel_values"].shape[0] for batch in batches)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="DataLoader worker counts")
    parser.add_argument("--full-samples", type=int, default=48, help="timed samples per full-size run")
    parser.add_argument("--tiny-samples", type=int, default=256, help="timed samples per tiny run")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--records", type=int, default=16, help="records per kind in the temporary shards")
    args = parser.parse_args()
    torch.set_num_threads(1)
    presets = [
        Preset("full (1024 / 384, R=4)", 1024, 384, 4, args.full_samples),
        Preset("tiny (64 / 64, R=2)", 64, 64, 2, args.tiny_samples),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tokenizer = build_tiny_tokenizer()
        add_instructseg_tokens(tokenizer)
        tokenizer.save_pretrained(root / "tokenizer")
        kinds = {
            "image (1 frame)": write_records(root / "image", "res", 1, args.records),
            "video (8 frames)": write_records(root / "video", "rvos", 8, args.records),
        }
        print("| preset | records | workers | samples/s | samples/s per worker |")
        print("|---|---|---|---|---|")
        for preset in presets:
            for kind, urls in kinds.items():
                for workers in args.workers:
                    rate = measure(urls, str(root / "tokenizer"), preset, workers, args.batch_size)
                    print(f"| {preset.name} | {kind} | {workers} | {rate:.1f} | {rate / max(1, workers):.1f} |")


if __name__ == "__main__":
    main()
