"""The README's Python example on the demo model: example inputs, the predictor's answers and one picture of them.

    python scripts/predict_examples.py --model exports/instructseg-tiny --out outputs/main-job/examples

Writes ``examples/shapes.png`` and ``examples/shapes.gif`` (a scene of the synthetic benchmark's kind, drawn with
its own renderer: a red circle, a yellow triangle and a blue square; in the video the square moves up), runs
:class:`instructseg.InstructSegPredictor` on a few instructions — one of them names an absent object — and writes
``OUT/predictions.png`` (one panel per instruction: the overlay with the score and the target / no-target answer)
plus ``OUT/predictions.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.synthetic import Shape, render_frames
from instructseg.predictor import InstructSegPredictor
from instructseg.visualize import overlay_mask

SIZE = 64
IMAGE_QUERIES = ("the red circle", "the yellow triangle", "the blue square", "the green star")
VIDEO_QUERIES = ("the square moving up", "the circle that stays still")


def scene() -> list[Shape]:
    """Three shapes of the benchmark's vocabulary; the square moves up by 3 px per frame."""

    def shape(kind: str, colour: str, x: float, y: float, vy: float = 0.0) -> Shape:
        motion = "up" if vy < 0 else "still"
        return Shape(kind, colour, "large", 9.0, np.array([x, y]), np.array([0.0, vy]), motion)

    return [shape("circle", "red", 16, 18), shape("triangle", "yellow", 46, 18), shape("square", "blue", 32, 50, -3.0)]


def write_inputs(folder: Path) -> tuple[Path, Path]:
    """``shapes.png`` (frame 0) and ``shapes.gif`` (6 frames) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    frames, _ = render_frames(scene(), 6, SIZE, (40, 40, 55))
    image, video = folder / "shapes.png", folder / "shapes.gif"
    Image.fromarray(frames[0]).save(image)
    pictures = [Image.fromarray(f) for f in frames]
    pictures[0].save(video, save_all=True, append_images=pictures[1:], duration=250, loop=0)
    return image, video


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="export directory, training .ckpt or Hub id")
    parser.add_argument("--out", type=Path, default=Path("outputs/examples"))
    parser.add_argument("--inputs", type=Path, default=Path("examples"), help="where the example inputs are written")
    args = parser.parse_args(argv)
    image, video = write_inputs(args.inputs)
    predictor = InstructSegPredictor.from_pretrained(args.model)
    panels, results = [], []
    for text, pred in zip(IMAGE_QUERIES, predictor.predict_image(str(image), list(IMAGE_QUERIES))):
        panels.append(overlay_mask(Image.open(image), pred.mask, text, score=pred.score, no_target=pred.no_target))
        row = {"input": str(image), "text": text, "score": pred.score, "no_target": pred.no_target}
        results.append({**row, "mask_pixels": int(pred.mask.sum())})
    middle = 3
    for text, pred in zip(VIDEO_QUERIES, predictor.predict_video(str(video), list(VIDEO_QUERIES))):
        frame = Image.open(video)
        frame.seek(middle)
        caption = f"{text} (frame {middle})"
        score, absent = float(pred.scores[middle]), bool(pred.no_target[middle])
        panels.append(overlay_mask(frame.convert("RGB"), pred.masks[middle], caption, score=score, no_target=absent))
        pixels = pred.masks.sum((1, 2)).tolist()
        row = {"input": str(video), "text": text, "scores": pred.scores.tolist(), "no_target": pred.no_target.tolist()}
        results.append({**row, "mask_pixels": pixels})
    args.out.mkdir(parents=True, exist_ok=True)
    height = max(p.height for p in panels)
    sheet = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), (255, 255, 255))
    x = 0
    for panel in panels:
        sheet.paste(panel, (x, 0))
        x += panel.width + 8
    sheet.save(args.out / "predictions.png")
    (args.out / "predictions.json").write_text(json.dumps(results, indent=2))
    for row in results:
        answer = row["no_target"] if isinstance(row["no_target"], bool) else f"{sum(row['no_target'])} frames"
        print(f"{row['text']!r}: no_target={answer}, mask pixels={row['mask_pixels']}")
    print(f"wrote {args.out / 'predictions.png'}")


if __name__ == "__main__":
    main()
