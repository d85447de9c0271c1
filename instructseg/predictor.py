"""Inference API: segment what a text instruction points at in an image or a video.

    predictor = InstructSegPredictor.from_pretrained("exports/instructseg")       # or a training .ckpt
    pred = predictor.predict_image("photo.jpg", "the dog on the left")          # .mask (H, W) bool, .score
    video = predictor.predict_video("frames/", ["the red car", "what is flying?"], task="reasonvos")

Legend: T frames, R = ``config.num_reference_frames``, N SigLIP tokens, D LLM width, B frames in a chunk.

Video strategies (``predict_video(strategy=...)``):

* ``"per_frame"`` (default): the paper's protocol (``reference/instructseg-reference.md`` §7.3): every frame t is a
  key frame with the reference frames of :func:`reference_frames_for_key` (``t-2, t-1, t+1, t+2`` for R = 4, shifted
  inwards at the boundaries, repeated for short videos), one LLM pass per (frame, instruction). Each frame is encoded
  **once** (SigLIP and Swin, batched over chunks of frames) and the LLM passes of a chunk run as one batch. Memory
  is bounded: SigLIP tokens live in a sliding window of ``chunk_size + 2R`` frames and the Swin pyramid of a chunk is
  dropped once its masks are decoded.
* ``"shared"``: one LLM pass per (video, instruction) with the middle frame as key and
  :func:`global_reference_frames` as references; every frame then only runs the mask decoder. Fastest.
* ``"naive"``: the reference loop, one full forward per (frame, instruction) that re-encodes its 1 + R frames. Same
  masks as ``"per_frame"``; kept for benchmarks and equality tests.

Several instructions reuse the encoded frames (and the pixel decoder's features); each frame is encoded once however
many instructions there are. Masks come back at the original resolution of the input. CPU by default; any device
on request, with ``dtype=torch.bfloat16`` / ``torch.float16`` running under autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from instructseg.checkpoint import load_training_checkpoint
from instructseg.constants import IMAGE_TASKS, STRATEGIES, VIDEO_TASKS
from instructseg.modeling.instructseg import FrameFeatures, InstructSeg, Selection
from instructseg.modeling.llm import CoDecodeOutput
from instructseg.modeling.loading import resolve_model_path
from instructseg.processing import FrameProcessor, collate_tokens, postprocess_mask_logits, tokenize_query
from instructseg.sampling import global_reference_frames, reference_frames_for_key
from instructseg.video_io import ImageInput, InputError, VideoFrames, open_video

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
PREPROCESS_WORKERS = min(8, os.cpu_count() or 1)


@dataclass
class ImagePrediction:
    """One instruction on one image.

    Attributes:
        mask: ``(H, W)`` bool at the original resolution (empty when ``no_target``).
        score: sigmoid score of the selected query.
        no_target: the score is below the no-target threshold.
    """

    mask: np.ndarray
    score: float
    no_target: bool


@dataclass
class VideoPrediction:
    """One instruction on a video.

    Attributes:
        masks: ``(T, H, W)`` bool at the original resolution.
        scores: ``(T,)`` float32 sigmoid scores of the selected queries.
        no_target: ``(T,)`` bool.
        frame_names: T frame names (file stems for folders, ``00000``... otherwise).
    """

    masks: np.ndarray
    scores: np.ndarray
    no_target: np.ndarray
    frame_names: list[str]


class InstructSegPredictor:
    """Image and video segmentation from text instructions with an :class:`InstructSeg` model.

    Args:
        model: the model (moved to ``device`` and put in eval mode).
        device: where inference runs.
        dtype: ``None`` / ``torch.float32`` (full precision) or ``torch.bfloat16`` / ``torch.float16`` (autocast).
    """

    def __init__(self, model: InstructSeg, device: str | torch.device = "cpu", dtype: torch.dtype | None = None):
        if dtype not in (None, torch.float32, *AUTOCAST_DTYPES):
            raise ValueError(f"dtype: expected None, float32, bfloat16 or float16, got {dtype}.")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.autocast_dtype = dtype if dtype in AUTOCAST_DTYPES else None
        self.config = model.config

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        config_overrides: dict | None = None,
    ) -> InstructSegPredictor:
        """Load an export directory (:meth:`InstructSeg.from_pretrained`) or a training ``.ckpt``, by local path or
        Hugging Face Hub id (:func:`~instructseg.modeling.loading.resolve_model_path`).

        ``config_overrides`` (training checkpoints only) is merged into the stored model config, e.g. to point the
        pretrained paths at this machine's copies.
        """
        path = resolve_model_path(path)
        if path.is_dir():
            model = InstructSeg.from_pretrained(path)
        elif path.is_file():
            model = load_training_checkpoint(path, config_overrides)
        else:
            raise FileNotFoundError(f"No export directory or training checkpoint at {path}.")
        return cls(model, device, dtype)

    @contextlib.contextmanager
    def _inference(self) -> Iterator[None]:
        dtype = self.autocast_dtype
        autocast = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            yield

    def _queries(self, texts: list[str], task: str) -> list[dict[str, torch.Tensor]]:
        """One ``(1, L_t)`` token batch (input_ids, attention_mask, instruction_mask) per instruction."""
        tok = self.model.tokenizer
        out = []
        for text in texts:
            batch = collate_tokens([tokenize_query(tok, task, text)], tok.pad_token_id)
            out.append({k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "instruction_mask")})
        return out

    def _to_masks(self, selection: Selection, frames: FrameProcessor) -> np.ndarray:
        """Selected mask logits ``(B, h, w)`` → ``(B, H, W)`` bool masks at the original resolution."""
        out = np.zeros((selection.mask_logits.shape[0], *frames.hw), dtype=bool)
        for row in np.flatnonzero(~selection.no_target.cpu().numpy()):
            logits = postprocess_mask_logits(selection.mask_logits[row], frames.valid_hw, frames.mask_size, frames.hw)
            out[row] = (logits > 0).cpu().numpy()
        return out

    def predict_image(
        self, image: ImageInput, text: str | Sequence[str], task: str = "res", threshold: float | None = None
    ) -> ImagePrediction | list[ImagePrediction]:
        """Segment ``image`` for one instruction (→ one prediction) or several (→ a list; the image is encoded once).

        Args:
            image: path, PIL image, ``(H, W[, C])`` NumPy array or torch tensor (see :mod:`instructseg.video_io`).
            text: instruction(s).
            task: ``"res"`` (referring phrase) or ``"reasonseg"`` (implicit question).
            threshold: no-target threshold on the score (default ``config.decoder.no_target_threshold``).
        """
        texts = _as_texts(text)
        _check_task(task, IMAGE_TASKS)
        queries = self._queries(texts, task)
        frames = self._processor(VideoFrames([image], ["image"]))
        results = []
        with self._inference():
            features = self.model.encode_frames(*self._prepare(frames, [0]))
            key, refs, ref_mask = self.model.split_clip(features.clip_tokens[None])  # the image is its own reference
            for query in queries:
                co = self.model.co_decode(key, refs, **query, ref_mask=ref_mask)
                selection = self.model.select(self.model.decode_masks(features, co), threshold)
                mask = self._to_masks(selection, frames)[0]
                results.append(ImagePrediction(mask, float(selection.score[0]), bool(selection.no_target[0])))
        return results[0] if isinstance(text, str) else results

    def _processor(self, frames: VideoFrames) -> FrameProcessor:
        sizes = self.config.vision.image_size, self.config.mask.image_size
        return FrameProcessor(frames, *sizes, workers=PREPROCESS_WORKERS)

    def _prepare(
        self, frames: FrameProcessor, indices: Sequence[int], siglip: bool = True, mask: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``frames(indices)`` on the predictor's device."""
        return tuple(x.to(self.device) if x is not None else None for x in frames(indices, siglip, mask))

    def predict_video(
        self,
        video: Sequence[ImageInput] | np.ndarray | torch.Tensor | str | Path,
        text: str | Sequence[str],
        strategy: str = "per_frame",
        task: str = "rvos",
        chunk_size: int = 16,
        threshold: float | None = None,
        progress: bool = False,
    ) -> VideoPrediction | list[VideoPrediction]:
        """Segment every frame of ``video`` for one instruction (→ one prediction) or several (→ a list).

        Args:
            video: frames, a folder of frames, a GIF / MP4 file or a ``(T, ...)`` array (see :func:`open_video`).
            text: instruction(s); all of them reuse the encoded frames.
            strategy: ``"per_frame"``, ``"shared"`` or ``"naive"`` (see the module docstring).
            task: ``"rvos"`` (referring phrase) or ``"reasonvos"`` (implicit question).
            chunk_size: frames encoded and decoded together (bounds memory).
            threshold: no-target threshold on the score (default ``config.decoder.no_target_threshold``).
            progress: show a tqdm progress bar.
        """
        texts = _as_texts(text)
        _check_task(task, VIDEO_TASKS)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}.")
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}.")
        queries = self._queries(texts, task)
        frames = self._processor(open_video(video))
        n = len(frames.frames)
        collected = _Collector(len(queries), n)
        run = {"per_frame": self._run_per_frame, "shared": self._run_shared, "naive": self._run_naive}[strategy]
        with self._inference(), tqdm(total=n * len(queries), disable=not progress, unit="frame") as bar:

            def emit(k: int, keys: Sequence[int], selection: Selection) -> None:
                collected.add(k, keys, self._to_masks(selection, frames), selection)
                bar.update(len(keys))

            run(frames, queries, chunk_size, threshold, emit)
        results = [VideoPrediction(*collected.result(k), frames.frames.names) for k in range(len(queries))]
        return results[0] if isinstance(text, str) else results

    def _decode_chunk(
        self,
        keys: Sequence[int],
        features: FrameFeatures,
        co_for_query: Callable[[int], CoDecodeOutput],
        num_queries: int,
        threshold: float | None,
        emit: Callable,
    ) -> None:
        """Stage 3 for the frames ``keys`` (rows of ``features``), each instruction on the same features."""
        for k in range(num_queries):
            prediction = self.model.decode_masks(features, co_for_query(k))
            emit(k, keys, self.model.select(prediction, threshold))

    def _run_per_frame(
        self, frames: FrameProcessor, queries: list[dict], chunk: int, threshold: float | None, emit: Callable
    ) -> None:
        """Cached + batched paper protocol; SigLIP tokens kept in a sliding window, Swin per chunk."""
        n, r = len(frames.frames), self.config.num_reference_frames
        needs = [[t, *reference_frames_for_key(n, t, r)] for t in range(n)]
        tokens: dict[int, torch.Tensor] = {}  # frame -> (N, D)
        mask_inputs: dict[int, torch.Tensor] = {}  # frame -> (3, S_mask, S_mask), read ahead with its tokens
        next_read = 0
        for start in range(0, n, chunk):
            keys = range(start, min(n, start + chunk))
            read_to = max(max(needs[t]) for t in keys) + 1
            if read_to > next_read:
                new = range(next_read, read_to)
                clip, masks = self._prepare(frames, new)
                tokens.update(zip(new, self.model.encode_frames(clip).clip_tokens))
                mask_inputs.update(zip(new, masks))
                next_read = read_to
            features = self.model.encode_frames(None, torch.stack([mask_inputs.pop(t) for t in keys]))
            key = torch.stack([tokens[t] for t in keys])  # (B, N, D)
            refs = torch.stack([torch.stack([tokens[i] for i in needs[t][1:]]) for t in keys])  # (B, R, N, D)
            batched = [{name: v.expand(len(keys), -1) for name, v in query.items()} for query in queries]
            self._decode_chunk(
                keys, features, lambda k: self.model.co_decode(key, refs, **batched[k]), len(queries), threshold, emit
            )
            keep_from = min(min(needs[t]) for t in range(keys.stop, n)) if keys.stop < n else n
            for index in [i for i in tokens if i < keep_from]:
                del tokens[index]

    def _run_shared(
        self, frames: FrameProcessor, queries: list[dict], chunk: int, threshold: float | None, emit: Callable
    ) -> None:
        """One LLM pass per instruction (middle key frame, global references), then the mask decoder per chunk."""
        n, r = len(frames.frames), self.config.num_reference_frames
        key_index, ref_indices = n // 2, global_reference_frames(n, r)
        encoded = sorted({key_index, *ref_indices})
        tokens = dict(zip(encoded, self.model.encode_frames(self._prepare(frames, encoded, mask=False)[0]).clip_tokens))
        key = tokens[key_index][None]  # (1, N, D)
        refs = torch.stack([tokens[i] for i in ref_indices])[None]  # (1, R, N, D)
        shared = [self.model.co_decode(key, refs, **query) for query in queries]
        for start in range(0, n, chunk):
            keys = range(start, min(n, start + chunk))
            features = self.model.encode_frames(None, self._prepare(frames, keys, siglip=False)[1])
            rows = [0] * len(keys)
            self._decode_chunk(keys, features, lambda k: shared[k].index(rows), len(queries), threshold, emit)

    def _run_naive(
        self, frames: FrameProcessor, queries: list[dict], chunk: int, threshold: float | None, emit: Callable
    ) -> None:
        """The reference loop: a full forward per (frame, instruction) re-encoding its 1 + R frames.

        Frames are preprocessed once up front (as the reference does); only the model work is repeated.
        """
        n, r = len(frames.frames), self.config.num_reference_frames
        clip, masks = self._prepare(frames, range(n))
        for k, query in enumerate(queries):
            for t in range(n):
                clip_frames = [t, *reference_frames_for_key(n, t, r)]
                batch = {**query, "clip_pixel_values": clip[clip_frames][None], "pixel_values": masks[t][None]}
                emit(k, [t], self.model.select(self.model(batch).prediction, threshold))


class _Collector:
    """Per-instruction ``(T, H, W)`` masks, scores and no-target flags filled chunk by chunk."""

    def __init__(self, num_queries: int, num_frames: int) -> None:
        self.masks: list[np.ndarray | None] = [None] * num_queries
        self.scores = np.zeros((num_queries, num_frames), dtype=np.float32)
        self.no_target = np.zeros((num_queries, num_frames), dtype=bool)

    def add(self, k: int, keys: Sequence[int], masks: np.ndarray, selection: Selection) -> None:
        if self.masks[k] is None:
            self.masks[k] = np.zeros((self.scores.shape[1], *masks.shape[1:]), dtype=bool)
        index = list(keys)
        self.masks[k][index] = masks
        self.scores[k, index] = selection.score.float().cpu().numpy()
        self.no_target[k, index] = selection.no_target.cpu().numpy()

    def result(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.masks[k], self.scores[k], self.no_target[k]


def _as_texts(text: str | Sequence[str]) -> list[str]:
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise InputError("text: give at least one instruction.")
    for item in texts:
        if not isinstance(item, str) or not item.strip():
            raise InputError(f"text: every instruction must be a non-empty string, got {item!r}.")
    return texts


def _check_task(task: str, allowed: tuple[str, ...]) -> None:
    if task not in allowed:
        raise ValueError(f"task: expected one of {allowed} here, got {task!r}.")
