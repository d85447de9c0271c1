"""`convert folder`: a folder made by hand (images, a frame folder, PNG masks, queries.jsonl / .csv) -> shards; then
fine-tuning the tiny preset on them and evaluating, end to end through the one `instructseg` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from datamodules.convert import ConvertError, FolderConverter
from instructseg.cli import main as cli_main

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

REPO = Path(__file__).resolve().parents[2]
SIZE = 64


def _scene(color: tuple[int, int, int], box: tuple[int, int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A noisy gray picture with one coloured rectangle, and the rectangle's mask."""
    rng = np.random.default_rng(seed)
    image = rng.integers(90, 140, (SIZE, SIZE, 3), dtype=np.uint8)
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = True
    image[mask] = color
    return image, mask


def make_folder(root: Path, csv: bool = False) -> dict[str, np.ndarray]:
    """The documented layout, written as a person would: 4 images, a 3-frame video, masks and instructions."""
    expected = {}
    lines = []
    for i in range(4):
        name = f"photo{i}"
        red, red_mask = _scene((220, 30, 30), (4 + i, 6, 30 + i, 28), seed=i)
        blue, blue_mask = _scene((30, 30, 220), (36, 34 - i, 60, 58), seed=10 + i)
        image = np.where(blue_mask[..., None], blue, red)
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        (root / "masks" / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(red_mask.astype(np.uint8) * 255).save(root / "masks" / name / "red.png")
        Image.fromarray(blue_mask.astype(np.uint8) * 255).save(root / "masks" / name / "blue.png")
        expected[name, "red"], expected[name, "blue"] = red_mask, blue_mask
        split = "val" if i == 3 else "train"
        lines += [
            {"name": name, "text": "the red rectangle", "objects": ["red"], "split": split},
            {"name": name, "text": "which shape looks like the sky?", "objects": ["blue"], "type": "reasoning",
             "split": split, "answer": "The blue one."},
            {"name": name, "text": "the green triangle", "split": split},
        ]  # fmt: skip
    frames = root / "videos" / "clip"
    frames.mkdir(parents=True)
    (root / "masks" / "clip" / "car").mkdir(parents=True)
    for t in range(3):
        image, mask = _scene((30, 200, 30), (10, 5 + 10 * t, 30, 25 + 10 * t), seed=20 + t)
        Image.fromarray(image).save(frames / f"{t}.jpg", quality=95)
        if t != 1:  # the car is not annotated on frame 1: absent there
            Image.fromarray(mask.astype(np.uint8) * 255).save(root / "masks" / "clip" / "car" / f"{t}.png")
        expected["clip", t] = mask if t != 1 else np.zeros_like(mask)
    for split in ("train", "val"):
        lines.append({"name": "clip", "text": "the green car moving right", "objects": ["car"], "split": split})
    if csv:
        with open(root / "queries.csv", "w") as file:
            file.write("name,text,objects,type,split,answer\n")
            for line in lines:
                objects = ";".join(line.get("objects", []))
                file.write(f'{line["name"]},"{line["text"]}",{objects},{line.get("type", "")},{line["split"]},'
                           f'"{line.get("answer", "")}"\n')  # fmt: skip
    else:
        (root / "queries.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return expected


@pytest.mark.parametrize("csv", [False, True])
def test_folder_to_records(tmp_path, convert, read_split, masks, csv):
    expected = make_folder(tmp_path / "mine", csv=csv)
    summary = convert("folder", tmp_path / "mine", tmp_path / "shards")
    assert summary["splits"]["train"]["records"] == 7 and summary["splits"]["val"]["records"] == 3
    train = read_split(tmp_path / "shards", "folder", "train")
    photos = [f"photo{i}-{task}" for i in range(3) for task in ("reasonseg", "res")]
    assert sorted(train) == ["clip", *photos]  # a reasoning query defaults to task reasonseg: its own record
    photo, reasoning = train["photo1-res"], train["photo1-reasonseg"]
    assert photo.task == "res" and reasoning.task == "reasonseg" and photo.meta["frame_names"] == ["photo1"]
    for record in (photo, reasoning):
        np.testing.assert_array_equal(masks(record, "red")[0], expected["photo1", "red"])
        np.testing.assert_array_equal(masks(record, "blue")[0], expected["photo1", "blue"])
    types = {q["text"]: (q["type"], q["object_ids"], q.get("answer")) for q in photo.queries + reasoning.queries}
    assert types == {
        "the red rectangle": ("referring", ["red"], None),
        "which shape looks like the sky?": ("reasoning", ["blue"], "The blue one."),
        "the green triangle": ("no_target", [], None),
    }
    clip = train["clip"]
    assert clip.task == "rvos" and clip.num_frames == 3 and clip.meta["frame_names"] == ["0", "1", "2"]
    for t, mask in enumerate(masks(clip, "car")):
        np.testing.assert_array_equal(mask, expected["clip", t])


def test_a_bad_line_names_the_file_and_line(tmp_path):
    root = tmp_path / "mine"
    make_folder(root)
    good = (root / "queries.jsonl").read_text()
    for bad, message in (
        ('{"name": "photo9", "text": "x"}', "queries.jsonl:13: no image images/photo9"),
        ('{"name": "photo0", "text": "x", "objects": ["cat"]}', "object 'cat' has no mask at"),
        ('{"name": "photo0", "text": "x", "task": "rvos"}', "'task' for the image 'photo0' must be one of"),
        ('{"name": "photo0", "text": "x", "type": "funny"}', "'type' must be one of"),
        ('{"name": "photo0", "text": ""}', "'text' must be a non-empty instruction"),
        ('{"name": "photo0", "txt": "x"}', "unknown field(s) ['txt']"),
        ("{not json", "queries.jsonl:13: not a JSON object"),
    ):
        lines = good.splitlines()
        (root / "queries.jsonl").write_text("\n".join([*lines[:12], bad, *lines[12:]]) + "\n")
        with pytest.raises(ConvertError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            FolderConverter(root)
    (root / "queries.jsonl").unlink()
    with pytest.raises(ConvertError, match="no instructions found; write queries.jsonl or queries.csv"):
        FolderConverter(root)


@pytest.mark.slow
def test_convert_fine_tune_evaluate_end_to_end(tmp_path, tiny_root, capsys):
    """The README walkthrough: convert a hand-made folder, fine-tune the tiny preset on it, evaluate the checkpoint."""
    make_folder(tmp_path / "mine")
    shards = tmp_path / "shards"
    assert cli_main(["convert", "folder", "--root", str(tmp_path / "mine"), "--out", str(shards), "--no-progress"]) == 0
    data = tmp_path / "my-data.yaml"
    data.write_text(yaml.safe_dump({"data": {"class_path": "datamodules.InstructSegDataModule", "init_args": {
        "train": [{"name": "mine", "urls": f"{shards}/folder-train-*.tar"}],
        "val": [{"name": "mine", "urls": f"{shards}/folder-val-*.tar"}],
        "batch_size": 2, "num_workers": 0, "epoch_length": 4}}}))  # fmt: skip
    run = tmp_path / "run"
    checkpoint = {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"dirpath": str(run / "ckpt"), "save_last": True}}  # fmt: skip
    fit = ["fit", "--config", str(REPO / "configs/model/tiny.yaml"), "--config", str(data),
           "--config", str(REPO / "configs/trainer/cpu.yaml"), "--model.pretrained_root", str(tiny_root),
           "--trainer.max_steps", "4", "--trainer.default_root_dir", str(run), "--trainer.logger", "false",
           "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "0",
           "--trainer.callbacks", json.dumps([checkpoint])]  # fmt: skip
    assert cli_main(fit) == 0
    ckpt = run / "ckpt/last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "eval"
    assert cli_main(["evaluate", "--model", str(ckpt), "--data", str(data), "--out", str(out), "--overlays", "1"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mine/res", "mine/reasonseg", "mine/rvos"} <= set(metrics)
    assert (
        metrics["mine/res"]["queries"] == 2
        and metrics["mine/reasonseg"]["queries"] == 1
        and 0.0 <= metrics["mine/res"]["cIoU"] <= 1.0
    )
    assert metrics["mine/rvos"]["queries"] == 1 and 0.0 <= metrics["mine/rvos"]["J&F"] <= 1.0
