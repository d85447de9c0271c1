"""The Synthetic IVS benchmark: procedural images and videos of coloured shapes with instructed-segmentation queries.

    python -m datamodules.synthetic --out data/synthetic --train 2000 --val 200 --seed 0 [--size 64]

writes ``OUT/train/synthetic-train-*.tar`` and ``OUT/val/synthetic-val-*.tar`` in the shard schema
(:mod:`datamodules.schema`), PNG frames, records cycling through the tasks ``res``, ``reasonseg``, ``rvos`` and
``reasonvos``:

* every scene has 3-5 shapes (circle, square, triangle, diamond, star) in 8 colours and two sizes, drawn from a
  small per-scene palette so that several distractors share attributes with each target; videos (6-8 frames) move
  some shapes linearly (up / down / left / right) and keep the others still; shapes never overlap;
* ``res``: referring phrases ("the small red triangle", "the square on the left", "the highest blue shape");
* ``reasonseg``: questions that need a world fact ("the shape that could roll down a ramp", "the object that is
  coloured like a ripe banana", "the object that has three corners and is coloured like grass"), with an answer
  that explains the choice;
* ``rvos``: referring and motion phrases ("the circle moving up", "the red shape that stays still");
* ``reasonvos``: reasoning about shape, colour and motion ("the object that is falling like a dropped apple"),
  ~15% of them no-target queries that describe an absent combination of present attributes.

Every query matches exactly one object (or none for ``no_target``), except with ``--multi-object RATE``: then each
query is, with probability RATE, a referring query that names every object of a group of 2 or more ("all the red
shapes", "the two squares", "all the shapes moving up"), ``object_ids`` listing them all (its mask is their union;
``reasonseg`` ones get an answer naming them). With RATE 0 (the default) the output is byte-identical to the
benchmark without the option.

``--long N`` adds ``OUT/long/synthetic-long-*.tar``: N ``rvos`` videos of 100-1000 frames (``--long-frames MIN
MAX``) made for long-video inference (:func:`generate_long_record`): the target is visible only in a part of the
video (it enters and leaves), a same-colour and a same-shape distractor stay in view all along, and a small shape
passes in front of the target while it crosses the image (occlusion). Generation is deterministic: record ``i`` of a
split depends only on ``(seed, split, i)``. :func:`trivial_baselines` scores predictions that ignore the query.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from instructseg.constants import IMAGE_TASKS, REVOS_TYPE_IDS, VIDEO_TASKS
from instructseg.metrics import ImageSegMetric, VideoSegMetric

from .rle import encode_rle
from .shards import RecordWriter, iter_records

TASK_CYCLE = IMAGE_TASKS + VIDEO_TASKS
SPLITS = {"train": 0, "val": 1, "long": 2}
LONG_FRAMES = (100, 1000)
NO_TARGET_RATE = 0.15
MOTION_PREFERENCE = 0.6

COLOURS = {
    "red": (220, 40, 40),
    "green": (50, 180, 70),
    "blue": (40, 90, 235),
    "yellow": (245, 220, 40),
    "orange": (245, 135, 25),
    "purple": (150, 60, 205),
    "white": (240, 240, 240),
    "pink": (245, 125, 190),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star")
SIZES = {"small": 0.085, "large": 0.15}
MOTIONS = ("still", "up", "down", "left", "right")
DIRECTIONS = {"up": (0.0, -1.0), "down": (0.0, 1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}

# World facts: (clause completing "the object that ...", explanation used in reasonseg answers).
SHAPE_FACTS = {
    "circle": [
        ("could roll down a ramp", "a round shape has no corners, so it rolls"),
        ("has no corners at all", "a circle is the only shape without corners"),
        ("is shaped like a wheel", "wheels are round"),
        ("is shaped like a coin", "coins are round"),
    ],
    "square": [
        ("has four right angles", "a square has four equal sides and four right angles"),
        ("is shaped like a chessboard tile", "chessboard tiles are squares"),
    ],
    "triangle": [
        ("has three corners", "a triangle has three corners"),
        ("is shaped like a slice of pizza", "a slice of pizza is roughly triangular"),
        ("looks like a warning road sign", "warning road signs are triangles"),
    ],
    "diamond": [
        ("is shaped like a kite", "a kite has a diamond shape"),
        ("looks like the diamonds suit on a playing card", "that suit is a diamond"),
    ],
    "star": [
        ("could sit on top of a christmas tree", "a star is put on top of a christmas tree"),
        ("has five points", "a star has five points"),
    ],
}
COLOUR_FACTS = {
    "red": [
        ("is coloured like a ripe tomato", "ripe tomatoes are red"),
        ("has the colour of a fire truck", "fire trucks are red"),
    ],
    "green": [("is coloured like grass", "grass is green"), ("has the colour of a frog", "frogs are green")],
    "blue": [
        ("is coloured like the clear sky", "a clear sky is blue"),
        ("has the colour of the ocean", "the ocean is blue"),
    ],
    "yellow": [
        ("is coloured like a ripe banana", "ripe bananas are yellow"),
        ("has the colour of a lemon", "lemons are yellow"),
    ],
    "orange": [
        ("is coloured like a carrot", "carrots are orange"),
        ("has the colour of a pumpkin", "pumpkins are orange"),
    ],
    "purple": [
        ("is coloured like grapes", "grapes are purple"),
        ("has the colour of an eggplant", "eggplants are purple"),
    ],
    "white": [("is coloured like fresh snow", "snow is white"), ("has the colour of milk", "milk is white")],
    "pink": [
        ("is coloured like a flamingo", "flamingos are pink"),
        ("has the colour of cotton candy", "cotton candy is pink"),
    ],
}
MOTION_FACTS = {
    "still": [("stays still like a statue", "it does not move"), ("never moves", "it does not move")],
    "up": [("is rising like a balloon", "it moves up"), ("floats upwards like a bubble", "it moves up")],
    "down": [("is falling like a dropped apple", "it moves down"), ("sinks like a stone", "it moves down")],
    "left": [("moves against the direction we read English", "it moves left")],
    "right": [("moves in the direction we read English", "it moves right")],
}
FACTS = {"shape": SHAPE_FACTS, "colour": COLOUR_FACTS, "motion": MOTION_FACTS}
MOTION_WORDS = {
    "still": "that stays still",
    "up": "moving up",
    "down": "moving down",
    "left": "moving left",
    "right": "moving right",
}
SPATIAL = {  # direction: (axis, sign, "on the <side>" phrase, superlative)
    "left": (0, -1, "on the left", "leftmost"),
    "right": (0, 1, "on the right", "rightmost"),
    "top": (1, -1, "at the top", "highest"),
    "bottom": (1, 1, "at the bottom", "lowest"),
}
SPATIAL_MARGIN = 0.15
MOTION_WORDS_PLURAL = {**MOTION_WORDS, "still": "that stay still"}
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
ATTRIBUTE_SETS = (
    ("shape",),
    ("colour",),
    ("colour", "shape"),
    ("size", "shape"),
    ("size", "colour"),
    ("size", "colour", "shape"),
)


@dataclass
class Shape:
    """One object of a scene: attributes and a linear trajectory ``start + t * velocity`` (pixels)."""

    shape: str
    colour: str
    size: str
    radius: float
    start: np.ndarray
    velocity: np.ndarray
    motion: str

    def centre(self, t: int) -> np.ndarray:
        return self.start + t * self.velocity

    def attr(self, name: str) -> str:
        return getattr(self, name)


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Vertices of a polygonal shape centred at ``(cx, cy)`` with outer radius ``r``."""
    if shape == "square":
        h = 0.82 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "triangle":
        angles = np.deg2rad([-90, 30, 150])
        return [(cx + r * np.cos(a), cy + 0.15 * r + r * np.sin(a)) for a in angles]
    angles = np.deg2rad(np.arange(10) * 36 - 90)
    radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return [(cx + q * np.cos(a), cy + q * np.sin(a)) for q, a in zip(radii, angles)]


def render_mask(shape: Shape, t: int, size: int) -> np.ndarray:
    """``(size, size)`` bool mask of ``shape`` on frame ``t``."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = shape.centre(t)
    if shape.shape == "circle":
        r = shape.radius
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(shape.shape, cx, cy, shape.radius), fill=255)
    return np.asarray(canvas) > 0


def _place(
    rng: np.random.Generator, candidate: Shape, placed: list[Shape], size: int, num_frames: int, speed: float
) -> bool:
    """Pick a start (and velocity) keeping the whole trajectory inside the image and apart from ``placed``."""
    steps = num_frames - 1
    direction = np.array(DIRECTIONS.get(candidate.motion, (0.0, 0.0)))
    candidate.velocity = direction * speed
    low, high = candidate.radius + 1, size - candidate.radius - 1
    for _ in range(60):
        travel = candidate.velocity * steps
        lo = np.maximum(low, low - travel)
        hi = np.minimum(high, high - travel)
        if np.any(lo >= hi):
            return False
        candidate.start = rng.uniform(lo, hi)
        ok = all(
            np.linalg.norm(candidate.centre(t) - other.centre(t)) > candidate.radius + other.radius + 2
            for other in placed
            for t in range(num_frames)
        )
        if ok:
            return True
    return False


def make_scene(rng: np.random.Generator, size: int, num_frames: int) -> list[Shape]:
    """3-5 non-overlapping shapes from a small per-scene palette (2-3 shapes, 2-3 colours), in random order.

    In videos (``num_frames > 1``) about 65% of the shapes move in a straight line; no two shapes ever overlap.
    """
    while True:
        shapes = list(rng.choice(SHAPES, size=int(rng.integers(2, 4)), replace=False))
        colours = list(rng.choice(list(COLOURS), size=int(rng.integers(2, 4)), replace=False))
        placed: list[Shape] = []
        for _ in range(int(rng.integers(3, 6))):
            size_name = str(rng.choice(list(SIZES)))
            motion = "still" if num_frames == 1 or rng.random() < 0.35 else str(rng.choice(MOTIONS[1:]))
            candidate = Shape(
                shape=str(rng.choice(shapes)),
                colour=str(rng.choice(colours)),
                size=size_name,
                radius=SIZES[size_name] * size * rng.uniform(0.9, 1.1),
                start=np.zeros(2),
                velocity=np.zeros(2),
                motion=motion,
            )
            if _place(rng, candidate, placed, size, num_frames, speed=size * rng.uniform(0.025, 0.045)):
                placed.append(candidate)
        if len(placed) >= 3:
            return [placed[i] for i in rng.permutation(len(placed))]


def _matches(objects: list[Shape], constraints: dict[str, str]) -> list[int]:
    return [i for i, o in enumerate(objects) if all(o.attr(k) == v for k, v in constraints.items())]


def _noun_phrase(constraints: dict[str, str]) -> str:
    """``"small red triangle"``, ``"red shape"``, ... (no article)."""
    words = [constraints[k] for k in ("size", "colour") if k in constraints]
    return " ".join([*words, constraints.get("shape", "shape")])


def _extreme(objects: list[Shape], group: list[int], target: int, direction: str, size: int) -> bool:
    """Whether ``target`` is the most extreme member of ``group`` in ``direction`` by a clear margin (frame 0)."""
    axis, sign, _, _ = SPATIAL[direction]
    values = {i: sign * objects[i].centre(0)[axis] for i in group}
    runner_up = max(v for i, v in values.items() if i != target)
    return values[target] - runner_up > SPATIAL_MARGIN * size


def referring_candidates(objects: list[Shape], target: int, video: bool, size: int) -> dict[str, list[str]]:
    """Referring phrases that match exactly ``objects[target]``, by kind: ``attribute``, ``motion`` (videos) and
    ``spatial`` (images)."""
    phrases: dict[str, list[str]] = {"attribute": [], "motion": [], "spatial": []}
    obj = objects[target]
    for names in ATTRIBUTE_SETS:
        constraints = {k: obj.attr(k) for k in names}
        group = _matches(objects, constraints)
        noun = _noun_phrase(constraints)
        if group == [target]:
            phrases["attribute"].append(f"the {noun}")
        if video:
            if len(group) > 1 and _matches(objects, {**constraints, "motion": obj.motion}) == [target]:
                phrases["motion"].append(f"the {noun} {MOTION_WORDS[obj.motion]}")
        elif len(group) > 1:
            for direction, (_, _, side, superlative) in SPATIAL.items():
                if _extreme(objects, group, target, direction, size):
                    phrases["spatial"].append(f"the {noun} {side}" if len(group) == 2 else f"the {superlative} {noun}")
    if video and _matches(objects, {"motion": obj.motion}) == [target]:
        phrases["motion"].append(f"the shape {MOTION_WORDS[obj.motion]}")
    return phrases


def _reasoning_text(rng: np.random.Generator, constraints: dict[str, str]) -> tuple[str, list[str]]:
    """A question built from world facts about the constrained attributes, and the facts' explanations."""
    clauses, reasons = [], []
    for name in ("shape", "colour", "motion"):
        if name in constraints:
            facts = FACTS[name][constraints[name]]
            clause, reason = facts[int(rng.integers(len(facts)))]
            clauses.append(clause)
            reasons.append(reason)
    subject = "the object"
    if "size" in constraints:
        comparative = "larger" if constraints["size"] == "large" else "smaller"
        subject = f"the {comparative} object"
        reasons.append(f"it is the {comparative} one")
    body = " and ".join(clauses)
    if rng.random() < 0.3 and "size" not in constraints:
        return f"Which object {body}?", reasons
    return f"{subject} that {body}", reasons


def _reasoning_constraint_sets(video: bool) -> list[tuple[str, ...]]:
    sets = [("shape",), ("colour",), ("colour", "shape"), ("size", "shape"), ("size", "colour")]
    if video:
        sets += [("motion",), ("motion", "shape"), ("motion", "colour")]
    return sets


def reasoning_candidates(objects: list[Shape], target: int, video: bool) -> list[dict[str, str]]:
    """Constraint sets over fact-bearing attributes that single out ``objects[target]``."""
    obj = objects[target]
    found = []
    for names in _reasoning_constraint_sets(video):
        constraints = {k: obj.attr(k) for k in names}
        if _matches(objects, constraints) != [target]:
            continue
        if "size" in constraints:
            rest = {k: v for k, v in constraints.items() if k != "size"}
            if len(_matches(objects, rest)) < 2:
                continue
        found.append(constraints)
    return found


def no_target_candidates(objects: list[Shape], video: bool) -> list[dict[str, str]]:
    """Pairs of attribute values that each occur in the scene but never together."""
    names = ("shape", "colour", "motion") if video else ("shape", "colour")
    values = {n: sorted({o.attr(n) for o in objects}) for n in names}
    found = []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            for a in values[first]:
                for b in values[second]:
                    if not _matches(objects, {first: a, second: b}):
                        found.append({first: a, second: b})
    return found


def multi_object_candidates(objects: list[Shape], video: bool) -> list[tuple[str, list[int]]]:
    """Phrases naming every object of a group of 2 or more, with the group: ``"all the red shapes"``, ``"the two
    squares"`` (an attribute set of :data:`ATTRIBUTE_SETS`) and in videos ``"all the shapes moving up"``."""
    found = []
    for names in ATTRIBUTE_SETS:
        seen = set()
        for obj in objects:
            constraints = {k: obj.attr(k) for k in names}
            group = _matches(objects, constraints)
            if len(group) < 2 or tuple(group) in seen:
                continue
            seen.add(tuple(group))
            nouns = f"{_noun_phrase(constraints)}s"
            found += [(f"all the {nouns}", group), (f"the {NUMBER_WORDS[len(group)]} {nouns}", group)]
    if video:
        for motion in MOTIONS:
            group = _matches(objects, {"motion": motion})
            if len(group) >= 2:
                found.append((f"all the shapes {MOTION_WORDS_PLURAL[motion]}", group))
    return found


def _make_multi_query(rng: np.random.Generator, objects: list[Shape], task: str) -> dict[str, Any] | None:
    """A referring query naming several objects, or ``None`` when the scene has no group of 2 or more."""
    options = multi_object_candidates(objects, task in VIDEO_TASKS)
    if not options:
        return None
    text, group = options[int(rng.integers(len(options)))]
    query = {"text": text, "object_ids": [str(i) for i in group], "type": "referring"}
    if task == "reasonseg":
        named = ", ".join(f"the {objects[i].size} {objects[i].colour} {objects[i].shape}" for i in group)
        query["answer"] = f"There are {NUMBER_WORDS[len(group)]} of them: {named}."
    return query


def _answer(obj: Shape, reasons: list[str]) -> str:
    return f"It is the {obj.size} {obj.colour} {obj.shape}, because {' and '.join(reasons)}."


def _make_query(
    rng: np.random.Generator, objects: list[Shape], task: str, size: int, target: int, no_target: bool
) -> dict[str, Any] | None:
    """One query about ``objects[target]`` (or about nothing), or ``None`` when no phrase singles it out."""
    video = task in VIDEO_TASKS
    if no_target:
        options = no_target_candidates(objects, video)
        if not options:
            return None
        text, _ = _reasoning_text(rng, options[int(rng.integers(len(options)))])
        return {"text": text, "object_ids": [], "type": "no_target"}
    if task in ("res", "rvos"):
        by_kind = referring_candidates(objects, target, video, size)
        options = [p for phrases in by_kind.values() for p in phrases]
        if by_kind["motion"] and rng.random() < MOTION_PREFERENCE:
            options = by_kind["motion"]
        if not options:
            return None
        return {"text": options[int(rng.integers(len(options)))], "object_ids": [str(target)], "type": "referring"}
    constraint_sets = reasoning_candidates(objects, target, video)
    if not constraint_sets:
        return None
    text, reasons = _reasoning_text(rng, constraint_sets[int(rng.integers(len(constraint_sets)))])
    query = {"text": text, "object_ids": [str(target)], "type": "reasoning"}
    if task == "reasonseg":
        query["answer"] = _answer(objects[target], reasons)
    return query


def make_queries(
    rng: np.random.Generator, objects: list[Shape], task: str, size: int, multi_object: float = 0.0
) -> list[dict[str, Any]]:
    """2-3 unambiguous queries of the task's kind, each about a different object where possible.

    Targets are drawn uniformly among the objects, so neither the first nor the largest object is usually the
    target. In ``rvos``, motion phrases are preferred when the target has one; in ``reasonvos`` each query is a
    no-target query with probability ``NO_TARGET_RATE``. With ``multi_object > 0``, each other query names several
    objects with that probability (:func:`multi_object_candidates`); at 0 no random number is drawn for it.
    """
    queries: list[dict[str, Any]] = []
    for _ in range(int(rng.integers(2, 4))):
        no_target = task == "reasonvos" and rng.random() < NO_TARGET_RATE
        multi = multi_object > 0 and not no_target and rng.random() < multi_object
        for _ in range(4):
            used = {i for q in queries for i in q["object_ids"]}
            unused = [i for i in range(len(objects)) if str(i) not in used] or list(range(len(objects)))
            if multi:
                query = _make_multi_query(rng, objects, task)
            else:
                query = _make_query(rng, objects, task, size, int(rng.choice(unused)), no_target)
            if query is not None and query["text"] not in {q["text"] for q in queries}:
                query["id"] = str(len(queries))
                query["type_id"] = REVOS_TYPE_IDS[query["type"]]
                queries.append(query)
                break
    return queries


def render_frames(
    objects: list[Shape],
    num_frames: int,
    size: int,
    background: tuple[int, int, int],
    shown: list[range] | None = None,
):
    """Frames ``[(size, size, 3) uint8]`` and visible masks ``[object][frame] -> (size, size) bool``.

    Later objects are drawn in front of earlier ones; ``shown`` (one frame range per object, default all frames)
    leaves an object out of the frames outside its range.
    """
    frames, masks = [], [[] for _ in objects]
    empty = np.zeros((size, size), dtype=bool)
    for t in range(num_frames):
        image = np.empty((size, size, 3), dtype=np.uint8)
        image[:] = background
        full = [render_mask(o, t, size) if shown is None or t in shown[i] else empty for i, o in enumerate(objects)]
        covered = np.zeros((size, size), dtype=bool)
        for index in reversed(range(len(objects))):
            masks[index].append(full[index] & ~covered)
            covered |= full[index]
        for index, obj in enumerate(objects):
            image[full[index]] = COLOURS[obj.colour]
        frames.append(image)
    return frames, masks


def generate_record(
    rng: np.random.Generator, task: str, size: int, multi_object: float = 0.0
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One record (metadata in the shard schema, frames) of ``task``; ``multi_object``: see :func:`make_queries`."""
    video = task in VIDEO_TASKS
    num_frames = int(rng.integers(6, 9)) if video else 1
    while True:
        objects = make_scene(rng, size, num_frames)
        queries = make_queries(rng, objects, task, size, multi_object)
        if len(queries) >= 2:
            break
    background = tuple(int(v) for v in rng.integers(20, 70, size=3))
    frames, masks = render_frames(objects, num_frames, size, background)
    return record_meta("synthetic", task, size, objects, masks, queries), frames


def record_meta(
    dataset: str,
    task: str,
    size: int,
    objects: list[Shape],
    masks: list[list[np.ndarray]],
    queries: list[dict[str, Any]],
    shown: list[range] | None = None,
) -> dict[str, Any]:
    """Shard-schema metadata of a rendered scene: per object its RLE masks ``[frame]`` and attributes (and its
    ``shown`` interval ``[start, stop)`` when given), and the queries."""
    num_frames = len(masks[0])
    entries = {}
    for i, o in enumerate(objects):
        entry = {"masks": [encode_rle(m) for m in masks[i]], "shape": o.shape, "colour": o.colour}
        entry.update({"size": o.size, "motion": o.motion})
        if shown is not None:
            entry["shown"] = [shown[i].start, shown[i].stop]
        entries[str(i)] = entry
    return {
        "dataset": dataset,
        "task": task,
        "frames": num_frames,
        "height": size,
        "width": size,
        "frame_names": [f"{t:05d}" for t in range(num_frames)],
        "objects": entries,
        "queries": queries,
    }


def generate_long_record(
    rng: np.random.Generator, size: int, num_frames: int
) -> tuple[dict[str, Any], list[np.ndarray]]:
    """One long ``rvos`` video (metadata in the shard schema, frames); objects are drawn back to front:

    0. a same-colour distractor (the target's colour, another shape), still, in view all along;
    1. a same-shape distractor (the target's shape, another colour), still, in view all along;
    2. the target, in view only in ``[enter, leave)`` (a random 30-50 % of the video, never at its ends), crossing
       the image horizontally;
    3. a small occluder of a third colour that moves down through the target's path in the same interval and
       passes in front of it halfway.

    Queries: the target and the same-shape distractor, each by colour and shape. Objects carry their ``shown``
    interval ``[start, stop)`` in the metadata.
    """
    if num_frames < 20:
        raise ValueError(f"num_frames: a long video needs at least 20 frames, got {num_frames}.")
    shape, other_shape, occluder_shape = (str(v) for v in rng.choice(SHAPES, size=3, replace=False))
    colour, other_colour, occluder_colour = (str(v) for v in rng.choice(list(COLOURS), size=3, replace=False))
    enter = int(rng.integers(int(0.1 * num_frames), int(0.4 * num_frames)))
    leave = enter + int(rng.integers(int(0.3 * num_frames), int(0.5 * num_frames)))
    speed = size / max(leave - enter - 1, 1)
    middle = (enter + leave - 1) / 2  # the target and the occluder meet at the centre on this frame
    side = "right" if rng.random() < 0.5 else "left"

    def make(name: str, colour_name: str, size_name: str, at: tuple[float, float], motion: str, travel: float) -> Shape:
        velocity = np.array(DIRECTIONS.get(motion, (0.0, 0.0))) * travel * speed
        start = np.array(at) * size - velocity * middle
        return Shape(name, colour_name, size_name, SIZES[size_name] * size, start, velocity, motion)

    objects = [
        make(other_shape, colour, "large", (0.2, 0.82), "still", 0.0),
        make(shape, other_colour, "large", (0.8, 0.18), "still", 0.0),
        make(shape, colour, "large", (0.5, 0.5), side, 0.6),  # 0.2 -> 0.8 of the width while in view
        make(occluder_shape, occluder_colour, "small", (0.5, 0.5), "down", 0.7),
    ]
    shown = [range(num_frames), range(num_frames), range(enter, leave), range(enter, leave)]
    background = tuple(int(v) for v in rng.integers(20, 70, size=3))
    frames, masks = render_frames(objects, num_frames, size, background, shown)
    queries = [
        {
            "text": f"the {objects[i].colour} {objects[i].shape}",
            "object_ids": [str(i)],
            "type": "referring",
            "id": str(q),
            "type_id": REVOS_TYPE_IDS["referring"],
        }
        for q, i in enumerate((2, 1))
    ]
    return record_meta("synthetic-long", "rvos", size, objects, masks, queries, shown), frames


def write_long(
    out_dir: str | Path,
    num_videos: int,
    seed: int,
    size: int = 64,
    frames: tuple[int, int] = LONG_FRAMES,
    records_per_shard: int = 10,
) -> list[str]:
    """Write ``num_videos`` long videos (:func:`generate_long_record`) of ``frames[0]``-``frames[1]`` frames as
    ``out_dir/synthetic-long-%06d.tar``; video ``i`` depends only on ``(seed, i)``. Returns the shards."""
    out_dir = Path(out_dir)
    with RecordWriter(str(out_dir / "synthetic-long-%06d.tar"), maxcount=records_per_shard) as writer:
        for index in tqdm(range(num_videos), desc="synthetic long", unit="video", leave=False):
            rng = np.random.default_rng([seed, SPLITS["long"], index])
            meta, images = generate_long_record(rng, size, int(rng.integers(frames[0], frames[1] + 1)))
            writer.write(f"synthetic-long-rvos-{index:06d}", meta, images, ext="png")
    return writer.shards


def write_split(
    out_dir: str | Path,
    split: str,
    num_records: int,
    seed: int,
    size: int = 64,
    records_per_shard: int = 100,
    multi_object: float = 0.0,
) -> list[str]:
    """Write ``num_records`` records of one split as ``out_dir/synthetic-<split>-%06d.tar``; returns the shards.

    ``multi_object``: share of queries naming several objects (:func:`make_queries`).
    """
    out_dir = Path(out_dir)
    with RecordWriter(str(out_dir / f"synthetic-{split}-%06d.tar"), maxcount=records_per_shard) as writer:
        for index in tqdm(range(num_records), desc=f"synthetic {split}", unit="rec", leave=False):
            task = TASK_CYCLE[index % len(TASK_CYCLE)]
            rng = np.random.default_rng([seed, SPLITS[split], index])
            meta, frames = generate_record(rng, task, size, multi_object)
            writer.write(f"synthetic-{split}-{task}-{index:06d}", meta, frames, ext="png")
    return writer.shards


def _prediction(record, strategy: str) -> np.ndarray:
    """``(T, H, W)`` prediction of a query-blind baseline for a record."""
    shape = (record.num_frames, *record.size)
    if strategy == "full":
        return np.ones(shape, dtype=bool)
    if strategy == "empty":
        return np.zeros(shape, dtype=bool)
    ids = list(record.meta["objects"])
    stacks = {i: np.stack([record.object_mask(i, t) for t in range(record.num_frames)]) for i in ids}
    chosen = ids[0] if strategy == "first" else max(ids, key=lambda i: int(stacks[i].sum()))
    return stacks[chosen]


BASELINES: dict[str, str] = {
    "largest": "largest object",
    "first": "first object",
    "full": "full image",
    "empty": "empty mask",
}


def trivial_baselines(val_dir: str | Path) -> dict[str, dict[str, float]]:
    """Scores of query-blind predictions on a split: the largest object, the first object, the full image, nothing.

    Scored with the evaluation metrics (:mod:`instructseg.metrics`): image tasks give ``ImageSegMetric``'s cIoU =
    ΣI / ΣU and gIoU = mean IoU over queries; video tasks give ``VideoSegMetric``'s J = mean over referring and
    reasoning queries of the mean per-frame IoU (no-target queries are left out, as in the ReVOS J).

    Returns:
        ``{baseline: {"image_cIoU", "image_gIoU", "video_J"}}`` (0 where a split has no query of the kind).
    """
    image = {name: ImageSegMetric() for name in BASELINES}
    video = {name: VideoSegMetric() for name in BASELINES}
    for record in iter_records(str(Path(val_dir) / "*.tar")):
        frames = range(record.num_frames)
        predictions = {name: _prediction(record, name) for name in BASELINES}
        for query in record.queries:
            target = np.stack([record.target_mask(query["object_ids"], t) for t in frames])
            for name, pred in predictions.items():
                if record.task not in VIDEO_TASKS:
                    image[name].update(pred, target)
                elif query["type"] != "no_target":
                    video[name].update(pred, target, query["type"])
    scores = {}
    for name in BASELINES:
        image_scores, video_scores = image[name].compute(), video[name].compute()
        scores[name] = {
            "image_cIoU": image_scores["cIoU"],
            "image_gIoU": image_scores["gIoU"],
            "video_J": video_scores.get("J", 0.0),
        }
    return scores


def summarize(split_dir: str | Path) -> dict[str, Counter]:
    """Counts of records per task and of queries per (task, type) in a split."""
    records, queries = Counter(), Counter()
    for record in iter_records(str(Path(split_dir) / "*.tar")):
        records[record.task] += 1
        queries.update(f"{record.task}/{q['type']}" for q in record.queries)
    return {"records": records, "queries": queries}


def generate(
    out: str | Path,
    train: int,
    val: int,
    seed: int = 0,
    size: int = 64,
    records_per_shard: int = 100,
    multi_object: float = 0.0,
) -> dict[str, list[str]]:
    """Write both splits under ``out``; returns ``{"train": [shards], "val": [shards]}``.

    ``multi_object``: share of queries naming several objects (:func:`make_queries`).
    """
    return {
        split: write_split(Path(out) / split, split, count, seed, size, records_per_shard, multi_object)
        for split, count in (("train", train), ("val", val))
        if count > 0
    }


def _table(rows: list[list[str]], header: list[str]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def main(argv: list[str] | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output directory (train/ and val/ are created)")
    parser.add_argument("--train", type=int, default=2000, help="training records")
    parser.add_argument("--val", type=int, default=200, help="validation records")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--records-per-shard", type=int, default=100)
    parser.add_argument(
        "--multi-object",
        type=float,
        default=0.0,
        metavar="RATE",
        help="share of queries that name several objects (0: the default benchmark, byte-identical)",
    )
    parser.add_argument("--long", type=int, default=0, metavar="N", help="long videos, written to OUT/long/")
    parser.add_argument(
        "--long-frames",
        type=int,
        nargs=2,
        default=list(LONG_FRAMES),
        metavar=("MIN", "MAX"),
        help="frames per long video",
    )
    args = parser.parse_args(argv)
    if args.long < 0 or not 20 <= args.long_frames[0] <= args.long_frames[1]:
        parser.error(
            f"--long / --long-frames: expected N >= 0 and 20 <= MIN <= MAX, got {args.long} {args.long_frames}."
        )
    if not 0.0 <= args.multi_object <= 1.0:
        parser.error(f"--multi-object: expected a rate in [0, 1], got {args.multi_object}.")
    start = time.perf_counter()
    shards = generate(args.out, args.train, args.val, args.seed, args.size, args.records_per_shard, args.multi_object)
    if args.long:
        shards["long"] = write_long(Path(args.out) / "long", args.long, args.seed, args.size, tuple(args.long_frames))
    elapsed = time.perf_counter() - start
    summary: dict[str, Any] = {"seconds": elapsed, "shards": {k: len(v) for k, v in shards.items()}}
    for split in shards:
        counts = summarize(Path(args.out) / split)
        summary[split] = {k: dict(v) for k, v in counts.items()}
        echo(
            f"{split}: {sum(counts['records'].values())} records, {sum(counts['queries'].values())} queries "
            f"in {len(shards[split])} shards; {json.dumps(dict(sorted(counts['queries'].items())))}"
        )
    echo(f"generated in {elapsed:.1f} s")
    if "val" in shards:
        baselines = trivial_baselines(Path(args.out) / "val")
        summary["baselines"] = baselines
        rows = [
            [BASELINES[k], *(f"{v[m]:.3f}" for m in ("image_cIoU", "image_gIoU", "video_J"))]
            for k, v in baselines.items()
        ]
        echo(
            "trivial baselines on val (query-blind):\n"
            + _table(rows, ["prediction", "image cIoU", "image gIoU", "video J"])
        )
    return summary


if __name__ == "__main__":
    main()
