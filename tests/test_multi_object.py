"""Several objects per instruction in training: per-object targets (SampleBuilder ``target_mode="objects"``),
their padded collation, and the criterion's Hungarian matching of the K targets."""

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from datamodules.pipeline import SampleBuilder, collate_samples
from datamodules.rle import encode_rle
from datamodules.shards import Frames, Record
from instructseg.config import LossConfig
from instructseg.losses import InstructSegCriterion
from instructseg.modeling.mask_decoder import MaskPrediction
from instructseg.processing import mask_branch_target
from tests.data.conftest import build_record, png_bytes

S = 48


def _record(meta: dict, images: list[np.ndarray]) -> Record:
    meta = json.loads(json.dumps(meta))
    return Record(key="k", url="mem.tar", meta=meta, frames=Frames([png_bytes(i) for i in images], "mem:k"))


def _two_object_record(empty_second: bool = False) -> Record:
    meta, images = build_record("res")
    if empty_second:
        meta["objects"]["7"]["masks"] = [encode_rle(np.zeros((24, 32), dtype=bool))]
    meta["queries"] = [
        {"text": "both boxes", "object_ids": ["3", "7"], "type": "referring"},
        {"text": "the left box", "object_ids": ["3"], "type": "referring"},
    ]
    return _record(meta, images)


@pytest.fixture
def tok():
    from instructseg.processing import add_instructseg_tokens
    from instructseg.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    add_instructseg_tokens(tokenizer)
    return tokenizer


def _builder(tok, mode: str) -> SampleBuilder:
    return SampleBuilder(
        tok, mask_size=S, clip_size=32, num_ref_frames=2, training=False, one_query_per_record=False, target_mode=mode
    )


def test_objects_mode_gives_one_target_per_object_and_pads_in_collate(tok):
    record = _two_object_record()
    both, left = _builder(tok, "objects")(record)
    expected = torch.stack([mask_branch_target(record.object_mask(oid, 0), S) for oid in ("3", "7")])
    torch.testing.assert_close(both["object_masks"], expected)
    torch.testing.assert_close(both["target_mask"], expected.amax(0))  # the union target is unchanged
    assert left["object_masks"].shape == (1, S, S)
    batch = collate_samples([left, both], pad_id=0)
    assert batch["object_masks"].shape == (2, 2, S, S)
    assert batch["object_count"].tolist() == [1, 2]
    assert not batch["object_masks"][0, 1].any()  # padding
    union = _builder(tok, "union")(record)
    assert "object_masks" not in union[0] and "object_masks" not in collate_samples(union, pad_id=0)


def test_objects_empty_on_the_key_frame_are_dropped(tok):
    both, _ = _builder(tok, "objects")(_two_object_record(empty_second=True))
    assert both["object_masks"].shape == (1, S, S)


def test_bad_target_mode_is_rejected(tok):
    with pytest.raises(ValueError, match="target_mode"):
        _builder(tok, "instances")


def _planted(queries: dict[int, torch.Tensor], q: int = 5, side: int = 8) -> MaskPrediction:
    """One sample, one decoder step; query ``j`` predicts ``queries[j]`` (logits +-3), the others noise."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, q, side, side, generator=gen) * 0.1 - 3.0
    for j, mask in queries.items():
        logits[0, j] = torch.where(mask, 3.0, -3.0)
    return MaskPrediction([logits.requires_grad_()], [torch.zeros(1, q, requires_grad=True)])


def test_two_objects_are_matched_to_two_queries_and_both_get_mask_losses():
    side = 8
    left, right = torch.zeros(side, side, dtype=torch.bool), torch.zeros(side, side, dtype=torch.bool)
    left[:, :3], right[:, 5:] = True, True
    pred = _planted({1: left, 3: right})
    objects = torch.stack([right, left]).float()[None]  # (1, 2, 8, 8): order differs from the queries'
    crit = InstructSegCriterion(LossConfig(num_points=256, deep_supervision=False))
    out = crit(
        pred,
        objects.amax(1),
        torch.tensor([True]),
        torch.tensor([True]),
        object_masks=objects,
        object_count=torch.tensor([2]),
    )
    out["loss"].backward()
    mask_grad = pred.mask_logits[0].grad[0].abs().flatten(1).sum(1)
    assert mask_grad[[1, 3]].gt(0).all() and mask_grad[[0, 2, 4]].eq(0).all()
    score_grad = pred.scores[0].grad[0]
    assert score_grad[[1, 3]].lt(0).all() and score_grad[[0, 2, 4]].gt(0).all()  # matched up, others down
    # the union target on the same prediction matches one query only
    pred_union = _planted({1: left, 3: right})
    crit(pred_union, objects.amax(1), torch.tensor([True]), torch.tensor([True]))["loss"].backward()
    assert pred_union.mask_logits[0].grad[0].abs().flatten(1).sum(1).gt(0).sum() == 1


def test_object_masks_need_object_count():
    pred = _planted({})
    crit = InstructSegCriterion(LossConfig(num_points=16))
    with pytest.raises(ValueError, match="object_count"):
        crit(
            pred, torch.zeros(1, 8, 8), torch.tensor([True]), torch.tensor([True]), object_masks=torch.zeros(1, 1, 8, 8)
        )


class PlantedPredictor:
    """Predicts planted objects per instruction (by text) and records the ``max_objects`` it was asked for."""

    def __init__(self, objects: dict[str, list[np.ndarray]]) -> None:
        self.objects, self.asked = objects, []

    def _objects(self, text: str, max_objects: int) -> list[np.ndarray]:
        self.asked.append(max_objects)
        return self.objects[text][:max_objects]

    def predict_image(self, image, texts, task, threshold=None, max_objects=1):
        found = [self._objects(t, max_objects) for t in texts]
        return [SimpleNamespace(mask=np.any(o, 0)[0], score=1.0, no_target=False,
                                objects=[SimpleNamespace(mask=m[0]) for m in o]) for o in found]  # fmt: skip

    def predict_video(self, frames, texts, strategy, task, threshold=None, max_objects=1):
        n, found = len(frames), [self._objects(t, max_objects) for t in texts]
        return [SimpleNamespace(masks=np.any(o, 0), scores=np.ones(n), no_target=np.zeros(n, bool),
                                objects=[SimpleNamespace(masks=m) for m in o]) for o in found]  # fmt: skip


def _box(size: int, frames: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((frames, size, size), dtype=bool)
    mask[:, top : top + side, left : left + side] = True
    return mask


def test_evaluation_reports_per_object_recall_of_multi_object_queries(tmp_path):
    from datamodules.shards import RecordWriter
    from instructseg.evaluation import OBJECT_RECALL, evaluate_sets

    size, frames = 32, 3
    a, b, c = _box(size, frames, 2, 2, 10), _box(size, frames, 18, 18, 10), _box(size, frames, 2, 20, 8)
    objects = {k: {"masks": [encode_rle(m) for m in v]} for k, v in (("a", a), ("b", b), ("c", c))}
    queries = [
        {"text": "a and b", "object_ids": ["a", "b"], "type": "referring"},
        {"text": "a, b and c", "object_ids": ["a", "b", "c"], "type": "referring"},
        {"text": "c", "object_ids": ["c"], "type": "referring"},
    ]
    meta = {"dataset": "toy", "task": "rvos", "frames": frames, "height": size, "width": size, "objects": objects,
            "queries": queries}  # fmt: skip
    with RecordWriter(str(tmp_path / "shards" / "toy-%06d.tar")) as writer:
        writer.write("video", meta, [np.zeros((size, size, 3), np.uint8)] * frames)
    shifted_b = np.roll(b, 7, axis=2)  # IoU with b = 3/17 < 0.5
    planted = PlantedPredictor({"a and b": [b, a], "a, b and c": [a, shifted_b, c], "c": [c]})
    sets = [("toy", writer.shards)]
    results = evaluate_sets(planted, sets, tmp_path / "k3", overlays=0, progress=False, max_objects=3)
    assert set(planted.asked) == {3}
    video = results["toy/rvos"]
    assert video["objects/queries"] == 2 and video[OBJECT_RECALL] == pytest.approx((2 + 2) / (2 + 3))
    assert video["J"] < 1.0  # the union metrics score the union of the predicted objects (shifted b is off)
    rows = {r["query_id"]: r for r in csv.DictReader(open(tmp_path / "k3" / "metrics.csv"))}
    assert (rows["0"]["objects"], rows["0"]["objects_matched"], rows["2"]["objects"]) == ("2", "2", "")
    single = evaluate_sets(planted, sets, tmp_path / "k1", overlays=0, progress=False)  # max_objects=1
    assert set(planted.asked) == {3, 1} and single["toy/rvos"][OBJECT_RECALL] == pytest.approx((1 + 1) / (2 + 3))


def test_evaluation_of_the_tiny_model_on_multi_object_synthetic_queries(tiny_model, tmp_path):
    from datamodules.synthetic import generate
    from instructseg.evaluation import OBJECT_RECALL, evaluate_sets
    from instructseg.predictor import InstructSegPredictor

    predictor = InstructSegPredictor.from_pretrained(tiny_model.save_pretrained(tmp_path / "export"))
    generate(tmp_path / "syn", train=0, val=4, seed=0, size=64, records_per_shard=4, multi_object=1.0)
    shards = [str(p) for p in sorted((tmp_path / "syn" / "val").glob("*.tar"))]
    results = evaluate_sets(predictor, [("syn", shards)], tmp_path / "eval", overlays=0, progress=False, max_objects=2)
    rows = list(csv.DictReader(open(tmp_path / "eval" / "metrics.csv")))
    multi = [r for r in rows if r["objects"]]
    assert multi and all(int(r["objects"]) >= 2 and 0 <= int(r["objects_matched"]) <= 2 for r in multi)
    groups = {f"syn/{r['task']}" for r in multi}
    assert all(0.0 <= results[g][OBJECT_RECALL] <= 1.0 and results[g]["objects/queries"] >= 1 for g in groups)


def test_objects_mode_trains_end_to_end_on_multi_object_synthetic_data(tiny_config, tiny_root, tmp_path):
    """Datamodule ``target_mode="objects"`` → batch with ``object_masks`` → lit module loss with mask terms."""
    from datamodules import InstructSegDataModule
    from datamodules.synthetic import generate
    from instructseg.lit_module import InstructSegModule

    torch.manual_seed(0)
    module = InstructSegModule(tiny_config, pretrained_root=str(tiny_root))
    generate(tmp_path, train=8, val=0, seed=0, size=64, records_per_shard=8, multi_object=1.0)
    data = InstructSegDataModule(
        train=[{"name": "synthetic", "urls": str(tmp_path / "train" / "*.tar")}],
        tokenizer=module.model.tokenizer,
        mask_size=64,
        clip_size=64,
        num_ref_frames=2,
        batch_size=4,
        num_workers=0,
        epoch_length=4,
        target_mode="objects",
    )
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    counts = batch["object_count"]
    assert batch["object_masks"].shape[:2] == (4, int(counts.max())) and counts.max() >= 2
    _, losses = module._losses(batch)
    assert torch.isfinite(losses["loss"]) and float(losses["loss_dice"]) > 0
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())
