"""Converter input helpers: keys, RLE checks, polygons."""

from __future__ import annotations

import cv2
import numpy as np
import pycocotools.mask as mask_api
import pytest
from fixtures.official_layouts import random_polygon

from datamodules.convert.inputs import checked_rle, coco_segmentation_rle, polygons_rle, unique_keys
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


def test_polygon_rules_on_rectangles():
    """pycocotools covers an integer rectangle half-open, InstructSeg's cv2 rule includes its outline."""
    rect = [1, 1, 4, 1, 4, 3, 1, 3]
    half_open, outline = np.zeros((5, 8), dtype=bool), np.zeros((5, 8), dtype=bool)
    half_open[1:3, 1:4] = True
    outline[1:4, 1:5] = True
    dot = [6, 0, 6, 0]  # a 2-point polygon: no pixel for pycocotools, the pixel (x 6, y 0) for cv2.fillPoly
    np.testing.assert_array_equal(decode_rle(polygons_rle([rect, dot], 5, 8, "x", "pycocotools")), half_open)
    with_dot = outline.copy()
    with_dot[0, 6] = True
    np.testing.assert_array_equal(decode_rle(polygons_rle([rect, dot], 5, 8, "x", "cv2")), with_dot)
    fractional = [1.9, 1.99, 4.7, 1.5, 4.99, 3.2, 1.2, 3.9]  # cv2: truncated to the same integer rectangle
    np.testing.assert_array_equal(decode_rle(polygons_rle([fractional], 5, 8, "x", "cv2")), outline)
    assert not decode_rle(coco_segmentation_rle([], 5, 8, "x")).any()
    for bad in ([[1, 2, 3]], [["a", 1, 2, 3, 4, 5]], "poly"):
        with pytest.raises(RecordError, match="x"):
            coco_segmentation_rle(bad, 5, 8, "x")
    with pytest.raises(ValueError, match="rasterizer"):
        polygons_rle([rect], 5, 8, "x", "pil")


def _instructseg_eval_res(segmentation, height, width):
    """InstructSeg's ``eval_res.py`` ground truth for a polygon annotation, transcribed."""
    segm = np.zeros((height, width), dtype=np.uint8)
    for poly in segmentation:
        poly = np.array(poly, dtype=np.int32).reshape(-1, 2)
        cv2.fillPoly(segm, [poly], 1)
    return segm.astype(np.bool_)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools' decode under NumPy 2
@pytest.mark.parametrize("seed", range(5))
def test_polygon_rules_match_the_official_code(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(20, 120, size=2))
    polygons = [random_polygon(rng, height, width) for _ in range(int(rng.integers(1, 4)))]
    # the REFER API's getMask: frPyObjects, decode, union of the parts
    refer = mask_api.decode(mask_api.frPyObjects(polygons, height, width)).sum(axis=2) > 0
    np.testing.assert_array_equal(decode_rle(polygons_rle(polygons, height, width, "x", "pycocotools")), refer)
    ours = decode_rle(coco_segmentation_rle(polygons, height, width, "x", "cv2"))
    np.testing.assert_array_equal(ours, _instructseg_eval_res(polygons, height, width))
