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
  masks as ``"per_frame"``; kept for benchmarks and equality tests (it preprocesses every frame up front, as the
  reference does, so its memory grows with T; every other strategy's memory is flat in T).
* ``"keyframe"`` (VISA without a second LLM, :mod:`instructseg.keyframes`): a relevance pass (the ``"shared"`` pass,
  keeping one score per frame) picks the key frame per instruction; one LLM pass on it with VISA's global-local
  references (:func:`~instructseg.sampling.global_local_reference_frames`); every frame is then decoded with that
  output, or, with ``tracker="sam2"``, the key-frame mask(s) are propagated forward and backward by SAM2
  (:mod:`instructseg.tracker`).
* ``"segments"`` (ViLLa's key segments): the same relevance pass; the segments where the smoothed relevance reaches
  the threshold (:class:`~instructseg.keyframes.SegmentRule`) each get one LLM pass on their most relevant frame with
  adaptive references (:func:`~instructseg.sampling.adaptive_reference_frames`: a third over the video, two thirds
  around the segment) and are decoded (or tracked) with it; frames outside every segment are "no target".
  ``relevance_stride=k`` makes the relevance pass of both score every k-th frame only (linear in between).

``max_objects=K`` returns up to K objects per instruction (``.objects``, :mod:`instructseg.objects`: score threshold
and mask-IoU suppression); ``mask(s)`` / ``score(s)`` / ``no_target`` then hold the union / the best of them.
``VideoPrediction.video_no_target`` is the per-video answer (no object in any frame).

Several instructions reuse the encoded frames (and the pixel decoder's features); each frame is encoded once however
many instructions there are. Masks come back at the original resolution of the input. CPU by default; any device
on request, with ``dtype=torch.bfloat16`` / ``torch.float16`` running under autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from instructseg.checkpoint import load_training_checkpoint
from instructseg.constants import IMAGE_TASKS, STRATEGIES, VIDEO_TASKS
from instructseg.keyframes import RelevanceRecorder, SegmentRule, choose_key_frame, extract_segments
from instructseg.modeling.instructseg import FrameFeatures, InstructSeg
from instructseg.modeling.llm import CoDecodeOutput
from instructseg.modeling.loading import resolve_model_path
from instructseg.modeling.mask_decoder import MaskPrediction
from instructseg.objects import ImageObject, ObjectSelection, VideoCollector, VideoObject, select_objects
from instructseg.processing import (
    FrameProcessor,
    collate_tokens,
    official_query_ranking,
    postprocess_mask_logits,
    tokenize_official_query,
    tokenize_query,
)
from instructseg.sampling import (
    adaptive_reference_frames,
    global_local_reference_frames,
    global_reference_frames,
    reference_frames_for_key,
)
from instructseg.tracker import DEFAULT_SAM2, Sam2Tracker
from instructseg.video_io import ImageInput, InputError, VideoFrames, is_video_path, open_video

AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)
DTYPE_NAMES = ("float32", "bfloat16", "float16")
#: Largest automatic chunk (frames encoded and decoded together).
MAX_CHUNK = 16
PREPROCESS_WORKERS = min(8, os.cpu_count() or 1)
#: Strategies that start from key frames (the ones a tracker can propagate from).
TRACKED_STRATEGIES = ("keyframe", "segments")


@dataclass
class Candidate:
    """One decoder query's answer to an instruction (``predict_image(..., return_candidates=True)``).

    Attributes:
        query: the decoder query index.
        score: its sigmoid score.
        mask: ``(H, W)`` bool at the original resolution (mask probability above 0.5).
        probabilities: ``(H, W)`` float32 mask probabilities with ``return_probabilities=True``, else None.
    """

    query: int
    score: float
    mask: np.ndarray
    probabilities: np.ndarray | None = None


@dataclass
class ImagePrediction:
    """One instruction on one image.

    An empty ``mask`` with ``no_target=False`` can happen: the score ("is the target in the image?") and the mask
    ("where?") come from two heads. A score above the threshold whose mask logits are all below 0 at the original
    resolution (a tiny or thin object, or a model trained briefly) gives an empty mask; ``return_probabilities=True``
    shows the mask probabilities, ``return_candidates=True`` the other queries' answers. Treat ``not mask.any()`` as
    no target where only the mask matters.

    Attributes:
        mask: ``(H, W)`` bool at the original resolution (empty when ``no_target``).
        score: sigmoid score of the selected query.
        no_target: the score is below the no-target threshold.
        objects: the objects found (``max_objects`` of them at most; ``mask`` is their union, ``score`` the best).
        probabilities: ``(H, W)`` float32 mask probabilities of the best query (given even when ``no_target``), with
            ``return_probabilities=True``; else None.
        candidates: every decoder query's answer, best score first (``return_candidates=True``; an int keeps that
            many), else None.
    """

    mask: np.ndarray
    score: float
    no_target: bool
    objects: list[ImageObject] = field(default_factory=list)
    probabilities: np.ndarray | None = None
    candidates: list[Candidate] | None = None


@dataclass
class VideoPrediction:
    """One instruction on a video (an empty mask on a frame with ``no_target`` False: see :class:`ImagePrediction`).

    Attributes:
        masks: ``(T, H, W)`` bool at the original resolution.
        scores: ``(T,)`` float32 sigmoid scores of the selected queries.
        no_target: ``(T,)`` bool.
        frame_names: T frame names (file stems for folders, ``00000``... otherwise).
        objects: the object slots present in at least one frame (``max_objects`` at most; ``masks`` is their union,
            ``scores`` the best).
        video_no_target: no object in any frame (the per-video answer).
    """

    masks: np.ndarray
    scores: np.ndarray
    no_target: np.ndarray
    frame_names: list[str]
    objects: list[VideoObject] = field(default_factory=list)
    video_no_target: bool = False


class InstructSegPredictor:
    """Image and video segmentation from text instructions with an :class:`InstructSeg` model.

    Args:
        model: the model (moved to ``device`` and put in eval mode).
        device: where inference runs.
        dtype: ``None`` / ``torch.float32`` (full precision) or ``torch.bfloat16`` / ``torch.float16`` (autocast).
    """

    def __init__(
        self, model: InstructSeg, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
    ) -> None:
        self.model = model.eval()
        self.config = model.config
        self.device = torch.device("cpu")
        self.autocast_dtype: torch.dtype | None = None
        self.to(device, dtype or torch.float32)

    def to(
        self, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
    ) -> InstructSegPredictor:
        """Move the model to ``device`` and / or run it in ``dtype`` (``None`` keeps the current one); returns self.

        Args:
            device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``; checked to exist here.
            dtype: ``"float32"`` / ``torch.float32`` (full precision) or ``"bfloat16"`` / ``"float16"`` (or the
                torch dtypes): autocast, the weights stay float32.

        Raises:
            ValueError: an unknown dtype or device name, or a device this torch build cannot use (one line).
        """
        if dtype is not None:
            resolved = _as_dtype(dtype)
            self.autocast_dtype = resolved if resolved in AUTOCAST_DTYPES else None
        if device is not None:
            self.device = _check_device(device)
            self.model.to(self.device)
        return self

    def __call__(
        self, inputs: ImageInput | Sequence[ImageInput] | str | Path, text: str | Sequence[str], **kwargs
    ) -> ImagePrediction | VideoPrediction | list[ImagePrediction] | list[VideoPrediction]:
        """:meth:`predict_video` for a video (a folder of frames, a GIF / MP4 path, a list of frames or a
        ``(T, H, W, C)`` array), else :meth:`predict_image`; ``kwargs`` go to that method."""
        video = (
            is_video_path(inputs)
            if isinstance(inputs, (str, Path))
            else isinstance(inputs, (list, tuple))
            or (isinstance(inputs, (np.ndarray, torch.Tensor)) and inputs.ndim == 4)
        )
        return (self.predict_video if video else self.predict_image)(inputs, text, **kwargs)

    def predict_images(
        self, images: Sequence[ImageInput], text: str | Sequence[str], **kwargs
    ) -> list[ImagePrediction] | list[list[ImagePrediction]]:
        """:meth:`predict_image` on each of ``images`` with the same instruction(s): one result per image (each
        image is encoded once for all its instructions); ``kwargs`` go to :meth:`predict_image`."""
        if isinstance(images, (str, Path)) or not isinstance(images, Sequence):
            raise InputError(f"images: expected a list of images, got {type(images).__name__}.")
        return [self.predict_image(image, text, **kwargs) for image in images]

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype | None = None,
        config_overrides: dict | None = None,
        pretrained_root: str | Path | None = None,
    ) -> InstructSegPredictor:
        """Load an export directory (:meth:`InstructSeg.from_pretrained`) or a training ``.ckpt``, by local path or
        Hugging Face Hub id (:func:`~instructseg.modeling.loading.resolve_model_path`).

        A training checkpoint rebuilds the frozen parts from its stored pretrained paths (absolute, or relative to
        the working directory or the checkpoint's folder); on another machine give ``pretrained_root`` (a folder
        holding ``siglip/``, ``llm/`` and ``mask2former/``, e.g. from ``instructseg make-tiny``) to use those
        instead. ``config_overrides`` (training checkpoints only) is merged into the stored model config.
        """
        path = resolve_model_path(path)
        if path.is_dir():
            model = InstructSeg.from_pretrained(path)
        elif path.is_file():
            model = load_training_checkpoint(path, config_overrides, pretrained_root=pretrained_root)
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
            tokens = tokenize_official_query(tok, task, text) if self.official else tokenize_query(tok, task, text)
            batch = collate_tokens([tokens], tok.pad_token_id)
            out.append({k: batch[k].to(self.device) for k in ("input_ids", "attention_mask", "instruction_mask")})
        return out

    def _to_masks(self, chosen: ObjectSelection, frames: FrameProcessor) -> np.ndarray:
        """Object mask logits ``(B, K, h, w)`` → ``(B, K, H, W)`` bool masks at the original resolution."""
        b, k = chosen.score.shape
        flat = chosen.mask_logits.flatten(0, 1)
        out = np.zeros((b * k, *frames.hw), dtype=bool)
        for row in np.flatnonzero(~chosen.no_target.flatten().cpu().numpy()):
            logits = postprocess_mask_logits(flat[row], frames.valid_hw, frames.mask_size, frames.hw)
            out[row] = (logits > 0).cpu().numpy()
        return out.reshape(b, k, *frames.hw)

    @property
    def official(self) -> bool:
        """The model reproduces the released code (``config.profile == "official"``): its prompt, preprocessing and
        selection rule are used."""
        return self.config.profile == "official"

    def _ranking(self, prediction: MaskPrediction, frames: FrameProcessor) -> torch.Tensor | None:
        """The official profile ranks the queries at the original resolution; ``None``: the default ranking."""
        if not self.official:
            return None
        logits, scores = prediction.mask_logits[-1], prediction.scores[-1]
        return official_query_ranking(logits, scores, frames.valid_hw, frames.mask_size, frames.hw)

    def frame_bytes(self) -> int:
        """Estimated memory one frame of a chunk needs while it is decoded: its SigLIP tokens, Swin pyramid and pixel
        decoder features, the mask logits of every decoder step for every query, and the LLM pass of its prompt;
        twice that for the temporaries."""
        config, model = self.config, self.model
        side = config.mask.image_size
        floats = model.siglip.num_tokens * model.llm.hidden_size
        floats += sum(c * (side // s) ** 2 for c, s in zip(model.swin.channels, model.swin.strides))
        hidden = model.mask_decoder.hidden_size
        floats += hidden * ((side // 4) ** 2 + sum((side // s) ** 2 for s in (8, 16, 32)))
        steps = model.mask_decoder.decoder.decoder_layers + 1
        floats += steps * config.decoder.num_queries * (side // 4) ** 2
        floats += 8 * (model.text_token_budget() or 2048) * model.llm.hidden_size
        itemsize = 2 if self.autocast_dtype is not None else 4
        return 2 * floats * itemsize

    def auto_chunk_size(self, limit: int = MAX_CHUNK) -> int:
        """Frames per chunk: as many as half of the memory available now holds (:meth:`frame_bytes` each), in
        ``[1, limit]`` — so the full-size model on a 24 GB machine works on a few frames at a time, the tiny one on
        ``limit``."""
        return max(1, min(limit, int(0.5 * available_memory(self.device) // self.frame_bytes())))

    def _threshold(self, threshold: float | None) -> float:
        return self.config.decoder.no_target_threshold if threshold is None else threshold

    def predict_image(
        self,
        image: ImageInput,
        text: str | Sequence[str],
        task: str = "res",
        threshold: float | None = None,
        max_objects: int = 1,
        overlap: float = 0.5,
        return_candidates: bool | int = False,
        return_probabilities: bool = False,
    ) -> ImagePrediction | list[ImagePrediction]:
        """Segment ``image`` for one instruction (→ one prediction) or several (→ a list; the image is encoded once).

        Args:
            image: path, PIL image, ``(H, W[, C])`` NumPy array or torch tensor (see :mod:`instructseg.video_io`).
            text: instruction(s).
            task: ``"res"`` (referring phrase) or ``"reasonseg"`` (implicit question).
            threshold: no-target threshold on the score (default ``config.decoder.no_target_threshold``).
            max_objects: up to this many objects per instruction (``.objects``; see :mod:`instructseg.objects`).
            overlap: mask IoU at which a lower-ranked object is suppressed (with ``max_objects > 1``).
            return_candidates: also return every decoder query's mask and score (``.candidates``, best first); an
                int keeps that many (each candidate holds an ``(H, W)`` mask).
            return_probabilities: also return the ``(H, W)`` float32 mask probabilities (``.probabilities``, and on
                each candidate).
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
                prediction = self.model.decode_masks(features, co)
                ranking = self._ranking(prediction, frames)
                chosen = select_objects(prediction, max_objects, self._threshold(threshold), overlap, ranking)
                masks, scores = self._to_masks(chosen, frames)[0], chosen.score[0].float().cpu().numpy()
                present = np.flatnonzero(~chosen.no_target[0].cpu().numpy())
                objects = [ImageObject(masks[j], float(scores[j])) for j in present]
                mask = masks.any(0) if max_objects > 1 else masks[0]
                extras = self._image_extras(prediction, chosen, frames, return_candidates, return_probabilities)
                results.append(ImagePrediction(mask, float(scores.max()), present.size == 0, objects, **extras))
        return results[0] if isinstance(text, str) else results

    def _image_extras(
        self,
        prediction: MaskPrediction,
        chosen: ObjectSelection,
        frames: FrameProcessor,
        candidates: bool | int,
        probabilities: bool,
    ) -> dict[str, Any]:
        """``probabilities`` ``(H, W)`` of the selected query and / or the ``candidates`` (best first) of one image."""
        if not isinstance(candidates, bool) and candidates < 0:
            raise ValueError(f"return_candidates: True, False or a count >= 1, got {candidates}.")
        if not candidates and not probabilities:
            return {}
        scores = prediction.scores[-1][0].float().sigmoid().cpu().numpy()  # (Q,)
        order = np.argsort(-scores, kind="stable")
        kept = order[: len(order) if candidates is True else int(candidates)]
        selected = int(chosen.query[0, 0])  # the first slot always holds the best-ranked query
        rows = [selected, *(int(q) for q in kept)]
        logits = prediction.mask_logits[-1][0, rows]  # (1 + K, h, w)
        probs = postprocess_mask_logits(logits, frames.valid_hw, frames.mask_size, frames.hw).sigmoid()
        probs = probs.cpu().numpy().astype(np.float32)  # (1 + K, H, W)
        out: dict[str, Any] = {"probabilities": probs[0]} if probabilities else {}
        if candidates:
            out["candidates"] = [
                Candidate(q, float(scores[q]), probs[i] > 0.5, probs[i] if probabilities else None)
                for i, q in enumerate(rows[1:], start=1)
            ]
        return out

    def _processor(self, frames: VideoFrames) -> FrameProcessor:
        sizes = self.config.vision.image_size, self.config.mask.image_size
        return FrameProcessor(frames, *sizes, workers=PREPROCESS_WORKERS, official=self.official)

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
        chunk_size: int | None = None,
        threshold: float | None = None,
        progress: bool = False,
        max_objects: int = 1,
        overlap: float = 0.5,
        tracker: str | Sam2Tracker | None = None,
        tracker_weights: str | Path | None = None,
        segment_rule: SegmentRule | None = None,
        relevance_stride: int = 1,
    ) -> VideoPrediction | list[VideoPrediction]:
        """Segment every frame of ``video`` for one instruction (→ one prediction) or several (→ a list).

        Args:
            video: frames, a folder of frames, a GIF / MP4 file or a ``(T, ...)`` array (see :func:`open_video`).
            text: instruction(s); all of them reuse the encoded frames.
            strategy: ``"per_frame"``, ``"shared"``, ``"naive"``, ``"keyframe"`` or ``"segments"`` (see the module
                docstring).
            task: ``"rvos"`` (referring phrase) or ``"reasonvos"`` (implicit question).
            chunk_size: frames encoded and decoded together (bounds memory); default: as many as half of the memory
                available now holds (:meth:`auto_chunk_size`), at most 16.
            threshold: no-target threshold on the score (default ``config.decoder.no_target_threshold``).
            progress: show a tqdm progress bar.
            max_objects: up to this many objects per instruction (``.objects``; ranked per frame, or tracked).
            overlap: mask IoU at which a lower-ranked object is suppressed (with ``max_objects > 1``).
            tracker: ``None``, ``"sam2"`` or a :class:`~instructseg.tracker.Sam2Tracker`: propagate the key-frame
                objects instead of decoding every frame (strategies ``"keyframe"`` and ``"segments"``).
            tracker_weights: SAM2 weights for ``tracker="sam2"``, Hub id or local directory (default
                ``facebook/sam2.1-hiera-tiny``).
            segment_rule: how ``"segments"`` reads key segments off the relevance curve (default
                :class:`~instructseg.keyframes.SegmentRule`).
            relevance_stride: ``"keyframe"`` / ``"segments"`` score every ``relevance_stride``-th frame (and the
                last) in their relevance pass and interpolate in between: a cheaper first pass, segment edges
                within ``relevance_stride`` frames.
        """
        texts = _as_texts(text)
        _check_task(task, VIDEO_TASKS)
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy: expected one of {STRATEGIES}, got {strategy!r}.")
        chunk_size = self.auto_chunk_size() if chunk_size is None else chunk_size
        if chunk_size < 1:
            raise ValueError(f"chunk_size: expected >= 1, got {chunk_size}.")
        if relevance_stride < 1:
            raise ValueError(f"relevance_stride: expected >= 1, got {relevance_stride}.")
        if max_objects < 1 or not 0.0 < overlap <= 1.0:
            raise ValueError(f"max_objects / overlap: expected >= 1 and in (0, 1], got {max_objects} and {overlap}.")
        sam2 = self._tracker(tracker, tracker_weights, strategy)
        queries = self._queries(texts, task)
        frames = self._processor(open_video(video))
        n = len(frames.frames)
        collected = VideoCollector(len(queries), n, max_objects)
        run = {
            "per_frame": self._run_per_frame,
            "shared": self._run_shared,
            "naive": self._run_naive,
            "keyframe": partial(self._run_keyframe, tracker=sam2, stride=relevance_stride),
            "segments": partial(
                self._run_segments, tracker=sam2, stride=relevance_stride, rule=segment_rule or SegmentRule()
            ),
        }[strategy]
        with self._inference(), tqdm(total=n * len(queries), disable=not progress, unit="frame") as bar:
            run(frames, queries, chunk_size, _Emitter(self, frames, collected, bar, threshold, max_objects, overlap))
        results = []
        for k in range(len(queries)):
            masks, scores, no_target, objects = collected.result(k, frames.hw)
            results.append(
                VideoPrediction(masks, scores, no_target, frames.frames.names, objects, bool(no_target.all()))
            )
        return results[0] if isinstance(text, str) else results

    def _tracker(
        self, tracker: str | Sam2Tracker | None, weights: str | Path | None, strategy: str
    ) -> Sam2Tracker | None:
        """The tracker of a ``predict_video`` call (``"sam2"`` loads ``weights`` once per process)."""
        if tracker is None:
            if weights is not None:
                raise ValueError("tracker_weights: given without tracker; pass tracker='sam2' too.")
            return None
        if strategy not in TRACKED_STRATEGIES:
            raise ValueError(
                f"tracker: propagates key frames; use a strategy of {TRACKED_STRATEGIES}, not {strategy!r}."
            )
        if isinstance(tracker, Sam2Tracker):
            return tracker
        if tracker != "sam2":
            raise ValueError(f"tracker: expected None, 'sam2' or a Sam2Tracker, got {tracker!r}.")
        return _load_sam2(str(weights or DEFAULT_SAM2), str(self.device), self.autocast_dtype)

    def _decode_chunk(
        self,
        keys: Sequence[int],
        features: FrameFeatures,
        co_for_query: Callable[[int], CoDecodeOutput],
        num_queries: int,
        emit: _Emitter,
    ) -> None:
        """Stage 3 for the frames ``keys`` (rows of ``features``), each instruction on the same features."""
        for k in range(num_queries):
            emit.decoded(k, keys, self.model.decode_masks(features, co_for_query(k)))

    def _run_per_frame(self, frames: FrameProcessor, queries: list[dict], chunk: int, emit: _Emitter) -> None:
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
                keys, features, lambda k: self.model.co_decode(key, refs, **batched[k]), len(queries), emit
            )
            keep_from = min(min(needs[t]) for t in range(keys.stop, n)) if keys.stop < n else n
            for index in [i for i in tokens if i < keep_from]:
                del tokens[index]

    def _co_decode_at(
        self, frames: FrameProcessor, queries: list[dict], key_index: int, ref_indices: list[int]
    ) -> list[CoDecodeOutput]:
        """One LLM pass per instruction on the clip ``key_index`` + ``ref_indices`` (its frames encoded once)."""
        encoded = sorted({key_index, *ref_indices})
        tokens = dict(zip(encoded, self.model.encode_frames(self._prepare(frames, encoded, mask=False)[0]).clip_tokens))
        key = tokens[key_index][None]  # (1, N, D)
        refs = torch.stack([tokens[i] for i in ref_indices])[None]  # (1, R, N, D)
        return [self.model.co_decode(key, refs, **query) for query in queries]

    def _spread(
        self,
        frames: FrameProcessor,
        jobs: list[tuple[int, CoDecodeOutput, Sequence[int]]],
        chunk: int,
        emit: _Emitter | RelevanceRecorder,
    ) -> None:
        """Decode the frames of each job ``(instruction, co-decode output, frames)`` in time order, ``chunk`` frames
        at a time; a frame's mask branch is encoded once for all the jobs that cover it."""
        spans = [set(span) for _, _, span in jobs]
        covered = sorted(set().union(*spans))
        for start in range(0, len(covered), chunk):
            window = covered[start : start + chunk]
            active = [
                (k, co, keys) for (k, co, _), span in zip(jobs, spans) if (keys := [t for t in window if t in span])
            ]
            if not active:
                continue
            needed = sorted({t for _, _, keys in active for t in keys})
            features = self.model.encode_frames(None, self._prepare(frames, needed, siglip=False)[1])
            for k, co, keys in active:
                part = features if len(keys) == len(needed) else _take(features, [needed.index(t) for t in keys])
                emit.decoded(k, keys, self.model.decode_masks(part, co.index([0] * len(keys))))

    def _run_shared(
        self, frames: FrameProcessor, queries: list[dict], chunk: int, emit: _Emitter | RelevanceRecorder
    ) -> None:
        """One LLM pass per instruction (middle key frame, global references), then the mask decoder per chunk."""
        n, r = len(frames.frames), self.config.num_reference_frames
        shared = self._co_decode_at(frames, queries, n // 2, global_reference_frames(n, r))
        self._spread(frames, [(k, co, range(n)) for k, co in enumerate(shared)], chunk, emit)

    def _relevance(self, frames: FrameProcessor, queries: list[dict], chunk: int, stride: int) -> np.ndarray:
        """``(len(queries), T)`` relevance curves: the ``shared`` pass on every ``stride``-th frame (and the last),
        one score per frame kept, linearly interpolated in between."""
        n, r = len(frames.frames), self.config.num_reference_frames
        sampled = sorted({*range(0, n, stride), n - 1})
        shared = self._co_decode_at(frames, queries, n // 2, global_reference_frames(n, r))
        recorder = RelevanceRecorder(len(queries), n, self.model.select)
        self._spread(frames, [(k, co, sampled) for k, co in enumerate(shared)], chunk, recorder)
        return recorder.interpolated(sampled)

    def _run_keyframe(
        self,
        frames: FrameProcessor,
        queries: list[dict],
        chunk: int,
        emit: _Emitter,
        tracker: Sam2Tracker | None,
        stride: int,
    ) -> None:
        """Key frame per instruction from the relevance curve, one LLM pass with global-local references there."""
        n, r = len(frames.frames), self.config.num_reference_frames
        jobs = []
        for k, (query, curve) in enumerate(zip(queries, self._relevance(frames, queries, chunk, stride))):
            key = choose_key_frame(curve)
            co = self._co_decode_at(frames, [query], key, global_local_reference_frames(n, key, r))[0]
            jobs.append((k, co, key, range(n)))
        self._fill(frames, jobs, chunk, emit, tracker)

    def _run_segments(
        self,
        frames: FrameProcessor,
        queries: list[dict],
        chunk: int,
        emit: _Emitter,
        tracker: Sam2Tracker | None,
        stride: int,
        rule: SegmentRule,
    ) -> None:
        """Key segments per instruction, one LLM pass per segment (adaptive references); "no target" elsewhere."""
        n, r = len(frames.frames), self.config.num_reference_frames
        jobs = []
        for k, (query, curve) in enumerate(zip(queries, self._relevance(frames, queries, chunk, stride))):
            outside = np.ones(n, dtype=bool)
            for start, stop in extract_segments(curve, rule, emit.threshold):
                outside[start:stop] = False
                key = start + choose_key_frame(curve[start:stop], rule.smooth)
                co = self._co_decode_at(frames, [query], key, adaptive_reference_frames(n, (start, stop), r))[0]
                jobs.append((k, co, key, range(start, stop)))
            if outside.any():
                emit.absent(k, np.flatnonzero(outside).tolist(), curve[outside])
        self._fill(frames, jobs, chunk, emit, tracker)

    def _fill(
        self,
        frames: FrameProcessor,
        jobs: list[tuple[int, CoDecodeOutput, int, range]],
        chunk: int,
        emit: _Emitter,
        tracker: Sam2Tracker | None,
    ) -> None:
        """Fill each job ``(instruction, co-decode output, key frame, frames)``: decode its frames with the output,
        or propagate the key frame's objects with ``tracker``."""
        if tracker is None:
            self._spread(frames, [(k, co, span) for k, co, _, span in jobs], chunk, emit)
            return
        slots = emit.max_objects
        for k, co, key, span in jobs:
            features = self.model.encode_frames(None, self._prepare(frames, [key], siglip=False)[1])
            masks, scores, no_target = emit.select(self.model.decode_masks(features, co))
            present = np.flatnonzero(~no_target[0])
            if present.size == 0:
                emit.absent(k, list(span), np.full(len(span), scores[0, 0]))
                continue
            for t, tracked, tracked_scores in tracker.propagate(frames.decoded, key, masks[0, present], span):
                out_masks = np.zeros((1, slots, *tracked.shape[1:]), dtype=bool)
                out_scores = np.zeros((1, slots), dtype=np.float32)
                out_masks[0, : present.size], out_scores[0, : present.size] = tracked, tracked_scores
                absent = np.ones((1, slots), dtype=bool)
                absent[0, : present.size] = tracked_scores <= 0.5
                emit.masks(k, [t], out_masks, out_scores, absent)

    def _run_naive(self, frames: FrameProcessor, queries: list[dict], chunk: int, emit: _Emitter) -> None:
        """The reference loop: a full forward per (frame, instruction) re-encoding its 1 + R frames.

        Frames are preprocessed once up front (as the reference does); only the model work is repeated.
        """
        n, r = len(frames.frames), self.config.num_reference_frames
        clip, masks = self._prepare(frames, range(n))
        for k, query in enumerate(queries):
            for t in range(n):
                clip_frames = [t, *reference_frames_for_key(n, t, r)]
                batch = {**query, "clip_pixel_values": clip[clip_frames][None], "pixel_values": masks[t][None]}
                emit.decoded(k, [t], self.model(batch).prediction)


class _Emitter:
    """Where a video strategy hands its results: decoder outputs, tracked masks, or "no target" frames."""

    def __init__(
        self,
        predictor: InstructSegPredictor,
        frames: FrameProcessor,
        collected: VideoCollector,
        bar: tqdm,
        threshold: float | None,
        max_objects: int,
        overlap: float,
    ) -> None:
        self._predictor, self._frames, self._collected, self._bar = predictor, frames, collected, bar
        self.threshold, self.max_objects, self.overlap = predictor._threshold(threshold), max_objects, overlap

    def select(self, prediction: MaskPrediction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Objects of B decoded frames: masks ``(B, K, H, W)`` bool, scores and no-target flags ``(B, K)``."""
        ranking = self._predictor._ranking(prediction, self._frames)
        chosen = select_objects(prediction, self.max_objects, self.threshold, self.overlap, ranking)
        scores, no_target = chosen.score.float().cpu().numpy(), chosen.no_target.cpu().numpy()
        return self._predictor._to_masks(chosen, self._frames), scores, no_target

    def decoded(self, k: int, keys: Sequence[int], prediction: MaskPrediction) -> None:
        self.masks(k, keys, *self.select(prediction))

    def masks(self, k: int, keys: Sequence[int], masks: np.ndarray, scores: np.ndarray, no_target: np.ndarray) -> None:
        self._collected.add(k, keys, masks, scores, no_target)
        self._bar.update(len(keys))

    def absent(self, k: int, keys: Sequence[int], scores: np.ndarray) -> None:
        self._collected.absent(k, keys, scores)
        self._bar.update(len(keys))


def _take(features: FrameFeatures, rows: list[int]) -> FrameFeatures:
    """The frames ``rows`` of encoded features."""
    mask_features, multi_scale = features.pixel
    return FrameFeatures(
        None if features.clip_tokens is None else features.clip_tokens[rows],
        [level[rows] for level in features.pyramid],
        (mask_features[rows], [level[rows] for level in multi_scale]),
    )


@lru_cache(maxsize=2)
def _load_sam2(weights: str, device: str, dtype: torch.dtype | None) -> Sam2Tracker:
    return Sam2Tracker.from_pretrained(weights, device, dtype)


def _as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``torch.float32`` / ``bfloat16`` / ``float16`` from the dtype or its name (``"bfloat16"``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {DTYPE_NAMES} (a name or the torch dtype), got {dtype!r}.")
    return getattr(torch, name)


def _check_device(device: str | torch.device) -> torch.device:
    """``torch.device(device)`` after checking that this torch build can use it."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: {device!r} is not a device name (use cpu, cuda, cuda:1 or mps).") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r}: this torch ({torch.__version__}) has no usable CUDA device; use 'cpu'."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available here; use 'cpu'.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {str(device)!r}: unsupported device type {dev.type!r}; use cpu, cuda or mps.")
    return dev


def available_memory(device: torch.device) -> int:
    """Bytes that can still be allocated: free CUDA memory on a GPU, ``MemAvailable`` of the host otherwise."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


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
