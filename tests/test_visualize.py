"""Tests of instructseg.visualize: overlays, PNG/GIF files and the submission mask layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from instructseg.visualize import (
    PALETTE,
    STRIP_COLOR,
    _color_distance,
    contrast_color,
    overlay_mask,
    prediction_label,
    save_overlay_gif,
    save_overlay_png,
    save_submission_masks,
    side_by_side,
)


def _image(height: int = 48, width: int = 64, value: int = 40) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def _mask(height: int = 48, width: int = 64, top: int = 20) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + 16, 10:40] = True
    return mask


def test_overlay_tints_hatches_and_outlines() -> None:
    result = np.asarray(overlay_mask(_image(), _mask(), color=(200, 0, 0), alpha=0.5, min_size=1))
    assert result.shape == (48, 64, 3)  # no text, no strip
    assert tuple(result[0, 0]) == (40, 40, 40)  # outside: unchanged
    assert tuple(result[28, 25]) == (120, 20, 20)  # interior: 0.5 * image + 0.5 * colour
    assert tuple(result[28, 28]) == (200, 0, 0)  # hatching line ((row + col) % 8 < 2): opaque colour
    assert tuple(result[28, 30]) == (120, 20, 20)  # between hatching lines
    assert tuple(result[20, 25]) == (200, 0, 0)  # contour: opaque colour
    assert tuple(result[21, 25]) == (200, 0, 0)  # the contour is 2 px wide
    changed = np.any(result != _image(), axis=-1)
    np.testing.assert_array_equal(changed, _mask())  # nothing drawn outside the mask


@pytest.mark.parametrize("color", PALETTE + ((128, 128, 128), (0, 0, 0), (255, 255, 255)))
def test_tint_contrasts_with_the_object(color) -> None:
    image, mask = _image(value=90), _mask()
    image[mask] = color
    tint = contrast_color(image, mask)
    assert tint in PALETTE and tint != color
    distances = [_color_distance(np.array(c), np.array(color)) for c in PALETTE]
    assert _color_distance(np.array(tint), np.array(color)) == max(distances)
    drawn = np.asarray(overlay_mask(image, mask, min_size=1))
    assert _color_distance(drawn[28, 28], np.array(color)) > 250  # a hatching line stands out from the object


def test_red_tint_would_vanish_on_a_red_object_but_the_default_does_not() -> None:
    image, mask = _image(value=90), _mask()
    image[mask] = (255, 40, 40)
    red = np.asarray(overlay_mask(image, mask, color=(255, 40, 40), min_size=1))
    auto = np.asarray(overlay_mask(image, mask, min_size=1))
    assert _color_distance(red[mask], image[mask]).max() < 1  # the old fixed red: invisible
    assert _color_distance(auto[mask], image[mask]).mean() > 100


def test_prediction_label() -> None:
    assert prediction_label(0.8731, False, empty=False) == "score 0.87 | target"
    assert prediction_label(0.0412, True, empty=True) == "score 0.04 | no target"
    assert prediction_label(0.61, False, empty=True) == "score 0.61 | target, empty mask"
    assert prediction_label(None, None, empty=False) == ""


def test_caption_and_label_go_on_a_strip_above_the_frame() -> None:
    image, mask = _image(), _mask(top=0)  # the object touches the top edge
    plain = np.asarray(overlay_mask(image, mask, min_size=1))
    captioned = np.asarray(
        overlay_mask(image, mask, "the dog on the left of the red car, behind the tree", 0.9, False, min_size=1)
    )
    assert captioned.shape[1:] == plain.shape[1:] and captioned.shape[0] > plain.shape[0]
    np.testing.assert_array_equal(captioned[-plain.shape[0] :], plain)  # every frame pixel visible, unchanged
    strip = captioned[: -plain.shape[0]]
    assert (strip != STRIP_COLOR).any(axis=-1).sum() > 50  # text was written on the strip
    answer = np.asarray(
        overlay_mask(image, mask, "the dog on the left of the red car, behind the tree", 0.1, True, min_size=1)
    )
    np.testing.assert_array_equal(answer[-plain.shape[0] :], plain)
    assert not np.array_equal(answer[: -plain.shape[0]], strip)  # another score and answer: another label
    only_label = np.asarray(overlay_mask(image, mask, score=0.1, no_target=True, min_size=1))
    assert only_label.shape[0] > plain.shape[0]  # the label shows even without a caption


def test_overlay_accepts_pil_and_tensor_mask() -> None:
    image = Image.fromarray(_image())
    from_tensor = np.asarray(overlay_mask(image, torch.from_numpy(_mask()), "a box", 0.5, False))
    from_numpy = np.asarray(overlay_mask(_image(), _mask(), "a box", 0.5, False))
    np.testing.assert_array_equal(from_tensor, from_numpy)


def test_overlay_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        overlay_mask(_image(), np.zeros((10, 10), bool))


def test_save_overlay_png(tmp_path: Path) -> None:
    path = save_overlay_png(tmp_path / "nested" / "dir" / "overlay.png", _image(), _mask(), "a cat", None, 0.7, False)
    assert path.is_file()
    with Image.open(path) as saved:
        assert saved.width == 64 * 4 and saved.height > 48 * 4  # enlarged x4 to reach 256 px, strip above
        frame = np.asarray(saved.convert("RGB"))[-48 * 4 :]
    assert tuple(frame[0, 0]) == (40, 40, 40)


def test_ground_truth_side_by_side_shares_one_strip(tmp_path: Path) -> None:
    path = save_overlay_png(tmp_path / "gt.png", _image(), _mask(), "a cat", _mask(top=4), 0.7, False)
    with Image.open(path) as saved:
        picture = np.asarray(saved.convert("RGB"))
    frames = picture[-48 * 4 :]
    assert picture.shape[1] == 2 * 64 * 4 + 4
    assert tuple(frames[0, 0]) == (40, 40, 40) and tuple(frames[0, 64 * 4 + 4]) == (40, 40, 40)  # both frames whole
    left, right = frames[:, : 64 * 4], frames[:, 64 * 4 + 4 :]
    assert not np.array_equal(left, right)  # prediction and target masks differ


def test_save_overlay_gif_has_one_frame_per_mask(tmp_path: Path) -> None:
    frames = [_image(value=30 + 20 * t) for t in range(5)]
    masks = [_mask(top=4 * t) for t in range(5)]
    scores, no_target = [0.9, 0.8, 0.2, 0.1, 0.7], [False, False, True, True, False]
    path = save_overlay_gif(tmp_path / "gif" / "video.gif", frames, masks, "the moving box", 5, None, scores, no_target)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.width == 64 * 4 and gif.height > 48 * 4
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 200
    with pytest.raises(ValueError, match="as many masks"):
        save_overlay_gif(tmp_path / "bad.gif", frames, masks[:2])
    with pytest.raises(ValueError, match="scores"):
        save_overlay_gif(tmp_path / "bad.gif", frames, masks, scores=scores[:3])


def test_save_submission_masks_layout_and_values(tmp_path: Path) -> None:
    masks = torch.stack([torch.from_numpy(_mask(top=t)) for t in (0, 8, 16)]).to(torch.uint8)
    names = ["00000", "00005", "00010"]
    directory = save_submission_masks(tmp_path / "sub", "vid_a", "3", names, masks)
    assert directory == tmp_path / "sub" / "Annotations" / "vid_a" / "3"
    assert sorted(p.name for p in directory.iterdir()) == [f"{name}.png" for name in names]
    for name, mask in zip(names, masks):
        with Image.open(directory / f"{name}.png") as png:
            assert png.mode == "L"
            values = np.asarray(png)
        assert set(np.unique(values).tolist()) == {0, 255}
        assert np.array_equal(values == 255, mask.numpy().astype(bool))
    empty = save_submission_masks(tmp_path / "sub", "vid_b", "0", ["00000"], [np.zeros((4, 6), bool)])
    with Image.open(empty / "00000.png") as png:
        assert np.asarray(png).max() == 0 and png.size == (6, 4)
    with pytest.raises(ValueError, match="frame names"):
        save_submission_masks(tmp_path / "sub", "vid_c", "0", names[:2], masks)


def test_side_by_side() -> None:
    left, right = Image.new("RGB", (30, 20), (255, 0, 0)), Image.new("RGB", (40, 25), (0, 255, 0))
    combined = side_by_side([left, right], gap=5)
    assert combined.size == (75, 25)
    assert combined.getpixel((0, 0)) == (255, 0, 0)
    assert combined.getpixel((32, 0)) == (0, 0, 0)  # gap
    assert combined.getpixel((35, 24)) == (0, 255, 0)
    assert combined.getpixel((0, 24)) == (0, 0, 0)  # padding below the shorter image


def test_small_images_are_enlarged_exactly():
    image, mask = _image(), _mask()
    big = np.asarray(overlay_mask(image, mask, min_size=256))
    factor = -(-256 // max(image.shape[:2]))
    assert big.shape[:2] == (image.shape[0] * factor, image.shape[1] * factor)
    enlarged = mask.repeat(factor, axis=0).repeat(factor, axis=1)
    np.testing.assert_array_equal(np.any(big != 40, axis=-1), enlarged)  # nearest: the mask edges stay exact
