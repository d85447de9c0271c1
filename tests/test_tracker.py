"""SAM2 propagation on a tiny random Sam2VideoModel written with save_pretrained (no network)."""

import numpy as np
import pytest
import torch

from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.loading import ModelNotFoundError
from instructseg.predictor import InstructSegPredictor
from instructseg.tracker import Sam2Tracker, save_tiny_sam2

H, W = 40, 56


@pytest.fixture(scope="module")
def sam2_dir(tmp_path_factory):
    return save_tiny_sam2(tmp_path_factory.mktemp("tiny-sam2"))


@pytest.fixture(scope="module")
def tracker(sam2_dir):
    return Sam2Tracker.from_pretrained(sam2_dir)


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(12)]


def key_masks() -> np.ndarray:
    masks = np.zeros((2, H, W), dtype=bool)
    masks[0, 5:25, 5:25] = True
    masks[1, 20:38, 30:52] = True
    return masks


def test_propagates_forward_then_backward_one_mask_per_frame_at_the_original_size(tracker, frames):
    read = []

    def frame_at(t: int) -> np.ndarray:
        read.append(t)
        return frames[t]

    steps = list(tracker.propagate(frame_at, 5, key_masks(), range(12)))
    assert [t for t, _, _ in steps] == [5, 6, 7, 8, 9, 10, 11, 4, 3, 2, 1, 0]
    assert read == [t for t, _, _ in steps]  # frames are streamed: each read once, when its turn comes
    for _, masks, scores in steps:
        assert masks.shape == (2, H, W) and masks.dtype == bool and scores.shape == (2,)
    key = steps[0][1]
    for obj in range(2):  # the key frame returns its prompt masks (resized to SAM2's input and back)
        inter, union = (key[obj] & key_masks()[obj]).sum(), (key[obj] | key_masks()[obj]).sum()
        assert inter / union > 0.8


def test_propagation_stays_inside_its_span(tracker, frames):
    steps = [t for t, _, _ in tracker.propagate(lambda t: frames[t], 7, key_masks()[:1], range(4, 9))]
    assert steps == [7, 8, 6, 5, 4]
    with pytest.raises(ValueError, match="key"):
        next(tracker.propagate(lambda t: frames[t], 2, key_masks(), range(4, 9)))
    with pytest.raises(ValueError, match="masks"):
        next(tracker.propagate(lambda t: frames[t], 5, key_masks()[0], range(12)))


def test_session_keeps_a_bounded_window(tracker, frames, monkeypatch):
    """Inspect the session after every step: frames and tracked memories do not pile up along the video."""
    from transformers.models.sam2_video import modeling_sam2_video

    sessions = []
    original = modeling_sam2_video.Sam2VideoInferenceSession

    def recording(*args, **kwargs):
        sessions.append(original(*args, **kwargs))
        return sessions[-1]

    monkeypatch.setattr(modeling_sam2_video, "Sam2VideoInferenceSession", recording)
    sizes = []
    for _ in tracker.propagate(lambda t: frames[t % 12], 0, key_masks(), range(40)):
        session = sessions[0]
        tracked = max(len(o["non_cond_frame_outputs"]) for o in session.output_dict_per_obj.values())
        sizes.append((len(session.processed_frames), tracked))
    assert max(f for f, _ in sizes) == 1 and max(m for _, m in sizes) <= tracker.window


def test_predictor_keyframe_and_segments_with_the_tracker(tiny_config, tracker, sam2_dir, frames):
    torch.manual_seed(0)
    predictor = InstructSegPredictor(InstructSeg.from_config(tiny_config))
    pred = predictor.predict_video(frames, "the red square", "keyframe", threshold=0.0, tracker=tracker, max_objects=2)
    assert pred.masks.shape == (12, H, W) and pred.scores.shape == (12,)
    assert 1 <= len(pred.objects) <= 2 and all(o.masks.shape == (12, H, W) for o in pred.objects)
    by_path = predictor.predict_video(
        frames, "the red square", "segments", threshold=0.0, tracker="sam2", tracker_weights=str(sam2_dir)
    )
    assert by_path.masks.shape == (12, H, W)
    with pytest.raises(ValueError, match="strategy"):
        predictor.predict_video(frames, "x", "per_frame", tracker=tracker)
    with pytest.raises(ValueError, match="tracker_weights"):
        predictor.predict_video(frames, "x", "keyframe", tracker_weights=str(sam2_dir))
    with pytest.raises(ModelNotFoundError):
        predictor.predict_video(frames, "x", "keyframe", tracker="sam2", tracker_weights="/no/such/sam2")


def test_weights_folder_without_a_config_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        Sam2Tracker.from_pretrained(tmp_path)
