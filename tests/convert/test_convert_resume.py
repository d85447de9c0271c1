"""Resumable, deterministic shard writing: .tmp + rename, finished shards kept, settings guarded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.official_layouts import write_llava, write_reasonseg

from datamodules.convert import ConvertError, ReasonSegConverter, convert_dataset
from datamodules.convert.__main__ import main

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

REPO = Path(__file__).resolve().parents[2]
OLD = 1_000_000_000  # an mtime far in the past, to see whether a file was rewritten


def _snapshot(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}


@pytest.fixture
def dataset(tmp_path):
    return write_reasonseg(tmp_path / "data", num_images={"train": 7}).root


def test_rerun_rewrites_only_missing_or_interrupted_shards(dataset, tmp_path, convert):
    out = tmp_path / "out"
    convert("reasonseg", dataset, out, "--maxcount", "2")
    shards = sorted(out.glob("*.tar"))
    assert [p.name for p in shards] == [f"reasonseg-train-00000{i}.tar" for i in range(4)]
    before = _snapshot(out)
    for shard in shards:
        os.utime(shard, (OLD, OLD))
    shards[1].unlink()  # a lost shard
    shards[2].rename(shards[2].with_name(shards[2].name + ".tmp"))  # an interrupted one: .tmp, no final name
    shards[2].with_name(shards[2].name + ".tmp").write_bytes(b"half a tar")
    convert("reasonseg", dataset, out, "--maxcount", "2")
    assert _snapshot(out) == before  # identical bytes, no .tmp left, same summary
    assert shards[0].stat().st_mtime == OLD and shards[3].stat().st_mtime == OLD  # finished shards untouched
    assert shards[1].stat().st_mtime > OLD and shards[2].stat().st_mtime > OLD


def test_crash_leaves_no_complete_looking_shard(dataset, tmp_path, monkeypatch):
    original = ReasonSegConverter.convert
    calls = []

    def crashing(self, split, item, report):
        calls.append(item.key)
        if len(calls) == 4:
            raise RuntimeError("power cut")
        return original(self, split, item, report)

    monkeypatch.setattr(ReasonSegConverter, "convert", crashing)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="power cut"):
        convert_dataset(ReasonSegConverter(dataset), out, maxcount=3, progress=False, echo=None)
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "reasonseg-train-000000.tar",
        "reasonseg-train-000001.tar.tmp",
    ]
    monkeypatch.setattr(ReasonSegConverter, "convert", original)
    convert_dataset(ReasonSegConverter(dataset), out, maxcount=3, progress=False, echo=None)
    clean = tmp_path / "clean"
    convert_dataset(ReasonSegConverter(dataset), clean, maxcount=3, progress=False, echo=None)
    assert _snapshot(out) == _snapshot(clean)


def test_other_settings_are_refused_unless_overwrite(dataset, tmp_path, convert, capsys):
    out = tmp_path / "out"
    convert("reasonseg", dataset, out, "--maxcount", "2")
    args = ["reasonseg", "--root", str(dataset), "--out", str(out), "--maxcount", "3", "--no-progress"]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    with pytest.raises(ConvertError, match="other settings"):
        convert_dataset(ReasonSegConverter(dataset, explanatory=False), out, maxcount=2, echo=None)
    assert main([*args, "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("*.tar*")) == [f"reasonseg-train-00000{i}.tar" for i in range(3)]
    assert json.loads((out / "summary.json").read_text())["splits"]["train"]["maxcount"] == 3


def test_settings_of_every_split_are_checked_before_writing(tmp_path, convert):
    root = write_reasonseg(tmp_path / "data", num_images={"train": 2, "val": 1}).root
    out = tmp_path / "out"
    convert("reasonseg", root, out, "--split", "val", "--maxcount", "2")
    with pytest.raises(ConvertError, match="reasonseg-val shards written with other settings"):
        convert_dataset(ReasonSegConverter(root), out, maxcount=3, progress=False, echo=None)
    assert not list(out.glob("reasonseg-train-*"))


def test_workers_give_identical_shards(dataset, tmp_path, convert):
    convert("reasonseg", dataset, tmp_path / "one", "--maxcount", "3")
    convert("reasonseg", dataset, tmp_path / "two", "--maxcount", "3", "--workers", "2")
    assert _snapshot(tmp_path / "one") == _snapshot(tmp_path / "two")


def test_summary_keeps_earlier_splits(tmp_path, convert):
    root = write_reasonseg(tmp_path / "data", num_images={"train": 2, "val": 1}).root
    convert("reasonseg", root, tmp_path / "out", "--split", "val")
    summary = convert("reasonseg", root, tmp_path / "out", "--split", "train")
    assert sorted(summary["splits"]) == ["train", "val"] and summary["total"]["records"] == 3


def test_command_line_entry_point(tmp_path):
    fixture = write_llava(tmp_path / "llava", num_images=2)
    command = [sys.executable, "-m", "datamodules.convert", "llava", "--root", str(fixture.json_path)]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, check=False, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert "llava -> " in result.stdout and "skipped records: no_image 1" in result.stdout
    assert (tmp_path / "out" / "llava-train-000000.tar").is_file()
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["total"]["records"] == 2
