"""Key frames, key segments, their reference sampling and the keyframe / segments strategies; flat memory in T."""

import tracemalloc
import weakref

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from instructseg.keyframes import RelevanceRecorder, SegmentRule, choose_key_frame, extract_segments, smooth_curve
from instructseg.modeling.instructseg import InstructSeg
from instructseg.predictor import InstructSegPredictor
from instructseg.sampling import adaptive_reference_frames, global_local_reference_frames, global_reference_frames
from instructseg.video_io import VideoFrames


@pytest.fixture(scope="module")
def predictor(tiny_config):
    torch.manual_seed(0)
    return InstructSegPredictor(InstructSeg.from_config(tiny_config))


def planted_curve(n: int, present: list[tuple[int, int]], seed: int = 0) -> np.ndarray:
    """Relevance ~0.8 inside the ``present`` runs, ~0.2 elsewhere, noise, and a one-frame spike outside them."""
    rng = np.random.default_rng(seed)
    curve = 0.2 + 0.08 * rng.standard_normal(n)
    for start, stop in present:
        curve[start:stop] = 0.8 + 0.08 * rng.standard_normal(stop - start)
    curve = np.clip(curve, 0.0, 0.97)
    curve[5] = 1.0  # a distractor frame: one spike, no run
    return curve.astype(np.float32)


class SyntheticFrames:
    """``n`` frames of 32x32 rendered on access (a long video that is never held in memory)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> np.ndarray:
        frame = np.full((32, 32, 3), 40, dtype=np.uint8)
        x = (index * 3) % 24
        frame[10:18, x : x + 8] = (220, 40, 40)
        return frame


def lazy_video(n: int) -> VideoFrames:
    return VideoFrames(SyntheticFrames(n), [f"{i:05d}" for i in range(n)])


@pytest.mark.parametrize("seed", range(5))
def test_key_frame_lies_where_the_target_is_shown(seed):
    curve = planted_curve(100, [(40, 61)], seed)
    assert 40 <= choose_key_frame(curve) <= 60
    assert choose_key_frame(curve, smooth=1) == 5  # unsmoothed, the spike wins: smoothing is what rejects it


def test_segments_of_a_planted_curve():
    curve = np.full(100, 0.1, dtype=np.float32)
    curve[20:35] = 0.9
    curve[60:62] = 0.9  # too short
    curve[80:90] = 0.9
    curve[92:100] = 0.9  # after a 2-frame gap
    assert extract_segments(curve, SegmentRule(smooth=1), 0.5) == [(20, 35), (80, 100)]
    assert extract_segments(curve, SegmentRule(smooth=1, max_gap=1), 0.5) == [(20, 35), (80, 90), (92, 100)]
    assert extract_segments(curve, SegmentRule(smooth=1, min_length=2), 0.5) == [(20, 35), (60, 62), (80, 100)]
    assert extract_segments(curve, SegmentRule(), 0.5) == [(20, 35), (80, 100)]  # smoothing keeps the edges
    assert extract_segments(curve, SegmentRule(threshold=0.95), 0.5) == []  # the rule's threshold wins
    assert extract_segments(curve, SegmentRule(smooth=1), 0.05) == [(0, 100)]
    for seed in range(5):
        found = extract_segments(planted_curve(200, [(30, 50), (120, 170)], seed), SegmentRule(), 0.5)
        assert len(found) == 2  # the spike at frame 5 is no segment
        assert np.abs(np.array(found) - [(30, 50), (120, 170)]).max() <= 2


def test_smoothing_keeps_length_and_constant_curves():
    curve = np.linspace(0, 1, 7)
    assert smooth_curve(curve, 3).shape == (7,)
    np.testing.assert_allclose(smooth_curve(np.full(9, 0.3), 4), 0.3)
    with pytest.raises(ValueError, match="min_length"):
        SegmentRule(min_length=0)


@pytest.mark.parametrize(
    ("n", "segment", "num_ref"), [(300, (100, 140), 12), (300, (0, 10), 6), (50, (45, 50), 4), (1000, (500, 900), 3)]
)
def test_adaptive_references_take_a_third_globally_and_two_thirds_around_the_segment(n, segment, num_ref):
    refs = adaptive_reference_frames(n, segment, num_ref)
    num_global = round(num_ref / 3)
    low, high = max(0, segment[0] - 3), min(n, segment[1] + 3)
    around = [r for r in refs if low <= r < high]
    assert len(refs) == num_ref and refs == sorted(refs)
    assert len(around) >= num_ref - num_global
    assert min(around) <= segment[0] and max(around) >= segment[1] - 1  # the segment is covered end to end
    outside = [r for r in refs if not low <= r < high]
    assert len(outside) <= num_global
    assert set(outside) <= set(global_reference_frames(n, max(num_global, 1)))
    if num_global >= 2:
        assert refs[0] == 0 and refs[-1] == n - 1  # spread over the whole video


def test_global_local_references_around_a_key_frame():
    refs = global_local_reference_frames(100, 50, 4)
    assert refs == sorted(refs) and len(refs) == 4
    assert sum(abs(r - 50) <= 2 for r in refs) == 2 and {0, 99} <= set(refs)
    assert len(global_local_reference_frames(3, 0, 4)) == 4
    with pytest.raises(ValueError, match="segment"):
        adaptive_reference_frames(10, (5, 5), 4)


def spy_co_decodes(predictor, monkeypatch) -> list[tuple[int, list[int]]]:
    """Record the (key, references) of every LLM pass the predictor runs."""
    calls = []
    original = predictor._co_decode_at

    def spy(frames, queries, key_index, ref_indices):
        calls.append((key_index, list(ref_indices)))
        return original(frames, queries, key_index, ref_indices)

    monkeypatch.setattr(predictor, "_co_decode_at", spy)
    return calls


def test_keyframe_strategy_segments_the_key_frame_of_a_planted_relevance(predictor, monkeypatch):
    n = 100
    curve = planted_curve(n, [(40, 61)])
    monkeypatch.setattr(
        predictor, "_relevance", lambda frames, queries, chunk, stride: np.stack([curve] * len(queries))
    )
    calls = spy_co_decodes(predictor, monkeypatch)
    pred = predictor.predict_video(lazy_video(n), "the red square", "keyframe", chunk_size=32, threshold=0.0)
    (key, refs), r = calls[0], predictor.config.num_reference_frames
    assert len(calls) == 1 and 40 <= key <= 60 and refs == global_local_reference_frames(n, key, r)
    assert pred.masks.shape == (n, 32, 32) and pred.scores.shape == (n,) and not pred.video_no_target


def test_segments_strategy_decodes_inside_segments_and_answers_no_target_outside(predictor, monkeypatch):
    n = 120
    curve = planted_curve(n, [(20, 40), (80, 100)])
    monkeypatch.setattr(
        predictor, "_relevance", lambda frames, queries, chunk, stride: np.stack([curve] * len(queries))
    )
    calls = spy_co_decodes(predictor, monkeypatch)
    rule = SegmentRule(threshold=0.5)  # the decoder's threshold (0: every decoded frame has a target) is another
    pred = predictor.predict_video(lazy_video(n), "the red square", "segments", threshold=0.0, segment_rule=rule)
    r = predictor.config.num_reference_frames
    assert [key for key, _ in calls] == [
        20 + int(np.argmax(smooth_curve(curve[20:40], 5))),
        80 + int(np.argmax(smooth_curve(curve[80:100], 5))),
    ]
    assert [refs for _, refs in calls] == [adaptive_reference_frames(n, s, r) for s in [(20, 40), (80, 100)]]
    inside = np.zeros(n, dtype=bool)
    inside[20:40] = inside[80:100] = True
    assert pred.no_target[~inside].all() and not pred.masks[~inside].any()
    np.testing.assert_allclose(pred.scores[~inside], curve[~inside])  # outside frames report their relevance
    assert not pred.no_target[inside].all() and not pred.video_no_target


def test_keyframe_and_segments_end_to_end_on_the_tiny_model(predictor):
    video = [SyntheticFrames(1)[0][:, :28]] * 9  # 32x28 frames
    for strategy in ("keyframe", "segments"):
        preds = predictor.predict_video(video, ["the red square", "the blue circle"], strategy, threshold=0.0)
        for pred in preds:
            assert pred.masks.shape == (9, 32, 28) and pred.masks.dtype == bool
            assert pred.scores.shape == pred.no_target.shape == (9,)
            assert pred.video_no_target == bool(pred.no_target.all())
    nothing = predictor.predict_video(video, "x", "segments", segment_rule=SegmentRule(threshold=1.0), threshold=0.0)
    assert nothing.video_no_target and nothing.no_target.all() and not nothing.masks.any() and nothing.objects == []


def test_keyframe_runs_two_llm_passes_per_instruction(predictor):
    passes = []
    handle = predictor.model.llm.register_forward_hook(lambda module, args, out: passes.append(1))
    try:
        predictor.predict_video(lazy_video(40), ["a", "b"], "keyframe")
    finally:
        handle.remove()
    assert len(passes) == 4  # relevance pass + key frame pass, for each of the 2 instructions (not one per frame)


def test_relevance_stride_decodes_every_kth_frame_and_interpolates(predictor):
    recorder = RelevanceRecorder(1, 9, predictor.model.select)
    recorder.curves[0, [0, 4, 8]] = [0.0, 1.0, 0.0]
    np.testing.assert_allclose(recorder.interpolated([0, 4, 8])[0], [0, 0.25, 0.5, 0.75, 1, 0.75, 0.5, 0.25, 0])
    decoded = []
    hook = predictor.model.swin.tower.register_forward_hook(
        lambda module, args, kwargs, out: decoded.append((args[0] if args else kwargs["pixel_values"]).shape[0]),
        with_kwargs=True,
    )
    try:
        strided = predictor.predict_video(lazy_video(40), "the red square", "keyframe", relevance_stride=8)
    finally:
        hook.remove()
    assert sum(decoded) == 6 + 40  # relevance on frames 0, 8, 16, 24, 32, 39, then every frame once
    assert strided.masks.shape == (40, 32, 32)
    with pytest.raises(ValueError, match="relevance_stride"):
        predictor.predict_video(lazy_video(4), "x", "keyframe", relevance_stride=0)


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live CPU tensor storages created by torch ops while the mode is active (views counted once)."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}  # storage pointer -> (live tensors, bytes)
        self.bytes = self.peak = 0

    def _drop(self, pointer: int) -> None:
        count, size = self.live[pointer]
        if count == 1:
            del self.live[pointer]
            self.bytes -= size
        else:
            self.live[pointer] = (count - 1, size)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type == "cpu":
                storage = tensor.untyped_storage()
                pointer = storage.data_ptr()
                if pointer == 0:
                    continue
                count, size = self.live.get(pointer, (0, storage.nbytes()))
                if count == 0:
                    self.bytes += size
                    self.peak = max(self.peak, self.bytes)
                self.live[pointer] = (count + 1, size)
                weakref.finalize(tensor, self._drop, pointer)
        return out


def peak_memory(predictor, n: int, strategy: str) -> tuple[int, int]:
    """(peak live torch bytes, peak traced Python/NumPy bytes) of one ``predict_video`` on ``n`` lazy frames."""
    tracemalloc.start()
    try:
        with LiveTensorBytes() as tensors:
            predictor.predict_video(lazy_video(n), "the red square", strategy, chunk_size=50, threshold=0.0)
        return tensors.peak, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["per_frame", "keyframe", "segments"])
def test_memory_is_flat_in_the_number_of_frames(predictor, strategy):
    tensors_100, traced_100 = peak_memory(predictor, 100, strategy)
    tensors_1000, traced_1000 = peak_memory(predictor, 1000, strategy)
    assert tensors_1000 <= 1.1 * tensors_100  # no tensor per frame survives its chunk
    # NumPy/Python: the (T, H, W) answer itself and a few bytes of bookkeeping per frame, nothing per-frame larger
    assert traced_1000 - traced_100 <= 900 * (32 * 32 + 256)
