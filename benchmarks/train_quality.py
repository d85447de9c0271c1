"""Learning curve of the README main job: validation metrics against wall time, tiny preset on CPU.

    python benchmarks/train_quality.py                                     # train like the main job, validating often
    python benchmarks/train_quality.py --run outputs/main-job/train        # the curve of a past run (latest version)
    python benchmarks/train_quality.py --metrics-csv runs/.../metrics.csv  # the same, naming the CSV log
    python benchmarks/train_quality.py --diagnose runs/.../last.ckpt       # is it the masks or the selection?

Expects the tiny pretrained parts in checkpoints/tiny-pretrained and the synthetic shards in data/synthetic (the
first two steps of scripts/main_job.sh). Prints, as Markdown tables:

* the curve: one row per validation of the training loop (key frames at the mask-branch resolution): step, minutes,
  per-task cIoU, the ReasonVOS no-target accuracy;
* the query-blind baselines of the validation split (largest / first object, full image, empty mask), the floor a
  model that ignores the instruction reaches;
* the diagnosis of each checkpoint of the run: on validation key frames with a target, the mean IoU of the selected
  query, of the best of all Q queries (the "oracle": how good the masks are) and of the top raw score; and what
  each side of the score knows (a linear probe from the decoder query states to the colour of their own masks, from
  the classifier ``e`` to the target's colour, and from the pixel features the decoder reads to each cell's colour:
  held-out R², 0 = nothing).

and draws the curve, the baselines and the diagnosis in one PNG (``--plot``, default ``<run>/learning_curve.png``).
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F

TASKS = ("res", "reasonseg", "rvos", "reasonvos")
DIAGNOSIS = ("selected", "best query (oracle)", "top raw score")
#: Linear probes of :func:`diagnose` (held-out R²): does a decoder query know the colour of the mask it draws, does
#: the classifier ``e`` know the target's colour, and do the pixel features the decoder reads (the finest map of the
#: pixel decoder, stride 8) know the colour of each cell.
PROBES = ("query→own colour R²", "e→target colour R²", "pixel features→colour R²")
VAL_GLOB = "data/synthetic/val/*.tar"


def curve(metrics_csv: Path) -> list[dict[str, float]]:
    """Rows of a Lightning CSV log that carry validation metrics (``time/elapsed_s`` is logged with them)."""
    with open(metrics_csv) as handle:
        return [
            {k: float(v) for k, v in row.items() if v and (k.startswith(("val/", "time/")) or k == "step")}
            for row in csv.DictReader(handle)
            if row.get("time/elapsed_s")
        ]


def empty_curve_reason(metrics_csv: Path) -> str:
    """Why a run has no validation rows: its ``max_steps`` is below ``val_check_interval`` (read from the run's
    ``config.yaml`` when it has one)."""
    config = metrics_csv.parent / "config.yaml"
    steps = interval = None
    if config.is_file():
        text = config.read_text()
        found = {k: re.search(rf"^\s*{k}:\s*(\d+)\s*$", text, re.M) for k in ("max_steps", "val_check_interval")}
        steps, interval = (int(m.group(1)) if m else None for m in found.values())
    detail = f" (max_steps {steps}, val_check_interval {interval})" if steps is not None and interval else ""
    return (
        f"no validation ran in {metrics_csv}{detail}: the training loop validates every val_check_interval steps "
        "(configs/trainer/cpu.yaml: 500), so a run shorter than that has no learning curve. Rerun with "
        "--trainer.val_check_interval N where N <= max_steps, or evaluate its last.ckpt with eval.py."
    )


def linear_r2(x: torch.Tensor, y: torch.Tensor, train_share: float = 0.7, ridge: float = 0.1) -> float:
    """Held-out R² of a ridge regression ``x (n, d) → y (n, k)``: fitted on the first ``train_share`` of the rows,
    scored on the rest (1 = ``y`` is a linear function of ``x``, 0 = no better than the mean)."""
    n = len(x)
    cut = int(n * train_share)
    if cut < 2 or n - cut < 2:
        return float("nan")
    xb = torch.cat([x.double(), torch.ones(n, 1, dtype=torch.double)], 1)
    weights = torch.linalg.solve(
        xb[:cut].T @ xb[:cut] + ridge * torch.eye(xb.shape[1], dtype=torch.double), xb[:cut].T @ y[:cut].double()
    )
    residual = ((xb[cut:] @ weights - y[cut:]) ** 2).sum()
    total = ((y[cut:] - y[cut:].double().mean(0)) ** 2).sum()
    return float(1 - residual / total)


def region_colours(masks: torch.Tensor, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (normalised) colour under each mask: ``masks (B, M, h, w)`` 0/1, ``pixel_values (B, 3, S, S)`` →
    ``(B, M, 3)`` and the masks' areas ``(B, M)`` (in ``h x w`` cells)."""
    image = F.interpolate(pixel_values.float(), size=masks.shape[-2:], mode="area")  # (B, 3, h, w)
    area = masks.sum((2, 3))
    return torch.einsum("bmhw,bchw->bmc", masks, image) / area.clamp(min=1)[..., None], area


def query_ious(mask_logits: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """IoU of every query's mask (logit > 0, bilinearly resized to the target's side) with the target:
    ``(B, Q, h, w), (B, S, S) → (B, Q)``."""
    size = target_mask.shape[-1]
    masks = F.interpolate(mask_logits, size=(size, size), mode="bilinear") > 0  # (B, Q, S, S)
    target = target_mask[:, None] > 0.5
    return (masks & target).sum((2, 3)) / (masks | target).sum((2, 3)).clamp(min=1)


def key_frames(model, glob: str, batch_size: int):
    """The key-frame batches of the shards ``glob`` (every query once, in order) at ``model``'s input sizes: the
    training loop's validation loader."""
    from datamodules import InstructSegDataModule

    config = model.config
    data = InstructSegDataModule(
        val=[{"name": "val", "urls": glob}],
        tokenizer=model.tokenizer,
        mask_size=config.mask.image_size,
        clip_size=config.vision.image_size,
        num_ref_frames=config.num_reference_frames,
        batch_size=batch_size,
        num_workers=0,
    )
    data.setup("validate")
    return data.val_dataloader()


@torch.no_grad()
def diagnose(checkpoint: str | Path, val_glob: str = VAL_GLOB, batches: int = 12) -> dict[str, float]:
    """On validation key frames: mean IoU of the selected query, the best query and the top-score query (samples
    with a target), and what the two sides of the score ``<MLP(query), e>`` know — the held-out R² of a linear probe
    from each final decoder query state to the mean colour of its own mask, and from the VMTF classifier ``e`` to
    the mean colour of the target, and from the finest pixel-decoder map to each cell's colour (:func:`linear_r2`)."""
    from instructseg.checkpoint import load_training_checkpoint

    model = load_training_checkpoint(checkpoint).eval()
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        model.mask_decoder.score_proj.register_forward_hook(lambda m, i, o: seen.__setitem__("query", i[0])),
        model.fusion.register_forward_hook(lambda m, i, o: seen.__setitem__("e", o)),
        model.pixel_decoder.register_forward_hook(lambda m, i, o: seen.__setitem__("pixel", o[1][-1])),
    ]
    sums, count = dict.fromkeys(DIAGNOSIS, 0.0), 0
    probes: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {name: ([], []) for name in PROBES}
    for index, batch in enumerate(key_frames(model, val_glob, batch_size=16)):
        if index == batches:
            break
        prediction = model(batch).prediction
        iou = query_ious(prediction.mask_logits[-1], batch["target_mask"])  # (B, Q)
        target = batch["target_mask"][:, None] > 0.5
        rows, keep = torch.arange(len(iou)), batch["has_target"] & batch["has_mask"]
        picks = dict(
            zip(
                DIAGNOSIS,
                (model.select(prediction, threshold=0.0).query, iou.argmax(1), prediction.scores[-1].argmax(1)),
            )
        )
        for name, pick in picks.items():
            sums[name] += float(iou[rows, pick][keep].sum())
        count += int(keep.sum())
        colour, area = region_colours((prediction.mask_logits[-1] > 0).float(), batch["pixel_values"])
        probes[PROBES[0]][0].append(seen["query"].transpose(0, 1)[area > 0])  # (Q, B, C) → kept queries
        probes[PROBES[0]][1].append(colour[area > 0])
        colour, area = region_colours(target.float(), batch["pixel_values"])
        has = keep & (area[:, 0] > 0)
        probes[PROBES[1]][0].append(seen["e"][has])
        probes[PROBES[1]][1].append(colour[has, 0])
        cells = seen["pixel"]  # (B, C, h, w) at stride 8
        image = F.interpolate(batch["pixel_values"].float(), size=cells.shape[-2:], mode="area")  # (B, 3, h, w)
        probes[PROBES[2]][0].append(cells.permute(0, 2, 3, 1).flatten(0, 2))
        probes[PROBES[2]][1].append(image.permute(0, 2, 3, 1).flatten(0, 2))
    for hook in hooks:
        hook.remove()
    result = {name: value / max(count, 1) for name, value in sums.items()}
    result.update({name: linear_r2(torch.cat(x), torch.cat(y)) for name, (x, y) in probes.items()})
    return result


def checkpoint_steps(run_dir: Path) -> dict[int, Path]:
    """Global step → checkpoint for the step-named checkpoints of a run (``…-step=N.ckpt``) and ``last.ckpt``."""
    found: dict[int, Path] = {}
    for path in sorted((run_dir / "checkpoints").glob("*.ckpt")):
        match = re.search(r"step=(\d+)", path.name)
        if match:
            found[int(match.group(1))] = path
        elif path.name == "last.ckpt":
            step = int(torch.load(path, map_location="cpu", weights_only=True).get("global_step", -1))
            found.setdefault(step, path)
    return found


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _fmt(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


PALETTE = {
    "res": (31, 119, 180),
    "reasonseg": (255, 127, 14),
    "rvos": (44, 160, 44),
    "reasonvos": (214, 39, 40),
    "image baseline": (127, 127, 127),
    "video baseline": (80, 80, 80),
    "selected": (148, 103, 189),
    "best query (oracle)": (23, 190, 207),
}


def plot(
    path: Path,
    rows: list[dict[str, float]],
    baselines: dict[str, dict[str, float]] | None,
    diagnosis: dict[int, dict[str, float]],
    title: str,
) -> None:
    """Draw the per-task cIoU against minutes, the largest-object baselines (dashed) and the diagnosis (markers)."""
    from PIL import Image, ImageDraw

    width, height, left, right, top, bottom = 900, 520, 60, 210, 40, 50
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    minutes = [r["time/elapsed_s"] / 60 for r in rows]
    steps = [r["step"] + 1 for r in rows]
    x_max = max(minutes + [1e-6]) * 1.05

    def xy(minute: float, value: float) -> tuple[float, float]:
        return (left + minute / x_max * (width - left - right), height - bottom - value * (height - top - bottom))

    for tick in range(11):
        y = xy(0, tick / 10)[1]
        draw.line([(left, y), (width - right, y)], fill=(235, 235, 235))
        draw.text((left - 30, y - 6), f"{tick / 10:.1f}", fill="black")
    for tick in range(int(x_max) + 1):
        x = xy(tick, 0)[0]
        draw.text((x - 3, height - bottom + 6), str(tick), fill="black")
    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    draw.text((left, 12), title, fill="black")
    draw.text(((width - right) // 2, height - 22), "minutes of training", fill="black")
    legend = []
    for task in TASKS:
        points = [xy(m, r[f"val/{task}/cIoU"]) for m, r in zip(minutes, rows) if f"val/{task}/cIoU" in r]
        if points:
            draw.line(points, fill=PALETTE[task], width=3) if len(points) > 1 else None
            for x, y in points:
                draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=PALETTE[task])
            legend.append((f"{task} cIoU", PALETTE[task], "line"))
    for name, key in (("image baseline", "image_cIoU"), ("video baseline", "video_J")):
        if baselines:
            y = xy(0, baselines["largest"][key])[1]
            for x in range(left, width - right, 12):
                draw.line([(x, y), (x + 6, y)], fill=PALETTE[name], width=2)
            legend.append((f"largest object ({key})", PALETTE[name], "dash"))
    for step, result in diagnosis.items():
        minute = next((m for m, s in zip(minutes, steps) if s >= step), minutes[-1] if minutes else 0.0)
        for name in ("selected", "best query (oracle)"):
            x, y = xy(minute, result[name])
            draw.rectangle([x - 5, y - 5, x + 5, y + 5], outline=PALETTE[name], width=2)
    if diagnosis:
        legend += [(f"{n} IoU", PALETTE[n], "box") for n in ("selected", "best query (oracle)")]
    for i, (label, colour, kind) in enumerate(legend):
        x, y = width - right + 12, top + 8 + 20 * i
        if kind == "box":
            draw.rectangle([x + 6, y - 5, x + 16, y + 5], outline=colour, width=2)
        else:
            draw.line([(x, y), (x + 22, y)], fill=colour, width=3 if kind == "line" else 1)
        draw.text((x + 28, y - 6), label, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def report(metrics_csv: Path, plot_path: Path | None, val_dir: Path, diagnose_checkpoints: bool = True) -> None:
    """Print the curve, the baselines and the diagnosis of a run's checkpoints; draw the PNG."""
    rows = curve(metrics_csv)
    if rows:
        header = ["step", "minutes", *(f"{t} cIoU" for t in TASKS), "reasonvos no-target acc"]
        body = [
            [str(int(r["step"]) + 1), f"{r['time/elapsed_s'] / 60:.1f}"]
            + [_fmt(r.get(f"val/{t}/cIoU")) for t in TASKS]
            + [_fmt(r.get("val/reasonvos/no_target_acc"))]
            for r in rows
        ]
        print(table(header, body))
    else:
        print(empty_curve_reason(metrics_csv))
    baselines = None
    if val_dir.is_dir():
        from datamodules.synthetic import BASELINES, trivial_baselines

        baselines = trivial_baselines(val_dir)
        print("\nquery-blind baselines (validation split, every frame):")
        print(
            table(
                ["prediction", "image cIoU", "image gIoU", "video J"],
                [
                    [BASELINES[k], *(_fmt(v[m]) for m in ("image_cIoU", "image_gIoU", "video_J"))]
                    for k, v in baselines.items()
                ],
            )
        )
    diagnosis = {}
    if diagnose_checkpoints:
        for step, checkpoint in sorted(checkpoint_steps(metrics_csv.parent).items()):
            diagnosis[step] = diagnose(checkpoint, str(val_dir / "*.tar"))
        if diagnosis:
            print("\nvalidation key frames with a target: mean IoU by how the query is chosen; probes: held-out R²")
            print(
                table(
                    ["step", *DIAGNOSIS, *PROBES],
                    [[str(s), *(_fmt(d[n]) for n in (*DIAGNOSIS, *PROBES))] for s, d in diagnosis.items()],
                )
            )
    if plot_path is not None:
        plot(plot_path, rows, baselines, diagnosis, f"learning curve: {metrics_csv}")
        print(f"\nplot: {plot_path}")


def latest_metrics_csv(run: Path) -> Path:
    """``<run>/lightning_logs/version_<max>/metrics.csv`` (or ``<run>/metrics.csv``)."""
    if (run / "metrics.csv").is_file():
        return run / "metrics.csv"
    versions = sorted((run / "lightning_logs").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions or not (versions[-1] / "metrics.csv").is_file():
        raise SystemExit(f"train_quality: no lightning_logs/version_*/metrics.csv under {run}.")
    return versions[-1] / "metrics.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="a training run's default_root_dir: print its curve")
    parser.add_argument("--metrics-csv", type=Path, default=None, help="print the curve of an existing CSV log")
    parser.add_argument("--steps", type=int, default=1500, help="steps to train (without --run / --metrics-csv)")
    parser.add_argument("--val-every", type=int, default=250, help="validation interval when training")
    parser.add_argument("--out", default="outputs/train-quality", help="root dir of the run this script trains")
    parser.add_argument("--val-dir", type=Path, default=Path("data/synthetic/val"), help="validation shards")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default: next to the metrics CSV)")
    parser.add_argument("--no-diagnosis", action="store_true", help="skip the per-checkpoint query diagnosis")
    parser.add_argument(
        "--diagnose", default=None, help="only diagnose this checkpoint: selected vs best-query IoU, probes"
    )
    args = parser.parse_args()
    if args.diagnose:
        result = diagnose(args.diagnose, str(args.val_dir / "*.tar"))
        print(
            table(
                ["val key frames", "value (mean IoU by how the query is chosen; probe R²)"],
                [[k, _fmt(v)] for k, v in result.items()],
            )
        )
        return
    metrics_csv = args.metrics_csv or (latest_metrics_csv(args.run) if args.run else None)
    if metrics_csv is None:
        from instructseg.train_cli import main as train_main

        if args.steps < args.val_every:
            print(f"note: --steps {args.steps} < --val-every {args.val_every}: no validation will run.")
        cli = train_main(
            [
                "fit",
                "--config",
                "configs/model/tiny.yaml",
                "--config",
                "configs/data/synthetic.yaml",
                "--config",
                "configs/trainer/cpu.yaml",
                "--config",
                "configs/experiments/synthetic-tiny.yaml",
                "--trainer.max_steps",
                str(args.steps),
                "--trainer.val_check_interval",
                str(args.val_every),
                "--trainer.default_root_dir",
                args.out,
                "--trainer.enable_progress_bar",
                "false",
            ]
        )
        metrics_csv = Path(cli.trainer.logger.log_dir) / "metrics.csv"
    report(metrics_csv, args.plot or metrics_csv.parent / "learning_curve.png", args.val_dir, not args.no_diagnosis)


if __name__ == "__main__":
    main()
