"""SampleBuilder (records → samples) and collate_samples (mixed image/video batches)."""

import json

import numpy as np
import pytest
import torch

from datamodules.pipeline import SampleBuilder, collate_samples
from datamodules.rle import encode_rle
from datamodules.schema import RecordError
from datamodules.shards import Frames, Record
from instructseg.constants import IGNORE_INDEX
from instructseg.processing import mask_branch_target

S, SC, R = 48, 32, 3


def as_record(meta, images, key="k", raw=None):
    encoded = [raw.png(image) for image in images]
    return Record(key=key, url="mem.tar", meta=json.loads(json.dumps(meta)), frames=Frames(encoded, f"mem:{key}"))


@pytest.fixture
def builder(tokenizer):
    def make(**kwargs):
        options = {"mask_size": S, "clip_size": SC, "num_ref_frames": R, "seed": 0, **kwargs}
        return SampleBuilder(tokenizer, **options)

    return make


def test_image_sample(builder, make_record, raw):
    meta, images = make_record("reasonseg")
    record = as_record(meta, images, raw=raw)
    samples = builder(training=False, one_query_per_record=False)(record)
    assert len(samples) == 2
    first, second = samples
    assert first["pixel_values"].shape == (3, S, S)
    assert first["clip_pixel_values"].shape == (1, 3, SC, SC)  # the key only: the model reuses it as the reference
    assert first["frame_indices"].tolist() == [0]
    expected = mask_branch_target(record.object_mask("3", 0), S)
    torch.testing.assert_close(first["target_mask"], expected)
    assert first["has_target"] and first["has_mask"]
    assert first["valid_hw"] == (36, 48) and first["orig_hw"] == (24, 32)
    assert first["ignore_mask"].dtype == torch.bool and not first["ignore_mask"].any()
    assert (first["task"], first["query_type"], first["key"], first["query_id"]) == ("reasonseg", "referring", "k", "a")
    assert second["query_id"] == "1" and second["query_type"] == "reasoning"
    # reasonseg is a text-loss task: its answer (default or given) is supervised
    assert (first["labels"] != IGNORE_INDEX).any() and (second["labels"] != IGNORE_INDEX).any()
    assert first["input_ids"].shape == first["labels"].shape == first["instruction_mask"].shape


def test_referring_without_answer_has_no_text_loss(builder, make_record, raw):
    (sample,) = builder(training=False)(as_record(*make_record("res"), raw=raw))
    assert (sample["labels"] == IGNORE_INDEX).all()


def test_video_sample_and_no_target(builder, make_record, raw):
    meta, images = make_record("reasonvos", frames=7)
    samples = builder(training=False, one_query_per_record=False)(as_record(meta, images, raw=raw))
    assert [s["query_type"] for s in samples] == ["referring", "reasoning", "no_target"]
    for sample in samples:
        assert sample["clip_pixel_values"].shape == (1 + R, 3, SC, SC)
        assert sample["frame_indices"].tolist() == [3, 2, 4, 5]  # middle key + deterministic neighbours
    no_target = samples[2]
    assert not no_target["has_target"] and no_target["has_mask"] and no_target["target_mask"].sum() == 0


def test_vqa_sample(builder, make_record, raw):
    (sample,) = builder(training=True)(as_record(*make_record("vqa"), raw=raw))
    assert not sample["has_mask"] and not sample["has_target"]
    assert (sample["labels"] != IGNORE_INDEX).any()


def test_ignore_mask(builder, make_record, raw):
    meta, images = make_record("res")
    ignore = np.zeros((24, 32), dtype=bool)
    ignore[:, :4] = True
    meta["ignore"] = [encode_rle(ignore)]
    (sample,) = builder(training=False)(as_record(meta, images, raw=raw))
    assert torch.equal(sample["ignore_mask"], mask_branch_target(ignore, S).bool())


def test_training_resamples_empty_targets(builder, make_record, raw):
    meta, images = make_record("rvos", frames=12)
    empty = encode_rle(np.zeros((24, 32), dtype=bool))
    meta["objects"]["3"]["masks"] = [m if t % 2 else empty for t, m in enumerate(meta["objects"]["3"]["masks"])]
    record = as_record(meta, images, raw=raw)
    rng = np.random.default_rng(0)
    with_retries = [builder(max_resample=10)(record, rng)[0]["has_target"] for _ in range(40)]
    single_try = [builder(max_resample=1)(record, rng)[0]["has_target"] for _ in range(40)]
    assert sum(with_retries) >= 39 > 30 > sum(single_try)


def test_one_query_per_record_draws_queries(builder, make_record, raw):
    record = as_record(*make_record("reasonvos", frames=5), raw=raw)
    make = builder(one_query_per_record=True)
    rng = np.random.default_rng(0)
    types = {make(record, rng)[0]["query_type"] for _ in range(30)}
    assert types == {"referring", "reasoning", "no_target"}


def test_decode_errors_propagate(builder, make_record, raw):
    meta, images = make_record("res")
    record = as_record(meta, images, raw=raw)
    record.frames.encoded[0] = record.frames.encoded[0][:50]
    with pytest.raises(RecordError, match="bad_frame"):
        builder(training=False)(record)


def test_global_local_option(builder, make_record, raw):
    record = as_record(*make_record("rvos", frames=9), raw=raw)
    (sample,) = builder(clip_sampling="global_local")(record)
    assert sample["clip_pixel_values"].shape[0] == 1 + R
    with pytest.raises(ValueError, match="clip_sampling"):
        builder(clip_sampling="dense")


def test_collate_mixed_tasks(builder, make_record, raw, tokenizer):
    make = builder(training=False, one_query_per_record=False)
    samples = [
        *make(as_record(*make_record("res"), key="img", raw=raw)),
        *make(as_record(*make_record("rvos", frames=6), key="vid", raw=raw)),
        *make(as_record(*make_record("vqa"), key="vqa", raw=raw)),
    ]
    samples[1]["skipped"] = {"bad_json": 2}
    samples[2]["skipped"] = {"bad_json": 1, "bad_frame": 1}
    batch = collate_samples(samples, tokenizer.pad_token_id)
    assert batch["pixel_values"].shape == (3, 3, S, S)
    assert batch["clip_pixel_values"].shape == (3, 1 + R, 3, SC, SC)
    assert batch["clip_frame_mask"].tolist() == [[True, False, False, False], [True] * 4, [True, False, False, False]]
    assert batch["frame_indices"][0].tolist() == [0, -1, -1, -1]
    assert batch["clip_pixel_values"][0, 1:].abs().sum() == 0
    assert batch["target_mask"].shape == (3, S, S) and batch["ignore_mask"].dtype == torch.bool
    assert batch["has_mask"].tolist() == [True, True, False]
    assert batch["valid_hw"].shape == (3, 2) and batch["orig_hw"].tolist() == [[24, 32]] * 3
    length = max(s["input_ids"].numel() for s in samples)
    for name in ("input_ids", "attention_mask", "instruction_mask", "labels"):
        assert batch[name].shape == (3, length)
    assert batch["task"] == ["res", "rvos", "vqa"] and batch["key"] == ["img", "vid", "vqa"]
    assert batch["shard_set"] == ["", "", ""]
    assert batch["skipped"] == {"bad_json": 3, "bad_frame": 1}


def test_bad_queries_are_record_errors_that_name_the_reason(builder, make_record, raw):
    meta, frames = make_record("res")
    long_meta = {**meta, "queries": [{**meta["queries"][0], "text": " ".join(["the left box"] * 200)}]}
    reserved = {**meta, "queries": [{**meta["queries"][0], "text": "the <image> box"}]}
    make = builder(training=False, max_text_tokens=120)
    assert make(as_record(meta, frames, raw=raw))  # a normal query fits
    with pytest.raises(RecordError) as err:
        make(as_record(long_meta, frames, raw=raw))
    assert err.value.reason == "query_too_long" and "120" in str(err.value)
    with pytest.raises(RecordError) as err:
        make(as_record(reserved, frames, raw=raw))
    assert err.value.reason == "reserved_token" and "<image>" in str(err.value)
