"""Why the tiny model does not follow instructions: ablations of the README main job, one variable at a time.

    python benchmarks/binding_ablations.py                       # every variant, 1000 steps each, 2 at a time
    python benchmarks/binding_ablations.py --variants main-job,mask-128 --steps 500 --jobs 1

Each variant trains the tiny preset on the synthetic benchmark exactly like ``scripts/main_job.sh`` (same configs,
seed and data) with one change, then validates once at the end (key frames at the mask-branch resolution, the
training loop's validation) and runs the query diagnosis of ``benchmarks/train_quality.py --diagnose``: the IoU of the
selected query vs the best of all queries, and the linear probes of what each side of the score knows. Runs go to
``--out/<variant>``; the stage-0 parts to ``--out/parts-<name>`` (the main job's ``checkpoints/tiny-pretrained`` is
reused when it is there). Expects the synthetic shards in ``data/synthetic`` (``scripts/main_job.sh`` writes them).
Every run uses one thread (``OMP_NUM_THREADS=1``): on two cores, two one-thread runs side by side train faster in
total than one two-thread run. Prints one Markdown table; progress goes to ``--out/<variant>.log``.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_quality import DIAGNOSIS, PROBES, TASKS, _fmt, diagnose, latest_metrics_csv, table  # noqa: E402

#: The probes of the two sides of the score (the pixel-feature probe is the same for every variant: see
#: ``train_quality.py --diagnose``).
SCORE_PROBES = PROBES[:2]
FIT_CONFIGS = ("model/tiny", "data/synthetic", "trainer/cpu", "experiments/synthetic-tiny")
MAIN_JOB_PARTS = Path("checkpoints/tiny-pretrained")


@dataclass
class Variant:
    """One ablation: what it changes, its extra ``instructseg fit`` arguments and its stage-0 parts.

    Attributes:
        change: the one change from the main job, in words.
        fit_args: extra ``instructseg fit`` arguments.
        parts: ``"stage0"`` (the main job's parts), ``"random"`` (no stage 0) or a key of :data:`STAGE0_VARIANTS`
            (stage 0 with other settings).
    """

    change: str
    fit_args: list[str] = field(default_factory=list)
    parts: str = "stage0"


VARIANTS: dict[str, Variant] = {
    "main-job": Variant("none (the README main job)"),
    "seed-1": Variant("another seed (what a rerun changes)", ["--seed_everything", "1"]),
    "no-stage0": Variant("random tiny parts instead of stage 0", parts="random"),
    "lora-all": Variant(
        "LoRA r 16 on every linear of the LLM",
        [
            "--model.config.llm.lora.target_modules",
            "[q_proj,k_proj,v_proj,dense,fc1,fc2]",
            "--model.config.llm.lora.r",
            "16",
            "--model.config.llm.lora.alpha",
            "32",
        ],
    ),
    "swin-trainable": Variant("Swin backbone trained too", ["--model.config.mask.freeze_backbone", "false"]),
    "class-cost": Variant(
        "matching cost includes the score (weight 2)", ["--model.config.loss.class_cost_weight", "2"]
    ),
    "queries-2": Variant("2 mask queries instead of 8", ["--model.config.decoder.num_queries", "2"]),
    "m2f-classes": Variant("stage-0 Mask2Former trained on colour x shape classes", parts="stage0-classes"),
    "stage0-point-mean": Variant(
        "stage-0 pointing from the instruction's mean hidden state, not its last token", parts="stage0-point-mean"
    ),
    "fusion-stride-8": Variant(
        "VMTF attends the stride-8 Swin map (8 x 8) instead of stride 32 (2 x 2)",
        ["--model.config.fusion.image_stride", "8"],
    ),
    "lr-3e-3": Variant("learning rate 3e-3 instead of 1e-3", ["--model.learning_rate", "0.003"]),
    "class-weight-10": Variant("class loss weight 10 instead of 2", ["--model.config.loss.class_weight", "10"]),
    "m2f-classes-size": Variant(
        "stage-0 Mask2Former trained on colour x shape x size classes", parts="stage0-classes-size"
    ),
    "m2f-classes-long": Variant("the same, 1500 stage-0 Mask2Former steps instead of 300", parts="stage0-classes-long"),
    "mask-128": Variant("mask branch at 128 px instead of 64", ["--model.config.mask.image_size", "128"]),
}


#: Stage-0 settings of the variants that change stage 0 (``Stage0Config`` fields).
STAGE0_VARIANTS: dict[str, dict] = {
    "stage0-classes": {"mask_labels": ("colour", "shape")},
    "stage0-point-mean": {"point_from": "mean"},
    "stage0-classes-size": {"mask_labels": ("colour", "shape", "size")},
    "stage0-classes-long": {"mask_labels": ("colour", "shape", "size"), "mask_steps": 1500},
}


def make_parts(kind: str, out: Path) -> Path:
    """The stage-0 parts of a variant (made once; the main job's parts are reused)."""
    from instructseg.pretrain import Stage0Config, pretrain_tiny
    from instructseg.tiny import save_tiny_pretrained

    if kind == "stage0":
        return pretrain_tiny(MAIN_JOB_PARTS)  # reuses the main job's parts when their stage0.json matches
    root = out / f"parts-{kind}"
    if kind == "random":
        return root if (root / "llm").is_dir() else save_tiny_pretrained(root)
    if kind in STAGE0_VARIANTS:
        return pretrain_tiny(root, config=Stage0Config(**STAGE0_VARIANTS[kind]))
    raise ValueError(f"unknown parts {kind!r}")


def fit_command(name: str, variant: Variant, parts: Path, steps: int, out: Path) -> list[str]:
    """``instructseg fit`` of the main job with the variant's change, validating once at the last step."""
    command = ["instructseg", "fit"]
    for config in FIT_CONFIGS:
        command += ["--config", f"configs/{config}.yaml"]
    command += ["--model.pretrained_root", str(parts), "--trainer.max_steps", str(steps)]
    command += ["--trainer.val_check_interval", str(steps), "--trainer.default_root_dir", str(out / name)]
    return command + variant.fit_args


def final_metrics(run: Path) -> dict[str, float]:
    """The last validation row (``val/<task>/cIoU``) and the elapsed time of a run's CSV log."""
    with open(latest_metrics_csv(run)) as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("time/elapsed_s")]
    if not rows:
        raise SystemExit(f"binding_ablations: {run} has no validation row; see {run}.log")
    return {k: float(v) for k, v in rows[-1].items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of every variant")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (one thread each)")
    parser.add_argument("--out", type=Path, default=Path("outputs/binding-ablations"), help="runs and logs")
    args = parser.parse_args()
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known: {', '.join(VARIANTS)}")
    if not Path("data/synthetic/val").is_dir():
        parser.error("data/synthetic/val is missing: run `instructseg synthetic --out data/synthetic` first.")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {kind: make_parts(kind, args.out) for kind in {VARIANTS[n].parts for n in names}}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    pending, running, seconds = list(names), {}, {}
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            log = open(args.out / f"{name}.log", "w")
            command = fit_command(name, VARIANTS[name], parts[VARIANTS[name].parts], args.steps, args.out)
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
            running[name] = (process, log, time.time())
            print(f"[ablations] started {name}: {' '.join(command)}", flush=True)
        time.sleep(5)
        for name, (process, log, start) in list(running.items()):
            if process.poll() is not None:
                del running[name]
                log.close()
                if process.returncode:
                    raise SystemExit(f"binding_ablations: {name} failed (exit {process.returncode}); see its log.")
                seconds[name] = time.time() - start
                print(f"[ablations] {name} done in {seconds[name] / 60:.1f} min", flush=True)
    rows = []
    for name in names:
        metrics = final_metrics(args.out / name)
        checkpoint = next((args.out / name).glob("lightning_logs/version_*/checkpoints/last.ckpt"))
        found = diagnose(checkpoint)
        rows.append(
            [name, VARIANTS[name].change, f"{metrics['time/elapsed_s'] / 60:.1f}"]
            + [_fmt(metrics.get(f"val/{t}/cIoU")) for t in TASKS]
            + [_fmt(found[k]) for k in (*DIAGNOSIS[:2], *SCORE_PROBES)]
        )
    print(f"\n{args.steps} steps each (training minutes with {args.jobs} run(s) side by side, one thread each):")
    header = ["variant", "change", "minutes", *(f"{t} cIoU" for t in TASKS), *DIAGNOSIS[:2], *SCORE_PROBES]
    print(table(header, rows))


if __name__ == "__main__":
    main()
