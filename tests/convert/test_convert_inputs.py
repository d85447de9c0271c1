"""Converter input helpers: keys, RLE checks, polygons."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.convert.inputs import checked_rle, coco_segmentation_rle, polygon_mask, unique_keys
from datamodules.rle import decode_rle, encode_rle, mask_to_counts
from datamodules.schema import RecordError


def test_unique_keys():
    assert unique_keys(["a.jpg", "a/jpg", "b c", "a_jpg-2", "a.jpg"]) == [
        "a_jpg",
        "a_jpg-2",
        "b_c",
        "a_jpg-2-2",
        "a_jpg-3",
    ]


def test_checked_rle_accepts_both_forms_and_rejects_bad_ones():
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:4, 2:6] = True
    compressed = encode_rle(mask)
    assert checked_rle(compressed, 5, 7, "x") == compressed
    assert checked_rle({"size": [5, 7], "counts": compressed["counts"].encode()}, 5, 7, "x") == compressed
    uncompressed = checked_rle({"size": [5, 7], "counts": mask_to_counts(mask)}, 5, 7, "x")
    np.testing.assert_array_equal(decode_rle(uncompressed), mask)
    cases = [
        ({"size": [5, 7], "counts": "#"}, "bad_rle"),
        ({"size": [5, 7], "counts": [3, 4]}, "bad_rle"),
        ({"size": [5, 7], "counts": [40, -5]}, "bad_rle"),
        ({"counts": "0"}, "bad_rle"),
        ("not an rle", "bad_rle"),
        (encode_rle(np.zeros((6, 7), dtype=bool)), "mask_size"),
    ]
    for rle, reason in cases:
        with pytest.raises(RecordError) as error:
            checked_rle(rle, 5, 7, "where")
        assert error.value.reason == reason and "where" in error.value.message


def test_polygons():
    mask = polygon_mask([[1, 1, 4, 1, 4, 3, 1, 3], [6, 0, 6, 0]], 5, 8, "x")  # the 2-point polygon is ignored
    expected = np.zeros((5, 8), dtype=bool)
    expected[1:4, 1:5] = True
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(polygon_mask([[[1, 1], [4, 1], [4, 3], [1, 3]]], 5, 8, "x"), expected)
    assert not decode_rle(coco_segmentation_rle([], 5, 8, "x")).any()
    for bad in ([[1, 2, 3]], [["a", 1, 2, 3, 4, 5]], "poly"):
        with pytest.raises(RecordError, match="x"):
            coco_segmentation_rle(bad, 5, 8, "x")
