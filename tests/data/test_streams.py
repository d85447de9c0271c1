"""Training mixture and evaluation streams.

Ranks and workers are simulated by calling ``iter_partition(rank, ...)`` with explicit values (or by setting the
``RANK`` / ``WORLD_SIZE`` environment variables that WebDataset's ``pytorch_worker_info`` reads).
"""

import itertools
import random
from collections import Counter

import pytest

from datamodules.pipeline import SampleBuilder
from datamodules.streams import EvalStream, MixtureStream, ShardSetConfig, check_readable, weighted_mix


@pytest.fixture
def builder(tokenizer):
    def make(training=True):
        return SampleBuilder(
            tokenizer, mask_size=32, clip_size=32, num_ref_frames=2, training=training, one_query_per_record=training
        )

    return make


def records(prefix, count, tasks=("res", "rvos", "reasonvos")):
    return [
        (f"{prefix}{i:03d}", tasks[i % len(tasks)], 1 if tasks[i % len(tasks)] == "res" else 4) for i in range(count)
    ]


def test_weighted_mix_frequencies():
    rng = random.Random(0)
    sources = [itertools.repeat("a"), itertools.repeat("b")]
    draws = Counter(itertools.islice(weighted_mix(sources, [3.0, 1.0], rng), 2000))
    assert abs(draws["a"] / 2000 - 0.75) < 0.05
    with pytest.raises(ValueError, match="weights"):
        next(weighted_mix(sources, [0.0, 0.0], rng))


def test_mixture_frequencies_and_batch_share(write_shards, builder):
    sets = [
        ShardSetConfig("big", write_shards("big", records("b", 12)), weight=3.0),
        ShardSetConfig("small", write_shards("small", records("s", 8)), weight=1.0),
    ]
    stream = MixtureStream(sets, builder(), samples_per_epoch=400, batch_size=8, seed=0, shuffle_buffer=4)
    samples = list(stream.iter_partition(rank=0, worker=0, num_workers=1))
    assert len(samples) == len(stream) == 400
    share = Counter(s["shard_set"] for s in samples)["big"] / len(samples)
    assert abs(share - 0.75) < 0.05
    assert {s["task"] for s in samples} == {"res", "rvos", "reasonvos"}
    assert sum(stream.worker_share(w, 3) for w in range(3)) == 400
    assert all(stream.worker_share(w, 3) % 8 == 0 for w in range(3))


def signature(samples):
    return [(s["key"], s["query_id"], tuple(s["frame_indices"].tolist())) for s in samples]


def test_mixture_is_deterministic(write_shards, builder):
    sets = [ShardSetConfig("a", write_shards("a", records("a", 10)))]

    def run(seed=0, epoch=0, rank=0, worker=0):
        stream = MixtureStream(sets, builder(), samples_per_epoch=30, batch_size=5, seed=seed, shuffle_buffer=5)
        stream.set_epoch(epoch)
        return signature(stream.iter_partition(rank, worker, 2))

    assert run() == run()
    assert run() != run(seed=1)
    assert run() != run(epoch=1)
    assert run() != run(rank=1)
    assert run() != run(worker=1)


def test_eval_stream_split_by_rank_and_worker(write_shards, builder):
    sets = [
        ShardSetConfig("x", write_shards("x", records("x", 14), per_shard=2)),
        ShardSetConfig("y", write_shards("y", records("y", 6), per_shard=2)),
    ]
    stream = EvalStream(sets, builder(training=False))
    everything = signature(stream.iter_partition(0, 1, 0, 1))
    # x: 5 res + 5 rvos (1 query each) + 4 reasonvos (3 queries); y: 2 + 2 + 2 * 3
    assert len(everything) == len(set(everything)) == 22 + 10
    parts = [signature(stream.iter_partition(r, 2, w, 2)) for r in range(2) for w in range(2)]
    assert all(parts)
    combined = [s for part in parts for s in part]
    assert len(combined) == len(set(combined)) and set(combined) == set(everything)


def test_eval_stream_reads_rank_from_environment(write_shards, builder, monkeypatch):
    stream = EvalStream([ShardSetConfig("x", write_shards("x", records("x", 8), per_shard=2))], builder(False))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert signature(stream) == signature(stream.iter_partition(1, 2, 0, 1))


def test_skipped_counts_travel_with_samples(tmp_path, write_shards, builder, make_record, raw):
    good = [raw.sample(f"g{i}", *make_record("res", seed=i)) for i in range(3)]
    bad = {**raw.sample("bad", *make_record("res")), "json": b"{"}
    url = raw.write(tmp_path / "mixed.tar", [good[0], bad, bad | {"__key__": "bad2"}, good[1], good[2]])
    stream = EvalStream([ShardSetConfig("m", url)], builder(False))
    samples = list(stream)
    assert [s["key"] for s in samples] == ["g0", "g1", "g2"]
    assert [s["skipped"] for s in samples] == [{}, {"bad_json": 2}, {}]


def test_skips_after_the_last_sample_are_not_lost(tmp_path, builder, make_record, raw):
    good = [raw.sample(f"g{i}", *make_record("res", seed=i)) for i in range(2)]
    bad = {**raw.sample("bad", *make_record("res")), "json": b"{"}
    tail = [bad | {"__key__": f"bad{i}"} for i in range(3)]
    url = raw.write(tmp_path / "tail.tar", [good[0], bad, good[1], *tail])
    samples = list(EvalStream([ShardSetConfig("t", url)], builder(False)))
    assert [s["key"] for s in samples] == ["g0", "g1"]
    assert sum(Counter(s["skipped"])["bad_json"] for s in samples) == 4  # 1 between + 3 after the last sample


def test_set_without_usable_records(tmp_path, make_record, raw, builder):
    meta, images = make_record("res")
    meta["queries"][0]["object_ids"] = ["404"]
    for i in range(2):
        raw.write(tmp_path / f"bad-{i}.tar", [raw.sample(f"k{i}", meta, images)])
    broken = ShardSetConfig("broken", str(tmp_path / "bad-*.tar"))
    with pytest.raises(RuntimeError, match=r"'broken'.*bad-\*\.tar.*missing_object"):
        check_readable(broken, builder())
    with pytest.raises(FileNotFoundError, match="nope"):
        check_readable(ShardSetConfig("none", str(tmp_path / "nope-*.tar")), builder())
    stream = MixtureStream([broken], builder(), samples_per_epoch=4, batch_size=2)
    with pytest.raises(RuntimeError, match=r"'broken'.*no valid record from 64 shards"):
        next(stream.iter_partition(0, 0, 1))


def test_set_whose_frames_never_decode(tmp_path, make_record, raw, builder, monkeypatch):
    monkeypatch.setattr("datamodules.streams.MAX_FAILED_RECORDS", 5)
    sample = raw.sample("k", *make_record("res"))
    sample["000.png"] = sample["000.png"][:60]
    url = raw.write(tmp_path / "frames.tar", [sample | {"__key__": f"k{i}"} for i in range(6)])
    stream = MixtureStream([ShardSetConfig("frames", url)], builder(), samples_per_epoch=4, batch_size=2)
    with pytest.raises(RuntimeError, match="5 records in a row"):
        next(stream.iter_partition(0, 0, 1))
