"""The Synthetic IVS benchmark: determinism, scene structure, unambiguous queries, low trivial baselines."""

import hashlib
from pathlib import Path

import numpy as np
import pytest

from datamodules import InstructSegDataModule
from datamodules.shards import iter_records
from datamodules.synthetic import (
    COLOURS,
    FACTS,
    MOTION_WORDS,
    MOTION_WORDS_PLURAL,
    NUMBER_WORDS,
    SHAPES,
    SIZES,
    SPATIAL,
    generate,
    main,
    trivial_baselines,
)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*.tar"))}


def test_deterministic_bytes(tmp_path, synthetic_dir):
    generate(tmp_path / "same", train=48, val=40, seed=0, size=64, records_per_shard=8)
    assert digest(tmp_path / "same") == digest(synthetic_dir)
    generate(tmp_path / "other", train=8, val=0, seed=1, size=64, records_per_shard=8)
    assert digest(tmp_path / "other") != digest(tmp_path / "same" / "train")


def all_records(synthetic_dir):
    return [r for split in ("train", "val") for r in iter_records(str(synthetic_dir / split / "*.tar"))]


def test_scene_structure(synthetic_dir):
    records = all_records(synthetic_dir)
    assert len(records) == 88
    tasks = {r.task for r in records}
    assert tasks == {"res", "reasonseg", "rvos", "reasonvos"}
    for record in records:
        video = record.task in ("rvos", "reasonvos")
        assert (6 <= record.num_frames <= 8) if video else record.num_frames == 1
        assert record.size == (64, 64) and 3 <= len(record.meta["objects"]) <= 5
        frame = record.frames[record.num_frames - 1]
        for t in range(record.num_frames):
            masks = np.stack([record.object_mask(i, t) for i in record.meta["objects"]])
            assert masks.sum(axis=(1, 2)).min() > 10  # every shape fully visible
            assert masks.sum(axis=0).max() == 1  # shapes never overlap
        for object_id, entry in record.meta["objects"].items():
            mask = record.object_mask(object_id, record.num_frames - 1)
            assert (frame[mask] == COLOURS[entry["colour"]]).all()  # masks are pixel-exact
        assert 2 <= len(record.queries) <= 3
        for query in record.queries:
            assert len(query["object_ids"]) == (0 if query["type"] == "no_target" else 1)
            assert ("answer" in query) == (record.task == "reasonseg")
    queries = [(r.task, q["type"]) for r in records for q in r.queries]
    no_target = sum(t == "no_target" for _, t in queries)
    reasonvos = sum(task == "reasonvos" for task, _ in queries)
    assert 0 < no_target < 0.35 * reasonvos
    assert {t for task, t in queries if task != "reasonvos"} <= {"referring", "reasoning"}
    moving = [o["motion"] for r in records for o in r.meta["objects"].values() if r.num_frames > 1]
    assert 0.2 < moving.count("still") / len(moving) < 0.6


def centre(record, object_id, axis):
    ys, xs = np.nonzero(record.object_mask(object_id, 0))
    return (xs if axis == 0 else ys).mean()


def interpret(record, text):
    """Object ids that an independent reading of ``text`` (attribute words, facts, motion, position) selects."""
    objects = record.meta["objects"]
    words = text.rstrip("?").split()
    singular = [w.removesuffix("s") if w.removesuffix("s") in SHAPES else w for w in words]  # "all the squares"
    constraints = {}
    for name, vocabulary in (("colour", COLOURS), ("shape", SHAPES), ("size", SIZES)):
        constraints.update({name: w for w in singular if w in vocabulary})
    for table in (MOTION_WORDS, MOTION_WORDS_PLURAL):
        constraints.update({"motion": m for m, phrase in table.items() if text.endswith(phrase)})
    for name, table in FACTS.items():
        constraints.update({name: value for value, facts in table.items() for clause, _ in facts if clause in text})
    relative = {"larger": "large", "smaller": "small"}.get(words[1]) if len(words) > 1 else None
    candidates = [i for i, o in objects.items() if all(o[k] == v for k, v in constraints.items())]
    if relative:
        candidates = [i for i in candidates if objects[i]["size"] == relative]
    for _, (axis, sign, side, superlative) in SPATIAL.items():
        if text.endswith(side) or superlative in words:
            candidates = [max(candidates, key=lambda i: sign * centre(record, i, axis))]
    return candidates


def test_queries_are_unambiguous(synthetic_dir):
    checked = 0
    for record in all_records(synthetic_dir):
        for query in record.queries:
            assert interpret(record, query["text"]) == query["object_ids"], (record.key, query)
            checked += 1
    assert checked > 150


def test_trivial_baselines_are_low(synthetic_dir):
    scores = trivial_baselines(synthetic_dir / "val")
    assert set(scores) == {"largest", "first", "full", "empty"}
    for name, values in scores.items():
        assert values["image_cIoU"] < 0.4 and values["video_J"] < 0.4, (name, values)
    assert scores["empty"]["image_cIoU"] == 0.0 and scores["full"]["image_cIoU"] < 0.1


def test_full_image_baseline_by_hand(synthetic_dir):
    """A full-image prediction has I = |target| and U = H * W on every frame: the scores follow by hand."""
    inter, union, image_iou, video_j = 0, 0, [], []
    for record in iter_records(str(synthetic_dir / "val" / "*.tar")):
        pixels = record.size[0] * record.size[1]
        for query in record.queries:
            areas = [int(record.target_mask(query["object_ids"], t).sum()) for t in range(record.num_frames)]
            if record.task in ("res", "reasonseg"):
                inter, union = inter + areas[0], union + pixels
                image_iou.append(areas[0] / pixels)
            elif query["type"] != "no_target":
                video_j.append(np.mean([a / pixels for a in areas]))
    scores = trivial_baselines(synthetic_dir / "val")["full"]
    assert scores["image_cIoU"] == pytest.approx(inter / union, abs=1e-12)
    assert scores["image_gIoU"] == pytest.approx(np.mean(image_iou), abs=1e-12)
    assert scores["video_J"] == pytest.approx(np.mean(video_j), abs=1e-12)


def test_cli_summary(tmp_path):
    lines = []
    summary = main(
        ["--out", str(tmp_path), "--train", "8", "--val", "8", "--records-per-shard", "4"], echo=lines.append
    )
    assert summary["shards"] == {"train": 2, "val": 2}
    assert summary["train"]["records"] == {"res": 2, "reasonseg": 2, "rvos": 2, "reasonvos": 2}
    assert any("| largest object |" in line for line in lines)


@pytest.mark.parametrize("clip_sampling", ["sparse", "global_local"])
def test_datamodule_on_synthetic(synthetic_dir, tokenizer_dir, clip_sampling):
    module = InstructSegDataModule(
        train=[{"name": "synthetic", "urls": str(synthetic_dir / "train" / "*.tar")}],
        val=[{"name": "synthetic", "urls": str(synthetic_dir / "val" / "*.tar")}],
        tokenizer_path=tokenizer_dir,
        mask_size=64,
        clip_size=64,
        num_ref_frames=2,
        batch_size=8,
        num_workers=0,
        epoch_length=16,
        clip_sampling=clip_sampling,
    )
    module.setup("fit")
    batches = list(module.train_dataloader())
    assert len(batches) == 2
    assert batches[0]["pixel_values"].shape == (8, 3, 64, 64)
    assert all(batch["has_target"][[t != "no_target" for t in batch["query_type"]]].all() for batch in batches)
    val = next(iter(module.val_dataloader()))
    assert val["clip_pixel_values"].shape[2:] == (3, 64, 64)


def test_multi_object_queries_name_every_object_of_a_group(tmp_path):
    generate(tmp_path, train=0, val=24, seed=0, size=64, records_per_shard=24, multi_object=1.0)
    multi, by_colour = 0, 0
    for record in iter_records(str(tmp_path / "val" / "*.tar")):
        for query in record.queries:
            if query["type"] == "no_target":
                continue
            ids, words = query["object_ids"], query["text"].split()
            assert len(ids) >= 2 and query["type"] == "referring", query
            assert interpret(record, query["text"]) == ids, (record.key, query)
            assert words[1] == "the" or words[1] == NUMBER_WORDS[len(ids)], query  # "all the ..." / "the two ..."
            if len(words) == 4 and words[-1] == "shapes" and words[2] in COLOURS:  # "all the red shapes"
                colour = COLOURS[words[2]]
                for t in range(record.num_frames):  # the target is every pixel of that colour: the union
                    pixels = (np.asarray(record.frames[t]) == colour).all(-1)
                    assert np.array_equal(record.target_mask(ids, t), pixels), (record.key, query)
                by_colour += 1
            multi += 1
    assert multi > 30 and by_colour > 3


def test_multi_object_rate_zero_is_the_default_benchmark(tmp_path, synthetic_dir):
    generate(tmp_path, train=0, val=40, seed=0, size=64, records_per_shard=8, multi_object=0.0)
    assert digest(tmp_path / "val") == digest(synthetic_dir / "val")


def test_long_video_split(tmp_path):
    lines = []
    summary = main(
        ["--out", str(tmp_path), "--train", "0", "--val", "0", "--long", "2", "--long-frames", "100", "120"],
        echo=lines.append,
    )
    assert summary["shards"] == {"long": 1} and summary["long"]["records"] == {"rvos": 2}
    for record in iter_records(str(tmp_path / "long" / "*.tar")):
        assert 100 <= record.num_frames <= 120
        objects = record.meta["objects"]
        target_id = record.queries[0]["object_ids"][0]
        target = objects[target_id]
        assert interpret(record, record.queries[0]["text"]) == [target_id]
        others = [o for i, o in objects.items() if i != target_id]
        assert any(o["colour"] == target["colour"] and o["shape"] != target["shape"] for o in others)
        assert any(o["shape"] == target["shape"] and o["colour"] != target["colour"] for o in others)
        masks = np.stack([record.object_mask(target_id, t) for t in range(record.num_frames)])
        areas = masks.sum(axis=(1, 2))
        present = np.flatnonzero(areas)
        enter, leave = present[0], present[-1] + 1
        assert 0 < enter and leave < record.num_frames  # it enters and leaves
        assert (areas[enter:leave] > 0).all() and 0.2 < (leave - enter) / record.num_frames < 0.6
        full = np.median(areas[enter:leave])
        occluded = np.flatnonzero((areas > 0) & (areas < 0.85 * full))
        assert len(occluded) > 0  # partly hidden somewhere, never entirely
        t = occluded[0]
        frame = np.asarray(record.frames[t])
        assert (frame[masks[t]] == COLOURS[target["colour"]]).all()
        in_front = [i for i, o in objects.items() if i != target_id and record.object_mask(i, t).any()]
        ys, xs = np.nonzero(masks[t])
        box = np.zeros_like(masks[t])
        box[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = True
        assert any((record.object_mask(i, t) & box).any() for i in in_front)  # a shape covers part of it
