"""MeViS and ReVOS: meta_expressions + mask_dict.json RLEs (+ foreground, type ids) -> records."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fixtures.official_layouts import write_mevis, write_revos

from datamodules.convert import ConvertError, MeViSConverter, ReVOSConverter


def _check_masks(record, truth, masks):
    for anno_id, expected in truth.masks.items():
        for got, want in zip(masks(record, anno_id), expected):
            np.testing.assert_array_equal(got, want)


def test_mevis_multi_object_queries_and_unannotated_split(tmp_path, convert, read_split, masks):
    fixture = write_mevis(tmp_path / "mevis", videos={"train": 2, "valid_u": 1, "valid": 1})
    summary = convert("mevis", fixture.root, tmp_path / "out")
    assert list(summary["splits"]) == ["train", "valid", "valid_u"]
    assert [summary["splits"][s]["has_annotations"] for s in ("train", "valid", "valid_u")] == [True, False, True]
    for split in ("train", "valid_u"):
        for vid, record in read_split(tmp_path / "out", "mevis", split).items():
            truth = fixture.videos[split][vid]
            assert record.task == "rvos" and record.meta["frame_names"] == truth.frames
            assert set(record.meta["objects"]) == set(truth.masks)
            _check_masks(record, truth, masks)
            assert [(q["id"], q["object_ids"], q["obj_id"]) for q in record.queries] == [
                (exp_id, e["anno_id"], e["obj_id"]) for exp_id, e in truth.expressions.items()
            ]
            multi = record.queries[-1]
            assert len(multi["object_ids"]) == 2
            union = record.target_mask(multi["object_ids"], 0)
            want = truth.masks[multi["object_ids"][0]][0] | truth.masks[multi["object_ids"][1]][0]
            np.testing.assert_array_equal(union, want)
    (record,) = read_split(tmp_path / "out", "mevis", "valid").values()
    truth = next(iter(fixture.videos["valid"].values()))
    assert record.meta["has_annotations"] is False and set(record.meta["objects"]) == set(truth.masks)
    assert all(o["masks"] == [None] * 4 for o in record.meta["objects"].values())


def test_revos_types_no_target_and_foreground(tmp_path, convert, read_split, masks, decode):
    fixture = write_revos(tmp_path / "ReVOS", videos={"train": 2, "valid": 1})
    summary = convert("revos", fixture.root, tmp_path / "out")
    assert summary["task"] == "reasonvos"
    assert summary["total"]["query_types"] == {"no_target": 3, "reasoning": 6, "referring": 6}
    for split in ("train", "valid"):
        records = read_split(tmp_path / "out", "revos", split)
        by_video = {r.meta["video"]: r for r in records.values()}
        assert set(by_video) == set(fixture.videos[split])
        for vid, record in by_video.items():
            truth = fixture.videos[split][vid]
            assert "/" in vid and record.key == vid.replace("/", "_")
            assert record.task == "reasonvos"
            _check_masks(record, truth, masks)
            expected = [(i, e["type_id"], e["anno_id"]) for i, e in truth.expressions.items()]
            assert [(q["id"], q["type_id"], q["object_ids"]) for q in record.queries] == expected
            types = {0: "referring", 1: "reasoning", 2: "no_target"}
            assert [q["type"] for q in record.queries] == [types[e["type_id"]] for e in truth.expressions.values()]
            no_target = record.queries[-1]
            assert no_target["type"] == "no_target" and no_target["object_ids"] == []
            assert not record.target_mask(no_target["object_ids"], 0).any()
            for got, want in zip(decode(record.meta["foreground"], record.size), truth.foreground):
                np.testing.assert_array_equal(got, want)


def test_bad_rle_missing_annotation_and_type_mismatch(tmp_path, convert, read_split):
    fixture = write_revos(tmp_path / "ReVOS", videos={"train": 2})
    vids = sorted(fixture.videos["train"])
    mask_dict = json.loads((fixture.root / "mask_dict.json").read_text())
    truth = fixture.videos["train"][vids[0]]
    first, second, third = list(truth.masks)
    mask_dict[first][0] = {"size": [32, 48], "counts": "#bad"}  # malformed RLE: its queries go
    del mask_dict[third]  # unknown annotation
    (fixture.root / "mask_dict.json").write_text(json.dumps(mask_dict))
    meta_path = fixture.root / "meta_expressions_train_.json"
    meta = json.loads(meta_path.read_text())
    meta["videos"][vids[1]]["expressions"]["0"]["type_id"] = 2  # no-target type with an object
    meta_path.write_text(json.dumps(meta))
    foreground = json.loads((fixture.root / "mask_dict_foreground.json").read_text())
    foreground[vids[1]]["masks_rle"] = foreground[vids[1]]["masks_rle"][:2]  # wrong length: dropped, record kept
    (fixture.root / "mask_dict_foreground.json").write_text(json.dumps(foreground))
    summary = convert("revos", fixture.root, tmp_path / "out")
    assert summary["splits"]["train"]["dropped"] == {
        "bad_foreground": 1,
        "bad_rle": 2,
        "type_mismatch": 1,
        "unknown_object": 1,
    }
    records = {r.meta["video"]: r for r in read_split(tmp_path / "out", "revos", "train").values()}
    assert [q["id"] for q in records[vids[0]].queries] == ["1", "4"]
    assert second in records[vids[0]].meta["objects"] and first not in records[vids[0]].meta["objects"]
    assert "foreground" not in records[vids[1]].meta and len(records[vids[1]].queries) == 4


def test_missing_frames_and_top_level_errors(tmp_path, convert):
    fixture = write_mevis(tmp_path / "mevis", videos={"train": 2})
    vid = sorted(fixture.videos["train"])[0]
    (fixture.root / "train" / "JPEGImages" / vid / "00002.jpg").unlink()
    summary = convert("mevis", fixture.root, tmp_path / "out")
    assert summary["splits"]["train"]["skipped_records"] == {"missing_frame": 1}
    (fixture.root / "train" / "mask_dict.json").write_text("[1, 2")
    with pytest.raises(ConvertError, match="mask_dict.json: malformed JSON"):
        MeViSConverter(fixture.root)
    with pytest.raises(ConvertError, match="revos folder not found"):
        ReVOSConverter(tmp_path / "nowhere")
    revos = write_revos(tmp_path / "ReVOS", videos={"valid": 1})
    (revos.root / "mask_dict_foreground.json").write_text('"nope"')
    with pytest.raises(ConvertError, match="mask_dict_foreground.json"):
        ReVOSConverter(revos.root)
