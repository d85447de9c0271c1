"""Tests of instructseg.visualize: overlays, PNG/GIF files and the submission mask layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import binary_erosion

from instructseg.visualize import (
    overlay_mask,
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


def test_overlay_tints_inside_and_outlines() -> None:
    result = np.asarray(overlay_mask(_image(), _mask(), color=(200, 0, 0), alpha=0.5, min_size=1))
    assert result.shape == (48, 64, 3)
    assert tuple(result[0, 0]) == (40, 40, 40)  # outside: unchanged
    assert tuple(result[28, 25]) == (120, 20, 20)  # interior: 0.5 * image + 0.5 * colour
    assert tuple(result[20, 25]) == (228, 128, 128)  # contour: colour lightened halfway to white
    assert tuple(result[21, 25]) == (228, 128, 128)  # the contour is 2 px wide


def test_overlay_accepts_pil_and_tensor_mask_and_writes_caption() -> None:
    image = Image.fromarray(_image())
    plain = np.asarray(overlay_mask(image, torch.from_numpy(_mask()), min_size=1))
    captioned = np.asarray(
        overlay_mask(image, _mask(), caption="the dog on the left of the red car, behind the tree", min_size=1)
    )
    assert captioned.shape == plain.shape
    assert not np.array_equal(captioned[:8], plain[:8])  # strip + text at the top
    assert np.array_equal(captioned[-8:], plain[-8:])  # the rest of the picture is untouched


def test_overlay_rejects_mismatched_mask() -> None:
    with pytest.raises(ValueError, match="mask shape"):
        overlay_mask(_image(), np.zeros((10, 10), bool))


def test_save_overlay_png(tmp_path: Path) -> None:
    path = save_overlay_png(tmp_path / "nested" / "dir" / "overlay.png", _image(), _mask(), caption="a cat")
    assert path.is_file()
    with Image.open(path) as saved:
        assert saved.size == (64 * 4, 48 * 4)  # enlarged x4 to reach 256 px


def test_save_overlay_gif_has_one_frame_per_mask(tmp_path: Path) -> None:
    frames = [_image(value=30 + 20 * t) for t in range(5)]
    masks = [_mask(top=4 * t) for t in range(5)]
    path = save_overlay_gif(tmp_path / "gif" / "video.gif", frames, masks, caption="the moving box", fps=5)
    with Image.open(path) as gif:
        assert gif.n_frames == 5
        assert gif.size == (64 * 4, 48 * 4)
        assert gif.info["loop"] == 0
        assert gif.info["duration"] == 200
    with pytest.raises(ValueError, match="as many masks"):
        save_overlay_gif(tmp_path / "bad.gif", frames, masks[:2])


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
    small = np.asarray(overlay_mask(image, mask, min_size=1))
    factor = -(-256 // max(image.shape[:2]))
    assert big.shape[:2] == (image.shape[0] * factor, image.shape[1] * factor)
    # interior pixels of the enlarged overlay repeat the small overlay's (the contour is drawn after enlarging)
    interior = ~mask | binary_erosion(mask, iterations=3)
    ys, xs = np.nonzero(interior)
    np.testing.assert_array_equal(big[ys * factor + factor // 2, xs * factor + factor // 2], small[ys, xs])
