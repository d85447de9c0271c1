"""The one ``instructseg`` command: each subcommand is a typed function whose signature and docstring are its help.

    instructseg fit|validate --config ...          train / validate (LightningCLI; see ``instructseg fit --help``)
    instructseg predict --model DIR|CKPT|HUB_ID --input IMAGE|VIDEO|FRAMES_DIR --text "..." --out OUT
    instructseg evaluate --model ... --data configs/data/synthetic.yaml --out outputs/eval
    instructseg export --checkpoint last.ckpt --out exports/my-model [--metrics metrics.json] [--overwrite true]
    instructseg convert <dataset> --root OFFICIAL_DIR --out SHARDS        (see ``instructseg convert --help``)
    instructseg synthetic --out data/synthetic
    instructseg make-tiny --out checkpoints/tiny-pretrained [--pretrain true]
    instructseg convert-official --src RELEASE_DIR --out EXPORT_DIR
    instructseg demo --model DIR|HUB_ID

Several instructions: ``--text+ "the dog" --text+ "the cat"`` (or ``--text '["the dog", "the cat"]'``).

Bad input (a missing or unreadable file, a video without frames, an empty instruction, an unsupported file type, an
export of another format version, an option out of range) prints one ``instructseg: error: ...`` line on stderr and
exits with code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from instructseg.constants import IMAGE_TASKS, STRATEGIES, VIDEO_TASKS

EXIT_BAD_INPUT = 2
DTYPES = ("float32", "bfloat16", "float16")
#: Subcommands handled by another parser (argv is forwarded as is).
FORWARDED = ("fit", "validate", "convert")
_ROLE = re.compile(r":[a-z]+:`(~?)([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)


def _role_text(match: re.Match) -> str:
    tilde, inner = match.groups()
    if "<" in inner:
        return inner.split("<")[0].strip()
    return inner.split(".")[-1] if tilde else inner


def plain_help(text: str) -> str:
    """``text`` without reStructuredText markup (for ``--help``): a literal loses its double backquotes, a role
    such as ``:class:`~a.B``` becomes ``B`` (``a.B`` without the ``~``, the text of ``:ref:`text <target>```), a
    literal-block ``::`` at the end of a line becomes ``:``."""
    text = re.sub(r"::$", ":", text, flags=re.MULTILINE)
    return _LITERAL.sub(r"\1", _ROLE.sub(_role_text, text))


def one_line(message: str) -> str:
    """``message`` on one line (whitespace runs, newlines included, become one space)."""
    return " ".join(str(message).split())


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_threshold(threshold: float | None) -> None:
    _check(
        threshold is None or (math.isfinite(threshold) and 0.0 <= threshold <= 1.0),
        f"--threshold: a no-target score threshold in [0, 1], got {threshold}.",
    )


def _check_runtime(device: str, dtype: str) -> Any:
    """The torch dtype for ``dtype`` (None for float32) after checking that ``device`` exists here."""
    import torch

    _check(dtype in DTYPES, f"--dtype: expected one of {DTYPES}, got {dtype!r}.")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device: {device!r} is not a device name (use cpu, cuda, cuda:1, mps).") from None
    if dev.type == "cuda":
        _check(torch.cuda.is_available(), f"--device {device}: this torch has no usable CUDA device; use --device cpu.")
    elif dev.type == "mps":
        _check(torch.backends.mps.is_available(), f"--device {device}: MPS is not available here; use --device cpu.")
    elif dev.type != "cpu":
        raise ValueError(f"--device: unsupported device type {dev.type!r}; use cpu, cuda or mps.")
    return None if dtype == "float32" else getattr(torch, dtype)


def predict(
    model: str,
    input: Path,
    text: list[str] | str,
    out: Path,
    task: str | None = None,
    strategy: str = "per_frame",
    device: str = "cpu",
    dtype: str = "float32",
    threshold: float | None = None,
    chunk_size: int = 16,
    fps: float = 4.0,
    pretrained_root: Path | None = None,
    max_objects: int = 1,
    tracker: str | None = None,
    tracker_weights: str | None = None,
    relevance_stride: int = 1,
) -> None:
    """Segment an image or a video from text instructions.

    Writes ``OUT/predictions.json`` (texts, task, per-frame scores and no-target flags),
    ``OUT/Annotations/<name>/<k>/<frame>.png`` (0/255 masks at the original resolution) and
    ``OUT/overlays/<name>_<k>.png|gif``.

    Args:
        model: export directory, training .ckpt or Hugging Face Hub id.
        input: image file, video file (GIF/MP4) or folder of frames.
        text: instruction; several with --text+ "a" --text+ "b".
        out: output directory.
        task: res|reasonseg (images) or rvos|reasonvos (videos); default res / rvos.
        strategy: video strategy: per_frame (the paper's protocol), shared (one LLM pass), keyframe (text-guided key
            frame), segments (key segments, "no target" elsewhere) or naive.
        device: cpu, cuda, cuda:N or mps.
        dtype: float32, or bfloat16 / float16 (autocast).
        threshold: no-target score threshold in [0, 1] (default: the model's).
        chunk_size: video frames encoded and decoded together (bounds memory).
        fps: frame rate of the overlay GIF.
        pretrained_root: for a training .ckpt from another machine: folder with siglip/, llm/, mask2former/.
        max_objects: up to this many objects per instruction (their union is the mask).
        tracker: sam2: propagate the key-frame masks with SAM2 (keyframe / segments strategies).
        tracker_weights: SAM2 weights (Hub id or folder; default facebook/sam2.1-hiera-tiny).
        relevance_stride: keyframe / segments: score every N-th frame in the relevance pass.
    """
    from instructseg.video_io import IMAGE_EXTENSIONS, InputError, is_video_path

    texts = [text] if isinstance(text, str) else list(text)
    if not texts or any(not t.strip() for t in texts):
        raise InputError("--text: the instruction is empty; give a phrase or a question.")
    if not input.exists():
        raise FileNotFoundError(f"--input: no file or folder at {input}.")
    video = is_video_path(input)
    if not video and input.suffix.lower() not in IMAGE_EXTENSIONS:
        raise InputError(
            f"--input: unsupported file type {input.suffix!r} ({input}); give an image, a GIF/MP4 video or a folder "
            "of frames."
        )
    allowed = VIDEO_TASKS if video else IMAGE_TASKS
    task = task or allowed[0]
    _check(task in allowed, f"--task: expected one of {allowed} for this input, got {task!r}.")
    _check(strategy in STRATEGIES, f"--strategy: expected one of {STRATEGIES}, got {strategy!r}.")
    _check(chunk_size >= 1, f"--chunk_size: expected >= 1, got {chunk_size}.")
    _check(math.isfinite(fps) and 0 < fps <= 100, f"--fps: a frame rate in (0, 100], got {fps}.")
    _check_threshold(threshold)
    _check(max_objects >= 1 and relevance_stride >= 1, "--max_objects and --relevance_stride: expected >= 1.")
    _check(tracker in (None, "sam2"), f"--tracker: expected sam2 (or none), got {tracker!r}.")
    torch_dtype = _check_runtime(device, dtype)
    options = {"threshold": threshold, "max_objects": max_objects}
    if video:
        options.update(strategy=strategy, chunk_size=chunk_size, tracker=tracker, tracker_weights=tracker_weights,
                       relevance_stride=relevance_stride, progress=True)  # fmt: skip
    _predict(model, input, texts, out, task, device, torch_dtype, fps, video, pretrained_root, options)


def _predict(
    model: str, input: Path, texts: list[str], out: Path, task: str, device: str, dtype: Any, fps: float,
    video: bool, pretrained_root: Path | None, options: dict[str, Any],
) -> None:  # fmt: skip
    from instructseg.predictor import InstructSegPredictor
    from instructseg.video_io import load_image, open_video
    from instructseg.visualize import save_overlay_gif, save_overlay_png, save_submission_masks

    inputs = open_video(input) if video else [load_image(input)]
    predictor = InstructSegPredictor.from_pretrained(model, device=device, dtype=dtype, pretrained_root=pretrained_root)
    name = input.stem or input.resolve().name
    if video:
        preds = predictor.predict_video(inputs, texts, task=task, **options)
        frame_names = inputs.names
        results = [(p.masks, p.scores.tolist(), p.no_target.tolist()) for p in preds]
    else:
        preds = predictor.predict_image(inputs[0], texts, task, **options)
        frame_names = [name]
        results = [(p.mask[None], [p.score], [p.no_target]) for p in preds]
    summary = {"input": str(input), "task": task, "strategy": options.get("strategy"), "results": []}
    for k, (text, (masks, scores, no_target)) in enumerate(zip(texts, results)):
        save_submission_masks(out, name, str(k), frame_names, masks)
        if video:
            frames = [inputs[i] for i in range(len(inputs))]
            save_overlay_gif(out / "overlays" / f"{name}_{k}.gif", frames, masks, caption=text, fps=fps,
                             scores=scores, no_target=no_target)  # fmt: skip
        else:
            save_overlay_png(out / "overlays" / f"{name}_{k}.png", inputs[0], masks[0], caption=text,
                             score=scores[0], no_target=no_target[0])  # fmt: skip
        frames_info = [{"name": f, "score": s, "no_target": t} for f, s, t in zip(frame_names, scores, no_target)]
        summary["results"].append({"text": text, "masks": f"Annotations/{name}/{k}", "frames": frames_info})
    (out / "predictions.json").write_text(json.dumps(summary, indent=2))
    print(f"wrote masks and overlays for {len(texts)} instruction(s) x {len(frame_names)} frame(s) to {out}")


def evaluate(
    model: str,
    data: Path,
    out: Path = Path("outputs/eval"),
    strategy: str = "per_frame",
    max_records: int | None = None,
    overlays: int = 16,
    submission: bool = False,
    device: str = "cpu",
    dtype: str = "float32",
    threshold: float | None = None,
    devices: int = 1,
    resume: bool = True,
    revos_official: bool = False,
    official_epsilons: bool = False,
    max_objects: int = 1,
) -> None:
    """Predict every query of a data config's validation sets at the original resolution and score it with the
    official formulas; prints one table row per dataset and task and writes metrics.json, metrics.csv and overlays.

    Each record's result is written to OUT/progress/ as it finishes: the same command again continues an interrupted
    evaluation (same metrics as an uninterrupted one). Datasets without annotations (e.g. Ref-YouTube-VOS valid) get
    no metrics, only their masks in OUT/submission/ for the official server.

    Args:
        model: export directory, training .ckpt or Hugging Face Hub id.
        data: data config YAML whose `data.init_args.val` shard sets are evaluated (local, http(s):// or pipe: URLs).
        out: output directory.
        strategy: video strategy: per_frame, shared or naive.
        max_records: stop after this many records per shard set.
        overlays: number of overlay pictures to write.
        submission: also write masks in the official submission layout (submission/Annotations/...).
        device: cpu, cuda, cuda:N or mps.
        dtype: float32, or bfloat16 / float16 (autocast).
        threshold: no-target score threshold in [0, 1] (default: the model's).
        devices: processes sharing the records (DDP through Lightning Fabric; one per GPU with --device cuda).
        resume: continue from the results already in OUT/progress/ (false: start again).
        revos_official: ReVOS A and R with the official script's uint8 arithmetic (overlapping objects counted).
        official_epsilons: gIoU / cIoU with the reference image scripts' epsilons.
        max_objects: objects predicted per instruction; queries naming several objects also get objects/recall@0.5.
    """
    from instructseg.evaluation import MetricOptions, evaluate_model, format_table, unannotated_note

    _check(strategy in STRATEGIES, f"--strategy: expected one of {STRATEGIES}, got {strategy!r}.")
    _check(max_records is None or max_records >= 1, f"--max_records: expected >= 1, got {max_records}.")
    _check(overlays >= 0, f"--overlays: expected >= 0, got {overlays}.")
    _check(devices >= 1, f"--devices: expected >= 1, got {devices}.")
    _check(max_objects >= 1, f"--max_objects: expected >= 1, got {max_objects}.")
    _check_threshold(threshold)
    torch_dtype = _check_runtime(device, dtype)
    options = MetricOptions(revos_official=revos_official, official_epsilons=official_epsilons)
    results = evaluate_model(model, data, out, devices, device, torch_dtype, strategy=strategy, max_records=max_records,
                             overlays=overlays, submission=submission, threshold=threshold, options=options,
                             resume=resume, max_objects=max_objects)  # fmt: skip
    if results is None:  # ranks other than 0 print nothing
        return
    print(format_table(results))
    note = unannotated_note(results, out)
    if note:
        print(note)
    print(f"wrote {out / 'metrics.json'}, {out / 'metrics.csv'} and overlays in {out / 'overlays'}")


def export(
    checkpoint: Path,
    out: Path,
    metrics: Path | None = None,
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
    pretrained_root: Path | None = None,
) -> None:
    """Merge LoRA into the LLM and write a self-contained export directory (atomic; a Hugging Face model card).

    Args:
        checkpoint: training .ckpt written by `instructseg fit`.
        out: export directory to write (an existing folder that is not an export is never replaced).
        metrics: metrics.json of an evaluation, shown in the model card.
        overwrite: replace an existing export at OUT.
        push_to_hub: then upload the export to this Hugging Face Hub repo (org/name; token from `hf auth login`
            or HF_TOKEN).
        private: create the Hub repo as private.
        pretrained_root: folder with siglip/, llm/, mask2former/ replacing the checkpoint's stored pretrained paths.
    """
    from instructseg.checkpoint import export_checkpoint
    from instructseg.io import check_repo_id
    from instructseg.io import push_to_hub as upload

    if push_to_hub is not None:
        check_repo_id(push_to_hub)
    values = None
    if metrics is not None:
        _check(metrics.is_file(), f"--metrics: no file at {metrics}.")
        try:
            values = json.loads(metrics.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"--metrics: {metrics} is not valid JSON ({err}).") from None
        _check(isinstance(values, dict), f"--metrics: {metrics} must hold a JSON object of name -> value.")
    exported = export_checkpoint(checkpoint, out, values, overwrite=overwrite, pretrained_root=pretrained_root)
    print(f"exported to {exported}")
    if push_to_hub is not None:
        print(f"uploaded to {upload(exported, push_to_hub, private=private)}")


def synthetic(
    out: Path,
    train: int = 2000,
    val: int = 200,
    seed: int = 0,
    size: int = 64,
    records_per_shard: int = 100,
    multi_object: float = 0.0,
    long: int = 0,
) -> None:
    """Write the synthetic instructed-segmentation benchmark (shapes, referring/reasoning/motion/no-target queries)
    and print the query-blind baselines on its validation split.

    Args:
        out: output directory (train/ and val/ are created).
        train: training records.
        val: validation records.
        seed: generator seed.
        size: image side in pixels.
        records_per_shard: records per shard file.
        multi_object: share of queries that name several objects ("all the red shapes"); 0 keeps the default
            benchmark byte-identical.
        long: long videos (100-1000 frames; the target visible in part of it, distractors, occlusion) in OUT/long/.
    """
    from datamodules.synthetic import main as synthetic_main

    _check(
        train >= 0 and val >= 0 and train + val + long > 0, f"--train/--val/--long: counts >= 0, got {train}, {val}."
    )
    _check(size >= 32 and records_per_shard >= 1, f"--size >= 32 and --records_per_shard >= 1; got {size}.")
    _check(0.0 <= multi_object <= 1.0 and long >= 0, "--multi_object: a rate in [0, 1]; --long: a count >= 0.")
    argv = ["--out", str(out), "--train", str(train), "--val", str(val), "--seed", str(seed), "--size", str(size)]
    argv += ["--records-per-shard", str(records_per_shard), "--multi-object", str(multi_object), "--long", str(long)]
    synthetic_main(argv)


def make_tiny(
    out: Path = Path("checkpoints/tiny-pretrained"), pretrain: bool = False, seed: int = 0, image_size: int = 64
) -> None:
    """Write the tiny preset's three pretrained parts (siglip/, llm/, mask2former/) with save_pretrained.

    Args:
        out: output directory.
        pretrain: pre-train them on the synthetic benchmark's domain (stage 0, a few CPU minutes; a second run with
            the same settings reuses them) instead of random weights.
        seed: seed of the weights (and of stage 0).
        image_size: input side of SigLIP and Swin, a multiple of 32.
    """
    from instructseg import tiny

    print(f"tiny pretrained parts in {tiny.make_tiny(out, pretrain=pretrain, seed=seed, image_size=image_size)}")


def convert_official(src: Path, out: Path, dtype: str = "float32", overwrite: bool = False) -> None:
    """Convert the authors' released InstructSeg checkpoint (Hugging Face weic22/InstructSeg layout) into an export.

    Args:
        src: the release directory (config.json, safetensors shards + index, tokenizer files).
        out: export directory to write.
        dtype: float32, bfloat16 or float16 weights in the export.
        overwrite: replace an existing export at OUT.
    """
    from instructseg.official import convert_official as run

    _check(dtype in DTYPES, f"--dtype: expected one of {DTYPES}, got {dtype!r}.")
    print(f"exported to {run(src, out, dtype=dtype, overwrite=overwrite)}")


def demo(model: str, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu") -> None:
    """Open the demo web app: upload an image or a video, type an instruction, see the masks (needs the demo extra).

    Args:
        model: export directory, training .ckpt or Hugging Face Hub id.
        host: address to serve on.
        port: port to serve on.
        device: cpu, cuda, cuda:N or mps.
    """
    from instructseg.demo import demo as run

    _check(1 <= port <= 65535, f"--port: expected 1..65535, got {port}.")
    _check_runtime(device, "float32")
    run(model, host=host, port=port, device=device)


def fit() -> None:
    """Train: LightningCLI `fit` (run `instructseg fit --help` for every option)."""


def validate() -> None:
    """Validate: LightningCLI `validate` (run `instructseg validate --help`)."""


def convert() -> None:
    """Convert an official dataset into shards (run `instructseg convert --help` for the datasets and options)."""


COMMANDS: dict[str, Callable[..., None]] = {
    "fit": fit,
    "validate": validate,
    "predict": predict,
    "evaluate": evaluate,
    "export": export,
    "convert": convert,
    "synthetic": synthetic,
    "make-tiny": make_tiny,
    "convert-official": convert_official,
    "demo": demo,
}


def _run_forwarded(argv: list[str]) -> None:
    if argv[0] in ("fit", "validate"):
        from instructseg import train_cli

        train_cli.main(argv)
    else:
        from datamodules.convert.__main__ import main as convert_main

        code = convert_main(argv[1:])
        if code:
            raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 success, 2 bad input)."""
    from jsonargparse import CLI

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in FORWARDED:
            try:
                _run_forwarded(argv)
            except SystemExit as exit_:  # --help (0) or a parser error already printed as one line (2)
                return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
            return 0
        if argv and argv[0] in ("predict", "evaluate", "export", "convert-official"):
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # keep stderr for our progress bar and errors
        CLI(COMMANDS, args=argv, as_positional=False, description=__doc__.split("\n")[0], exit_on_error=False)
    except (ValueError, OSError, argparse.ArgumentError) as err:  # incl. PretrainedLoadError, InputError, ...
        print(f"instructseg: error: {' '.join(str(err).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
