"""A local web demo (gradio): upload an image or a video, type an instruction, see and download the masks.

    instructseg demo --model exports/instructseg-tiny          # then open http://127.0.0.1:7860

or from Python::

    from instructseg.demo import build_app, launch_app
    launch_app(build_app(InstructSegPredictor.from_pretrained("org/name")), port=7860)

The page takes one image, one video file (GIF / MP4 / ...) or several image files (the frames of a video, in
natural name order), an instruction, the instruction type (a referring phrase: task ``res`` / ``rvos``, or a
reasoning question: ``reasonseg`` / ``reasonvos``), the video strategy and the no-target threshold. It shows the
overlay (PNG, or an animated GIF for videos) with the score and the no-target answer, and offers the masks for
download (one 0/255 PNG for an image; a zip of per-frame PNGs + ``predictions.json`` for a video).

Everything is served from this machine: gradio's analytics and version check are off
(``GRADIO_ANALYTICS_ENABLED=False``), and gradio 6's default theme ships its fonts, so the page loads no CDN asset
and works without a network (the browser test checks every request the page makes). gradio is an optional extra:
``pip install 'instructseg[demo]'``.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
try:
    import gradio as gr
except ImportError:
    raise ImportError("instructseg.demo needs gradio: pip install 'instructseg[demo]'") from None

from instructseg.constants import IMAGE_TASKS, STRATEGIES, VIDEO_TASKS
from instructseg.predictor import InstructSegPredictor
from instructseg.video_io import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    VideoFrames,
    is_video_path,
    load_image,
    natural_key,
    open_video,
)
from instructseg.visualize import save_overlay_gif, save_overlay_png, save_submission_masks

#: Instruction type shown in the page -> (image task, video task).
INSTRUCTION_TYPES = dict(zip(("referring phrase", "reasoning question"), zip(IMAGE_TASKS, VIDEO_TASKS)))


def demo(model: str, host: str = "127.0.0.1", port: int = 7860, device: str = "cpu") -> None:
    """Serve the web demo: segment an uploaded image or video from a typed instruction, in the browser.

    The page shows the overlay, the score and the no-target answer, and offers the masks as a PNG (image) or a
    zip of per-frame PNGs (video). It runs until interrupted (Ctrl+C). Needs ``pip install 'instructseg[demo]'``.

    Args:
        model: export directory, training ``.ckpt`` or Hugging Face Hub id (``org/name``) of an export.
        host: address to listen on; ``127.0.0.1`` keeps the demo on this machine, ``0.0.0.0`` opens it to the
            network.
        port: TCP port of the page (http://HOST:PORT).
        device: where inference runs (``cpu``, ``cuda``, ``cuda:1``, ...).
    """
    predictor = InstructSegPredictor.from_pretrained(model, device=device)
    launch_app(build_app(predictor), host, port)


def launch_app(app: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, block: bool = True) -> str:
    """Start ``app`` on ``http://host:port`` (no share link, no server-side rendering); returns the local URL.

    Args:
        app: a :func:`build_app` page.
        host: address to listen on.
        port: TCP port.
        block: serve until interrupted (True) or return once the server is up (False; stop it with
            ``app.close()``).
    """
    _, url, _ = app.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        share=False,
        ssr_mode=False,
        inbrowser=False,
        quiet=not block,
    )
    return url


def build_app(predictor: InstructSegPredictor) -> gr.Blocks:
    """The demo page for ``predictor`` (not started: :func:`launch_app` or ``.launch()`` serves it).

    Element ids (for scripts and browser tests): ``#media`` (upload), ``#instruction``, ``#instruction-type``,
    ``#strategy``, ``#threshold``, ``#run``; outputs ``#overlay``, ``#score``, ``#answer``, ``#masks``.
    """
    out_root = Path(tempfile.mkdtemp(prefix="instructseg-demo-"))
    atexit.register(shutil.rmtree, out_root, True)
    default_threshold = float(predictor.config.decoder.no_target_threshold)

    def run(files: list[str] | None, text: str, kind: str, strategy: str, threshold: float) -> tuple:
        try:
            return segment(predictor, files or [], text, kind, strategy, threshold, _request_dir(out_root))
        except (ValueError, OSError) as err:  # InputError, FileNotFoundError, ... : shown in the page
            raise gr.Error(" ".join(str(err).split())) from None

    with gr.Blocks(title="InstructSeg demo", analytics_enabled=False, delete_cache=(600, 3600)) as app:
        gr.Markdown(
            "# InstructSeg\nUpload an image, a video (GIF / MP4) or the frames of a video, type what to segment, "
            "and press **Segment**."
        )
        with gr.Row():
            with gr.Column():
                media = gr.File(
                    label="Image, video, or video frames",
                    file_count="multiple",
                    file_types=list(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS),
                    elem_id="media",
                )
                instruction = gr.Textbox(
                    label="Instruction",
                    placeholder="the dog on the left / what could hold water?",
                    elem_id="instruction",
                )
                kind = gr.Radio(
                    [(f"{name} ({' / '.join(tasks)})", name) for name, tasks in INSTRUCTION_TYPES.items()],
                    value=next(iter(INSTRUCTION_TYPES)),
                    label="Instruction type (task)",
                    elem_id="instruction-type",
                )
                strategy = gr.Radio(
                    list(STRATEGIES),
                    value=STRATEGIES[0],
                    label="Video strategy",
                    info="per_frame: every frame is a key frame (the paper's protocol); shared: one LLM pass per "
                    "video, fastest; naive: the reference loop (slow, same masks as per_frame).",
                    elem_id="strategy",
                )
                threshold = gr.Slider(
                    0.0, 1.0, value=default_threshold, step=0.01, label="No-target threshold", elem_id="threshold"
                )
                button = gr.Button("Segment", variant="primary", elem_id="run")
            with gr.Column():
                overlay = gr.Image(
                    label="Overlay",
                    type="filepath",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="overlay",
                )
                score = gr.Textbox(label="Score", interactive=False, elem_id="score")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                masks = gr.File(label="Masks (PNG / zip)", interactive=False, elem_id="masks")
        inputs = [media, instruction, kind, strategy, threshold]
        outputs = [overlay, score, answer, masks]
        button.click(run, inputs, outputs)
        instruction.submit(run, inputs, outputs)
    return app


def _request_dir(root: Path, keep: int = 4) -> Path:
    """A new folder for one request's files under ``root``; all but the ``keep`` newest older ones are removed.

    (gradio has copied a finished request's files into its own cache, which ``delete_cache`` empties hourly.)
    """
    for old in sorted(root.iterdir(), key=lambda p: p.stat().st_mtime)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


def segment(
    predictor: InstructSegPredictor,
    files: Sequence[str | Path],
    text: str,
    kind: str,
    strategy: str,
    threshold: float,
    out_dir: Path,
) -> tuple[str, str, str, str]:
    """Run one request of the page and write its files into ``out_dir``.

    Args:
        predictor: the model.
        files: one image, one video file, or several image files (frames, sorted by name).
        text: the instruction.
        kind: a key of :data:`INSTRUCTION_TYPES`.
        strategy: video strategy (see :mod:`instructseg.predictor`).
        threshold: no-target threshold on the score.
        out_dir: where the overlay and the masks are written.

    Returns:
        ``(overlay path, score text, answer text, masks path)``: PNG overlay and mask for an image; GIF overlay and
        a zip of per-frame masks for a video.

    Raises:
        ValueError: no file, an empty instruction, an unknown instruction type, or a bad input (the predictor's
            :class:`~instructseg.video_io.InputError`).
    """
    paths = [Path(f) for f in files]
    if not paths:
        raise ValueError("Upload an image, a video (GIF / MP4) or the frames of a video first.")
    if not text.strip():
        raise ValueError("Type an instruction: a phrase (the red car) or a question (what could hold water?).")
    if kind not in INSTRUCTION_TYPES:
        raise ValueError(f"Instruction type: expected one of {list(INSTRUCTION_TYPES)}, got {kind!r}.")
    image_task, video_task = INSTRUCTION_TYPES[kind]
    if len(paths) == 1 and not is_video_path(paths[0]):
        return _segment_image(predictor, paths[0], text, image_task, threshold, out_dir)
    if len(paths) == 1:
        frames, name = open_video(paths[0]), paths[0].stem
    else:
        if any(is_video_path(p) for p in paths):
            raise ValueError("Upload either one video file or several image files (the frames), not both.")
        paths = sorted(paths, key=lambda p: natural_key(p.name))
        frames, name = VideoFrames(paths, [p.stem for p in paths]), "frames"
    return _segment_video(predictor, frames, name, text, video_task, strategy, threshold, out_dir)


def _segment_image(
    predictor: InstructSegPredictor, path: Path, text: str, task: str, threshold: float, out_dir: Path
) -> tuple[str, str, str, str]:
    image = load_image(path)
    pred = predictor.predict_image(image, text, task, threshold=threshold)
    overlay = save_overlay_png(
        out_dir / "overlay.png", image, pred.mask, text, score=pred.score, no_target=pred.no_target
    )
    mask_dir = save_submission_masks(out_dir, path.stem, "0", [f"{path.stem}_mask"], pred.mask[None])
    if pred.no_target:
        answer = f"no target (score below the threshold {threshold:.2f})"
    else:
        answer = "target found" if pred.mask.any() else "target found, but its mask is empty at this resolution"
    return str(overlay), f"{pred.score:.3f}", answer, str(mask_dir / f"{path.stem}_mask.png")


def _segment_video(
    predictor: InstructSegPredictor,
    frames: VideoFrames,
    name: str,
    text: str,
    task: str,
    strategy: str,
    threshold: float,
    out_dir: Path,
) -> tuple[str, str, str, str]:
    pred = predictor.predict_video(frames, text, strategy, task, threshold=threshold)
    images = [frames[i] for i in range(len(frames))]
    overlay = save_overlay_gif(
        out_dir / "overlay.gif", images, pred.masks, text, scores=pred.scores, no_target=pred.no_target
    )
    archive = out_dir / f"{name}_masks"
    save_submission_masks(archive, name, "0", pred.frame_names, pred.masks)
    records = [
        {"frame": f, "score": float(s), "no_target": bool(t)}
        for f, s, t in zip(pred.frame_names, pred.scores, pred.no_target)
    ]
    summary = {"text": text, "task": task, "strategy": strategy, "threshold": threshold, "frames": records}
    (archive / "predictions.json").write_text(json.dumps(summary, indent=2))
    zipped = shutil.make_archive(str(archive), "zip", archive)
    n, found = len(records), int((~pred.no_target).sum())
    score = f"mean {pred.scores.mean():.3f} over {n} frames (min {pred.scores.min():.3f}, max {pred.scores.max():.3f})"
    answer = f"target in {found} of {n} frames" if found else f"no target in any of the {n} frames"
    return str(overlay), score, answer, zipped
