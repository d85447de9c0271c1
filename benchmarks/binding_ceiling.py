"""How fast does anything learn which object an instruction points at? Stage 0's pointing next to the simplest binder.

    python benchmarks/binding_ceiling.py                          # 400 steps of 16 examples (stage 0's MLLM budget)
    python benchmarks/binding_ceiling.py --steps 1000 --every 200 --pointers bag-of-words,mllm-mean

The tiny model follows an instruction only if something in it learns to *bind* the words ("the small red triangle",
"the object coloured like grass") to one of the scene's objects. This benchmark measures how many examples that
takes on the synthetic benchmark, for three pointers trained one after the other on the same example stream
(stage 0's instruction examples, :func:`instructseg.pretrain.mllm_example` without captions; same seed, steps, batch
and learning-rate schedule) and scored on the same held-out examples of the *validation* scenes:

* ``bag-of-words`` — the simplest binder there is: the mean of a trained embedding of the instruction's tokens
  against each SigLIP patch token, one bilinear form (plus stage 0's patch-attribute loss, so that SigLIP learns the
  same features). No language model: what a perfect learner of this data could at least reach.
* ``mllm-mean`` — stage 0's multimodal LM (:class:`instructseg.pretrain.TinyMLLM`: SigLIP + projector + Phi, with its
  LM, patch and pointing losses), pointing from the instruction's mean hidden state (what stage 0 trains and what
  the segmentation model's VMTF and OVP read).
* ``mllm-last`` — the same LM pointing from the last instruction token's hidden state.

Pointing accuracy: the argmax over the key frame's patches and a "no object" slot lands on the target (on the slot
for no-target queries), per task, on targets and no-target queries separately. The baseline row points at one of
the key frame's visible objects at random (1 / objects for a target, 0 for no target). One thread is enough (the
models are tiny); prints one Markdown table, with a row per evaluation.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_quality import TASKS, _fmt, table  # noqa: E402

from instructseg.pretrain import (  # noqa: E402
    MLLMExample,
    Scene,
    Stage0Config,
    TinyMLLM,
    mean_pointing,
    mllm_example,
    patch_attribute_loss,
    pointing,
    synthetic_scenes,
    train_steps,
)
from instructseg.processing import siglip_branch_input  # noqa: E402
from instructseg.tiny import build_tiny_parts  # noqa: E402

POINTERS = ("bag-of-words", "mllm-mean", "mllm-last")
COLUMNS = (*TASKS, "no target", "all")


class BagOfWordsPointer(nn.Module):
    """Instruction tokens (a bag of words) against SigLIP patch tokens, one bilinear form.

    Args:
        siglip: a ``SiglipVisionModel`` (trained here, as in stage 0).
        vocab_size: tokenizer size.
        select_layer: SigLIP hidden state read.
        num_classes: classes per :data:`instructseg.pretrain.PATCH_ATTRIBUTES` entry (background included).
        dim: width of the bilinear form.
    """

    def __init__(self, siglip: nn.Module, vocab_size: int, select_layer: int, num_classes: list[int], dim: int = 64):
        super().__init__()
        width = siglip.config.hidden_size
        self.siglip, self.select_layer = siglip, select_layer
        self.words = nn.Embedding(vocab_size, dim)
        self.patch_heads = nn.ModuleList(nn.Linear(width, n) for n in num_classes)
        self.point_query, self.point_key = nn.Linear(dim, dim), nn.Linear(width, dim)
        self.no_object_key = nn.Parameter(torch.zeros(dim))

    def forward(self, examples: list[MLLMExample], tokenizer, image_size: int) -> dict[str, torch.Tensor]:
        """``{"loss", "patch", "point", "point_acc"}``; every example is an instruction (``target_patches`` set)."""
        pixels = torch.stack([siglip_branch_input(ex.frames[0], image_size) for ex in examples])
        hidden = self.siglip(pixels, output_hidden_states=True).hidden_states[self.select_layer]  # (B, N, C)
        patch = patch_attribute_loss(self.patch_heads, hidden, torch.stack([ex.patch_labels[0] for ex in examples]))
        pointed = []
        for b, ex in enumerate(examples):
            ids = torch.tensor(tokenizer(f" {ex.instruction}", add_special_tokens=False)["input_ids"])
            query = self.point_query(self.words(ids).mean(0))  # (dim,)
            pointed.append(pointing(query, self.point_key(hidden[b]), self.no_object_key, ex.target_patches))
        point, accuracy = mean_pointing(pointed, hidden)
        return {"loss": patch + point, "patch": patch, "point": point, "point_acc": accuracy}


def instruction_examples(scenes: list[Scene], per_scene: int, grid: int, seed: int) -> list[MLLMExample]:
    """``per_scene`` instruction examples (no captions) of every scene, drawn once."""
    rng = random.Random(seed)
    return [mllm_example(scene, rng, 0.0, grid) for scene in scenes for _ in range(per_scene)]


def _task_of(examples: list[MLLMExample], scenes: list[Scene], per_scene: int) -> list[str]:
    """Column of each example: ``"no target"`` or its scene's task."""
    return [
        "no target" if not ex.target_patches.any() else scenes[i // per_scene].task for i, ex in enumerate(examples)
    ]


def by_column(hits: list[float], columns: list[str]) -> dict[str, float]:
    """Mean of ``hits`` per :data:`COLUMNS` entry (``nan`` where a column has no example)."""
    out = {
        c: float(np.mean([h for h, k in zip(hits, columns) if k == c])) if c in columns else float("nan")
        for c in COLUMNS[:-1]
    }
    out["all"] = float(np.mean(hits))
    return out


def random_object_hits(examples: list[MLLMExample], scenes: list[Scene], per_scene: int) -> list[float]:
    """Chance of hitting the target by pointing at one of the key frame's visible objects at random."""
    hits = []
    for i, ex in enumerate(examples):
        visible = sum(bool(m[ex.key_frame].any()) for m in scenes[i // per_scene].masks.values())
        hits.append(1.0 / visible if ex.target_patches.any() and visible else 0.0)
    return hits


@torch.no_grad()
def held_out_hits(model: nn.Module, examples: list[MLLMExample], tokenizer, image_size: int) -> list[float]:
    """Pointing hit (0 / 1) of every example, one at a time, in eval mode (the model is put back in train mode)."""
    model.eval()
    hits = [float(model([ex], tokenizer, image_size)["point_acc"]) for ex in examples]
    model.train()
    return hits


def build_pointer(name: str, seed: int, num_classes: list[int]) -> tuple[nn.Module, object]:
    """A fresh pointer and its tokenizer, from the tiny parts stage 0 starts from (``seed``)."""
    parts = build_tiny_parts(seed=seed, pretrained_sizes=True)
    select_layer = Stage0Config().select_layer
    if name == "bag-of-words":
        return BagOfWordsPointer(parts.siglip, len(parts.tokenizer), select_layer, num_classes), parts.tokenizer
    return TinyMLLM(parts.siglip, parts.llm, select_layer, num_classes, point_from=name.split("-")[1]), parts.tokenizer


def run_pointer(
    name: str,
    train: list[Scene],
    val_examples: list[MLLMExample],
    columns: list[str],
    args: argparse.Namespace,
) -> list[list[str]]:
    """Train one pointer for ``args.steps`` and return a table row per evaluation (every ``args.every`` steps)."""
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    model, tokenizer = build_pointer(name, args.seed, train[0].patch_classes())
    image_size, grid = model.siglip.config.image_size, model.siglip.config.image_size // model.siglip.config.patch_size
    rows, start = [], time.perf_counter()

    def evaluate(step: int) -> None:
        scores = by_column(held_out_hits(model, val_examples, tokenizer, image_size), columns)
        minutes = (time.perf_counter() - start) / 60
        rows.append([name, str(step), f"{minutes:.1f}", *(_fmt(scores[c]) for c in COLUMNS)])
        print(f"[binding ceiling] {name} step {step}: held-out pointing {scores['all']:.3f}", flush=True)

    def loss_fn(step: int) -> dict[str, torch.Tensor]:
        if step and step % args.every == 0:
            evaluate(step)
        batch = [mllm_example(rng.choice(train), rng, 0.0, grid) for _ in range(args.batch)]
        return model(batch, tokenizer, image_size)

    train_steps(name, list(model.parameters()), args.steps, args.lr, loss_fn, lambda line: print(line, flush=True))
    evaluate(args.steps)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400, help="optimizer steps per pointer (stage 0: 400)")
    parser.add_argument("--batch", type=int, default=16, help="examples per step (stage 0: 16)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (stage 0: 2e-3)")
    parser.add_argument("--every", type=int, default=200, help="evaluate every this many steps")
    parser.add_argument("--scenes", type=int, default=2000, help="training scenes (stage 0: 2000)")
    parser.add_argument("--val-scenes", type=int, default=200, help="held-out validation scenes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pointers", default=",".join(POINTERS), help=f"comma-separated subset of {POINTERS}")
    args = parser.parse_args(argv)
    pointers = [p.strip() for p in args.pointers.split(",") if p.strip()]
    unknown = sorted(set(pointers) - set(POINTERS))
    if unknown or not pointers:
        parser.error(f"--pointers: unknown {unknown}; choose from {', '.join(POINTERS)}.")
    if args.steps < 1 or args.every < 1:
        parser.error("--steps and --every must be at least 1.")

    train = synthetic_scenes(args.scenes, args.seed, 64)
    val = synthetic_scenes(args.val_scenes, args.seed, 64, split="val")
    per_scene, grid = 2, 8
    val_examples = instruction_examples(val, per_scene, grid, args.seed + 1)
    columns = _task_of(val_examples, val, per_scene)
    baseline = by_column(random_object_hits(val_examples, val, per_scene), columns)
    rows = [["random visible object", "–", "–", *(_fmt(baseline[c]) for c in COLUMNS)]]
    for name in pointers:
        rows += run_pointer(name, train, val_examples, columns, args)
    counts = ", ".join(f"{c} {columns.count(c)}" for c in COLUMNS[:-1])
    print(f"\nheld-out pointing accuracy on {len(val_examples)} examples of {len(val)} validation scenes ({counts}):")
    print(table(["pointer", "step", "minutes", *COLUMNS], rows))


if __name__ == "__main__":
    main()
