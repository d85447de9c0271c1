"""InstructSegPredictor on images and videos: sizes, no-target flags, encode-once caching, strategy equality, inputs."""

import contextlib
import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from instructseg.modeling.instructseg import InstructSeg
from instructseg.predictor import (
    ImagePrediction,
    InstructSegPredictor,
    VideoPrediction,
)
from instructseg.video_io import InputError, open_video


@pytest.fixture(scope="module")
def predictor(tiny_config):
    torch.manual_seed(0)
    return InstructSegPredictor(InstructSeg.from_config(tiny_config))


def _frames(n: int, h: int = 40, w: int = 56, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n)]


@contextlib.contextmanager
def count_encoded_frames(model: InstructSeg):
    """Counts the frames that go through the SigLIP and Swin towers (forward hooks on the frozen towers)."""
    counts = {"siglip": 0, "swin": 0}

    def hook(name):
        def count(module, args, kwargs, output):
            counts[name] += (args[0] if args else kwargs["pixel_values"]).shape[0]

        return count

    handles = [
        model.siglip.tower.register_forward_hook(hook("siglip"), with_kwargs=True),
        model.swin.tower.register_forward_hook(hook("swin"), with_kwargs=True),
    ]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


@pytest.fixture
def encode_counter(predictor):
    with count_encoded_frames(predictor.model) as counts:
        yield counts


@pytest.mark.parametrize(
    "make",
    [
        lambda a: a,
        lambda a: Image.fromarray(a),
        lambda a: torch.from_numpy(a).permute(2, 0, 1).float() / 255,
        lambda a: Image.fromarray(a[..., 0]),  # grayscale
        lambda a: Image.fromarray(np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])),  # RGBA
        lambda a: a.astype(np.uint16) * 257,  # 16-bit
    ],
    ids=["numpy", "pil", "torch", "gray", "rgba", "uint16"],
)
def test_image_mask_has_original_size(predictor, make):
    image = _frames(1, h=37, w=71)[0]
    pred = predictor.predict_image(make(image), "the red square")
    assert isinstance(pred, ImagePrediction)
    assert pred.mask.shape == (37, 71) and pred.mask.dtype == bool
    assert 0.0 <= pred.score <= 1.0 and pred.no_target == (pred.score < predictor.config.decoder.no_target_threshold)


def test_image_from_path_and_several_instructions(predictor, tmp_path, encode_counter):
    path = tmp_path / "photo.png"
    Image.fromarray(_frames(1, h=64, w=30)[0]).save(path)
    preds = predictor.predict_image(path, ["the red square", "what could roll?", "the blue circle"], threshold=0.0)
    assert len(preds) == 3 and all(p.mask.shape == (64, 30) and not p.no_target for p in preds)
    assert encode_counter == {"siglip": 1, "swin": 1}


def test_threshold_one_gives_no_target_and_empty_masks(predictor):
    image_pred = predictor.predict_image(_frames(1)[0], "the red square", threshold=1.0)
    assert image_pred.no_target and not image_pred.mask.any()
    video_pred = predictor.predict_video(_frames(3), "the red square", threshold=1.0)
    assert video_pred.no_target.all() and not video_pred.masks.any()


@pytest.mark.parametrize("strategy, siglip_frames", [("per_frame", 6), ("shared", 3)])
def test_video_frames_are_encoded_once_for_all_instructions(predictor, encode_counter, strategy, siglip_frames):
    """6 frames, 2 instructions: every frame goes through Swin once; SigLIP sees each frame (shared: 1 + R) once."""
    preds = predictor.predict_video(_frames(6), ["the red square", "the circle moving up"], strategy, chunk_size=4)
    assert len(preds) == 2 and all(isinstance(p, VideoPrediction) and p.masks.shape == (6, 40, 56) for p in preds)
    assert encode_counter == {"siglip": siglip_frames, "swin": 6}


@pytest.mark.parametrize("num_frames, num_ref, chunk", [(5, 2, 2), (3, 4, 2), (1, 2, 16)])
def test_per_frame_with_caching_equals_the_naive_loop(tiny_config, num_frames, num_ref, chunk):
    """Same masks and scores as the reference loop, which re-encodes the 1 + R frames of every key frame."""
    torch.manual_seed(0)
    config = dataclasses.replace(tiny_config, num_reference_frames=num_ref)
    predictor = InstructSegPredictor(InstructSeg.from_config(config))
    video = _frames(num_frames, h=33, w=47, seed=1)
    cached = predictor.predict_video(video, "what is moving left?", "per_frame", chunk_size=chunk, threshold=0.0)
    with count_encoded_frames(predictor.model) as counts:
        naive = predictor.predict_video(video, "what is moving left?", "naive", threshold=0.0)
    assert counts == {"siglip": num_frames * (1 + num_ref), "swin": num_frames}
    assert cached.masks.any() and np.array_equal(cached.masks, naive.masks)
    np.testing.assert_allclose(cached.scores, naive.scores, atol=1e-5, rtol=0)


def test_shared_strategy_returns_a_mask_per_frame(predictor):
    pred = predictor.predict_video(_frames(5, h=24, w=90), "the red square", strategy="shared", chunk_size=2)
    assert pred.masks.shape == (5, 24, 90) and pred.scores.shape == (5,) and pred.no_target.shape == (5,)
    assert pred.frame_names == ["00000", "00001", "00002", "00003", "00004"]


def test_video_inputs_folder_gif_arrays(predictor, tmp_path):
    frames = _frames(4, h=20, w=28)
    folder = tmp_path / "clip"
    folder.mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{[2, 10, 1, 3][i]}.png")
    assert open_video(folder).names == ["frame1", "frame2", "frame3", "frame10"]
    gif = tmp_path / "clip.gif"
    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]])
    stacked = np.stack(frames)
    for video in (folder, gif, stacked, torch.from_numpy(stacked).permute(0, 3, 1, 2)):
        assert predictor.predict_video(video, "the red square", "shared").masks.shape == (4, 20, 28)


def test_bad_inputs_raise_clear_errors(predictor, tmp_path):
    with pytest.raises(InputError, match="empty"):
        predictor.predict_image(_frames(1)[0], "  ")
    with pytest.raises(InputError, match="at least one"):
        predictor.predict_video(_frames(2), [])
    with pytest.raises(ValueError, match="task"):
        predictor.predict_image(_frames(1)[0], "the square", task="rvos")
    with pytest.raises(ValueError, match="strategy"):
        predictor.predict_video(_frames(2), "the square", strategy="fast")
    with pytest.raises(InputError, match="same size"):
        predictor.predict_video([_frames(1)[0], _frames(1, h=10)[0]], "the square")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        predictor.predict_video(tmp_path / "empty", "the square")
    with pytest.raises(InputError, match="no frames"):
        predictor.predict_video([], "the square")
    with pytest.raises(FileNotFoundError):
        predictor.predict_image(tmp_path / "missing.png", "the square")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match="Cannot read"):
        predictor.predict_image(tmp_path / "broken.png", "the square")


def test_mp4_without_imageio_names_the_fix(predictor, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_imageio(name, *args, **kwargs):
        if name.startswith("imageio"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_imageio)
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="imageio"):
        predictor.predict_video(tmp_path / "clip.mp4", "the square")


def test_bfloat16_autocast_on_cpu(tiny_model):
    predictor = InstructSegPredictor(tiny_model, dtype=torch.bfloat16)
    pred = predictor.predict_video(_frames(3, h=30, w=20), "the red square")
    assert pred.masks.shape == (3, 30, 20) and np.isfinite(pred.scores).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bfloat16_matches_cpu_shapes(tiny_model):
    video = _frames(5, h=30, w=20)
    gpu = InstructSegPredictor(tiny_model, device="cuda", dtype=torch.bfloat16).predict_video(video, "the square")
    assert gpu.masks.shape == (5, 30, 20) and np.isfinite(gpu.scores).all()
