"""Shared fixtures: the tiny tokenizer, a record factory, and shard writers for good and broken data."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from datamodules.rle import encode_rle
from datamodules.shards import RecordWriter
from datamodules.synthetic import generate
from instructseg.processing import add_instructseg_tokens
from instructseg.tiny import build_tiny_tokenizer


@pytest.fixture(scope="session")
def tokenizer():
    tok = build_tiny_tokenizer()
    add_instructseg_tokens(tok)
    return tok


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory, tokenizer) -> str:
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(path)
    return str(path)


def box(height: int, width: int, top: int, left: int, bottom: int, right: int) -> np.ndarray:
    mask = np.zeros((height, width), dtype=bool)
    mask[top:bottom, left:right] = True
    return mask


def build_record(task: str = "res", frames: int = 1, height: int = 24, width: int = 32, seed: int = 0):
    """A small valid record: two moving boxes, one query per type the task allows; returns ``(meta, frames)``."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, width)[None, :, None] + np.linspace(0, 50, height)[:, None, None]
    images = [(ramp + rng.integers(0, 6, size=(height, width, 3)) + 8 * t).astype(np.uint8) for t in range(frames)]
    boxes = {
        "3": [box(height, width, 2, 2 + t, 10, 12 + t) for t in range(frames)],
        "7": [box(height, width, 12, 14, 22, 20 + t % 3) for t in range(frames)],
    }
    queries = [{"text": "the left box", "object_ids": ["3"], "type": "referring", "id": "a"}]
    if task in ("reasonseg", "reasonvos"):
        queries.append(
            {"text": "the box that stays low", "object_ids": ["7"], "type": "reasoning", "answer": "It is low."}
        )
    if task == "reasonvos":
        queries.append({"text": "the purple star", "object_ids": [], "type": "no_target"})
    if task == "vqa":
        queries = [{"text": "how many boxes?", "object_ids": [], "type": "no_target", "answer": "two"}]
    meta = {
        "dataset": "unit",
        "task": task,
        "frames": frames,
        "height": height,
        "width": width,
        "frame_names": [f"f{t}" for t in range(frames)],
        "objects": {oid: {"masks": [encode_rle(m) for m in masks]} for oid, masks in boxes.items()},
        "queries": queries,
        "extra": {"kept": True},
    }
    return meta, images


@pytest.fixture
def make_record():
    return build_record


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_raw(path: Path, samples: list[dict]) -> str:
    """Write samples ``{"__key__", "json": bytes, "000.png": bytes, ...}`` without any validation."""
    with wds.TarWriter(str(path), encoder=False, mtime=0) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def raw_sample(key: str, meta: dict, images: list[np.ndarray]) -> dict:
    sample = {"__key__": key, "json": json.dumps(meta).encode()}
    sample.update({f"{t:03d}.png": png_bytes(image) for t, image in enumerate(images)})
    return sample


@pytest.fixture
def raw():
    """Helpers to write shards that bypass validation: ``raw.sample``, ``raw.write``, ``raw.png``."""
    return SimpleNamespace(sample=raw_sample, write=write_raw, png=png_bytes)


@pytest.fixture
def write_shards(tmp_path):
    """Write valid records (``[(key, task, frames)]``) into shards of ``per_shard`` records; returns the pattern."""

    def write(name: str, records: list[tuple[str, str, int]], per_shard: int = 4, dataset: str = "unit") -> str:
        folder = tmp_path / name
        with RecordWriter(str(folder / f"{name}-%06d.tar"), maxcount=per_shard) as writer:
            for index, (key, task, frames) in enumerate(records):
                meta, images = build_record(task, frames, seed=index)
                meta["dataset"] = dataset
                writer.write(key, meta, images, ext="png")
        return str(folder / "*.tar")

    return write


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, train=48, val=40, seed=0, size=64, records_per_shard=8)
    return out
