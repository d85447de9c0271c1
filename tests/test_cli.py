"""The `instructseg` CLI: files written by predict / export / make-tiny, forwarding, and exit code 2 on bad input."""

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from instructseg.cli import main
from instructseg.modeling.instructseg import InstructSeg


@pytest.fixture(scope="module")
def model_dir(tiny_config, tmp_path_factory):
    torch.manual_seed(0)
    return InstructSeg.from_config(tiny_config).save_pretrained(tmp_path_factory.mktemp("cli") / "export")


def _image(path, h=30, w=44, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


def test_predict_image_writes_masks_overlay_and_summary(model_dir, tmp_path):
    image = _image(tmp_path / "photo.jpg")
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input", str(image), "--out", str(out), "--threshold", "0"]
    assert main([*argv, "--text+", "the red square", "--text+", "what could roll?"]) == 0
    for k in (0, 1):
        mask = np.asarray(Image.open(out / "Annotations" / "photo" / str(k) / "photo.png"))
        assert mask.shape == (30, 44) and set(np.unique(mask)) <= {0, 255}
        width, height = Image.open(out / "overlays" / f"photo_{k}.png").size
        assert width == 44 * 6 and height > 30 * 6  # enlarged to >= 256 px, caption strip above the frame
    summary = json.loads((out / "predictions.json").read_text())
    assert [r["text"] for r in summary["results"]] == ["the red square", "what could roll?"]
    assert summary["task"] == "res" and len(summary["results"][0]["frames"]) == 1


@pytest.mark.parametrize("kind", ["folder", "gif"])
def test_predict_video_writes_a_mask_per_frame_and_a_gif(model_dir, tmp_path, kind):
    folder = tmp_path / "clip"
    folder.mkdir()
    frames = [_image(folder / f"{i:03d}.png", h=24, w=32, seed=i) for i in range(5)]
    if kind == "gif":
        images = [Image.open(f) for f in frames]
        images[0].save(tmp_path / "clip.gif", save_all=True, append_images=images[1:])
    source = folder if kind == "folder" else tmp_path / "clip.gif"
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input", str(source), "--text", "the car", "--out", str(out)]
    assert main([*argv, "--strategy", "shared", "--chunk_size", "2"]) == 0
    masks = sorted((out / "Annotations" / "clip" / "0").iterdir())
    names = [f"{i:03d}.png" for i in range(5)] if kind == "folder" else [f"{i:05d}.png" for i in range(5)]
    assert [m.name for m in masks] == names
    assert Image.open(masks[0]).size == (32, 24)
    with Image.open(out / "overlays" / "clip_0.gif") as gif:
        assert gif.n_frames >= 1 and gif.width == 32 * 8 and gif.height > 24 * 8  # caption strip above
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["task"] == "rvos" and len(summary["results"][0]["frames"]) == 5


def test_export_from_checkpoint_and_make_tiny(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = InstructSeg.from_config(tiny_config)
    state = {"model." + k: v for k, v in model.trainable_parameters().items()}
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": state, "model_config": tiny_config.to_dict(), "hyper_parameters": {"lr": 4e-5}}, ckpt)
    (tmp_path / "metrics.json").write_text(json.dumps({"J&F": 0.61}))
    out = tmp_path / "export"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--metrics", str(tmp_path / "m.json")]) == 2
    assert (
        main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--metrics", str(tmp_path / "metrics.json")]) == 0
    )
    assert "| J&F | 0.6100 |" in (out / "README.md").read_text()
    InstructSeg.from_pretrained(out)
    assert main(["make-tiny", "--out", str(tmp_path / "tiny")]) == 0
    assert all((tmp_path / "tiny" / part / "config.json").is_file() for part in ("siglip", "llm", "mask2former"))


def test_training_commands_are_forwarded(monkeypatch):
    calls = []
    fake = types.ModuleType("instructseg.train_cli")
    fake.main = lambda argv: calls.append(argv)
    monkeypatch.setitem(sys.modules, "instructseg.train_cli", fake)
    monkeypatch.setattr("instructseg.train_cli", fake, raising=False)
    assert main(["fit", "--config", "configs/experiments/synthetic-tiny.yaml", "--trainer.max_steps", "3"]) == 0
    assert calls == [["fit", "--config", "configs/experiments/synthetic-tiny.yaml", "--trainer.max_steps", "3"]]


def _bad_inputs(tmp_path, model_dir):
    image = _image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "empty_video").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a garbage")
    old = tmp_path / "old_export"
    old.mkdir()
    for item in model_dir.iterdir():
        (old / item.name).symlink_to(item)
    config = json.loads((model_dir / "config.json").read_text())
    (old / "config.json").unlink()
    (old / "config.json").write_text(json.dumps({**config, "format_version": 0}))
    return {
        "missing image": (model_dir, tmp_path / "missing.png", "the car", "no file"),
        "corrupt image": (model_dir, tmp_path / "broken.png", "the car", "Cannot read"),
        "corrupt video": (model_dir, tmp_path / "broken.gif", "the car", "Cannot read"),
        "zero-frame video": (model_dir, tmp_path / "empty_video", "the car", "no image files"),
        "empty text": (model_dir, image, "  ", "empty"),
        "other export version": (old, image, "the car", "format_version 0"),
        "unsupported type": (model_dir, tmp_path / "notes.txt", "the car", "unsupported file type"),
        "missing model": (tmp_path / "nowhere", image, "the car", "No export directory"),
        "fps 0": (model_dir, image, "the car", "--fps", ["--fps", "0"]),
        "fps -3": (model_dir, image, "the car", "--fps", ["--fps", "-3"]),
        "threshold 50": (model_dir, image, "the car", "--threshold", ["--threshold", "50"]),
        "threshold nan": (model_dir, image, "the car", "threshold", ["--threshold", "nan"]),
        "device tpu9": (model_dir, image, "the car", "--device", ["--device", "tpu9"]),
        "device cuda on cpu torch": (model_dir, image, "the car", "CUDA", ["--device", "cuda"]),
        "dtype float8": (model_dir, image, "the car", "--dtype", ["--dtype", "float8"]),
        "chunk size 0": (model_dir, image, "the car", "--chunk_size", ["--chunk_size", "0"]),
        "image task on image": (model_dir, image, "the car", "--task", ["--task", "rvos"]),
        "unknown option": (model_dir, image, "the car", "unrecognized", ["--bogus", "1"]),
    }


def test_bad_inputs_exit_2_with_one_line(model_dir, tmp_path, capsys):
    import torch

    for case, (model, source, text, message, *extra) in _bad_inputs(tmp_path, model_dir).items():
        if case == "device cuda on cpu torch" and torch.cuda.is_available():
            continue
        argv = ["predict", "--model", str(model), "--input", str(source), "--text", text, "--out", str(tmp_path / "o")]
        assert main(argv + (extra[0] if extra else [])) == 2, case
        assert not (tmp_path / "o").exists(), case
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, (case, err)
        assert err.startswith("instructseg: error:") and message in err, (case, err)


@pytest.mark.parametrize("strategy", ["keyframe", "segments"])
def test_predict_exposes_the_long_video_strategies(model_dir, tmp_path, strategy):
    folder = tmp_path / "clip"
    folder.mkdir()
    for i in range(6):
        _image(folder / f"{i:03d}.png", h=24, w=32, seed=i)
    out = tmp_path / "out"
    argv = ["predict", "--model", str(model_dir), "--input", str(folder), "--text", "the car", "--out", str(out),
            "--strategy", strategy, "--max_objects", "2", "--relevance_stride", "2"]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "predictions.json").read_text())
    assert summary["strategy"] == strategy and len(summary["results"][0]["frames"]) == 6
    assert main([*argv[:-6], "--tracker", "sam3"]) == 2
