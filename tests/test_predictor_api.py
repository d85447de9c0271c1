"""Predictor ergonomics: __call__, .to(), a batch of images, string dtypes, device checks, float images, and
training checkpoints loaded on "another machine" (pretrained_root, paths beside the checkpoint)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from instructseg.checkpoint import CHECKPOINT_PREFIX, CONFIG_KEY
from instructseg.cli import main as cli_main
from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.loading import PretrainedLoadError
from instructseg.predictor import ImagePrediction, InstructSegPredictor, VideoPrediction
from instructseg.video_io import InputError


@pytest.fixture(scope="module")
def predictor(tiny_config):
    torch.manual_seed(0)
    return InstructSegPredictor(InstructSeg.from_config(tiny_config))


def _image(seed: int = 0, h: int = 40, w: int = 56) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def same(a: ImagePrediction, b: ImagePrediction) -> bool:
    return a.score == pytest.approx(b.score, abs=1e-5) and np.array_equal(a.mask, b.mask)


def test_call_dispatches_on_the_input(predictor, tmp_path):
    image = _image()
    assert same(
        predictor(image, "the red square", threshold=0.0),
        predictor.predict_image(image, "the red square", threshold=0.0),
    )
    frames = [_image(1), _image(2), _image(3)]
    video = predictor(frames, "the red square", strategy="shared")
    assert isinstance(video, VideoPrediction) and video.masks.shape == (3, 40, 56)
    assert isinstance(predictor(np.stack(frames), "a"), VideoPrediction)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"{i:05d}.png")
    Image.fromarray(image).save(tmp_path / "one.png")
    assert isinstance(predictor(folder, "a"), VideoPrediction)
    assert isinstance(predictor(tmp_path / "one.png", "a"), ImagePrediction)


def test_a_batch_of_images_in_one_call(predictor):
    images = [_image(4), _image(5, 30, 20)]
    batch = predictor.predict_images(images, "the blue circle", threshold=0.0)
    assert len(batch) == 2 and batch[1].mask.shape == (30, 20)
    for image, result in zip(images, batch):
        assert same(result, predictor.predict_image(image, "the blue circle", threshold=0.0))
    several = predictor.predict_images(images, ["a", "b"])
    assert [len(r) for r in several] == [2, 2]
    with pytest.raises(InputError, match="list of images"):
        predictor.predict_images("photo.jpg", "a")


def test_string_dtypes_and_to(tiny_model):
    predictor = InstructSegPredictor(tiny_model, dtype="bfloat16")
    assert predictor.autocast_dtype is torch.bfloat16
    assert predictor.to(dtype="float32") is predictor and predictor.autocast_dtype is None
    assert predictor.to("cpu", torch.float16).autocast_dtype is torch.float16 and predictor.device.type == "cpu"
    assert predictor.to(dtype="torch.bfloat16").autocast_dtype is torch.bfloat16
    with pytest.raises(ValueError, match=r"dtype: expected one of .*got 'int8'"):
        InstructSegPredictor(tiny_model, dtype="int8")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only build's message")
def test_device_errors_are_one_clear_line(tiny_model):
    for device, message in (("cuda", "no usable CUDA device; use 'cpu'"), ("tpu9", "not a device name"),
                            ("meta", "unsupported device type")):  # fmt: skip
        with pytest.raises(ValueError, match=message) as err:
            InstructSegPredictor(tiny_model, device=device)
        assert "\n" not in str(err.value) and not isinstance(err.value, AssertionError)


def test_float_images(predictor, tmp_path):
    image = _image(6)
    reference = predictor.predict_image(image, "a", threshold=0.0)
    assert same(predictor.predict_image(image.astype(np.float32) / 255.0, "a", threshold=0.0), reference)
    with pytest.warns(UserWarning, match="read as 0..255"):
        scaled = predictor.predict_image(image.astype(np.float32), "a", threshold=0.0)
    assert same(scaled, reference)  # not clipped to white
    gray = image.mean(-1).astype(np.float32) / 255.0
    tiff = tmp_path / "float.tif"
    Image.fromarray(gray, mode="F").save(tiff)
    from_tiff = predictor.predict_image(tiff, "a", threshold=0.0)
    rounded = (np.clip(gray, 0, 1) * 255 + 0.5).astype(np.uint8)
    assert same(from_tiff, predictor.predict_image(rounded, "a", threshold=0.0))  # not black
    for bad, message in ((np.full((8, 8, 3), np.nan, np.float32), "NaN or inf"),
                         (np.full((8, 8, 3), np.inf, np.float32), "NaN or inf"),
                         (np.full((8, 8, 3), 300.0, np.float32), r"\[0, 1\]")):  # fmt: skip
        with pytest.raises(InputError, match=message), warnings.catch_warnings():
            warnings.simplefilter("error")
            predictor.predict_image(bad, "a")


def _write_checkpoint(model: InstructSeg, path, paths: dict[str, str]) -> None:
    """A training checkpoint in the format of InstructSegModule.on_save_checkpoint with the given pretrained paths."""
    config = model.config.to_dict()
    config["vision"]["siglip_path"], config["llm"]["path"], config["mask"]["mask2former_path"] = (
        paths["siglip"], paths["llm"], paths["mask2former"]
    )  # fmt: skip
    state = {CHECKPOINT_PREFIX + k: v.detach().clone() for k, v in model.trainable_parameters().items()}
    torch.save({"state_dict": state, CONFIG_KEY: config, "hyper_parameters": {}}, path)


def test_checkpoint_loads_on_another_machine(tiny_model, tiny_root, tmp_path, monkeypatch):
    reference = InstructSegPredictor(tiny_model).predict_image(_image(7), "a", threshold=0.0)
    gone = {part: str(tmp_path / "training-machine" / part) for part in ("siglip", "llm", "mask2former")}
    ckpt = tmp_path / "copied" / "last.ckpt"
    ckpt.parent.mkdir()
    _write_checkpoint(tiny_model, ckpt, gone)
    with pytest.raises(PretrainedLoadError, match="pretrained_root=") as err:
        InstructSegPredictor.from_pretrained(ckpt)
    assert "training-machine" in str(err.value)
    here = shutil.copytree(tiny_root, tmp_path / "this-machine")
    loaded = InstructSegPredictor.from_pretrained(ckpt, pretrained_root=here)
    assert loaded.config.llm.path == str(here / "llm")
    assert same(loaded.predict_image(_image(7), "a", threshold=0.0), reference)
    Image.fromarray(_image(7)).save(tmp_path / "photo.png")
    predict = ["predict", "--model", str(ckpt), "--input", str(tmp_path / "photo.png"), "--text", "a"]
    assert cli_main([*predict, "--out", str(tmp_path / "p1")]) == 2  # the training machine's parts are gone
    assert cli_main([*predict, "--out", str(tmp_path / "p2"), "--pretrained_root", str(here)]) == 0
    assert (tmp_path / "p2/predictions.json").is_file()

    # an older checkpoint with relative paths, run from another working directory: found beside the checkpoint
    shutil.copytree(tiny_root, ckpt.parent / "parts")
    _write_checkpoint(tiny_model, ckpt, {part: f"parts/{part}" for part in gone})
    monkeypatch.chdir(tmp_path)
    beside = InstructSegPredictor.from_pretrained(ckpt)
    assert beside.config.llm.path == str((ckpt.parent / "parts/llm").resolve())
    assert same(beside.predict_image(_image(7), "a", threshold=0.0), reference)


def test_candidates_and_probabilities(predictor):
    image = _image(8)
    plain = predictor.predict_image(image, "the red square", threshold=0.0)
    assert plain.candidates is None and plain.probabilities is None
    full = predictor.predict_image(image, "the red square", threshold=0.0, return_candidates=True,
                                   return_probabilities=True)  # fmt: skip
    num_queries = predictor.config.decoder.num_queries
    assert len(full.candidates) == num_queries and sorted(c.query for c in full.candidates) == list(range(num_queries))
    scores = [c.score for c in full.candidates]
    assert scores == sorted(scores, reverse=True) and 0.0 <= scores[-1] <= scores[0] <= 1.0
    assert full.probabilities.shape == (40, 56) and full.probabilities.dtype == np.float32
    assert 0.0 <= full.probabilities.min() and full.probabilities.max() <= 1.0
    np.testing.assert_array_equal(full.probabilities > 0.5, plain.mask)  # the selected query's map
    for candidate in full.candidates:
        np.testing.assert_array_equal(candidate.mask, candidate.probabilities > 0.5)
    assert same(full, plain)  # the extras change nothing else
    top = predictor.predict_image(image, "the red square", return_candidates=2)
    assert [c.query for c in top.candidates] == [c.query for c in full.candidates[:2]]
    assert top.candidates[0].probabilities is None
    absent = predictor.predict_image(image, "the red square", threshold=1.0, return_probabilities=True)
    assert absent.no_target and not absent.mask.any() and absent.probabilities is not None  # shown even so


def test_chunk_size_follows_the_available_memory(monkeypatch, tiny_config):
    import instructseg.predictor as predictor_module
    from instructseg.modeling.instructseg import InstructSeg
    from instructseg.predictor import MAX_CHUNK, InstructSegPredictor

    torch.manual_seed(0)
    predictor = InstructSegPredictor(InstructSeg.from_config(tiny_config))
    per_frame = predictor.frame_bytes()
    assert per_frame > 0
    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 10**12)
    assert predictor.auto_chunk_size() == MAX_CHUNK
    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 6 * per_frame)
    assert predictor.auto_chunk_size() == 3  # half of the available memory, per frame
    monkeypatch.setattr(predictor_module, "available_memory", lambda device: 0)
    assert predictor.auto_chunk_size() == 1
    full = InstructSeg.full_size_on_meta()
    predictor.model, predictor.config = full, full.config
    assert predictor.frame_bytes() > 100 * per_frame  # the paper-size model needs far more per frame
