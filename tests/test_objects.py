"""Several objects per instruction: K masks above the score with mask-IoU suppression, on planted decoder outputs and
end to end on the tiny model (images and videos)."""

import numpy as np
import pytest
import torch

from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.mask_decoder import MaskPrediction
from instructseg.objects import mask_iou, object_recall, select_objects
from instructseg.predictor import InstructSegPredictor


@pytest.fixture(scope="module")
def predictor(tiny_config):
    torch.manual_seed(0)
    return InstructSegPredictor(InstructSeg.from_config(tiny_config))


def planted_prediction() -> MaskPrediction:
    """One sample, 5 queries on 8x8: two near-duplicates of the left half, the top-right and bottom-right quadrants
    (the latter below the threshold), and an empty mask with a high score."""
    regions = torch.zeros(5, 8, 8, dtype=torch.bool)
    regions[0, :, :4] = True
    regions[1, :, :3] = True  # IoU 0.75 with query 0
    regions[2, :4, 4:] = True
    regions[3, 4:, 4:] = True
    logits = torch.where(regions, 5.0, -5.0)[None]
    scores = torch.tensor([[3.0, 2.5, 2.0, -3.0, 1.0]])
    return MaskPrediction([logits], [scores])


def test_k_objects_of_a_planted_case():
    prediction = planted_prediction()
    chosen = select_objects(prediction, 3, threshold=0.5, overlap=0.5)
    assert chosen.query.tolist() == [[0, 2, -1]]  # duplicate suppressed, low score and empty mask left out
    assert chosen.no_target.tolist() == [[False, False, True]]
    torch.testing.assert_close(chosen.score[0, :2], torch.tensor([3.0, 2.0]).sigmoid())
    assert torch.isinf(chosen.mask_logits[0, 2]).all() and (chosen.mask_logits[0, 1] > 0).sum() == 16
    assert select_objects(prediction, 3, threshold=0.5, overlap=0.8).query.tolist() == [[0, 1, 2]]
    assert select_objects(prediction, 5, threshold=0.01, overlap=0.5).query.tolist() == [[0, 2, 3, -1, -1]]


def test_one_object_is_exactly_select(tiny_model):
    generator = torch.Generator().manual_seed(0)
    prediction = MaskPrediction(
        [torch.randn(4, 6, 8, 8, generator=generator)], [torch.randn(4, 6, generator=generator)]
    )
    for threshold in (0.3, 0.5, 0.7):
        reference = tiny_model.select(prediction, threshold)
        chosen = select_objects(prediction, 1, threshold)
        assert chosen.query[:, 0].tolist() == reference.query.tolist()
        torch.testing.assert_close(chosen.score[:, 0], reference.score)
        assert chosen.no_target[:, 0].tolist() == reference.no_target.tolist()
        torch.testing.assert_close(chosen.mask_logits[:, 0], reference.mask_logits)


def test_mask_iou_and_bad_arguments():
    masks = planted_prediction().mask_logits[0][0] > 0
    iou = mask_iou(masks)
    assert iou[0, 1] == pytest.approx(0.75) and iou[0, 2] == 0 and iou[4, 4] == 0
    with pytest.raises(ValueError, match="max_objects"):
        select_objects(planted_prediction(), 0, 0.5)
    with pytest.raises(ValueError, match="overlap"):
        select_objects(planted_prediction(), 2, 0.5, overlap=0.0)


def test_image_returns_k_objects_and_their_union(predictor):
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    single = predictor.predict_image(image, "the red square", threshold=0.0)
    several = predictor.predict_image(image, "the red square", threshold=0.0, max_objects=4, overlap=1.0)
    assert len(single.objects) == 1 and np.array_equal(single.objects[0].mask, single.mask)
    assert len(several.objects) == 4 and all(o.mask.shape == (40, 56) for o in several.objects)
    assert np.array_equal(several.mask, np.any([o.mask for o in several.objects], axis=0))
    assert several.score == max(o.score for o in several.objects)
    assert np.array_equal(several.objects[0].mask, single.mask)  # the first object is the single answer


@pytest.mark.parametrize("strategy", ["per_frame", "shared", "keyframe"])
def test_video_returns_k_object_slots(predictor, strategy):
    video = np.random.default_rng(1).integers(0, 256, (6, 24, 40, 3), dtype=np.uint8)
    single = predictor.predict_video(video, "the red square", strategy, threshold=0.0)
    several = predictor.predict_video(video, "the red square", strategy, threshold=0.0, max_objects=3, overlap=1.0)
    assert len(several.objects) == 3 and all(o.masks.shape == (6, 24, 40) for o in several.objects)
    assert np.array_equal(several.masks, np.any([o.masks for o in several.objects], axis=0))
    assert np.array_equal(several.objects[0].masks, single.masks)
    np.testing.assert_array_equal(several.scores, np.max([o.scores for o in several.objects], axis=0))


def test_object_recall_matches_objects_one_to_one():
    square, bar, dot = (np.zeros((2, 10, 10), dtype=bool) for _ in range(3))
    square[:, :5, :5] = True
    bar[:, 7:, :] = True
    dot[:, 9, 9] = True
    shifted = np.roll(square, 1, axis=2)  # IoU 20/30 with square
    assert object_recall([shifted, bar], [square, bar]) == 1.0
    assert object_recall([shifted, shifted], [square, bar]) == 0.5  # one prediction cannot match two objects
    assert object_recall([shifted], [square, bar], iou=0.7) == 0.0
    assert object_recall([dot, bar, square], [square]) == 1.0 and object_recall([], [square]) == 0.0
    assert object_recall([square], []) == 1.0
