"""validate_record: every rule gives its own reason."""

import copy

import pytest

from datamodules.schema import RecordError, validate_record


def broken(meta, change):
    meta = copy.deepcopy(meta)
    change(meta)
    return meta


def test_valid_records_pass(make_record):
    for task, frames in (("res", 1), ("reasonseg", 1), ("rvos", 5), ("reasonvos", 4), ("vqa", 1)):
        meta, images = make_record(task, frames)
        validate_record(meta, len(images), "unit")


CASES = {
    "bad_json": lambda m: m.clear() or m.update({"not": "a record"}) and None,
    "bad_task": lambda m: m.update(task="segment"),
    "bad_size": lambda m: m.update(height=0),
    "mask_size": lambda m: m["objects"]["3"]["masks"][0].update(size=[10, 10]),
    "bad_rle": lambda m: m["objects"]["3"]["masks"][0].update(counts="4 1"),
    "missing_object": lambda m: m["queries"][0].update(object_ids=["99"]),
    "empty_text": lambda m: m["queries"][0].update(text="  "),
    "bad_query_type": lambda m: m["queries"][0].update(type="pointing"),
    "no_objects": lambda m: m["queries"][0].update(object_ids=[]),
    "no_target_objects": lambda m: m["queries"][0].update(type="no_target"),
    "no_queries": lambda m: m.update(queries=[]),
    "bad_mask_list": lambda m: m["objects"]["3"].pop("masks"),
}


@pytest.mark.parametrize("reason", sorted(CASES))
def test_each_rule_has_a_reason(make_record, reason):
    meta, images = make_record("rvos", 3)
    if reason == "bad_json":
        meta = ["not", "a", "dict"]
    else:
        meta = broken(meta, CASES[reason])
    with pytest.raises(RecordError) as info:
        validate_record(meta, len(images), "shard.tar:key")
    assert info.value.reason == reason
    assert "shard.tar:key" in str(info.value)


@pytest.mark.parametrize(
    "counts, message",
    [
        ("4 1", "invalid character ' '"),  # outside the alphabet '0'..'o'
        (b"41~", "invalid character '~'"),
        ("41", "counts sum to"),  # a valid string that covers too few pixels
        ("4o", "truncated"),  # 'o' announces another 5-bit group
        ([2, -1, 3], "negative run length"),
        ([1, 2], "counts sum to"),
    ],
)
def test_rle_counts_are_checked(make_record, counts, message):
    meta, images = make_record("res", 1)
    meta = broken(meta, lambda m: m["objects"]["3"]["masks"][0].update(counts=counts))
    with pytest.raises(RecordError, match=message) as info:
        validate_record(meta, len(images), "shard.tar:key")
    assert info.value.reason == "bad_rle" and "shard.tar:key: object '3' masks[0]" in info.value.message


def test_frame_count_rules(make_record):
    meta, _ = make_record("rvos", 3)
    for bad in (
        lambda: validate_record(meta, 2, "w"),
        lambda: validate_record(broken(meta, lambda m: m["objects"]["7"]["masks"].pop()), 3, "w"),
        lambda: validate_record(broken(meta, lambda m: m.update(frame_names=["a"])), 3, "w"),
        lambda: validate_record(broken(meta, lambda m: m.update(ignore=[None])), 3, "w"),
    ):
        with pytest.raises(RecordError) as info:
            bad()
        assert info.value.reason == "frame_count"


def test_vqa_needs_an_answer(make_record):
    meta, images = make_record("vqa")
    meta["queries"][0]["answer"] = ""
    with pytest.raises(RecordError) as info:
        validate_record(meta, 1, "w")
    assert info.value.reason == "missing_answer"


def test_null_masks_and_ignore_allowed(make_record):
    meta, _ = make_record("rvos", 3)
    meta["objects"]["3"]["masks"][1] = None
    meta["ignore"] = [None, meta["objects"]["7"]["masks"][0], None]
    validate_record(meta, 3, "w")
