"""COCO RLE: known cases worked out by hand from pycocotools' rleToString / rleFrString, and random round trips."""

import numpy as np
import pytest

from datamodules.rle import counts_to_string, decode_rle, encode_rle, mask_to_counts, string_to_counts

# (mask shape, column-major counts, pycocotools string). Derivations:
# * 3x3 with the centre set: Fortran-flat index 4 → runs 4 zeros, 1 one, 4 zeros → chars '4', '1', '4'.
# * 2x2 with only [0, 0] set: the first run (zeros) is empty → [0, 1, 3] → "013".
# * 10x10 empty: [100]; 100 = 0b11_00100 → low group 4 with "more" (4 | 0x20 = 36 → 'T'), then 3 → '3'.
# * 4x5 with counts [5, 10, 3, 2]: from the 4th count on the delta to counts[i-2] is stored: 2 - 10 = -8, whose
#   low 5 bits are 24 (sign bit 0x10 set, rest -1 → stop) → chr(48 + 24) = 'H'; 10 → ':'.
# * 1x103 with counts [0, 100, 1, 2]: delta 2 - 100 = -98 → groups 30 (more: 62 → 'n') and 28 (sign, stop → 'L').
KNOWN = [
    ((3, 3), [4, 1, 4], "414"),
    ((2, 2), [0, 1, 3], "013"),
    ((10, 10), [100], "T3"),
    ((4, 5), [5, 10, 3, 2], "5:3H"),
    ((1, 103), [0, 100, 1, 2], "0T31nL"),
]


def mask_from_counts(shape, counts):
    return np.repeat(np.arange(len(counts)) % 2 == 1, counts).reshape(shape, order="F")


@pytest.mark.parametrize(("shape", "counts", "string"), KNOWN)
def test_known_cases(shape, counts, string):
    mask = mask_from_counts(shape, counts)
    assert mask_to_counts(mask) == counts
    assert counts_to_string(counts) == string
    assert string_to_counts(string) == counts
    assert encode_rle(mask) == {"size": list(shape), "counts": string}
    np.testing.assert_array_equal(decode_rle({"size": list(shape), "counts": string}), mask)
    np.testing.assert_array_equal(decode_rle({"size": list(shape), "counts": counts}), mask)
    np.testing.assert_array_equal(decode_rle({"size": list(shape), "counts": string.encode()}), mask)


def test_centre_pixel_is_column_major():
    mask = np.zeros((2, 3), dtype=bool)
    mask[1, 0] = True  # Fortran-flat index 1
    assert mask_to_counts(mask) == [1, 1, 4]


@pytest.mark.parametrize("seed", range(20))
def test_random_round_trip(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 70, size=2))
    density = rng.choice([0.0, 0.02, 0.5, 0.98, 1.0])
    mask = rng.random((height, width)) < density
    if seed % 3 == 0:  # large blobs → long runs → multi-character counts and negative deltas
        mask = np.zeros((height, width), dtype=bool)
        mask[height // 4 : height // 2 + 1, width // 5 :] = True
    rle = encode_rle(mask)
    assert isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(decode_rle({"size": rle["size"], "counts": mask_to_counts(mask)}), mask)


def test_large_counts_round_trip():
    mask = np.zeros((1080, 1920), dtype=bool)
    mask[100:900, 300:1700] = True
    mask[500, 1000] = False
    np.testing.assert_array_equal(decode_rle(encode_rle(mask)), mask)


def test_empty_shape():
    mask = np.zeros((0, 4), dtype=bool)
    assert decode_rle(encode_rle(mask)).shape == (0, 4)


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ({"size": [3, 3], "counts": "413"}, "sum"),
        ({"size": [3, 3], "counts": [4, 1, 3]}, "sum"),
        ({"size": [3, 3], "counts": "41 4"}, "invalid character"),
        ({"size": [3, 3], "counts": "41~"}, "invalid character"),
        ({"size": [3, 3], "counts": "41P"}, "truncated"),
        ({"size": [3, 3], "counts": [5, -1, 5]}, "negative"),
        ({"size": [3, 3], "counts": [4.0, 1, 4]}, "ints"),
        ({"size": [3], "counts": "414"}, "size"),
        ({"counts": "414"}, "size"),
        ({"size": [3, 3], "counts": 414}, "counts"),
        ("414", "dict"),
    ],
)
def test_malformed(rle, match):
    with pytest.raises(ValueError, match=match):
        decode_rle(rle)


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="shape"):
        encode_rle(np.zeros((2, 2, 2), dtype=bool))


def reference_string_to_counts(data: bytes) -> list[int]:
    """pycocotools' ``rleFrString`` transcribed character by character (the rule the vectorised parser implements)."""
    counts, value, shift = [], 0, 0
    for char in data:
        group = char - 48
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
        value, shift = 0, 0
    return counts


@pytest.mark.parametrize("lengths", [(1, 40), (250, 700)])  # both sides of the vectorised-path threshold
@pytest.mark.parametrize("seed", range(3))
def test_parser_matches_the_character_loop(seed, lengths):
    rng = np.random.default_rng(seed)
    for _ in range(200):
        length = int(rng.integers(*lengths))
        data = bytes(rng.integers(48, 112, size=length).tolist())
        if data[-1] - 48 & 0x20:  # end inside a count: always an error
            with pytest.raises(ValueError, match="truncated"):
                string_to_counts(data)
        elif _longest_count(data) > 12:
            with pytest.raises(ValueError, match="longer than"):
                string_to_counts(data)
        else:
            assert string_to_counts(data) == reference_string_to_counts(data)
            assert string_to_counts(data.decode()) == reference_string_to_counts(data)


def _longest_count(data: bytes) -> int:
    longest = run = 0
    for char in data:
        run += 1
        if not (char - 48) & 0x20:
            longest, run = max(longest, run), 0
    return longest


@pytest.mark.parametrize("text", ["41é", "4\x001"])
def test_non_ascii_and_control_characters_are_rejected(text):
    with pytest.raises(ValueError, match="invalid character"):
        string_to_counts(text)


@pytest.mark.parametrize("seed", range(10))
def test_strings_match_pycocotools(seed):
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 300, size=2))
    mask = np.zeros((height, width), dtype=np.uint8)
    for _ in range(4):
        y0, x0 = int(rng.integers(height)), int(rng.integers(width))
        mask[y0 : y0 + int(rng.integers(1, height + 1)), x0 : x0 + int(rng.integers(1, width + 1))] ^= 1
    theirs = mask_api.encode(np.asfortranarray(mask))
    assert encode_rle(mask)["counts"] == theirs["counts"].decode()
    np.testing.assert_array_equal(decode_rle(theirs), mask.astype(bool))
