"""RefCOCO / RefCOCO+ / RefCOCOg: refs pickles + instances.json + COCO images -> records."""

from __future__ import annotations

import json
import os
import pickle
from collections import defaultdict

import numpy as np
import pytest
from fixtures.official_layouts import write_refcoco

from datamodules.convert import ConvertError, RefCOCOConverter
from datamodules.convert.__main__ import main
from datamodules.convert.inputs import load_plain_pickle


def _refs_by_image(fixture):
    refs = defaultdict(list)
    for ref in fixture.refs:
        refs[ref["image_id"]].append(ref)
    return refs


def test_every_split_masks_and_queries(tmp_path, convert, read_split, masks):
    fixture = write_refcoco(tmp_path / "refer", num_images=8)
    summary = convert("refcoco", fixture.data_dir, tmp_path / "out")
    refs = _refs_by_image(fixture)
    assert list(summary["splits"]) == ["testA", "testB", "train", "val"]
    total_queries = 0
    for split in ("train", "val", "testA", "testB"):
        records = read_split(tmp_path / "out", "refcoco", split)
        expected_images = {r["image_id"] for r in fixture.refs if r["split"] == split}
        assert set(records) == {str(i) for i in expected_images}
        for key, record in records.items():
            image_refs = refs[int(key)]
            assert record.meta["dataset"] == "refcoco" and record.task == "res"
            assert record.num_frames == 1 and record.size == (32, 48)
            assert record.meta["frame_names"] == [f"COCO_train2014_{int(key):012d}"]
            assert set(record.meta["objects"]) == {str(r["ann_id"]) for r in image_refs}
            for ref in image_refs:  # polygon, two-part polygon, iscrowd RLE and compressed RLE: pixel-exact
                np.testing.assert_array_equal(masks(record, str(ref["ann_id"]))[0], fixture.masks[ref["ann_id"]])
            expected = {
                (s["sent"], str(s["sent_id"]), ref["ref_id"], str(ref["ann_id"]))
                for ref in image_refs
                for s in ref["sentences"]
            }
            got = {(q["text"], q["id"], q["ref_id"], q["object_ids"][0]) for q in record.queries}
            assert got == expected and len(record.queries) == len(expected)
            assert {q["type"] for q in record.queries} == {"referring"}
            crowd = [a for a in fixture.instances["annotations"] if a["image_id"] == int(key) and a["iscrowd"]]
            assert all(record.meta["objects"][str(a["id"])]["iscrowd"] == 1 for a in crowd)
            total_queries += len(record.queries)
    assert summary["total"]["queries"] == total_queries == sum(len(r["sentences"]) for r in fixture.refs)
    assert summary["total"]["records"] == 8 and summary["total"]["objects"] == 32
    assert summary["total"]["query_types"] == {"referring": total_queries}
    assert summary["total"]["skipped_records"] == {} and summary["total"]["dropped"] == {}


def test_concat_sentences_one_query_per_ref(tmp_path, convert, read_split):
    fixture = write_refcoco(tmp_path / "refer", num_images=4)
    convert("refcoco", tmp_path / "refer", tmp_path / "out", "--concat-sentences", "--split", "val")  # parent as root
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["refcoco-val-000000.tar"]
    (record,) = read_split(tmp_path / "out", "refcoco", "val").values()
    refs = _refs_by_image(fixture)[int(record.key)]
    assert len(record.queries) == len(refs)
    for query, ref in zip(record.queries, refs):
        assert query["text"] == " ".join(f"{s['sent']}." for s in ref["sentences"])
        assert query["id"] == str(ref["ref_id"]) and query["sent_ids"] == [s["sent_id"] for s in ref["sentences"]]


def test_refcocog_umd_and_refcoco_plus(tmp_path, convert, read_split):
    write_refcoco(tmp_path / "refer", dataset="refcocog", split_by="umd", num_images=3, splits=("train", "val", "test"))
    summary = convert("refcocog", tmp_path / "refer" / "refcocog", tmp_path / "out")
    assert list(summary["splits"]) == ["test", "train", "val"] and summary["options"]["split_by"] == "umd"
    assert read_split(tmp_path / "out", "refcocog", "test")
    with pytest.raises(ConvertError, match=r"refs\(google\)\.p"):
        RefCOCOConverter(tmp_path / "refer" / "refcocog", split_by="google")
    write_refcoco(tmp_path / "plus", dataset="refcoco+", num_images=2)
    convert("refcoco+", tmp_path / "plus", tmp_path / "out_plus")
    assert {r.meta["dataset"] for r in read_split(tmp_path / "out_plus", "refcoco+", "train").values()} == {"refcoco+"}


def test_rasterizer_option(tmp_path, convert, read_split, masks):
    """``--rasterizer cv2`` gives InstructSeg's masks (outline included); the choice is in summary.json."""
    fixture = write_refcoco(tmp_path / "refer", num_images=4)
    default = convert("refcoco", fixture.data_dir, tmp_path / "coco", "--split", "train")
    assert default["options"]["rasterizer"] == "pycocotools"
    summary = convert("refcoco", fixture.data_dir, tmp_path / "cv2", "--split", "train", "--rasterizer", "cv2")
    assert summary["options"]["rasterizer"] == "cv2"
    coco, cv2 = (read_split(tmp_path / name, "refcoco", "train") for name in ("coco", "cv2"))
    differs = 0
    for key, record in cv2.items():
        for object_id in record.meta["objects"]:
            np.testing.assert_array_equal(masks(record, object_id)[0], fixture.cv2_masks[int(object_id)])
            differs += not np.array_equal(masks(record, object_id)[0], masks(coco[key], object_id)[0])
    assert differs == 2 * len(cv2)  # the two polygon annotations of each image; the RLEs agree
    with pytest.raises(ConvertError, match="rasterizer"):
        RefCOCOConverter(fixture.data_dir, rasterizer="pil")


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"echo hacked > {self.marker}",)


def test_malicious_pickle_is_rejected_without_running(tmp_path, capsys):
    fixture = write_refcoco(tmp_path / "refer", num_images=2)
    marker = tmp_path / "hacked"
    refs_path = fixture.data_dir / "refs(unc).p"
    refs_path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": _Exploit(marker)}]))
    assert main(["refcoco", "--root", str(fixture.data_dir), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    message = capsys.readouterr().err
    assert str(refs_path) in message and "system" in message and "rejected" in message
    assert not marker.exists()
    assert not list(tmp_path.glob("out/*.tar*"))


def test_plain_pickles_load_in_every_protocol(tmp_path):
    data = [{"ref_id": 1, "sentences": [{"sent": "a man", "tokens": ["a", "man"]}], "box": (1.5, 2.0), "ok": True}]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{protocol}.p"
        path.write_bytes(pickle.dumps(data, protocol=protocol))
        assert load_plain_pickle(path, "refs file") == data
    python2 = tmp_path / "py2.p"  # what Python 2 writes for [{'sent': 'man'}] (byte strings, protocol 2)
    python2.write_bytes(b"\x80\x02]q\x00}q\x01U\x04sentq\x02U\x03manq\x03sa.")
    assert load_plain_pickle(python2, "refs file") == [{"sent": "man"}]
    (tmp_path / "truncated.p").write_bytes(pickle.dumps(data)[:20])
    with pytest.raises(ConvertError, match="truncated.p"):
        load_plain_pickle(tmp_path / "truncated.p", "refs file")


def test_missing_top_level_files_are_named(tmp_path):
    fixture = write_refcoco(tmp_path / "refer", num_images=2)
    with pytest.raises(ConvertError, match="refs file not found.*refs\\(unc\\)\\.p"):
        RefCOCOConverter(tmp_path / "nowhere")
    (fixture.data_dir / "instances.json").unlink()
    with pytest.raises(ConvertError, match="instances.json"):
        RefCOCOConverter(fixture.data_dir)
    fixture = write_refcoco(tmp_path / "refer2", num_images=2)
    (fixture.data_dir / "instances.json").write_text("{not json")
    with pytest.raises(ConvertError, match="malformed JSON"):
        RefCOCOConverter(fixture.data_dir)
    write_refcoco(tmp_path / "refer3", num_images=2)
    with pytest.raises(ConvertError, match=r"split\(s\) \['nope'\] not found"):
        RefCOCOConverter(tmp_path / "refer3" / "refcoco", splits=["nope"])


def test_bad_items_are_skipped_and_counted(tmp_path, convert, read_split, caplog):
    fixture = write_refcoco(tmp_path / "refer", num_images=4, splits=("train",))
    refs, instances = fixture.refs, fixture.instances
    missing_image = instances["images"][0]["file_name"]
    (fixture.image_root / missing_image).unlink()
    annotations = {a["id"]: a for a in instances["annotations"]}
    image1 = [r for r in refs if r["image_id"] == 1001]
    annotations[image1[0]["ann_id"]]["segmentation"] = {"size": [32, 48], "counts": "!!bad"}  # malformed RLE
    image1[1]["ann_id"] = 999_999  # unknown annotation
    refs.append({**image1[2], "ref_id": 500, "image_id": 77_777})  # unknown image
    (fixture.data_dir / "instances.json").write_text(json.dumps(instances))
    (fixture.data_dir / "refs(unc).p").write_bytes(pickle.dumps(refs))
    summary = convert("refcoco", fixture.data_dir, tmp_path / "out")
    stats = summary["splits"]["train"]
    assert stats["skipped_records"] == {"missing_frame": 1, "unknown_image": 1}
    assert stats["dropped"] == {"bad_rle": 1, "unknown_annotation": 1}
    assert stats["records"] == 3
    records = read_split(tmp_path / "out", "refcoco", "train")
    assert set(records) == {"1001", "1002", "1003"}
    assert set(records["1001"].meta["objects"]) == {str(image1[2]["ann_id"]), str(image1[3]["ann_id"])}
    assert missing_image in caplog.text and "77777" in caplog.text and "999999" in caplog.text
