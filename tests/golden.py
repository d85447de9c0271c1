"""Golden regression tensors: a seeded tiny model's stage outputs on a fixed batch.

``tests/test_golden.py`` compares the current code with ``tests/fixtures/tiny_golden.safetensors`` at 1e-6. A
refactor must leave them unchanged; a deliberate numerical change regenerates them with

    python tests/golden.py --write

which refuses to run on a dirty tree (so the stored tensors always belong to a commit).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

GOLDEN = Path(__file__).parent / "fixtures" / "tiny_golden.safetensors"
TEXTS = ["the small red triangle", "the circle moving up", "what could roll down a ramp"]
TASKS = ["res", "rvos", "reasonvos"]
NUM_FRAMES = [1, 3, 2]


def golden_outputs(tiny_root: Path) -> dict[str, torch.Tensor]:
    """Stage outputs of the seed-0 tiny model on a fixed mixed image/video batch (eval mode, fp32, 1 thread)."""
    from instructseg.config import InstructSegConfig
    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.processing import collate_tokens, tokenize_query

    torch.set_num_threads(1)
    config = InstructSegConfig.from_name("tiny").with_pretrained_root(tiny_root)
    torch.manual_seed(0)
    model = InstructSeg.from_config(config).eval()
    tok = model.tokenizer
    batch = collate_tokens([tokenize_query(tok, t, x) for x, t in zip(TEXTS, TASKS)], tok.pad_token_id)
    gen = torch.Generator().manual_seed(0)
    b, t = len(TEXTS), max(NUM_FRAMES)
    s_clip, s_mask = config.vision.image_size, config.mask.image_size
    batch["clip_pixel_values"] = torch.randn(b, t, 3, s_clip, s_clip, generator=gen)
    batch["clip_frame_mask"] = torch.arange(t)[None] < torch.tensor(NUM_FRAMES)[:, None]
    batch["pixel_values"] = torch.randn(b, 3, s_mask, s_mask, generator=gen)
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        feats = model.encode_frames(batch["clip_pixel_values"][1], batch["pixel_values"][1:2])
        out["encode.clip_tokens"] = feats.clip_tokens
        for i, level in enumerate(feats.pyramid):
            out[f"encode.pyramid.{i}"] = level
        co = model.co_decode(
            feats.clip_tokens[:1],
            feats.clip_tokens[None, 1:],
            batch["input_ids"][1:2],
            batch["attention_mask"][1:2],
            batch["instruction_mask"][1:2],
        )
        out["co_decode.mask_queries"] = co.mask_queries
        out["co_decode.text_global"] = co.text_global
        pred = model.decode_masks(feats, co)
        out["decode.mask_logits"] = pred.mask_logits[-1]
        out["decode.scores"] = pred.scores[-1]
        full = model(batch)
        out["forward.mask_logits"] = full.prediction.mask_logits[-1]
        out["forward.scores"] = full.prediction.scores[-1]
        sel = model.select(full.prediction)
        out["select.mask_logits"] = sel.mask_logits
        out["select.score"] = sel.score
    return {k: v.detach().float().contiguous() for k, v in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="overwrite the stored golden tensors")
    args = parser.parse_args()
    if not args.write:
        parser.error("pass --write to regenerate the golden tensors")
    repo = Path(__file__).resolve().parents[1]
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True)
    if dirty.stdout.strip():
        sys.exit("golden.py: the tree has uncommitted changes; commit them first so the tensors belong to a commit")
    from safetensors.torch import save_file

    from instructseg.tiny import save_tiny_pretrained

    with tempfile.TemporaryDirectory() as tmp:
        tensors = golden_outputs(save_tiny_pretrained(tmp))
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(GOLDEN))
    print(f"wrote {len(tensors)} tensors to {GOLDEN} ({GOLDEN.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
