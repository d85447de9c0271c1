"""Stage 0: tiny "pretrained" parts trained on the synthetic benchmark's own domain, the way the real ones were made.

The real InstructSeg starts from a multimodal LLM (Mipha: SigLIP + projector + Phi-2 trained on captions and
instructions) and from a Mask2Former trained for segmentation. Random tiny towers carry none of that, so the tiny
model would have to learn "red", "triangle" or "moving up" from scratch through LoRA. Stage 0 gives the tiny preset
the same kind of start, in a few CPU minutes, on scenes from :mod:`datamodules.synthetic` (the training split's
scenes only; the validation split is never seen):

* **MLLM** — SigLIP + projector + Phi trained jointly as a small multimodal LM. The key frame's SigLIP tokens
  (hidden state ``select_layer``, as the segmentation model reads them; for videos a second frame's tokens follow)
  are placed in the segmentation model's own prompt, and the LM learns to answer
  - the record's instructions (referring phrases, reasoning questions, no-target questions) with the target's
    description: ``"the small red triangle at the top left moving up"`` or ``"there is no such object"``;
  - a caption request with every object's description (colour, size, shape, position, and for videos motion);

  with two auxiliary terms: every SigLIP token classifies the colour, shape and size of the object on its patch
  (or background), and a region-text contrastive *pointing* term makes the LM's hidden state at the end of the
  instruction pick the target's patches among the key frame's image positions (or a "no object" slot).
* **Mask2Former** — Swin + pixel decoder + transformer decoder trained for class-agnostic object masks (one class,
  "object") with ``transformers``' own Hungarian-matched Mask2Former loss; ``Stage0Config.mask_labels`` trains it on
  attribute classes instead (``("colour", "shape")``: 40 classes such as "red circle", the way the real one is
  trained on COCO's classes; ``benchmarks/binding_ablations.py`` measures it against the default).

The parts are saved with ``save_pretrained`` into ``root/{siglip,llm,mask2former}`` (the layout of
:func:`instructseg.tiny.save_tiny_pretrained`); the trained projector goes to ``root/siglip/projector.safetensors``,
which :class:`instructseg.modeling.vision.SiglipEncoder` loads when present (LLaVA-style MLLMs ship their
``mm_projector`` the same way). ``root/stage0.json`` records the settings and final losses; a directory whose
``stage0.json`` matches the requested settings is reused.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from instructseg.constants import VIDEO_TASKS
from instructseg.processing import SYSTEM_PROMPT, TASK_TEMPLATES, mask_branch_input, siglip_branch_input

STAGE0_FILE = "stage0.json"
#: Attributes the SigLIP tokens are also trained to classify, per patch (the object on the patch, Scene.patch_mask).
PATCH_ATTRIBUTES = ("colour", "shape", "size")
#: Share of a SigLIP patch an object must cover for the patch to be labelled with it (patch labels, pointing).
PATCH_COVERAGE = 0.25
PROJECTOR_FILE = "projector.safetensors"
#: 2: patch labels by coverage (PATCH_COVERAGE), not by patch centre; the instruction tokenized on its own
FORMAT_VERSION = 2
NO_OBJECT_ANSWER = "there is no such object"
CAPTION_REQUEST = "Describe every object."


@dataclass
class Stage0Config:
    """Settings of stage 0 (all of them are recorded in ``stage0.json``; changing one retrains).

    Attributes:
        scenes: synthetic training scenes generated once and sampled from (the main job's training split).
        mllm_steps: optimizer steps of the multimodal-LM pretraining.
        mllm_batch: examples per MLLM step.
        mllm_lr: peak AdamW learning rate of the MLLM (linear warmup, cosine decay).
        caption_share: share of MLLM examples that caption the whole scene (the rest answer an instruction).
        mask_steps: optimizer steps of the Mask2Former pretraining.
        mask_batch: images per Mask2Former step.
        mask_lr: peak AdamW learning rate of Mask2Former.
        mask_labels: object attributes whose combination is Mask2Former's class (``()``: one class, "object").
        point_from: where the pointing term reads the instruction (:class:`TinyMLLM`): ``"last"`` token or ``"mean"``
            of its tokens.
        select_layer: SigLIP hidden state the projector reads (the segmentation model's ``vision.select_layer``).
    """

    scenes: int = 2000
    mllm_steps: int = 400
    mllm_batch: int = 16
    mllm_lr: float = 2e-3
    caption_share: float = 0.3
    mask_steps: int = 300
    mask_batch: int = 8
    mask_lr: float = 1e-3
    mask_labels: tuple[str, ...] = ()
    point_from: str = "last"
    select_layer: int = -2


@dataclass
class Scene:
    """One synthetic record, decoded: frames, per-object visible masks and attributes, and its queries.

    Attributes:
        task: ``res`` | ``reasonseg`` | ``rvos`` | ``reasonvos``.
        frames: ``T`` arrays ``(H, W, 3)`` uint8.
        masks: object id → ``(T, H, W)`` bool visible masks.
        objects: object id → ``{"shape", "colour", "size", "motion"}``.
        queries: the record's queries (``text``, ``object_ids``, ``type``).
        values: attribute → its possible values (:data:`PATCH_ATTRIBUTES` of the benchmark), for patch labels.
    """

    task: str
    frames: list[np.ndarray]
    masks: dict[str, np.ndarray]
    objects: dict[str, dict[str, str]]
    queries: list[dict[str, Any]]
    values: dict[str, list[str]]

    def patch_labels(self, frame: int, grid: int) -> torch.Tensor:
        """``(grid * grid, len(PATCH_ATTRIBUTES))`` class of each attribute of the object on each patch
        (:meth:`patch_mask`); the background is class ``len(values[attribute])``."""
        labels = np.array([[len(self.values[a]) for a in PATCH_ATTRIBUTES]] * grid * grid)
        for object_id in self.masks:
            on = self._object_patches(object_id, frame, grid)
            labels[on] = [self.values[a].index(self.objects[object_id][a]) for a in PATCH_ATTRIBUTES]
        return torch.from_numpy(labels)

    def patch_classes(self) -> list[int]:
        """Classes of each :data:`PATCH_ATTRIBUTES` entry in :meth:`patch_labels` (its values + background)."""
        return [len(self.values[a]) + 1 for a in PATCH_ATTRIBUTES]

    def object_class(self, object_id: str, attributes: tuple[str, ...]) -> int:
        """Index of the object's class among :func:`mask_classes` ``(values, attributes)``."""
        index = 0
        for name in attributes:
            index = index * len(self.values[name]) + self.values[name].index(self.objects[object_id][name])
        return index

    def patch_mask(self, object_ids: list[str], frame: int, grid: int) -> torch.Tensor:
        """``(grid * grid,)`` bool, row-major: the patches of ``object_ids`` on ``frame``.

        A patch belongs to an object it covers by at least :data:`PATCH_COVERAGE` of its area; an object visible on
        ``frame`` that covers no patch that much owns its most-covered patch (a small star between four patch
        centres is still somewhere, not "no object").
        """
        on = np.zeros(grid * grid, dtype=bool)
        for object_id in object_ids:
            on |= self._object_patches(object_id, frame, grid)
        return torch.from_numpy(on)

    def _object_patches(self, object_id: str, frame: int, grid: int) -> np.ndarray:
        mask = self.masks[object_id][frame]
        h, w = mask.shape
        if h % grid or w % grid:
            raise ValueError(f"patch labels: a {h}x{w} frame does not split into {grid}x{grid} patches.")
        coverage = mask.reshape(grid, h // grid, grid, w // grid).mean((1, 3)).reshape(-1)
        on = coverage >= PATCH_COVERAGE
        if not on.any() and coverage.max() > 0:
            on = coverage == coverage.max()
        return on


def synthetic_scenes(count: int, seed: int, image_size: int, split: str = "train") -> list[Scene]:
    """The first ``count`` records of a synthetic split (same scenes as its shards), decoded; stage 0 reads the
    *training* split only (``split="val"`` is for held-out measurements, ``benchmarks/binding_ceiling.py``).

    ``datamodules`` is imported here only (the library does not depend on it otherwise): stage 0 is defined on the
    synthetic benchmark's domain.
    """
    from datamodules.rle import decode_rle
    from datamodules.synthetic import COLOURS, SHAPES, SIZES, SPLITS, TASK_CYCLE, generate_record

    values = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZES)}

    scenes = []
    for index in range(count):
        task = TASK_CYCLE[index % len(TASK_CYCLE)]
        meta, frames = generate_record(np.random.default_rng([seed, SPLITS[split], index]), task, image_size)
        objects = meta["objects"]
        masks = {i: np.stack([decode_rle(r) for r in o["masks"]]) for i, o in objects.items()}
        attrs = {i: {k: o[k] for k in ("shape", "colour", "size", "motion")} for i, o in objects.items()}
        scenes.append(Scene(task, list(frames), masks, attrs, meta["queries"], values))
    return scenes


def mask_classes(values: dict[str, list[str]], attributes: tuple[str, ...]) -> tuple[str, ...]:
    """Class names of the stage-0 Mask2Former: every combination of ``attributes``' values (``"red circle"``, ...),
    in the order of :meth:`Scene.object_class`; ``("object",)`` without attributes."""
    names = [""]
    for name in attributes:
        names = [f"{prefix} {value}".strip() for prefix in names for value in values[name]]
    return tuple(names) if attributes else ("object",)


def position_words(mask: np.ndarray) -> str:
    """Where a ``(H, W)`` mask's centre lies on a 3 x 3 grid: ``"at the top left"``, ``"in the middle"``, ..."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return "out of view"
    h, w = mask.shape
    row = ("top", "middle", "bottom")[min(int(3 * ys.mean() / h), 2)]
    col = ("left", "middle", "right")[min(int(3 * xs.mean() / w), 2)]
    if row == col == "middle":
        return "in the middle"
    if col == "middle":
        return f"at the {row}"
    if row == "middle":
        return f"on the {col}"
    return f"at the {row} {col}"


def describe(scene: Scene, object_id: str, frame: int) -> str:
    """``"the small red triangle at the top left"`` (+ ``" moving up"`` / ``" staying still"`` in videos)."""
    o = scene.objects[object_id]
    text = f"the {o['size']} {o['colour']} {o['shape']} {position_words(scene.masks[object_id][frame])}"
    if scene.task in VIDEO_TASKS:
        text += " staying still" if o["motion"] == "still" else f" moving {o['motion']}"
    return text


@dataclass
class MLLMExample:
    """One multimodal-LM example.

    Attributes:
        frames: the frames shown, key frame first.
        key_frame: the key frame's index in the scene.
        before: prompt text before the frames' tokens.
        after: prompt text after them, up to ``"Text Prompt:"``.
        instruction: the instruction (or caption request), tokenized on its own after ``after`` (with a leading
            space), as :func:`instructseg.processing.tokenize_query` does: its tokens are the instruction span.
        answer: the answer text (after ``" ASSISTANT:"``).
        patch_labels: ``(len(frames), N, len(PATCH_ATTRIBUTES))`` patch classes for the SigLIP tokens.
        target_patches: ``(N,)`` bool, the key-frame patches on the instruction's target (all False: no target), or
            ``None`` for a caption request.
    """

    frames: list[np.ndarray]
    key_frame: int
    before: str
    after: str
    instruction: str
    answer: str
    patch_labels: torch.Tensor
    target_patches: torch.Tensor | None


ASSISTANT = " ASSISTANT:"


def mllm_example(scene: Scene, rng: random.Random, caption_share: float, grid: int) -> MLLMExample:
    """An instruction (answered with its target's description) or a caption request on one scene.

    Images show their one frame; videos show a key frame and a second frame at least two frames away (motion is
    visible from the displacement). Positions are those of the key frame; ``grid`` is SigLIP's patches per side.
    """
    num_frames = len(scene.frames)
    key = rng.randrange(num_frames)
    shown = [key]
    if num_frames > 1:
        shown.append(rng.choice([t for t in range(num_frames) if abs(t - key) >= 2]))
    video = scene.task in VIDEO_TASKS
    kind = "a video with reference frames" if video else "an image"
    visible = [i for i in scene.objects if scene.masks[i][key].any()]
    labels = torch.stack([scene.patch_labels(t, grid) for t in shown])
    if rng.random() < caption_share or not scene.queries:
        template, text, target_patches = TASK_TEMPLATES["vqa"], CAPTION_REQUEST, None
        ordered = sorted(visible, key=lambda i: tuple(np.argwhere(scene.masks[i][key]).mean(0) // 16))
        answer = "; ".join(describe(scene, i, key) for i in ordered)
    else:
        query = rng.choice(scene.queries)
        template, text = TASK_TEMPLATES[scene.task], query["text"]
        targets = [i for i in query["object_ids"] if i in visible]
        answer = "; ".join(describe(scene, i, key) for i in targets) if targets else NO_OBJECT_ANSWER
        target_patches = scene.patch_mask(targets, key, grid)
    return MLLMExample(
        frames=[scene.frames[t] for t in shown],
        key_frame=key,
        before=f"{SYSTEM_PROMPT} USER: This is {kind}",
        after=f"\n{template} Text Prompt:",
        instruction=text,
        answer=f" {answer}",
        patch_labels=labels,
        target_patches=target_patches,
    )


class TinyMLLM(nn.Module):
    """SigLIP + 2-layer GELU projector + causal LM, trained as a multimodal LM (LLaVA-style).

    Three losses: next-token cross-entropy on the answers; per-patch attribute classification of the SigLIP tokens
    (the tokens the segmentation model reads); and *pointing*, a region-text contrastive term: from the LM's last
    hidden state at the instruction's last token (``point_from="last"``) or averaged over its tokens (``"mean"``, the
    segmentation model's global text embedding, which its VMTF and OVP read), a softmax over the key frame's image
    positions (plus a "no object" slot) must put its mass on the target's patches. ``benchmarks/binding_ceiling.py``
    compares the two; ``benchmarks/binding_ablations.py`` (variant ``stage0-point-mean``) what each gives the
    segmentation model. The heads are discarded after stage 0.

    Args:
        siglip: a ``SiglipVisionModel``.
        lm: a causal LM (``PhiForCausalLM``).
        select_layer: SigLIP hidden state fed to the projector.
        num_classes: classes per :data:`PATCH_ATTRIBUTES` entry (background included).
        point_from: ``"last"`` (the instruction's last hidden state) or ``"mean"`` (their mean).
    """

    def __init__(
        self, siglip: nn.Module, lm: nn.Module, select_layer: int, num_classes: list[int], point_from: str = "last"
    ) -> None:
        super().__init__()
        if point_from not in ("mean", "last"):
            raise ValueError(f"point_from: expected 'mean' or 'last', got {point_from!r}.")
        self.point_from = point_from
        from instructseg.modeling.vision import make_projector

        self.siglip, self.lm, self.select_layer = siglip, lm, select_layer
        width, dim = siglip.config.hidden_size, lm.config.hidden_size
        self.projector = make_projector(width, dim)
        self.patch_heads = nn.ModuleList(nn.Linear(width, n) for n in num_classes)
        self.point_query, self.point_key = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.no_object_key = nn.Parameter(torch.zeros(dim))

    def image_tokens(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F, 3, S, S)`` SigLIP inputs → hidden state ``select_layer`` ``(F, N, C)`` and tokens ``(F, N, D)``."""
        hidden = self.siglip(pixel_values, output_hidden_states=True).hidden_states[self.select_layer]
        return hidden, self.projector(hidden)

    def forward(self, examples: list[MLLMExample], tokenizer, image_size: int) -> dict[str, torch.Tensor]:
        """``{"loss", "lm", "patch", "point", "point_acc"}`` on a batch of examples."""
        frames = [f for ex in examples for f in ex.frames]
        hidden, tokens = self.image_tokens(torch.stack([siglip_branch_input(f, image_size) for f in frames]))
        patch_loss = patch_attribute_loss(self.patch_heads, hidden, torch.cat([ex.patch_labels for ex in examples]))
        embed = self.lm.get_input_embeddings()
        n = tokens.shape[1]
        rows, labels, points, start = [], [], [], 0
        for b, ex in enumerate(examples):
            texts = (ex.before, ex.after, f" {ex.instruction}", ASSISTANT)
            ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            answer = tokenizer(ex.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            image = tokens[start : start + len(ex.frames)].flatten(0, 1)  # (len(frames) * N, D)
            start += len(ex.frames)
            prompt = torch.cat([embed(torch.tensor(ids[0])), image, embed(torch.tensor(ids[1] + ids[2] + ids[3]))])
            rows.append(torch.cat([prompt, embed(torch.tensor(answer))]))
            labels.append(torch.tensor([-100] * len(prompt) + answer))
            if ex.target_patches is not None:
                end = len(prompt) - len(ids[3])  # the instruction is prompt[end - len(ids[2]) : end]
                span = slice(end - (len(ids[2]) if self.point_from == "mean" else 1), end)
                points.append((b, len(ids[0]), span, ex.target_patches))
        length = max(len(r) for r in rows)
        inputs = torch.stack([F.pad(r, (0, 0, 0, length - len(r))) for r in rows])
        mask = torch.stack([torch.arange(length) < len(r) for r in rows]).long()
        targets = torch.stack([F.pad(t, (0, length - len(t)), value=-100) for t in labels])
        out = self.lm(inputs_embeds=inputs, attention_mask=mask, labels=targets, output_hidden_states=True)
        last = out.hidden_states[-1]  # (B, S, D)
        pointed = [  # query: mean hidden state over `span` (all instruction tokens, or the last); keys: key frame
            pointing(
                self.point_query(last[b, span].mean(0)),
                self.point_key(last[b, first : first + n]),
                self.no_object_key,
                target,
            )
            for b, first, span, target in points
        ]
        point_loss, accuracy = mean_pointing(pointed, last)
        total = out.loss + patch_loss + point_loss
        return {"loss": total, "lm": out.loss, "patch": patch_loss, "point": point_loss, "point_acc": accuracy}


def patch_attribute_loss(heads: nn.ModuleList, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum over :data:`PATCH_ATTRIBUTES` of the cross-entropy of ``heads[a](hidden)`` ``(F, N, classes_a)`` against
    ``labels[..., a]`` (``labels``: ``(F, N, A)`` from :meth:`Scene.patch_labels`)."""
    return sum(F.cross_entropy(head(hidden).flatten(0, 1), labels[..., a].flatten()) for a, head in enumerate(heads))


def pointing(
    query: torch.Tensor, keys: torch.Tensor, no_object: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Region-text contrastive pointing of one example: a softmax over the key frame's ``N`` positions and a
    "no object" slot must put its mass on the target's patches (on the slot when ``target`` is all False).

    Args:
        query: ``(D,)`` the instruction's query vector.
        keys: ``(N, D)`` one key per key-frame patch; ``no_object``: ``(D,)`` the slot's key.
        target: ``(N,)`` bool, the target's patches (:meth:`Scene.patch_mask`).

    Returns:
        The loss (scalar) and whether the argmax lands on a wanted slot (0-dim float).
    """
    keys = torch.cat([keys, no_object[None]])  # (N + 1, D)
    logits = (query[None] @ keys.T)[0] / keys.shape[-1] ** 0.5  # (N + 1,)
    wanted = torch.cat([target, torch.tensor([not target.any()])])  # (N + 1,)
    return logits.logsumexp(0) - logits[wanted].logsumexp(0), wanted[logits.argmax()].float()


def mean_pointing(
    pointed: list[tuple[torch.Tensor, torch.Tensor]], like: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy of :func:`pointing` results (zeros shaped like ``like`` when there are none)."""
    if not pointed:
        return like.new_zeros(()), like.new_zeros(())
    losses, hits = zip(*pointed)
    return torch.stack(losses).mean(), torch.stack(hits).mean()


def log_line(line: str) -> None:
    """Print one progress line and flush it (so that it shows in a log file as it happens)."""
    print(line, flush=True)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return 0.5 * (1.0 + math.cos(math.pi * min((step - warmup) / max(total - warmup, 1), 1.0)))


def train_steps(
    name: str,
    params: list[nn.Parameter],
    steps: int,
    lr: float,
    loss_fn: Callable[[int], dict[str, torch.Tensor]],
    log: Callable[[str], None],
    every: int = 50,
) -> dict[str, float]:
    """AdamW with warmup + cosine on ``loss_fn(step)["loss"]``; every ``every`` steps a progress line with the
    running means (decay 0.9) of every entry of ``loss_fn``'s dict. Returns those running means at the end."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine(s, steps, max(steps // 20, 1)))
    start, running = time.perf_counter(), {}
    for step in range(steps):
        terms = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        for key, value in terms.items():
            value = float(value.detach())
            running[key] = value if key not in running else 0.9 * running[key] + 0.1 * value
        if (step + 1) % every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - start
            eta = elapsed / (step + 1) * (steps - step - 1)
            shown = " ".join(f"{k} {v:.3f}" for k, v in running.items())
            log(f"[stage 0] {name} step {step + 1}/{steps} {shown} ({elapsed:.0f} s, eta {eta:.0f} s)")
    return running


def pretrain_mllm(
    siglip: nn.Module,
    lm: nn.Module,
    tokenizer,
    scenes: list[Scene],
    config: Stage0Config,
    seed: int,
    log: Callable[[str], None] = log_line,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Train SigLIP + projector + LM on ``scenes`` in place; returns the projector's state dict and the final running
    means of the loss terms and the pointing accuracy."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = TinyMLLM(siglip, lm, config.select_layer, scenes[0].patch_classes(), config.point_from).train()
    image_size = siglip.config.image_size
    grid = image_size // siglip.config.patch_size

    def loss_fn(step: int) -> dict[str, torch.Tensor]:
        batch = [mllm_example(rng.choice(scenes), rng, config.caption_share, grid) for _ in range(config.mllm_batch)]
        return model(batch, tokenizer, image_size)

    final = train_steps("mllm", list(model.parameters()), config.mllm_steps, config.mllm_lr, loss_fn, log)
    model.eval()
    return {k: v.detach().contiguous() for k, v in model.projector.state_dict().items()}, final


def pretrain_mask2former(
    segmenter: nn.Module, scenes: list[Scene], config: Stage0Config, seed: int, log: Callable[[str], None] = log_line
) -> dict[str, float]:
    """Train a ``Mask2FormerForUniversalSegmentation`` on every object's mask and class, in place.

    A training image is a random frame of a random scene with the mask-branch preprocessing of the segmentation
    model; its targets are the visible masks of the objects on that frame, each with its class
    (:meth:`Scene.object_class` of ``config.mask_labels``).
    """
    torch.manual_seed(seed)
    rng = random.Random(seed + 1)
    size = segmenter.config.backbone_config.image_size
    segmenter.train()

    def sample() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        scene = rng.choice(scenes)
        t = rng.randrange(len(scene.frames))
        shown = [i for i, m in scene.masks.items() if m[t].any()]
        masks = torch.from_numpy(np.stack([scene.masks[i][t] for i in shown])).float()
        labels = torch.tensor([scene.object_class(i, config.mask_labels) for i in shown])
        return mask_branch_input(scene.frames[t], size)[0], masks, labels

    def loss_fn(step: int) -> dict[str, torch.Tensor]:
        pixels, masks, labels = zip(*(sample() for _ in range(config.mask_batch)))
        out = segmenter(pixel_values=torch.stack(pixels), mask_labels=list(masks), class_labels=list(labels))
        return {"loss": out.loss}

    final = train_steps("mask2former", list(segmenter.parameters()), config.mask_steps, config.mask_lr, loss_fn, log)
    segmenter.eval()
    return final


def stage0_settings(seed: int, image_size: int, config: Stage0Config) -> dict[str, Any]:
    """What ``stage0.json`` must hold for a directory to be reused."""
    settings = {"format": FORMAT_VERSION, "seed": seed, "image_size": image_size, "config": asdict(config)}
    return json.loads(json.dumps(settings))  # as stored (tuples become lists)


def is_valid_stage0(root: Path, settings: dict[str, Any]) -> bool:
    """Whether ``root`` holds a finished stage-0 run with exactly ``settings`` and loadable-looking parts."""
    from instructseg.modeling.loading import PretrainedLoadError, check_pretrained_dir

    marker = root / STAGE0_FILE
    if not marker.is_file():
        return False
    try:
        stored = json.loads(marker.read_text())
        for part in ("siglip", "llm", "mask2former"):
            check_pretrained_dir(str(root / part), part)
    except (ValueError, PretrainedLoadError):
        return False
    return stored.get("settings") == settings and (root / "siglip" / PROJECTOR_FILE).is_file()


def pretrain_tiny(
    root: Path,
    seed: int = 0,
    image_size: int = 64,
    config: Stage0Config | None = None,
    log: Callable[[str], None] = log_line,
) -> Path:
    """Run stage 0 into ``root`` (written to ``root.tmp`` and renamed at the end); reuse ``root`` if it is valid.

    Args:
        root: output directory ``root/{siglip,llm,mask2former}`` + ``stage0.json``.
        seed: seed of the scenes' order, the initial weights and every sampled batch.
        image_size: input side of SigLIP and Swin (the synthetic scenes are rendered at this size).
        config: stage-0 settings (default :class:`Stage0Config`).
        log: progress printer (one line per call).

    Returns:
        ``root``.
    """
    from safetensors.torch import save_file

    from instructseg.tiny import build_tiny_parts

    config = config or Stage0Config()
    root = Path(root)
    settings = stage0_settings(seed, image_size, config)
    if is_valid_stage0(root, settings):
        log(f"[stage 0] reusing the pretrained tiny parts in {root} ({STAGE0_FILE} matches)")
        return root
    start = time.perf_counter()
    log(f"[stage 0] generating {config.scenes} synthetic training scenes (seed {seed}, {image_size} px)")
    scenes = synthetic_scenes(config.scenes, seed, image_size)
    classes = mask_classes(scenes[0].values, config.mask_labels)
    parts = build_tiny_parts(image_size=image_size, seed=seed, pretrained_sizes=True, mask_classes=classes)
    projector, mllm_loss = pretrain_mllm(parts.siglip, parts.llm, parts.tokenizer, scenes, config, seed, log)
    mask_loss = pretrain_mask2former(parts.mask2former, scenes, config, seed, log)
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    parts.save(tmp)
    save_file(projector, str(tmp / "siglip" / PROJECTOR_FILE))
    seconds = time.perf_counter() - start
    summary = {"settings": settings, "final": {"mllm": mllm_loss, "mask2former": mask_loss}, "seconds": seconds}
    (tmp / STAGE0_FILE).write_text(json.dumps(summary, indent=2))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    log(
        f"[stage 0] wrote pretrained tiny parts to {root} in {seconds:.0f} s (final: mllm loss "
        f"{mllm_loss['loss']:.3f}, pointing accuracy {mllm_loss['point_acc']:.3f}; mask2former loss "
        f"{mask_loss['loss']:.3f})"
    )
    return root
