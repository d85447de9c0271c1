"""Model names: local paths load as they are, ``org/name`` Hub ids come from the Hub cache, anything else fails at once.

No network here: the Hub is faked by a cache directory laid out as ``huggingface_hub`` writes it
(``models--org--name/refs/main`` + ``snapshots/<commit>/``) with offline mode on.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import constants

from instructseg.modeling.instructseg import InstructSeg
from instructseg.modeling.loading import (
    ModelNotFoundError,
    PretrainedLoadError,
    check_pretrained_dir,
    is_hub_id,
    resolve_model_path,
)
from instructseg.predictor import InstructSegPredictor

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hub cache in offline mode (``HF_HUB_CACHE``, ``HF_HUB_OFFLINE=1``, as read by huggingface_hub)."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_snapshot(cache: Path, repo_id: str, source: Path) -> Path:
    """Copy ``source`` into ``cache`` as the ``main`` snapshot of model repo ``repo_id``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return Path(shutil.copytree(source, repo / "snapshots" / COMMIT))


@pytest.mark.parametrize(
    "name, hub",
    [
        ("org/name", True),
        ("google/siglip-so400m-patch14-384", True),
        ("microsoft/phi-2", True),
        ("exports", False),  # no slash
        ("a/b/c", False),
        ("./org/name", False),
        ("/org/name", False),
        ("~/name", False),
        ("runs/last.ckpt", False),  # a file suffix
        ("org/na me", False),
        ("org/..", False),
        ("org--x/name", False),
    ],
)
def test_is_hub_id(name, hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_hub_id(name) is hub


def test_existing_local_paths_win(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "name").mkdir(parents=True)
    assert not is_hub_id("org/name")
    assert resolve_model_path("org/name") == Path("org/name")
    assert resolve_model_path(tmp_path) == tmp_path


@pytest.mark.parametrize("name", ["missing", "a/b/c", "./x/y", "runs/last.ckpt", "/abs/export"])
def test_neither_path_nor_hub_id_fails_at_once(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="not a Hugging Face Hub id"):
        resolve_model_path(name)
    assert time.perf_counter() - start < 1.0
    with pytest.raises(FileNotFoundError, match="not a Hugging Face Hub id"):
        InstructSegPredictor.from_pretrained(name)


def test_uncached_hub_id_offline_fails_at_once_naming_path_and_repo(offline_cache):
    start = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE") as err:
        resolve_model_path("exports/not-written")
    assert time.perf_counter() - start < 1.0
    assert "at exports/not-written" in str(err.value) and "repo 'exports/not-written'" in str(err.value)


def test_hub_id_loads_from_the_cache_snapshot(tiny_model, tmp_path, offline_cache):
    export = tiny_model.save_pretrained(tmp_path / "export")
    snapshot = _cache_snapshot(offline_cache, "instructseg/tiny-demo", export)
    assert resolve_model_path("instructseg/tiny-demo") == snapshot
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    expected = InstructSegPredictor.from_pretrained(export).predict_image(image, "the red square")
    got = InstructSegPredictor.from_pretrained("instructseg/tiny-demo").predict_image(image, "the red square")
    assert got.score == pytest.approx(expected.score, abs=1e-6)
    np.testing.assert_array_equal(got.mask, expected.mask)
    model = InstructSeg.from_pretrained("instructseg/tiny-demo")
    torch.testing.assert_close(
        model.state_dict()["siglip.tower.embeddings.patch_embedding.weight"],
        tiny_model.state_dict()["siglip.tower.embeddings.patch_embedding.weight"],
    )


def test_pretrained_part_under_a_local_folder_is_a_path(tmp_path, monkeypatch):
    """``tiny/llm`` with a local ``tiny/`` folder is a mistyped path (caught at once), not a Hub id."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    start = time.perf_counter()
    with pytest.raises(PretrainedLoadError, match="No directory at tiny/llm"):
        check_pretrained_dir("tiny/llm", "llm")
    assert time.perf_counter() - start < 1.0
