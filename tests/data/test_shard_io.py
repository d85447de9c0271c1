"""Writing and reading shards: exact round trips, URL expansion, and skipping of bad data with counted reasons."""

import io
import json
import logging
import tarfile

import numpy as np
import pytest

from datamodules.rle import decode_rle, encode_rle
from datamodules.schema import RecordError
from datamodules.shards import RecordWriter, SkipCounter, expand_urls, iter_records


def test_round_trip_images_and_videos(tmp_path, make_record):
    written = {}
    with RecordWriter(str(tmp_path / "out" / "rt-%06d.tar"), maxcount=2) as writer:
        for index, (task, frames, ext) in enumerate(
            [("res", 1, "jpg"), ("rvos", 4, "png"), ("reasonvos", 3, "png"), ("vqa", 1, "png"), ("reasonseg", 1, "jpg")]
        ):
            meta, images = make_record(task, frames, seed=index)
            writer.write(f"rec{index}", meta, images, ext=ext)
            written[f"rec{index}"] = (meta, images, ext)
    assert len(writer.shards) == 3
    records = list(iter_records(str(tmp_path / "out" / "rt-*.tar")))
    assert [r.key for r in records] == list(written)
    for record in records:
        meta, images, ext = written[record.key]
        assert record.meta == json.loads(json.dumps(meta))
        assert record.meta["extra"] == {"kept": True}
        assert len(record.frames) == meta["frames"]
        for t, image in enumerate(images):
            decoded = record.frames[t]
            assert decoded.shape == image.shape and decoded.dtype == np.uint8
            if ext == "png":
                np.testing.assert_array_equal(decoded, image)
            else:
                assert np.abs(decoded.astype(int) - image).mean() < 3  # JPEG quality 95
            for object_id, entry in meta["objects"].items():
                np.testing.assert_array_equal(record.object_mask(object_id, t), decode_rle(entry["masks"][t]))
        union = record.target_mask(["3", "7"], 0)
        assert union.sum() == record.object_mask("3", 0).sum() + record.object_mask("7", 0).sum()
        assert not record.ignore_mask(0).any()


def test_encoded_frames_are_written_as_given(tmp_path, make_record, raw):
    meta, images = make_record("res")
    data = raw.png(images[0])
    with RecordWriter(str(tmp_path / "enc-%06d.tar")) as writer:
        writer.write("k", meta, [data], ext="png")
    (record,) = iter_records(writer.shards)
    assert record.frames.encoded[0] == data


def test_writer_validates(tmp_path, make_record):
    meta, images = make_record("res")
    with RecordWriter(str(tmp_path / "v-%06d.tar")) as writer:
        with pytest.raises(ValueError, match="key"):
            writer.write("a.b", meta, images)
        with pytest.raises(RecordError, match="frame_count"):
            writer.write("k", meta, images * 2)
        with pytest.raises(ValueError, match="24x32"):
            writer.write("k", meta, [np.zeros((10, 10, 3), dtype=np.uint8)])
        with pytest.raises(ValueError, match="ext"):
            writer.write("k", meta, images, ext="gif")


def test_expand_urls(tmp_path):
    for i in range(3):
        (tmp_path / f"set-{i:06d}.tar").write_bytes(b"")
    brace = str(tmp_path / "set-{000000..000002}.tar")
    assert expand_urls(brace) == [str(tmp_path / f"set-{i:06d}.tar") for i in range(3)]
    assert expand_urls(str(tmp_path / "set-*.tar")) == expand_urls(brace)
    assert len(expand_urls([brace, str(tmp_path / "set-000001.tar")])) == 4
    real = tmp_path / "real.tar"
    with tarfile.open(real, "w") as archive:
        archive.addfile(tarfile.TarInfo("a.json"), io.BytesIO(b""))
    assert expand_urls(f"pipe:cat {real}") == [f"pipe:cat {real}"]  # remote URLs are kept (after their check)
    with pytest.raises(FileNotFoundError, match="nothing-"):
        expand_urls(str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match=r"set-\{000000\.\.000005\}.*missing"):
        expand_urls(str(tmp_path / "set-{000000..000005}.tar"))


def bad_samples(make_record, raw):
    """(reason, sample) pairs that break one rule each, written without validation."""
    cases = {}
    meta, images = make_record("rvos", 2)
    cases["bad_json"] = {**raw.sample("badjson", meta, images), "json": b"{not json"}
    cases["missing_json"] = {k: v for k, v in raw.sample("nojson", meta, images).items() if k != "json"}
    cases["bad_frame"] = {**raw.sample("badframe", meta, images), "001.png": b"\x89PNG garbage"}
    wrong_size = json.loads(json.dumps(meta))
    wrong_size["objects"]["3"]["masks"][0] = encode_rle(np.zeros((5, 5), dtype=bool))
    cases["mask_size"] = raw.sample("masksize", wrong_size, images)
    cases["frame_count"] = raw.sample("framecount", meta, images[:1])
    missing = json.loads(json.dumps(meta))
    missing["queries"][0]["object_ids"] = ["42"]
    cases["missing_object"] = raw.sample("missingobject", missing, images)
    cases["frame_size"] = raw.sample("framesize", meta, [images[0], images[1][:10]])
    return cases


def test_bad_records_are_skipped_and_counted(tmp_path, make_record, raw, caplog):
    good = [raw.sample(f"good{i}", *make_record("rvos", 2, seed=i)) for i in range(3)]
    cases = bad_samples(make_record, raw)
    url = raw.write(tmp_path / "mixed.tar", [good[0], *cases.values(), good[1], good[2]])
    counter = SkipCounter()
    with caplog.at_level(logging.WARNING, logger="instructseg.data"):
        keys = [r.key for r in iter_records(url, counter)]
    assert keys == ["good0", "good1", "good2"]
    assert dict(counter.totals) == {reason: 1 for reason in cases}
    assert counter.pop_recent() == {reason: 1 for reason in cases} and counter.pop_recent() == {}
    assert len(caplog.records) == len(cases)
    assert all(url in r.getMessage() for r in caplog.records)
    assert any("'badjson'" in r.getMessage() and "bad_json" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("cut", [0.35, 0.6, 0.7, "block"])
def test_truncated_shard_is_counted_and_earlier_records_kept(tmp_path, make_record, raw, cut):
    samples = [raw.sample(f"rec{i}", *make_record("rvos", 3, seed=i)) for i in range(4)]
    data = open(raw.write(tmp_path / "full.tar", samples), "rb").read()
    size = len(data) // 2 // 512 * 512 if cut == "block" else int(len(data) * cut)  # "block": cut at a header
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(data[:size])
    after = raw.write(tmp_path / "after.tar", [raw.sample("after", *make_record("res"))])
    counter = SkipCounter()
    keys = [r.key for r in iter_records([str(truncated), after], counter)]
    assert keys[-1] == "after" and len(keys) < 5
    assert keys[:-1] == [f"rec{i}" for i in range(len(keys) - 1)]
    assert counter.totals["bad_tar"] == 1


def test_unreadable_shard_file(tmp_path, make_record, raw):
    garbage = tmp_path / "garbage.tar"
    garbage.write_bytes(b"this is not a tar file" * 100)
    counter = SkipCounter()
    assert list(iter_records(str(garbage), counter)) == []
    assert counter.totals["bad_tar"] == 1


def test_task_override(tmp_path, make_record, raw):
    url = raw.write(tmp_path / "o.tar", [raw.sample("k", *make_record("res"))])
    (record,) = iter_records(url, task="reasonseg")
    assert record.task == "reasonseg"


def test_lazy_decode_errors(tmp_path, make_record, raw):
    meta, images = make_record("res")
    sample = raw.sample("k", meta, images)
    sample["000.png"] = sample["000.png"][:60]  # header intact, pixel data cut
    (record,) = iter_records(raw.write(tmp_path / "lazy.tar", [sample]), SkipCounter())
    with pytest.raises(RecordError) as frame_error:
        record.frames[0]
    assert frame_error.value.reason == "bad_frame"


def test_rle_counts_checked_on_read(tmp_path, make_record, raw):
    meta, images = make_record("res")
    meta["objects"]["3"]["masks"][0]["counts"] = "414"  # right characters, wrong sum
    counter = SkipCounter()
    assert list(iter_records(raw.write(tmp_path / "rle.tar", [raw.sample("k", meta, images)]), counter)) == []
    assert counter.totals == {"bad_rle": 1}


def test_foreground_mask_prefers_the_stored_foreground():
    from datamodules.shards import Frames, Record

    first, second = np.zeros((4, 6), bool), np.zeros((4, 6), bool)
    first[0, :2], second[3, 4:] = True, True
    objects = {"1": {"masks": [encode_rle(first)]}, "2": {"masks": [encode_rle(second)]}}
    meta = {"task": "reasonvos", "frames": 1, "height": 4, "width": 6, "objects": objects, "queries": []}
    plain = Record("k", "u", meta, Frames([], "u/k"))
    np.testing.assert_array_equal(plain.foreground_mask(0), first | second)  # union of every object
    stored = np.zeros((4, 6), bool)
    stored[1:3, 1:5] = True
    with_foreground = Record("k", "u", {**meta, "foreground": [encode_rle(stored)]}, Frames([], "u/k"))
    np.testing.assert_array_equal(with_foreground.foreground_mask(0), stored)
