"""The shipped data configs read what the converters write: convert a fixture, expand each ``urls`` pattern."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fixtures.official_layouts import write_mevis, write_palette_videos, write_reasonseg, write_refcoco, write_revos

from datamodules.shards import SkipCounter, expand_urls, iter_records

REPO = Path(__file__).resolve().parents[2]

# config name -> official-layout fixture writer (returns the --root to convert)
FIXTURES = {
    "refcoco": lambda root: write_refcoco(root / "refer").data_dir,
    "reasonseg": lambda root: write_reasonseg(root).root,
    "refytvos": lambda root: write_palette_videos(root / "ytvos").root,
    "refdavis": lambda root: write_palette_videos(root / "davis", {"train": 1, "valid": 1}, ("train", "valid")).root,
    "mevis": lambda root: write_mevis(root / "mevis").root,
    "revos": lambda root: write_revos(root / "ReVOS").root,
}


def _sets(config: dict) -> list[dict]:
    init_args = config["data"]["init_args"]
    return [entry for key in ("train", "val") for entry in init_args.get(key) or []]


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_shipped_config_reads_converted_shards(tmp_path, convert, name):
    out = (
        tmp_path / "data" / "shards" / name
    )  # the README's: python -m datamodules.convert <name> --out data/shards/<name>
    summary = convert(name, FIXTURES[name](tmp_path / "official"), out)
    config = yaml.safe_load((REPO / "configs" / "data" / f"{name}.yaml").read_text())
    sets = _sets(config)
    assert {s["name"] for s in sets} == {name}
    for entry in sets:
        assert entry["urls"].startswith("data/"), entry
        urls = expand_urls(str(tmp_path / entry["urls"]))  # the data root substituted
        split = Path(urls[0]).name.removeprefix(f"{name}-").rsplit("-", 1)[0]
        assert urls == sorted(str(p) for p in out.glob(f"{name}-{split}-*.tar"))
        counter = SkipCounter()
        records = list(iter_records(urls, counter=counter))
        assert counter.total() == 0
        assert len(records) == summary["splits"][split]["records"] > 0
        assert {r.meta["dataset"] for r in records} == {name}
