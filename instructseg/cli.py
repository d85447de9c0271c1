"""The ``instructseg`` command line (a thin layer over the Python API).

    instructseg predict --model DIR|CKPT --input IMAGE|VIDEO|FRAMES_DIR --text "..." [--text ...] --out OUT
    instructseg export --checkpoint last.ckpt --out exports/instructseg [--metrics metrics.json]
    instructseg make-tiny --out checkpoints/tiny-pretrained
    instructseg fit|validate|test ...        (forwarded to the LightningCLI of instructseg.train_cli)

``predict`` writes, for instruction k (0, 1, ...) and input ``<name>`` (file stem or folder name)::

    OUT/predictions.json                       texts, task, strategy, per-frame scores and no-target flags
    OUT/Annotations/<name>/<k>/<frame>.png     0/255 masks at the original resolution (Ref-YouTube-VOS layout)
    OUT/overlays/<name>_<k>.png | .gif         mask overlays with the instruction as caption

Bad input (a missing or unreadable file, a video without frames, an empty instruction, an unsupported file type,
an export of another format version) prints one ``instructseg: error: ...`` line on stderr and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

TRAIN_COMMANDS = ("fit", "validate", "test")
DTYPES = ("float32", "bfloat16", "float16")
EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructseg", description="InstructSeg: segment what a text instruction points at."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    predict = sub.add_parser("predict", help="segment an image or a video from text instructions")
    predict.add_argument("--model", required=True, help="export directory or training .ckpt")
    predict.add_argument("--input", required=True, help="image file, video file (GIF/MP4) or folder of frames")
    predict.add_argument("--text", required=True, action="append", help="instruction (repeat for several)")
    predict.add_argument("--out", required=True, help="output directory")
    predict.add_argument("--task", default=None, help="res|reasonseg (images), rvos|reasonvos (videos)")
    predict.add_argument("--strategy", default="per_frame", choices=("per_frame", "shared", "naive"))
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--dtype", default="float32", choices=DTYPES, help="bfloat16/float16 run under autocast")
    predict.add_argument("--threshold", type=float, default=None, help="no-target score threshold")
    predict.add_argument("--chunk-size", type=int, default=16, help="frames encoded/decoded together")
    predict.add_argument("--fps", type=float, default=4.0, help="frame rate of the overlay GIF")

    export = sub.add_parser("export", help="merge LoRA and write a self-contained export directory")
    export.add_argument("--checkpoint", required=True, help="training .ckpt")
    export.add_argument("--out", required=True, help="export directory")
    export.add_argument("--metrics", default=None, help="JSON file of metrics for the model card")

    tiny = sub.add_parser("make-tiny", help="write tiny random pretrained parts (tests, synthetic benchmark)")
    tiny.add_argument("--out", default="checkpoints/tiny-pretrained")
    tiny.add_argument("--image-size", type=int, default=64)
    tiny.add_argument("--seed", type=int, default=0)

    for name in TRAIN_COMMANDS:
        sub.add_parser(name, add_help=False, help=f"LightningCLI `{name}` (arguments are forwarded)")
    return parser


def _check_predict_input(args: argparse.Namespace) -> bool:
    """Validate the cheap things before the model loads; returns whether the input is a video."""
    from instructseg.video_io import IMAGE_EXTENSIONS, InputError, is_video_path

    if any(not text.strip() for text in args.text):
        raise InputError("--text: the instruction is empty; give a phrase or a question.")
    path = Path(args.input)
    if not path.exists():
        raise FileNotFoundError(f"--input: no file or folder at {path}.")
    video = is_video_path(path)
    if not video and path.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(
            f"--input: unsupported file type {path.suffix!r} ({path}); give an image, a GIF/MP4 video "
            "or a folder of frames."
        )
    if args.chunk_size < 1:
        raise InputError(f"--chunk-size: expected >= 1, got {args.chunk_size}.")
    return video


def _predict(args: argparse.Namespace) -> None:
    import torch

    from instructseg.predictor import InstructSegPredictor
    from instructseg.video_io import load_image, open_video
    from instructseg.visualize import save_overlay_gif, save_overlay_png, save_submission_masks

    video = _check_predict_input(args)
    task = args.task or ("rvos" if video else "res")
    inputs = open_video(args.input) if video else [load_image(args.input)]
    dtype = None if args.dtype == "float32" else getattr(torch, args.dtype)
    predictor = InstructSegPredictor.from_pretrained(args.model, device=args.device, dtype=dtype)
    out, name = Path(args.out), Path(args.input).stem or Path(args.input).resolve().name
    if video:
        preds = predictor.predict_video(
            inputs, args.text, args.strategy, task, chunk_size=args.chunk_size, threshold=args.threshold, progress=True
        )
        frame_names = inputs.names
        results = [(p.masks, p.scores.tolist(), p.no_target.tolist()) for p in preds]
    else:
        preds = predictor.predict_image(inputs[0], args.text, task, threshold=args.threshold)
        frame_names = [name]
        results = [(p.mask[None], [p.score], [p.no_target]) for p in preds]
    summary = {"input": str(args.input), "task": task, "strategy": args.strategy if video else None, "results": []}
    for k, (text, (masks, scores, no_target)) in enumerate(zip(args.text, results)):
        save_submission_masks(out, name, str(k), frame_names, masks)
        if video:
            save_overlay_gif(
                out / "overlays" / f"{name}_{k}.gif",
                [inputs[i] for i in range(len(inputs))],
                masks,
                caption=text,
                fps=args.fps,
            )
        else:
            save_overlay_png(out / "overlays" / f"{name}_{k}.png", inputs[0], masks[0], caption=text)
        frames = [{"name": f, "score": s, "no_target": t} for f, s, t in zip(frame_names, scores, no_target)]
        summary["results"].append({"text": text, "masks": f"Annotations/{name}/{k}", "frames": frames})
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote masks and overlays for {len(args.text)} instruction(s) x {len(frame_names)} frame(s) to {out}")


def _export(args: argparse.Namespace) -> None:
    from instructseg.checkpoint import export_checkpoint

    metrics = None
    if args.metrics:
        metrics_path = Path(args.metrics)
        if not metrics_path.is_file():
            raise FileNotFoundError(f"--metrics: no file at {metrics_path}.")
        metrics = json.loads(metrics_path.read_text())
        if not isinstance(metrics, dict):
            raise ValueError(f"--metrics: {metrics_path} must hold a JSON object of name -> value.")
    print(f"exported to {export_checkpoint(args.checkpoint, args.out, metrics)}")


def _make_tiny(args: argparse.Namespace) -> None:
    from instructseg.tiny import save_tiny_pretrained

    print(f"wrote tiny pretrained parts to {save_tiny_pretrained(args.out, args.image_size, args.seed)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TRAIN_COMMANDS:
        from instructseg import train_cli

        train_cli.main(argv)
        return 0
    args = _parser().parse_args(argv)
    if args.command in ("predict", "export"):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep stderr for our progress bar and errors
    try:
        {"predict": _predict, "export": _export, "make-tiny": _make_tiny}[args.command](args)
    except (ValueError, OSError) as err:  # incl. FileNotFoundError, PretrainedLoadError, InputError, ExportFormatError
        message = " ".join(str(err).split())
        print(f"instructseg: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
