"""LLaVA-Instruct conversations -> vqa records."""

from __future__ import annotations

import pytest
from fixtures.official_layouts import write_llava

from datamodules.convert import ConvertError, LLaVAConverter
from datamodules.convert.__main__ import main


def test_turn_pairs_become_queries(tmp_path, convert, read_split):
    fixture = write_llava(tmp_path / "llava", num_images=3)
    summary = convert("llava", fixture.json_path, tmp_path / "out")
    assert summary["splits"]["train"]["skipped_records"] == {"no_image": 1}
    assert summary["splits"]["train"]["dropped"] == {"unpaired_turn": 1}
    records = read_split(tmp_path / "out", "llava", "train")
    assert sorted(records) == ["000000000000", "000000000001", "000000000002"]
    for key, record in records.items():
        assert record.task == "vqa" and record.meta["objects"] == {} and record.meta["source_id"] == key
        assert [(q["text"], q["answer"], q["id"]) for q in record.queries] == [
            (f"What is the {['man', 'woman', 'dog'][int(key)]} doing?", "It is standing still.", "0"),
            ("What colour is it?", "It is brown.", "2"),
        ]
        assert all(q["type"] == "no_target" and q["object_ids"] == [] for q in record.queries)
        assert record.frames[0].shape == (32, 48, 3)
    assert records["000000000001"].frames.encoded[0].startswith(b"\x89PNG")  # a PNG image stays PNG


def test_errors(tmp_path, capsys):
    fixture = write_llava(tmp_path / "llava", num_images=1)
    with pytest.raises(ConvertError, match="LLaVA conversation file not found"):
        LLaVAConverter(tmp_path / "missing.json")
    with pytest.raises(ConvertError, match="LLaVA image folder not found"):
        LLaVAConverter(fixture.json_path, image_root=tmp_path / "no_images")
    args = ["llava", "--root", str(fixture.json_path), "--out", str(tmp_path / "out"), "--split", "a", "b"]
    assert main(args) == 2
    assert "single --split" in capsys.readouterr().err
