"""Small datasets written in the official layouts, with the masks they were drawn from.

The converter tests use them at tiny sizes (a few 32x48 images, videos of 3-4 frames) and
``benchmarks/convert_throughput.py`` at realistic sizes. Every writer returns the ground truth it drew, so that a
conversion can be checked pixel by pixel:

* :func:`write_refcoco`: ``refs(<split_by>).p`` (``pickle.dump`` of plain dicts) + ``instances.json`` (polygon,
  multi-polygon, uncompressed ``iscrowd`` RLE and compressed RLE annotations) + ``train2014/`` JPEGs;
* :func:`write_reasonseg`: ``<split>/<name>.jpg`` + LabelMe JSON with target, ``ignore`` and ``flag`` polygons, and
  ``explanatory/train.json``;
* :func:`write_palette_videos`: Ref-YouTube-VOS / Ref-DAVIS17 (``meta_expressions/<split>/meta_expressions.json``,
  ``JPEGImages``, palette ``Annotations``);
* :func:`write_mevis` and :func:`write_revos`: ``meta_expressions`` + ``mask_dict.json`` (+ ReVOS
  ``mask_dict_foreground.json``, type ids and no-target expressions);
* :func:`write_llava`: a LLaVA-Instruct conversation file with images.

Axis-aligned rectangles are drawn as 4-point polygons whose outline is inside (pixels ``x0..x1`` by ``y0..y1``), so
their masks are known exactly without rasterising; ``realistic=True`` draws many-sided polygons instead (their masks
are then rasterised with PIL, as the converters do).
"""

from __future__ import annotations

import functools
import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from ..rle import encode_rle, mask_to_counts

Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)

NOUNS = ("man", "woman", "dog", "cat", "car", "bike", "cup", "chair", "horse", "umbrella")
PLACES = ("on the left", "on the right", "in the middle", "at the back", "in front", "near the door")
# A 256-colour palette for the annotation PNGs (the colours do not matter, the indices do).
PALETTE = [v for i in range(256) for v in ((i * 97) % 256, (i * 57) % 256, (i * 31) % 256)]


@functools.lru_cache(maxsize=4)
def _gradient(height: int, width: int) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([(xs * (c + 1) + ys * (3 - c)) % 256 for c in range(3)], axis=-1).astype(np.uint8)


def _image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth colour gradient with mild noise (compresses like a photo, unlike pure noise); uint8 wraps around."""
    base = rng.integers(0, 256, size=3, dtype=np.uint8)
    noise = rng.integers(0, 24, size=(height, width, 3), dtype=np.uint8)
    return _gradient(height, width) + base + noise


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"quality": 90} if path.suffix == ".jpg" else {}
    Image.fromarray(array).save(path, **options)


def _rect(rng: np.random.Generator, height: int, width: int, min_frac: float = 0.2, max_frac: float = 0.5) -> Rect:
    h = int(rng.integers(max(2, int(min_frac * height)), max(3, int(max_frac * height)) + 1))
    w = int(rng.integers(max(2, int(min_frac * width)), max(3, int(max_frac * width)) + 1))
    y0 = int(rng.integers(0, height - h + 1))
    x0 = int(rng.integers(0, width - w + 1))
    return x0, y0, x0 + w - 1, y0 + h - 1


def rect_polygon(rect: Rect) -> list[float]:
    """The COCO polygon ``[x0, y0, x1, y0, x1, y1, x0, y1]`` of a rectangle."""
    x0, y0, x1, y1 = rect
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def rect_mask(rect: Rect, height: int, width: int) -> np.ndarray:
    """The exact mask of a rectangle drawn as a polygon (outline inside)."""
    x0, y0, x1, y1 = rect
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def star_polygon(rng: np.random.Generator, height: int, width: int, vertices: int = 24) -> list[float]:
    """A random star-shaped polygon (COCO-like: many vertices, float coordinates)."""
    cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
    radius = rng.uniform(0.1, 0.25) * min(height, width)
    angles = np.sort(rng.uniform(0, 2 * np.pi, vertices))
    radii = radius * rng.uniform(0.6, 1.0, vertices)
    xs = np.clip(cx + radii * np.cos(angles), 0, width - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, height - 1)
    return [round(float(v), 2) for pair in zip(xs, ys) for v in pair]


def raster_polygon(polygon: list[float], height: int, width: int) -> np.ndarray:
    """PIL rasterisation of one polygon (outline inside), for the ``realistic`` fixtures."""
    image = Image.new("L", (width, height), 0)
    ImageDraw.Draw(image).polygon(polygon, fill=1, outline=1)
    return np.asarray(image, dtype=bool)


def _sentence(rng: np.random.Generator) -> str:
    return f"the {NOUNS[int(rng.integers(len(NOUNS)))]} {PLACES[int(rng.integers(len(PLACES)))]}"


# ---------------------------------------------------------------------------------------------------------------
# RefCOCO family


@dataclass
class RefCOCOFixture:
    """What :func:`write_refcoco` wrote.

    Attributes:
        data_dir: the folder with ``refs(*).p`` and ``instances.json`` (pass it, or its parent, as ``--root``).
        image_root: the ``train2014`` folder.
        masks: ``ann_id -> (H, W) bool`` ground truth.
        refs: the pickled refs.
        instances: the ``instances.json`` content.
    """

    data_dir: Path
    image_root: Path
    masks: dict[int, np.ndarray]
    refs: list[dict[str, Any]]
    instances: dict[str, Any]


def write_refcoco(
    root: str | Path,
    dataset: str = "refcoco",
    split_by: str = "unc",
    num_images: int = 4,
    height: int = 32,
    width: int = 48,
    splits: tuple[str, ...] = ("train", "val", "testA", "testB"),
    realistic: bool = False,
    seed: int = 0,
) -> RefCOCOFixture:
    """Write ``root/<dataset>/refs(<split_by>).p``, ``root/<dataset>/instances.json`` and ``root/train2014/``.

    Image ``i`` (COCO id ``1000 + i``, split ``splits[i % len(splits)]``) has four annotations: a rectangle polygon,
    a two-part polygon, an ``iscrowd`` uncompressed RLE and a compressed RLE; every annotation has one ref with one
    to three sentences. With ``realistic`` the polygons are 24-sided stars.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    data_dir, image_root = root / dataset, root / "train2014"
    data_dir.mkdir(parents=True, exist_ok=True)
    images, annotations, refs, masks = [], [], [], {}
    next_ann, next_ref, next_sent = 1, 0, 0
    for index in range(num_images):
        image_id = 1000 + index
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        _save(image_root / file_name, _image(rng, height, width))
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for kind in ("polygon", "multipolygon", "crowd", "rle"):
            if kind == "polygon" or kind == "multipolygon":
                parts = 1 if kind == "polygon" else 2
                if realistic:
                    segmentation = [star_polygon(rng, height, width) for _ in range(parts)]
                    mask = np.logical_or.reduce([raster_polygon(p, height, width) for p in segmentation])
                else:
                    rects = [_rect(rng, height, width) for _ in range(parts)]
                    segmentation = [rect_polygon(r) for r in rects]
                    mask = np.logical_or.reduce([rect_mask(r, height, width) for r in rects])
            else:
                mask = rect_mask(_rect(rng, height, width), height, width)
                rle = encode_rle(mask)
                segmentation = {
                    "size": [height, width],
                    "counts": mask_to_counts(mask) if kind == "crowd" else rle["counts"],
                }
            ann_id = next_ann
            next_ann += 1
            masks[ann_id] = mask
            annotations.append(
                {
                    "id": ann_id,
                    "image_id": image_id,
                    "category_id": 1 + ann_id % 80,
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "bbox": [0.0, 0.0, float(width), float(height)],
                    "iscrowd": int(kind == "crowd"),
                }
            )
            sentences = []
            for _ in range(int(rng.integers(1, 4))):
                text = _sentence(rng)
                sentences.append({"sent": text, "raw": text.capitalize(), "tokens": text.split(), "sent_id": next_sent})
                next_sent += 1
            refs.append(
                {
                    "ref_id": next_ref,
                    "ann_id": ann_id,
                    "image_id": image_id,
                    "split": splits[index % len(splits)],
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                    "category_id": 1 + ann_id % 80,
                    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
                }
            )
            next_ref += 1
    instances = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": f"c{i}"} for i in range(1, 81)],
    }
    (data_dir / "instances.json").write_text(json.dumps(instances))
    with open(data_dir / f"refs({split_by}).p", "wb") as file:
        pickle.dump(refs, file, protocol=2)
    return RefCOCOFixture(data_dir, image_root, masks, refs, instances)


# ---------------------------------------------------------------------------------------------------------------
# ReasonSeg


@dataclass
class ReasonSegFixture:
    """What :func:`write_reasonseg` wrote.

    Attributes:
        root: the ``ReasonSeg`` folder.
        target: ``(split, name) -> (H, W) bool`` expected target.
        ignore: ``(split, name) -> (H, W) bool`` expected ignore region.
        annotations: ``(split, name) -> the LabelMe JSON content``.
        explanatory: the ``explanatory/train.json`` content.
    """

    root: Path
    target: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    ignore: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    annotations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    explanatory: list[dict[str, str]] = field(default_factory=list)


def _scaled(rect: tuple[float, float, float, float], height: int, width: int) -> Rect:
    x0, y0, x1, y1 = rect
    return int(x0 * (width - 1)), int(y0 * (height - 1)), int(x1 * (width - 1)), int(y1 * (height - 1))


def write_reasonseg(
    root: str | Path, num_images: dict[str, int] | None = None, height: int = 32, width: int = 48, seed: int = 0
) -> ReasonSegFixture:
    """Write ``root/ReasonSeg/<split>/<name>.{jpg,json}`` and ``root/ReasonSeg/explanatory/train.json``.

    Each image has: a large target polygon with a smaller ``ignore`` polygon inside it (carved out of the target),
    a large ``ignore`` polygon with a smaller target polygon inside it (target), and a ``flag`` polygon (skipped).
    Images alternate ``is_sentence`` true / false. The explanatory file explains the first sentence of the first
    training image, adds a new question for the second and names an image that does not exist.
    """
    rng = np.random.default_rng(seed)
    fixture = ReasonSegFixture(Path(root) / "ReasonSeg")
    layout = {  # fractions of the image: (x0, y0, x1, y1)
        "target_big": (0.05, 0.05, 0.42, 0.62),
        "ignore_small": (0.12, 0.15, 0.25, 0.35),
        "ignore_big": (0.55, 0.1, 0.95, 0.85),
        "target_small": (0.62, 0.3, 0.78, 0.5),
        "flag": (0.0, 0.9, 1.0, 1.0),
    }
    labels = {
        "target_big": "target",
        "ignore_small": "ignore",
        "ignore_big": "Ignore region",
        "target_small": "target",
        "flag": "flag",
    }
    for split, count in (num_images or {"train": 2, "val": 1}).items():
        for index in range(count):
            name = f"{split}_{index:04d}_{int(rng.integers(1e6)):06d}"
            _save(fixture.root / split / f"{name}.jpg", _image(rng, height, width))
            rects = {k: _scaled(v, height, width) for k, v in layout.items()}
            order = ["flag", "target_small", "ignore_big", "ignore_small", "target_big"]  # not by area on purpose
            shapes = [
                {
                    "label": labels[k],
                    "points": [
                        [float(x), float(y)] for x, y in zip(rect_polygon(rects[k])[::2], rect_polygon(rects[k])[1::2])
                    ],
                    "group_id": None,
                    "shape_type": "polygon",
                    "flags": {},
                }
                for k in order
            ]
            mask = {k: rect_mask(r, height, width) for k, r in rects.items()}
            fixture.target[split, name] = (mask["target_big"] & ~mask["ignore_small"]) | mask["target_small"]
            fixture.ignore[split, name] = mask["ignore_small"] | (mask["ignore_big"] & ~mask["target_small"])
            is_sentence = index % 2 == 0
            texts = (
                [f"what in this picture could hold {NOUNS[index % len(NOUNS)]}s?", "which object is used for this?"]
                if is_sentence
                else [_sentence(rng), _sentence(rng)]
            )
            annotation = {
                "shapes": shapes,
                "text": texts,
                "is_sentence": is_sentence,
                "imagePath": f"{name}.jpg",
                "imageHeight": height,
                "imageWidth": width,
            }
            (fixture.root / split / f"{name}.json").write_text(json.dumps(annotation))
            fixture.annotations[split, name] = annotation
    train = sorted(n for s, n in fixture.annotations if s == "train")
    if train:
        first = fixture.annotations["train", train[0]]["text"][0]
        fixture.explanatory.append({"image": f"{train[0]}.jpg", "query": first, "outputs": "It holds things."})
    if len(train) > 1:
        fixture.explanatory.append(
            {"image": f"{train[1]}.jpg", "query": "why would someone use this?", "outputs": "Because it helps."}
        )
    fixture.explanatory.append({"image": "does_not_exist.jpg", "query": "what?", "outputs": "Nothing."})
    (fixture.root / "explanatory").mkdir(parents=True, exist_ok=True)
    (fixture.root / "explanatory" / "train.json").write_text(json.dumps(fixture.explanatory))
    return fixture


# ---------------------------------------------------------------------------------------------------------------
# Videos


@dataclass
class VideoTruth:
    """Ground truth of one fixture video.

    Attributes:
        frames: frame names.
        masks: ``object id -> [(H, W) bool per frame]`` (the ids the converter should produce).
        expressions: the ``meta_expressions.json`` entry ``{exp_id: {...}}``.
        ignore: per-frame void masks (palette videos with void), else None.
        foreground: per-frame foreground masks (ReVOS), else None.
    """

    frames: list[str]
    masks: dict[str, list[np.ndarray]]
    expressions: dict[str, dict[str, Any]]
    ignore: list[np.ndarray] | None = None
    foreground: list[np.ndarray] | None = None


@dataclass
class VideoFixture:
    """What a video writer wrote: ``root`` (pass as ``--root``) and ``videos[split][video] -> VideoTruth``."""

    root: Path
    videos: dict[str, dict[str, VideoTruth]] = field(default_factory=dict)


def _moving_masks(
    rng: np.random.Generator, num_objects: int, num_frames: int, height: int, width: int
) -> list[list[np.ndarray]]:
    """Per object, per frame: a rectangle drifting across the frames; the last object leaves on the last frame."""
    masks = []
    for obj in range(num_objects):
        x0, y0, x1, y1 = _rect(rng, height, width, 0.15, 0.35)
        dx, dy = (int(v) for v in rng.integers(-2, 3, size=2))
        per_frame = []
        for t in range(num_frames):
            shift_x = int(np.clip(dx * t, -x0, width - 1 - x1))
            shift_y = int(np.clip(dy * t, -y0, height - 1 - y1))
            mask = rect_mask((x0 + shift_x, y0 + shift_y, x1 + shift_x, y1 + shift_y), height, width)
            gone = obj == num_objects - 1 and t == num_frames - 1
            per_frame.append(np.zeros_like(mask) if gone else mask)
        masks.append(per_frame)
    return masks


def _write_frames(folder: Path, names: list[str], rng: np.random.Generator, height: int, width: int) -> None:
    for name in names:
        _save(folder / f"{name}.jpg", _image(rng, height, width))


def write_palette_videos(
    root: str | Path,
    videos: dict[str, int] | None = None,
    annotated: tuple[str, ...] = ("train",),
    num_frames: int = 4,
    height: int = 32,
    width: int = 48,
    num_objects: int = 2,
    void: bool = False,
    seed: int = 0,
) -> VideoFixture:
    """Ref-YouTube-VOS / Ref-DAVIS17 layout under ``root``.

    ``meta_expressions/<split>/meta_expressions.json``, ``<split>/JPEGImages/<vid>/<frame>.jpg`` and, for the
    ``annotated`` splits, ``<split>/Annotations/<vid>/<frame>.png`` palette PNGs (object ``k`` = pixel value ``k``,
    later objects drawn over earlier ones; with ``void`` a band of 255). Each object has two expressions with its
    ``obj_id``; unannotated splits list only ``exp`` (as the Ref-YouTube-VOS ``valid`` split).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    fixture = VideoFixture(root)
    for split, count in (videos or {"train": 2, "valid": 1}).items():
        meta: dict[str, Any] = {"videos": {}}
        fixture.videos[split] = {}
        for index in range(count):
            vid = f"{index:03d}{int(rng.integers(16**7)):07x}"
            names = [f"{5 * t:05d}" for t in range(num_frames)]
            _write_frames(root / split / "JPEGImages" / vid, names, rng, height, width)
            labels = np.zeros((num_frames, height, width), dtype=np.uint8)
            for obj, per_frame in enumerate(_moving_masks(rng, num_objects, num_frames, height, width), start=1):
                labels[np.stack(per_frame)] = obj
            void_masks = None
            if void:
                labels[:, : max(1, height // 16), :] = 255
                void_masks = list(labels == 255)
            expressions, exp_id = {}, 0
            for obj in range(1, num_objects + 1):
                for _ in range(2):
                    entry = {"exp": _sentence(rng)}
                    if split in annotated:
                        entry["obj_id"] = str(obj)
                    expressions[str(exp_id)] = entry
                    exp_id += 1
            meta["videos"][vid] = {"expressions": expressions, "frames": names}
            truth = VideoTruth(names, {}, expressions, void_masks)
            if split in annotated:
                for t, name in enumerate(names):
                    image = Image.fromarray(labels[t])
                    image.putpalette(PALETTE)
                    path = root / split / "Annotations" / vid / f"{name}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    image.save(path)
                truth.masks = {str(o): list(labels == o) for o in range(1, num_objects + 1)}
            fixture.videos[split][vid] = truth
        meta_path = root / "meta_expressions" / split / "meta_expressions.json"
        meta_path.parent.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta))
    return fixture


def _mask_dict_videos(
    frame_root: Path,
    split: str,
    count: int,
    rng: np.random.Generator,
    next_anno: list[int],
    mask_dict: dict[str, Any],
    fixture: VideoFixture,
    num_frames: int,
    height: int,
    width: int,
    num_objects: int,
    revos: bool,
) -> dict[str, Any]:
    """Videos of one MeViS / ReVOS split; fills ``mask_dict`` and ``fixture``; returns the split's metadata."""
    meta: dict[str, Any] = {"videos": {}}
    fixture.videos[split] = {}
    for index in range(count):
        vid = f"{'UVO/' if revos else ''}{split}{index:03d}{int(rng.integers(16**6)):06x}"
        names = [f"{t:05d}" for t in range(num_frames)]
        _write_frames(frame_root / vid, names, rng, height, width)
        masks: dict[str, list[np.ndarray]] = {}
        for per_frame in _moving_masks(rng, num_objects, num_frames, height, width):
            anno_id = str(next_anno[0])
            next_anno[0] += 1
            masks[anno_id] = per_frame
            mask_dict[anno_id] = [encode_rle(m) if m.any() else None for m in per_frame]
        annos = list(masks)
        expressions: dict[str, dict[str, Any]] = {}
        for obj, anno_id in enumerate(annos):
            expressions[str(len(expressions))] = {"exp": _sentence(rng), "obj_id": [obj], "anno_id": [anno_id]}
        expressions[str(len(expressions))] = {
            "exp": "the two things that move together",
            "obj_id": [0, 1],
            "anno_id": annos[:2],
        }
        if revos:
            for entry in expressions.values():
                entry["type_id"] = 0
            expressions["1"]["type_id"] = 1
            expressions[str(len(expressions) - 1)]["type_id"] = 1
            expressions[str(len(expressions))] = {
                "exp": "the object that is flying a kite",
                "obj_id": [],
                "anno_id": [],
                "type_id": 2,
            }
        foreground = [np.logical_or.reduce([m[t] for m in masks.values()]) for t in range(num_frames)]
        meta["videos"][vid] = {
            "vid_id": index,
            "height": height,
            "width": width,
            "frames": names,
            "expressions": expressions,
        }
        fixture.videos[split][vid] = VideoTruth(names, masks, expressions, foreground=foreground if revos else None)
    return meta


def write_mevis(
    root: str | Path,
    videos: dict[str, int] | None = None,
    unannotated: tuple[str, ...] = ("valid",),
    num_frames: int = 4,
    height: int = 32,
    width: int = 48,
    num_objects: int = 3,
    seed: int = 0,
) -> VideoFixture:
    """MeViS layout: ``root/<split>/{meta_expressions.json, mask_dict.json, JPEGImages/}``.

    Each video has one expression per object and one two-object expression; the ``unannotated`` splits have no
    ``mask_dict.json`` (as the MeViS ``valid`` split).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    fixture = VideoFixture(root)
    next_anno = [0]
    for split, count in (videos or {"train": 2, "valid_u": 1, "valid": 1}).items():
        mask_dict: dict[str, Any] = {}
        meta = _mask_dict_videos(
            root / split / "JPEGImages",
            split,
            count,
            rng,
            next_anno,
            mask_dict,
            fixture,
            num_frames,
            height,
            width,
            num_objects,
            revos=False,
        )
        (root / split / "meta_expressions.json").write_text(json.dumps(meta))
        if split not in unannotated:
            (root / split / "mask_dict.json").write_text(json.dumps(mask_dict))
    return fixture


def write_revos(
    root: str | Path,
    videos: dict[str, int] | None = None,
    num_frames: int = 4,
    height: int = 32,
    width: int = 48,
    num_objects: int = 3,
    seed: int = 0,
) -> VideoFixture:
    """ReVOS layout: ``root/meta_expressions_<split>_.json``, ``mask_dict.json``, ``mask_dict_foreground.json``,
    ``JPEGImages/<source>/<vid>/``.

    Each video has type-0 and type-1 expressions (one per object, a two-object one) and a type-2 (no target)
    expression with an empty ``anno_id``; the foreground is the union of the video's objects.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    fixture = VideoFixture(root)
    next_anno = [0]
    mask_dict: dict[str, Any] = {}
    for split, count in (videos or {"train": 2, "valid": 1}).items():
        meta = _mask_dict_videos(
            root / "JPEGImages",
            split,
            count,
            rng,
            next_anno,
            mask_dict,
            fixture,
            num_frames,
            height,
            width,
            num_objects,
            revos=True,
        )
        (root / f"meta_expressions_{split}_.json").write_text(json.dumps(meta))
    foreground = {
        vid: {"masks_rle": [encode_rle(m) for m in truth.foreground or []]}
        for split_videos in fixture.videos.values()
        for vid, truth in split_videos.items()
    }
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    (root / "mask_dict_foreground.json").write_text(json.dumps(foreground))
    return fixture


# ---------------------------------------------------------------------------------------------------------------
# LLaVA


@dataclass
class LLaVAFixture:
    """What :func:`write_llava` wrote: the conversation file, the image folder and the entries."""

    json_path: Path
    image_root: Path
    entries: list[dict[str, Any]]


def write_llava(
    root: str | Path, num_images: int = 3, height: int = 32, width: int = 48, seed: int = 0
) -> LLaVAFixture:
    """``root/llava_instruct_150k.json`` + ``root/coco/train2017/*.jpg`` (one PNG image).

    Every image entry has two question-answer turn pairs (the first question with ``<image>``); the last entry has
    a trailing question without answer. One text-only entry (no ``image``) is added.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    entries: list[dict[str, Any]] = []
    for index in range(num_images):
        suffix = ".png" if index == 1 else ".jpg"
        image = f"coco/train2017/{index:012d}{suffix}"
        _save(root / image, _image(rng, height, width))
        conversations = [
            {"from": "human", "value": f"<image>\nWhat is the {NOUNS[index % len(NOUNS)]} doing?"},
            {"from": "gpt", "value": "It is standing still."},
            {"from": "human", "value": "What colour is it?"},
            {"from": "gpt", "value": "It is brown."},
        ]
        if index == num_images - 1:
            conversations.append({"from": "human", "value": "Anything else?"})
        entries.append({"id": f"{index:012d}", "image": image, "conversations": conversations})
    entries.append(
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    )
    json_path = root / "llava_instruct_150k.json"
    json_path.write_text(json.dumps(entries))
    return LLaVAFixture(json_path, root, entries)
