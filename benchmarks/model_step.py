"""Forward + backward time and peak memory of one training step.

    python benchmarks/model_step.py                 # tiny preset on CPU (batch 1, 4, 8; video clip of 1 + R frames)
    python benchmarks/model_step.py --full-size     # + the paper-size preset on CUDA, random weights, bf16,
                                                    #   batch 1 and 4, with and without gradient checkpointing

Each configuration runs in a fresh process so that peak memory (CUDA: ``max_memory_allocated``; CPU: the growth of
the process's max RSS over the model build) belongs to it alone. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import tempfile
import time

import torch


def random_batch(model, batch_size: int, video: bool, device: str) -> dict:
    """Random frames + real prompts (tiny tokenizer; placeholder ids remapped to the model's for the full size)."""
    from instructseg.constants import SPECIAL_TOKENS
    from instructseg.processing import add_instructseg_tokens, collate_tokens, tokenize_query
    from instructseg.tiny import build_tiny_tokenizer

    tok = model.tokenizer or build_tiny_tokenizer()
    add_instructseg_tokens(tok)
    task = "rvos" if video else "res"
    texts = [
        "the small red triangle on the left",
        "the circle moving up",
        "the one coloured like a banana",
        "the square",
    ] * batch_size
    batch = collate_tokens([tokenize_query(tok, task, t) for t in texts[:batch_size]], tok.pad_token_id)
    for token, model_id in zip(SPECIAL_TOKENS, model.llm.new_token_ids.tolist()):
        batch["input_ids"][batch["input_ids"] == tok.convert_tokens_to_ids(token)] = model_id
    frames = 1 + (model.config.num_reference_frames if video else 0)
    s_clip, s_mask = model.config.vision.image_size, model.config.mask.image_size
    batch["clip_pixel_values"] = torch.randn(batch_size, frames, 3, s_clip, s_clip)
    batch["pixel_values"] = torch.randn(batch_size, 3, s_mask, s_mask)
    batch["target_mask"] = (torch.rand(batch_size, s_mask, s_mask) > 0.7).float()
    batch["has_target"] = torch.ones(batch_size, dtype=torch.bool)
    batch["has_mask"] = torch.ones(batch_size, dtype=torch.bool)
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def build(preset: str, device: str, checkpointing: bool, root: str):
    """The tiny preset from tiny pretrained parts, or the paper-size preset with random weights (frozen in bf16)."""
    from instructseg.config import InstructSegConfig
    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.tiny import save_tiny_pretrained

    if preset == "tiny":
        save_tiny_pretrained(root)
        return InstructSeg.from_config(InstructSegConfig.from_name("tiny").with_pretrained_root(root)).to(device)
    config = InstructSegConfig.from_name(preset, llm={"gradient_checkpointing": checkpointing})
    model = InstructSeg.full_size_on_meta(config).to_empty(device=device)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.02)
            if not param.requires_grad:
                param.data = param.data.to(torch.bfloat16)
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.zero_()
        model.llm.new_token_ids = torch.tensor(model.llm.special_ids, device=device)  # to_empty left it unset
    return model


def measure(preset: str, device: str, batch_size: int, video: bool, checkpointing: bool, steps: int, queue) -> None:
    from instructseg.losses import InstructSegCriterion

    torch.manual_seed(0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with tempfile.TemporaryDirectory() as root:
        model = build(preset, device, checkpointing, root)
        model.train()
        criterion = InstructSegCriterion(model.config.loss)
        optimizer = torch.optim.AdamW(model.trainable_parameters().values(), lr=1e-5)
        batch = random_batch(model, batch_size, video, device)
        autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")
        times = []
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for step in range(steps + 2):
            start = time.perf_counter()
            with autocast:
                out = model(batch)
                loss = criterion(out.prediction, batch["target_mask"], batch["has_target"], batch["has_mask"])["loss"]
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if device == "cuda":
                torch.cuda.synchronize()
            if step >= 2:  # warm-up steps excluded
                times.append(time.perf_counter() - start)
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024  # ru_maxrss is in KiB
    queue.put((statistics.median(times), peak))


def run(preset, device, batch_size, video, checkpointing, steps):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=measure, args=(preset, device, batch_size, video, checkpointing, steps, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full-size", action="store_true", help="also the paper-size preset on CUDA")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for batch_size in (1, 4, 8):
        for video in (False, True):
            rows.append(
                (
                    "tiny",
                    "cpu fp32",
                    batch_size,
                    video,
                    False,
                    *run("tiny", "cpu", batch_size, video, False, args.steps),
                )
            )
    if args.full_size:
        if not torch.cuda.is_available():
            print("--full-size needs a CUDA device; skipped.")
        else:
            for batch_size in (1, 4):
                for checkpointing in (False, True):
                    result = run("instructseg-phi2", "cuda", batch_size, True, checkpointing, args.steps)
                    rows.append(("instructseg-phi2", "cuda bf16", batch_size, True, checkpointing, *result))
    print("| preset | device | batch | clip | grad ckpt | s / step | samples / s | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, device, batch_size, video, ckpt, seconds, peak in rows:
        unit = "GiB (CUDA)" if device.startswith("cuda") else "MiB (RSS growth)"
        clip = "video 1+R" if video else "image"
        print(
            f"| {preset} | {device} | {batch_size} | {clip} | {ckpt} | {seconds:.3f} | {batch_size / seconds:.1f} "
            f"| {peak:.1f} {unit} |"
        )


if __name__ == "__main__":
    main()
