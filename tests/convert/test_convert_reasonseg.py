"""ReasonSeg: LabelMe JSON + images (+ explanatory answers) -> records."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from fixtures.official_layouts import random_polygon, write_reasonseg

from datamodules.convert import ConvertError, ReasonSegConverter
from datamodules.convert.reasonseg import label_masks


def test_masks_ignore_types_and_answers(tmp_path, convert, read_split, masks):
    fixture = write_reasonseg(tmp_path, num_images={"train": 3, "val": 2})
    summary = convert("reasonseg", fixture.root, tmp_path / "out")
    assert summary["splits"]["train"]["explanatory"].endswith("explanatory/train.json")
    assert summary["splits"]["train"]["dropped"] == {"unknown_image": 1}  # the explanatory entry of a missing image
    for split in ("train", "val"):
        records = read_split(tmp_path / "out", "reasonseg", split)
        names = sorted(n for s, n in fixture.annotations if s == split)
        assert sorted(records) == names
        for name, record in records.items():
            annotation = fixture.annotations[split, name]
            assert record.task == "reasonseg" and record.meta["frame_names"] == [name]
            target = masks(record, "0")[0]
            np.testing.assert_array_equal(target, fixture.target[split, name])
            np.testing.assert_array_equal(record.ignore_mask(0), fixture.ignore[split, name])
            assert record.ignore_mask(0).any() and not (target & record.ignore_mask(0)).any()
            expected_type = "reasoning" if annotation["is_sentence"] else "referring"
            texts = [q["text"] for q in record.queries[: len(annotation["text"])]]
            assert texts == annotation["text"] and [q["id"] for q in record.queries[:2]] == ["0", "1"]
            assert {q["type"] for q in record.queries} == {expected_type}
            assert all(q["object_ids"] == ["0"] for q in record.queries)
    train = read_split(tmp_path / "out", "reasonseg", "train")
    first, second, third = (train[n] for n in sorted(train))
    assert first.queries[0]["answer"] == "It holds things." and "answer" not in first.queries[1]
    assert len(first.queries) == 2
    assert second.queries[-1] == {
        "text": "why would someone use this?",
        "object_ids": ["0"],
        "type": "referring",
        "answer": "Because it helps.",
        "id": "explanatory-0",
    }
    assert all("answer" not in q for q in third.queries)


def test_flag_is_skipped_and_smaller_polygons_win():
    square = [[2, 2], [9, 2], [9, 9], [2, 9]]
    inner = [[4, 4], [6, 4], [6, 6], [4, 6]]
    shapes = [
        {"label": "flag", "points": [[0, 0], [11, 0], [11, 11], [0, 11]]},
        {"label": "target", "points": inner},
        {"label": "ignore", "points": square},
    ]
    target, ignore = label_masks(shapes, 12, 12, "test")
    assert target.sum() == 9 and target[4:7, 4:7].all()
    assert ignore.sum() == 64 - 9 and not ignore[0].any()


def _lisa_get_mask_from_json(shapes, height, width):
    """LISA's ``get_mask_from_json`` (utils/data_processing.py) after parsing, transcribed: 0 / 1 / 255 labels."""
    area_list, valid_poly_list = [], []
    for i in shapes:
        if "flag" == i["label"].lower():
            continue
        tmp_mask = np.zeros((height, width), dtype=np.uint8)
        cv2.polylines(tmp_mask, np.array([i["points"]], dtype=np.int32), True, 1, 1)
        cv2.fillPoly(tmp_mask, np.array([i["points"]], dtype=np.int32), 1)
        area_list.append(tmp_mask.sum())
        valid_poly_list.append(i)
    sort_index = list(np.argsort(area_list)[::-1].astype(np.int32))
    mask = np.zeros((height, width), dtype=np.uint8)
    for i in [valid_poly_list[s] for s in sort_index]:
        label_value = 255 if "ignore" in i["label"].lower() else 1
        cv2.polylines(mask, np.array([i["points"]], dtype=np.int32), True, label_value, 1)
        cv2.fillPoly(mask, np.array([i["points"]], dtype=np.int32), label_value)
    return mask


@pytest.mark.parametrize("seed", range(6))
def test_masks_match_lisa(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(16, 90, size=2))
    shapes = []
    for _ in range(int(rng.integers(1, 6))):
        polygon = random_polygon(rng, height, width, max_vertices=12)
        points = [polygon[k : k + 2] for k in range(0, len(polygon), 2)]
        label = str(rng.choice(["target", "ignore", "Ignore region", "flag", "the cup"]))
        shapes.append({"label": label, "points": points})
    labels = _lisa_get_mask_from_json(shapes, height, width)
    target, ignore = label_masks(shapes, height, width, "test")
    np.testing.assert_array_equal(target, labels == 1)
    np.testing.assert_array_equal(ignore, labels == 255)


def test_points_are_truncated_and_the_outline_is_inside():
    rect = [[2.9, 3.9], [7.9, 3.9], [7.99, 6.9], [2.5, 6.5]]  # int32: (2, 3) .. (7, 6)
    target, ignore = label_masks([{"label": "target", "points": rect}], 10, 10, "test")
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:7, 2:8] = True
    np.testing.assert_array_equal(target, expected)
    assert not ignore.any()


def test_bad_items_and_missing_root(tmp_path, convert, caplog):
    fixture = write_reasonseg(tmp_path, num_images={"val": 4})
    names = sorted(n for _, n in fixture.annotations)
    (fixture.root / "val" / f"{names[0]}.json").write_text("{broken")
    (fixture.root / "val" / f"{names[1]}.jpg").unlink()
    (fixture.root / "val" / f"{names[2]}.json").write_text('{"shapes": [{"label": "target"}], "text": ["x"]}')
    summary = convert("reasonseg", fixture.root, tmp_path / "out")
    assert summary["splits"]["val"]["skipped_records"] == {"bad_annotation": 1, "bad_json": 1, "missing_frame": 1}
    assert summary["splits"]["val"]["records"] == 1
    assert f"{names[1]}.jpg is missing" in caplog.text
    with pytest.raises(ConvertError, match="ReasonSeg folder not found"):
        ReasonSegConverter(tmp_path / "nowhere")
    (fixture.root / "explanatory").mkdir(exist_ok=True)
    (fixture.root / "explanatory" / "val.json").write_text("[")
    with pytest.raises(ConvertError, match="val.json"):
        ReasonSegConverter(fixture.root)
    assert ReasonSegConverter(fixture.root, explanatory=False).splits == ["val"]
