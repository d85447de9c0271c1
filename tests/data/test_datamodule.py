"""InstructSegDataModule: LightningCLI-style configuration, loaders with workers, skip counting, Trainer loop."""

from collections import Counter

import lightning as L
import pytest
import torch
from jsonargparse import ArgumentParser

from datamodules import InstructSegDataModule, ShardSetConfig


def records(prefix, count):
    tasks = ("res", "rvos", "reasonseg", "reasonvos")
    return [(f"{prefix}{i:03d}", tasks[i % 4], 1 if tasks[i % 4] in ("res", "reasonseg") else 5) for i in range(count)]


@pytest.fixture
def shard_sets(write_shards):
    return {
        "train_a": write_shards("train_a", records("a", 12), per_shard=3),
        "train_b": write_shards("train_b", records("b", 8), per_shard=4),
        "val": write_shards("val", records("v", 10), per_shard=2),
    }


def make_module(shard_sets, tokenizer_dir, **kwargs):
    options = {
        "train": [
            {"name": "a", "urls": shard_sets["train_a"], "weight": 2.0},
            ShardSetConfig("b", shard_sets["train_b"], task="rvos"),
        ],
        "val": [{"name": "val", "urls": shard_sets["val"]}],
        "tokenizer_path": tokenizer_dir,
        "mask_size": 32,
        "clip_size": 32,
        "num_ref_frames": 2,
        "batch_size": 4,
        "num_workers": 0,
        "epoch_length": 14,
        "shuffle_buffer": 4,
        **kwargs,
    }
    return InstructSegDataModule(**options)


def test_lightning_cli_config(shard_sets, tokenizer_dir):
    config = f"""
data:
  class_path: datamodules.InstructSegDataModule
  init_args:
    train: [{{name: synthetic, urls: "{shard_sets["train_a"]}", weight: 1.0}}]
    val: [{{name: synthetic, urls: "{shard_sets["val"]}"}}]
    tokenizer_path: {tokenizer_dir}
    mask_size: 64
    clip_size: 64
    num_ref_frames: 2
    batch_size: 8
"""
    parser = ArgumentParser()
    parser.add_subclass_arguments(L.LightningDataModule, "data")
    module = parser.instantiate(parser.parse_string(config)).data
    assert isinstance(module, InstructSegDataModule)
    assert module.train_sets == [ShardSetConfig("synthetic", shard_sets["train_a"], 1.0)]
    assert module.batch_size == 8 and module.num_ref_frames == 2
    assert module.mask_size == module.clip_size == 64


def test_train_and_val_batches(shard_sets, tokenizer_dir):
    module = make_module(shard_sets, tokenizer_dir)
    module.setup("fit")
    loader = module.train_dataloader()
    batches = list(loader)
    assert len(batches) == len(loader) == 4  # ceil(14 / 4)
    batch = batches[0]
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["clip_pixel_values"].shape[0] == 4 and batch["clip_pixel_values"].shape[1] in (1, 3)
    assert set(batch["shard_set"]) <= {"a", "b"} and isinstance(batch["skipped"], dict)
    assert all(t == "rvos" for t, s in zip(batch["task"], batch["shard_set"]) if s == "b")  # task override
    second_epoch = list(loader)
    assert [b["key"] for b in batches] != [b["key"] for b in second_epoch]
    again = make_module(shard_sets, tokenizer_dir)
    again.setup("fit")
    assert [b["key"] for b in again.train_dataloader()] == [b["key"] for b in batches]
    val_keys = [(k, q) for b in module.val_dataloader() for k, q in zip(b["key"], b["query_id"])]
    assert len(val_keys) == len(set(val_keys)) == 3 + 3 + 2 + 2 * 3 + 2  # res/rvos 1 query, reasonseg 2, reasonvos 3


def test_workers_split_without_duplicates(shard_sets, tokenizer_dir):
    module = make_module(shard_sets, tokenizer_dir, num_workers=2, epoch_length=20)
    module.setup("fit")
    train = list(module.train_dataloader())
    assert len(train) == 5 and all(b["pixel_values"].shape[0] == 4 for b in train)
    serial = make_module(shard_sets, tokenizer_dir)
    serial.setup("validate")
    expected = sorted((k, q) for b in serial.val_dataloader() for k, q in zip(b["key"], b["query_id"]))
    parallel = sorted((k, q) for b in module.val_dataloader() for k, q in zip(b["key"], b["query_id"]))
    assert parallel == expected


def test_skip_counts_and_bad_sets(tmp_path, shard_sets, tokenizer_dir, make_record, raw):
    good = [raw.sample(f"g{i}", *make_record("res", seed=i)) for i in range(2)]
    broken = {**raw.sample("x", *make_record("res")), "json": b"[1, 2"}
    raw.write(tmp_path / "noisy.tar", [good[0], broken, good[1]])
    module = make_module(shard_sets, tokenizer_dir, train=[{"name": "noisy", "urls": str(tmp_path / "noisy.tar")}])
    module.setup("fit")
    batches = list(module.train_dataloader())
    counted = Counter()
    for batch in batches:
        counted.update(batch["skipped"])
    assert counted["bad_json"] > 0 and module.skip_counts() == dict(counted)
    with pytest.raises(RuntimeError, match=r"'empty'"):
        raw.write(tmp_path / "only-bad.tar", [broken])
        make_module(shard_sets, tokenizer_dir, train=[{"name": "empty", "urls": str(tmp_path / "only-*.tar")}]).setup(
            "fit"
        )
    with pytest.raises(FileNotFoundError, match="missing-"):
        make_module(shard_sets, tokenizer_dir, train=[{"name": "m", "urls": str(tmp_path / "missing-*.tar")}]).setup(
            "fit"
        )
    with pytest.raises(FileNotFoundError, match="instructseg make-tiny"):
        make_module(shard_sets, str(tmp_path / "no-tokenizer")).setup("fit")
    with pytest.raises(ValueError, match="task"):
        make_module(shard_sets, tokenizer_dir, train=[{"name": "t", "urls": "x", "task": "detect"}])


class Probe(L.LightningModule):
    """Records what the Trainer feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.train_keys: list[tuple[int, tuple[str, ...]]] = []
        self.val_keys: list[tuple[int, str, str]] = []
        self.skipped: Counter = Counter()

    def training_step(self, batch, batch_idx):
        self.train_keys.append((self.current_epoch, tuple(batch["key"])))
        self.skipped.update(batch["skipped"])
        return ((self.weight - batch["pixel_values"].mean()) ** 2).sum()

    def validation_step(self, batch, batch_idx):
        self.val_keys += [(self.current_epoch, k, q) for k, q in zip(batch["key"], batch["query_id"])]

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_fit(shard_sets, tokenizer_dir):
    module = make_module(shard_sets, tokenizer_dir, epoch_length=8)
    probe = Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, datamodule=module)
    epochs = Counter(epoch for epoch, _ in probe.train_keys)
    assert epochs == {0: 2, 1: 2}
    streamed = [k for _, k in probe.train_keys]
    by_hand = make_module(shard_sets, tokenizer_dir, epoch_length=8)
    by_hand.setup("fit")
    loader = by_hand.train_dataloader()
    assert streamed == [tuple(b["key"]) for _ in range(2) for b in loader]  # epoch e streams epoch e's samples
    assert streamed[:2] != streamed[2:]
    per_epoch = Counter(epoch for epoch, _, _ in probe.val_keys)
    assert per_epoch[0] == per_epoch[1] == 16 and len(set(probe.val_keys)) == 32
