"""Ref-YouTube-VOS and Ref-DAVIS17: meta_expressions.json + JPEG frames + palette PNG annotations -> records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.official_layouts import write_palette_videos
from PIL import Image

from datamodules.convert import ConvertError, RefYouTubeVOSConverter


def test_refytvos_object_ids_masks_and_unannotated_valid(tmp_path, convert, read_split, masks):
    fixture = write_palette_videos(tmp_path / "ytvos", videos={"train": 2, "valid": 1}, num_objects=2)
    summary = convert("refytvos", fixture.root, tmp_path / "out")
    assert summary["splits"]["train"]["has_annotations"] is True
    assert summary["splits"]["valid"]["has_annotations"] is False
    train = read_split(tmp_path / "out", "refytvos", "train")
    assert set(train) == set(fixture.videos["train"])
    for vid, record in train.items():
        truth = fixture.videos["train"][vid]
        assert record.task == "rvos" and record.meta["video"] == vid and record.meta["has_annotations"] is True
        assert record.num_frames == 4 and record.meta["frame_names"] == truth.frames
        assert set(record.meta["objects"]) == {"1", "2"}
        for object_id, expected in truth.masks.items():
            for got, want in zip(masks(record, object_id), expected):
                np.testing.assert_array_equal(got, want)
        assert record.meta["objects"]["2"]["masks"][-1] is None  # object 2 leaves on the last frame
        assert "ignore" not in record.meta
        assert [(q["id"], q["object_ids"], q["text"]) for q in record.queries] == [
            (exp_id, [e["obj_id"]], e["exp"]) for exp_id, e in truth.expressions.items()
        ]
    (record,) = read_split(tmp_path / "out", "refytvos", "valid").values()
    assert record.meta["has_annotations"] is False
    assert [q["object_ids"] for q in record.queries] == [["exp-0"], ["exp-1"], ["exp-2"], ["exp-3"]]
    assert all(o["masks"] == [None] * 4 for o in record.meta["objects"].values())


def test_refytvos_splits_as_referformer(tmp_path, convert, read_split):
    """valid = the listed valid videos minus those of meta_expressions/test; test frames come from valid/JPEGImages."""
    fixture = write_palette_videos(tmp_path / "ytvos", videos={"train": 1, "valid": 2}, test_videos=3)
    root = fixture.root
    valid_meta = json.loads((root / "meta_expressions" / "valid" / "meta_expressions.json").read_text())["videos"]
    test_meta = json.loads((root / "meta_expressions" / "test" / "meta_expressions.json").read_text())["videos"]
    assert len(valid_meta) == 5 and not (root / "test").exists()  # the release: valid lists both, frames in valid/
    summary = convert("refytvos", root, tmp_path / "out")
    assert list(summary["splits"]) == ["test", "train", "valid"]
    valid, test = (read_split(tmp_path / "out", "refytvos", split) for split in ("valid", "test"))
    assert {r.meta["video"] for r in valid.values()} == set(valid_meta) - set(test_meta) == set(fixture.videos["valid"])
    assert summary["splits"]["valid"]["test_videos_excluded"] == 3
    assert {r.meta["video"] for r in test.values()} == set(test_meta) == set(fixture.videos["test"])
    assert summary["splits"]["test"]["frame_root"] == str(root / "valid" / "JPEGImages")
    for record in test.values():
        files = sorted((root / "valid" / "JPEGImages" / record.meta["video"]).glob("*.jpg"))
        assert record.meta["frame_names"] == [f.stem for f in files] and record.num_frames == len(files)
        assert record.frames[0].tobytes() == np.asarray(Image.open(files[0]).convert("RGB")).tobytes()
        assert record.meta["has_annotations"] is False


def test_refdavis_void_becomes_ignore(tmp_path, convert, read_split, masks):
    fixture = write_palette_videos(tmp_path / "davis", videos={"valid": 2}, annotated=("valid",), void=True)
    convert("refdavis", fixture.root, tmp_path / "out")
    records = read_split(tmp_path / "out", "refdavis", "valid")
    for vid, record in records.items():
        truth = fixture.videos["valid"][vid]
        assert record.meta["dataset"] == "refdavis"
        for t in range(record.num_frames):
            np.testing.assert_array_equal(record.ignore_mask(t), truth.ignore[t])
        for object_id, expected in truth.masks.items():
            for got, want in zip(masks(record, object_id), expected):
                np.testing.assert_array_equal(got, want)


def test_missing_frames_annotations_and_metadata(tmp_path, convert, caplog):
    fixture = write_palette_videos(tmp_path / "ytvos", videos={"train": 3}, num_frames=3)
    vids = sorted(fixture.videos["train"])
    frame = fixture.root / "train" / "JPEGImages" / vids[0] / "00005.jpg"
    frame.unlink()
    (fixture.root / "train" / "Annotations" / vids[1] / "00010.png").unlink()
    meta_path = fixture.root / "meta_expressions" / "train" / "meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"][vids[2]]["expressions"]["0"]["obj_id"] = "seven"
    meta_path.write_text(json.dumps(meta))
    summary = convert("refytvos", fixture.root, tmp_path / "out")
    split = summary["splits"]["train"]
    assert split["skipped_records"] == {"missing_annotation": 1, "missing_frame": 1}
    assert split["dropped"] == {"bad_object_id": 1} and split["records"] == 1 and split["queries"] == 3
    assert str(frame) in caplog.text
    with pytest.raises(ConvertError, match=r"split\(s\) \['valid'\] not found"):
        RefYouTubeVOSConverter(fixture.root, ["valid"])
    meta_path.write_text("{}")
    with pytest.raises(ConvertError, match="meta_expressions.json: expected an object with a 'videos'"):
        RefYouTubeVOSConverter(fixture.root)


def test_flat_split_folder_layout(tmp_path, convert, read_split):
    fixture = write_palette_videos(tmp_path / "ytvos", videos={"train": 1})
    (fixture.root / "meta_expressions" / "train" / "meta_expressions.json").rename(
        fixture.root / "train" / "meta_expressions.json"
    )
    summary = convert("refytvos", fixture.root / "train", tmp_path / "out")
    assert list(summary["splits"]) == ["train"] and summary["splits"]["train"]["records"] == 1
    assert read_split(tmp_path / "out", "refytvos", "train")
