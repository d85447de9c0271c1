"""Pre- and post-processing shared by training data, the predictor and evaluation.

Images (PIL / NumPy / torch, any of RGB, L, LA, RGBA, I;16, float) become two tensors per frame:

* the **mask-branch** input: longest side resized to ``S_mask``, zero-padded (bottom/right) to ``S_mask x S_mask``,
  ImageNet-normalised on a 0-255 scale (Mask2Former convention);
* the **SigLIP** input: plain resize to ``S_clip x S_clip``, scaled to [0, 1], normalised with mean = std = 0.5.

Large downscales use Pillow's ``reducing_gap=3`` (an integer box reduction first, then the filter), which is several
times faster than filtering at full resolution and indistinguishable from it at this gap.

Text becomes this project's token layout (the released code's layout is :func:`official_prompt_chunks`)::

    SYSTEM USER: This is <kind> <ovp>\\n<image>\\n<task template> Text Prompt: <instruction>
    ASSISTANT: <answer> [SEG]<seg>

``<ovp>``, ``<image>`` and ``<seg>`` are single placeholder tokens that the model expands to the OVP latents
(R x Q_r tokens), the key frame's N SigLIP tokens and the Q mask queries. ``instruction_mask`` marks the
instruction tokens (their hidden states are the detailed text embeddings); ``labels`` hold the answer tokens
where the text loss applies and ``IGNORE_INDEX`` elsewhere.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from instructseg.constants import (
    IGNORE_INDEX,
    IMAGE_TOKEN,
    MASK_PIXEL_MEAN,
    MASK_PIXEL_STD,
    OVP_TOKEN,
    SEG_ANSWER_TOKEN,
    SEG_QUERY_TOKEN,
    SIGLIP_PIXEL_MEAN,
    SIGLIP_PIXEL_STD,
    SPECIAL_TOKENS,
    TASKS,
    VIDEO_TASKS,
)

#: Pillow's box reduction before the filter for large downscales (this project's profile; see the module docstring).
REDUCING_GAP = 3.0
#: Raw pixel value of the mask-branch padding in the released code (detectron2's FixedSizeCrop pad value).
OFFICIAL_PAD_VALUE = 128.0

SYSTEM_PROMPT = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
# Paper Table 10: one instruction template per task.
TASK_TEMPLATES = {
    "res": "You need to perform Referring Expression Segmentation on the image according to the Text Prompt.",
    "reasonseg": "You need to perform Reasoning Segmentation on the image according to the Text Prompt.",
    "rvos": "You need to perform Referring Video Object Segmentation on the video according to the Text Prompt.",
    "reasonvos": "You need to perform Reasoning Video Object Segmentation on the video according to the Text Prompt.",
    "vqa": "Answer the question about the image.",
}
DEFAULT_SEG_ANSWER = "Sure, the segmentation result is"


def to_rgb_uint8(image: Image.Image | np.ndarray | torch.Tensor) -> np.ndarray:
    """Convert any supported image to an ``(H, W, 3)`` uint8 RGB array.

    Accepted: PIL images of any mode; NumPy ``(H, W)``, ``(H, W, 1|3|4)`` arrays of uint8, uint16 or float in [0, 1];
    torch tensors ``(3, H, W)`` / ``(H, W, 3)`` likewise. Grayscale is replicated, alpha is dropped, 16-bit is scaled
    by 1/257, float is scaled by 255.

    Raises:
        ValueError: for any other shape, dtype, or an empty image.
    """
    if isinstance(image, Image.Image) and image.mode == "F":
        image = np.asarray(image)  # 32-bit float (e.g. a float TIFF): the float rule below, not PIL's clip to 0..255
    if isinstance(image, Image.Image):
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(image).astype(np.float64) / 257.0
            return np.repeat(np.clip(array, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3, 4) and image.shape[-1] not in (1, 3, 4):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a PIL image, NumPy array or torch tensor, got {type(image).__name__}.")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: expected shape (H, W), (H, W, 1|3|4) or (1|3|4, H, W), got {tuple(image.shape)}.")
    if image.dtype == np.uint16:
        image = (image.astype(np.float64) / 257.0).astype(np.uint8)
    elif np.issubdtype(image.dtype, np.floating):
        image = _float_to_uint8(image)
    elif image.dtype != np.uint8:
        raise ValueError(f"image: unsupported dtype {image.dtype}; use uint8, uint16 or float in [0, 1].")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[..., :3])


#: Float pixels this far outside [0, 1] (resampling overshoot) are clipped rather than refused or rescaled.
FLOAT_TOLERANCE = 1e-3


def _float_to_uint8(image: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] to uint8; floats in 0..255 (a uint8 image cast to float) are scaled by 1/255 (warning).

    Raises:
        ValueError: NaN or inf pixels, or values outside [0, 255].
    """
    if not np.isfinite(image).all():
        raise ValueError("image: the float pixels hold NaN or inf; give finite values in [0, 1].")
    low, high = float(image.min()), float(image.max())
    if low < -FLOAT_TOLERANCE or high > 255.0 + FLOAT_TOLERANCE:
        raise ValueError(f"image: float pixels must lie in [0, 1] (or 0..255), got [{low:g}, {high:g}]; rescale them.")
    if high > 1.0 + FLOAT_TOLERANCE:
        warnings.warn(
            f"image: float pixels up to {high:g} are read as 0..255 and scaled by 1/255; pass floats in [0, 1] (or "
            "uint8) to silence this.",
            stacklevel=4,
        )
        image = image / 255.0
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _normalize(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(3, 1, 1)
    return (pixels - mean_t) / std_t


def longest_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Size ``(h, w)`` after resizing the longest side of ``(height, width)`` to ``size``."""
    scale = size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def mask_branch_input(image: np.ndarray, size: int, official: bool = False) -> tuple[torch.Tensor, tuple[int, int]]:
    """Resize the longest side to ``size``, normalise and pad.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        size: output side ``S``.
        official: the released code's rule: resize without ``reducing_gap`` and pad the raw pixels with 128 before
            normalising (padded pixels become ``(128 - mean) / std``); otherwise the padding is 0 after normalising.

    Returns:
        ``(3, S, S)`` float tensor and the valid (unpadded) ``(h, w)`` region.
    """
    h, w = longest_side_size(image.shape[0], image.shape[1], size)
    gap = None if official else REDUCING_GAP
    resized = torch.from_numpy(np.array(Image.fromarray(image).resize((w, h), Image.BILINEAR, reducing_gap=gap)))
    if official:
        raw = torch.full((3, size, size), OFFICIAL_PAD_VALUE)
        raw[:, :h, :w] = resized.permute(2, 0, 1).float()
        return _normalize(raw, MASK_PIXEL_MEAN, MASK_PIXEL_STD), (h, w)
    out = torch.zeros(3, size, size)
    out[:, :h, :w] = _normalize(resized.permute(2, 0, 1).float(), MASK_PIXEL_MEAN, MASK_PIXEL_STD)
    return out, (h, w)


def siglip_branch_input(image: np.ndarray, size: int, official: bool = False) -> torch.Tensor:
    """Plain resize to ``size x size`` and SigLIP normalisation: ``(H, W, 3)`` uint8 → ``(3, S, S)`` float.

    ``official``: resize without ``reducing_gap``, as the released code.
    """
    gap = None if official else REDUCING_GAP
    resized = np.array(Image.fromarray(image).resize((size, size), Image.BICUBIC, reducing_gap=gap))
    pixels = torch.from_numpy(resized).permute(2, 0, 1).float() / 255.0
    return _normalize(pixels, SIGLIP_PIXEL_MEAN, SIGLIP_PIXEL_STD)


class InputError(ValueError):
    """An input image, video or instruction cannot be used (unreadable, empty, unsupported type, mixed sizes)."""


class ReservedTokenError(InputError):
    """A user text contains one of the model's placeholder tokens (:data:`SPECIAL_TOKENS`)."""


class FrameProcessor:
    """Turns the frames of one video (or one image) into the model's two inputs, decoding each frame once.

    The Hugging Face image-processor equivalent shared by training data and the predictor: ``frames[i]`` is decoded
    on first use; :meth:`siglip_input` / :meth:`mask_input` give one frame's inputs and ``processor(indices)`` a
    stacked batch, prepared in a thread pool (Pillow releases the GIL).

    Args:
        frames: any indexable whose items are images accepted by :func:`to_rgb_uint8` (a
            :class:`~instructseg.video_io.VideoFrames`, a record's lazily decoded frames, a list of arrays).
        siglip_size: side ``S_c`` of the SigLIP input.
        mask_size: side ``S`` of the mask-branch input.
        cache: keep every decoded frame and prepared input (a training record whose queries share frames); off for
            long videos, where the caller keeps what it needs.
        workers: threads used by :meth:`__call__`.
        official: the released code's resizing and padding (``config.profile == "official"``; see
            :func:`mask_branch_input`).

    Attributes:
        hw: ``(H, W)`` of the frames (set by the first prepared frame; every frame must have it).
        valid_hw: the unpadded ``(h, w)`` of a frame inside the ``S x S`` mask-branch input.
    """

    def __init__(
        self,
        frames: Any,
        siglip_size: int,
        mask_size: int,
        cache: bool = False,
        workers: int = 1,
        official: bool = False,
    ) -> None:
        self.frames, self.siglip_size, self.mask_size, self.official = frames, siglip_size, mask_size, official
        self.cache, self.workers = cache, max(1, workers)
        self.hw: tuple[int, int] | None = None
        self.valid_hw: tuple[int, int] | None = None
        self._decoded: dict[int, np.ndarray] = {}
        self._siglip: dict[int, torch.Tensor] = {}
        self._mask: dict[int, torch.Tensor] = {}

    def decoded(self, index: int) -> np.ndarray:
        """Frame ``index`` as ``(H, W, 3)`` uint8 RGB.

        Raises:
            InputError: the frame's size differs from the first prepared frame's.
        """
        frame = self._decoded.get(index)
        if frame is None:
            frame = to_rgb_uint8(self.frames[index])
            if self.cache:
                self._decoded[index] = frame
        hw = frame.shape[:2]
        if self.hw is None:
            self.hw, self.valid_hw = hw, longest_side_size(*hw, self.mask_size)
        elif hw != self.hw:
            raise InputError(
                f"video frame {index} is {hw[1]}x{hw[0]}, the first frame is {self.hw[1]}x{self.hw[0]}; all frames "
                "must have the same size."
            )
        return frame

    def _cached(self, store: dict[int, torch.Tensor], index: int, make: Any) -> torch.Tensor:
        value = store.get(index)
        if value is None:
            value = make(self.decoded(index))
            if self.cache:
                store[index] = value
        return value

    def siglip_input(self, index: int) -> torch.Tensor:
        """``(3, S_c, S_c)`` SigLIP input of frame ``index``."""
        return self._cached(self._siglip, index, lambda f: siglip_branch_input(f, self.siglip_size, self.official))

    def mask_input(self, index: int) -> torch.Tensor:
        """``(3, S, S)`` mask-branch input of frame ``index`` (its valid region is :attr:`valid_hw`)."""
        return self._cached(self._mask, index, lambda f: mask_branch_input(f, self.mask_size, self.official)[0])

    def __call__(
        self, indices: Sequence[int], siglip: bool = True, mask: bool = True
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Stacked inputs of ``F = len(indices)`` frames: SigLIP ``(F, 3, S_c, S_c)`` and mask ``(F, 3, S, S)``.

        ``siglip`` / ``mask`` = False skips that branch (``None`` in its place).
        """

        def one(index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
            return (self.siglip_input(index) if siglip else None), (self.mask_input(index) if mask else None)

        indices = list(indices)
        if indices:
            self.decoded(indices[0])  # fixes hw before the pool runs, so a size mismatch names the right frame
        if self.workers > 1 and len(indices) > 1:
            with ThreadPoolExecutor(min(self.workers, len(indices))) as pool:
                prepared = list(pool.map(one, indices))
        else:
            prepared = [one(i) for i in indices]
        siglips, masks = zip(*prepared) if prepared else ((), ())
        return (torch.stack(siglips) if siglip else None), (torch.stack(masks) if mask else None)


def mask_branch_target(mask: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """Resize a ``(H, W)`` binary mask like :func:`mask_branch_input` (nearest) and pad: → ``(S, S)`` float 0/1."""
    mask_np = np.asarray(mask, dtype=np.uint8)
    h, w = longest_side_size(mask_np.shape[0], mask_np.shape[1], size)
    resized = np.asarray(Image.fromarray(mask_np * 255).resize((w, h), Image.NEAREST)) > 127
    out = torch.zeros(size, size)
    out[:h, :w] = torch.from_numpy(resized).float()
    return out


def postprocess_mask_logits(
    logits: torch.Tensor, valid_hw: tuple[int, int], padded_size: int, original_hw: tuple[int, int]
) -> torch.Tensor:
    """Mask logits at decoder resolution → logits at the original image resolution.

    Args:
        logits: ``(..., h, w)`` logits over the padded square input.
        valid_hw: unpadded region ``(h, w)`` in padded-input pixels.
        padded_size: side of the padded square input.
        original_hw: ``(H, W)`` of the original image.

    Returns:
        ``(..., H, W)`` logits.
    """
    lead = logits.shape[:-2]
    flat = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    flat = F.interpolate(flat, size=(padded_size, padded_size), mode="bilinear", align_corners=False)
    flat = flat[..., : valid_hw[0], : valid_hw[1]]
    flat = F.interpolate(flat, size=original_hw, mode="bilinear", align_corners=False)
    return flat.reshape(*lead, *original_hw)


def official_query_ranking(
    mask_logits: torch.Tensor,
    score_logits: torch.Tensor,
    valid_hw: tuple[int, int],
    padded_size: int,
    original_hw: tuple[int, int],
    chunk: int = 8,
) -> torch.Tensor:
    """The released code's ranking of the Q queries, computed at the original resolution.

    ``sigmoid(s_q) * sum(sigmoid(m_q) * [m_q > 0]) / (sum([m_q > 0]) + 1e-6)`` with ``m_q`` the query's mask logits
    after :func:`postprocess_mask_logits` (upsampled to the padded input, cropped, resized to ``(H, W)``); the
    released evaluation then takes the top-1 query with no threshold.

    Args:
        mask_logits: ``(B, Q, h, w)`` decoder mask logits.
        score_logits: ``(B, Q)`` score logits.
        valid_hw, padded_size, original_hw: as :func:`postprocess_mask_logits`.
        chunk: queries upsampled at a time (bounds memory: ``B x chunk x H x W`` floats).

    Returns:
        ``(B, Q)`` ranking scores.
    """
    parts = []
    for start in range(0, mask_logits.shape[1], chunk):
        logits = postprocess_mask_logits(mask_logits[:, start : start + chunk], valid_hw, padded_size, original_hw)
        fg = (logits > 0).float()
        parts.append((logits.sigmoid() * fg).flatten(2).sum(-1) / (fg.flatten(2).sum(-1) + 1e-6))
    return score_logits.float().sigmoid() * torch.cat(parts, dim=1)


@dataclass
class TokenizedQuery:
    """One tokenized prompt. All fields are 1-D with the same length ``L_text``."""

    input_ids: torch.Tensor
    instruction_mask: torch.Tensor
    labels: torch.Tensor


def build_prompt_parts(task: str, instruction: str, answer: str | None = None) -> tuple[str, str, str, str]:
    """Split the prompt into (prefix, instruction, answer text, suffix).

    The answer is ``answer`` for VQA and ``"<answer> [SEG]"`` (default answer: "Sure, the segmentation result is")
    for segmentation tasks; the suffix holds the ``<seg>`` query placeholder.
    """
    if task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {task!r}.")
    if not instruction or not instruction.strip():
        raise ValueError("instruction: the text instruction is empty; give a phrase or a question.")
    for name, text in (("instruction", instruction), ("answer", answer or "")):
        reserved = [t for t in SPECIAL_TOKENS if t in text]
        if reserved:
            raise ReservedTokenError(
                f"{name}: {text!r} contains the reserved placeholder(s) {reserved}, which the model expands into "
                "visual tokens; remove them from the text."
            )
    kind = "a video with reference frames" if task in VIDEO_TASKS else "an image"
    prefix = f"{SYSTEM_PROMPT} USER: This is {kind} {OVP_TOKEN}\n{IMAGE_TOKEN}\n{TASK_TEMPLATES[task]} Text Prompt:"
    if task == "vqa":
        if not answer:
            raise ValueError("answer: VQA samples need an answer text.")
        answer_text = f" {answer.strip()}"
    else:
        answer_text = f" {(answer or DEFAULT_SEG_ANSWER).strip()} {SEG_ANSWER_TOKEN}"
    return prefix, f" {instruction.strip()}", " ASSISTANT:" + answer_text, SEG_QUERY_TOKEN


def tokenize_query(
    tokenizer, task: str, instruction: str, answer: str | None = None, supervise_answer: bool = False
) -> TokenizedQuery:
    """Tokenize one query into the model's layout (see the module docstring).

    Args:
        tokenizer: a Hugging Face tokenizer that already holds :data:`SPECIAL_TOKENS`.
        task: one of :data:`TASKS`.
        instruction: the referring phrase or question.
        answer: optional answer text (reasoning explanations, VQA answers).
        supervise_answer: put the answer tokens (after "ASSISTANT:") into ``labels`` for the text loss.
    """
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer: missing special tokens {missing}; call add_instructseg_tokens(tokenizer) first.")
    prefix, instr, answer_text, suffix = build_prompt_parts(task, instruction, answer)
    assistant_ids = tokenizer(" ASSISTANT:", add_special_tokens=False)["input_ids"]
    pieces = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in (prefix, instr, answer_text, suffix)]
    answer_ids = pieces[2]
    n_prompt = len(assistant_ids) if answer_ids[: len(assistant_ids)] == assistant_ids else 0
    input_ids = [i for piece in pieces for i in piece]
    instruction_mask = [0] * len(pieces[0]) + [1] * len(pieces[1]) + [0] * (len(answer_ids) + len(pieces[3]))
    labels = [IGNORE_INDEX] * len(input_ids)
    if supervise_answer:
        start = len(pieces[0]) + len(pieces[1]) + n_prompt
        end = len(pieces[0]) + len(pieces[1]) + len(answer_ids)
        labels[start:end] = input_ids[start:end]
    return TokenizedQuery(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        instruction_mask=torch.tensor(instruction_mask, dtype=torch.bool),
        labels=torch.tensor(labels, dtype=torch.long),
    )


#: Segmentation-task names in the released code's prompts.
OFFICIAL_TASK_NAMES = {"res": "Referring", "reasonseg": "Reasoning", "rvos": "Referring", "reasonvos": "Reasoning"}
#: Marks the ``<refer>`` span (instruction tokens + ``[SEG]``) in :func:`official_prompt_chunks`.
REFER_SPAN = None


def official_prompt_chunks(task: str, explanation: str | None = None) -> list[str | None]:
    """The released code's ``conv_phi_v0`` prompt, cut where its tokenizer cuts (each string is tokenized alone).

    ``SYSTEM USER: <human> ASSISTANT: <gpt>`` with, for images, human = ``This is an image <temporal>\n<image>\n,
    please doing {Referring|Reasoning} Segmentation according to the following instruction:\n<refer>`` (ReasonSeg
    with an explanation: ``... instruction and explain why:\n<refer>``) and gpt = ``\nSure, the segmentation result
    is [SEG]<seg>`` (``<explanation>[SEG]``); videos say ``There are reference frames and key frame <temporal>\n<image>
    \n. Please doing ... instruction.\nThis is all the instruction: <refer>\n``. The trailing ``<|endoftext|>`` is
    masked out of the attention in the released code and left out here. Placeholders are our tokens (``<ovp>`` for
    ``<temporal>``); :data:`REFER_SPAN` (None) marks the span.
    """
    if task not in OFFICIAL_TASK_NAMES:
        raise ValueError(f"task: the official prompt exists for {sorted(OFFICIAL_TASK_NAMES)}, got {task!r}.")
    name = OFFICIAL_TASK_NAMES[task]
    if task in VIDEO_TASKS:
        head = f"{SYSTEM_PROMPT} USER: There are reference frames and key frame "
        ask = (
            f"\n. Please doing {name} Segmentation according to the following instruction.\n"
            "This is all the instruction: "
        )
        answer_head = "\n ASSISTANT: "
    else:
        head = f"{SYSTEM_PROMPT} USER: This is an image "
        why = " and explain why" if explanation else ""
        ask = f"\n, please doing {name} Segmentation according to the following instruction{why}:\n"
        answer_head = " ASSISTANT: "
    answer = f"{answer_head}\nSure, the segmentation result is {explanation or ''}{SEG_ANSWER_TOKEN}"
    return [head, OVP_TOKEN, "\n", IMAGE_TOKEN, ask, REFER_SPAN, answer, SEG_QUERY_TOKEN]


def tokenize_official_query(tokenizer, task: str, instruction: str, explanation: str | None = None) -> TokenizedQuery:
    """Tokenize one query exactly as the released code does (:func:`official_prompt_chunks`), for inference.

    The ``<refer>`` span is ``tokenizer.encode(instruction) + [SEG]``; ``instruction_mask`` covers those L + 1 tokens
    (they feed the OVP text input and the global / detailed text embeddings, as in the released code).
    """
    build_prompt_parts(task, instruction, explanation)  # the same checks: task, empty text, reserved placeholders
    input_ids: list[int] = []
    instruction_mask: list[int] = []
    for chunk in official_prompt_chunks(task, explanation):
        if chunk is REFER_SPAN:
            ids = tokenizer(instruction.strip(), add_special_tokens=False)["input_ids"]
            ids = ids + tokenizer.convert_tokens_to_ids([SEG_ANSWER_TOKEN])
        elif chunk in SPECIAL_TOKENS:
            ids = tokenizer.convert_tokens_to_ids([chunk])
        else:
            ids = tokenizer(chunk, add_special_tokens=False)["input_ids"]
        input_ids += ids
        instruction_mask += [int(chunk is REFER_SPAN)] * len(ids)
    return TokenizedQuery(
        input_ids=torch.tensor(input_ids, dtype=torch.long),
        instruction_mask=torch.tensor(instruction_mask, dtype=torch.bool),
        labels=torch.full((len(input_ids),), IGNORE_INDEX, dtype=torch.long),
    )


def add_instructseg_tokens(tokenizer) -> list[int]:
    """Add the placeholder / answer tokens (idempotent) and a pad token if missing; return their ids."""
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))


def collate_tokens(queries: Sequence[TokenizedQuery], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of :class:`TokenizedQuery` into ``(B, L_max)`` tensors plus ``attention_mask``."""
    length = max(q.input_ids.numel() for q in queries)
    batch = {
        "input_ids": torch.full((len(queries), length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(queries), length, dtype=torch.bool),
        "instruction_mask": torch.zeros(len(queries), length, dtype=torch.bool),
        "labels": torch.full((len(queries), length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, query in enumerate(queries):
        n = query.input_ids.numel()
        batch["input_ids"][row, :n] = query.input_ids
        batch["attention_mask"][row, :n] = True
        batch["instruction_mask"][row, :n] = query.instruction_mask
        batch["labels"][row, :n] = query.labels
    return batch
