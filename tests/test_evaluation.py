"""instructseg.evaluation at scale: resume, 2-process DDP, splits without annotations, progress, remote shards."""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from datamodules.rle import encode_rle
from datamodules.shards import RecordWriter, check_remote_urls, expand_urls, iter_records
from datamodules.streams import ShardSetConfig
from datamodules.synthetic import generate, generate_record
from instructseg.cli import main as cli_main
from instructseg.evaluation import PROGRESS_DIR, MetricOptions, Progress, count_records, evaluate_sets, has_annotations
from instructseg.modeling.instructseg import InstructSeg
from instructseg.predictor import InstructSegPredictor

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only

RECORDS = 8


@pytest.fixture(scope="module")
def export_dir(tiny_config, tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    return InstructSeg.from_config(tiny_config).save_pretrained(tmp_path_factory.mktemp("eval") / "export")


@pytest.fixture(scope="module")
def predictor(export_dir) -> InstructSegPredictor:
    return InstructSegPredictor.from_pretrained(export_dir)


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    """8 synthetic validation records (all four tasks) in two shards ``synthetic-val-00000{0,1}.tar``."""
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, train=0, val=RECORDS, seed=3, size=64, records_per_shard=RECORDS // 2)
    return out / "val"


def _shards(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.glob("*.tar"))


@pytest.fixture(scope="module")
def reference(predictor, val_dir, tmp_path_factory) -> tuple[Path, dict]:
    """One uninterrupted single-process evaluation: (out dir, results)."""
    out = tmp_path_factory.mktemp("reference")
    return out, evaluate_sets(predictor, [("syn", _shards(val_dir))], out, overlays=2, progress=False)


def _reported(out: Path) -> tuple[dict, list[dict]]:
    return json.loads((out / "metrics.json").read_text()), list(csv.DictReader(open(out / "metrics.csv")))


class Interrupted(Exception):
    """Stands for a killed evaluation."""


class CountingPredictor:
    """The real predictor, counting predicted records and raising :class:`Interrupted` after ``stop_after``."""

    def __init__(self, predictor: InstructSegPredictor, stop_after: int | None = None) -> None:
        self.predictor, self.stop_after, self.calls = predictor, stop_after, 0

    def _count(self) -> None:
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise Interrupted
        self.calls += 1

    def predict_image(self, *args, **kwargs):
        self._count()
        return self.predictor.predict_image(*args, **kwargs)

    def predict_video(self, *args, **kwargs):
        self._count()
        return self.predictor.predict_video(*args, **kwargs)


def test_reference_run_scores_every_task(reference):
    out, results = reference
    assert {"syn/res", "syn/reasonseg", "syn/rvos", "syn/reasonvos"} <= set(results)
    metrics, rows = _reported(out)
    assert "seconds" not in metrics and sum(results[g]["queries"] for g in metrics) == len(rows)
    assert {"J-Recall", "F-Decay", "A"} <= set(results["syn/rvos"])
    assert len(list((out / "overlays").iterdir())) == 2
    entries = (out / PROGRESS_DIR / "rank-0.jsonl").read_text().splitlines()
    assert len(entries) == RECORDS and len({json.loads(e)["uid"] for e in entries}) == RECORDS


def test_interrupted_evaluation_resumes_to_the_same_metrics(predictor, val_dir, reference, tmp_path):
    sets = [("syn", _shards(val_dir))]
    first = CountingPredictor(predictor, stop_after=3)
    with pytest.raises(Interrupted):
        evaluate_sets(first, sets, tmp_path, overlays=2, progress=False)
    progress = tmp_path / PROGRESS_DIR / "rank-0.jsonl"
    assert len(progress.read_text().splitlines()) == 3
    with open(progress, "a") as handle:  # a line cut by the kill
        handle.write('{"uid": "syn|3|synthetic-val-0')
    second = CountingPredictor(predictor)
    results = evaluate_sets(second, sets, tmp_path, overlays=2, progress=False)
    assert second.calls == RECORDS - 3  # only the records not finished before
    assert _reported(tmp_path) == _reported(reference[0])
    assert {k: v for k, v in results.items() if k != "seconds"} == _reported(reference[0])[0]
    assert len(list((tmp_path / "overlays").iterdir())) == 2

    again = CountingPredictor(predictor)  # complete: nothing left to predict, same reports
    evaluate_sets(again, sets, tmp_path, overlays=2, progress=False)
    assert again.calls == 0 and _reported(tmp_path) == _reported(reference[0])
    with pytest.raises(ValueError, match="other settings.*threshold.*--resume false"):
        evaluate_sets(again, sets, tmp_path, threshold=0.9, progress=False)
    restart = CountingPredictor(predictor)
    evaluate_sets(restart, sets, tmp_path, threshold=0.9, resume=False, progress=False)
    assert restart.calls == RECORDS


@pytest.mark.slow
def test_two_processes_share_the_records_and_match_one(export_dir, val_dir, reference, tmp_path):
    """`instructseg evaluate --devices 2` (DDP on gloo): disjoint records per rank, the single-process metrics."""
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"data": {"init_args": {"val": [{"name": "syn", "urls": f"{val_dir}/*.tar"}]}}}))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "instructseg.cli", "evaluate", "--model", str(export_dir), "--data", str(data),
           "--out", str(out), "--overlays", "2", "--devices", "2"]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [[json.loads(line)["uid"] for line in (out / PROGRESS_DIR / f"rank-{r}.jsonl").open()] for r in (0, 1)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])
    assert len(ranks[0]) + len(ranks[1]) == RECORDS
    assert _reported(out) == _reported(reference[0])
    assert proc.stdout.count("| dataset/task |") == 2  # printed once, by rank 0


def test_a_replaced_model_file_is_not_resumed_into(export_dir, val_dir, tmp_path, capsys):
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"data": {"init_args": {"val": [{"name": "syn", "urls": _shards(val_dir)[0]}]}}}))
    model = tmp_path / "model"
    shutil.copytree(export_dir, model)
    args = ["evaluate", "--model", str(model), "--data", str(data), "--out", str(tmp_path / "out"), "--overlays", "0"]
    assert cli_main([*args, "--max_records", "1"]) == 0
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # a new model there
    capsys.readouterr()
    assert cli_main([*args, "--max_records", "1"]) == 2
    assert "other settings (model_files)" in capsys.readouterr().err
    assert cli_main([*args, "--max_records", "1", "--resume", "false"]) == 0


def _write_unannotated(folder: Path, count: int) -> list[str]:
    """Video records as a converter writes a split without ground truth: ``has_annotations: false``, null masks."""
    with RecordWriter(str(folder / "ytvos-valid-%06d.tar")) as writer:
        for index in range(count):
            meta, frames = generate_record(np.random.default_rng(index), "rvos", 64)
            for obj in meta["objects"].values():
                obj["masks"] = [None] * meta["frames"]
            meta["has_annotations"] = False
            writer.write(f"video{index}", meta, frames, ext="png")
    return writer.shards


def test_split_without_annotations_gets_a_submission_and_no_metrics(export_dir, val_dir, tmp_path, capsys):
    shards = _write_unannotated(tmp_path / "ytvos", 2)
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"data": {"init_args": {"val": [
        {"name": "ytvos", "urls": shards}, {"name": "syn", "urls": _shards(val_dir)[0]}]}}}))  # fmt: skip
    out = tmp_path / "out"
    assert cli_main(["evaluate", "--model", str(export_dir), "--data", str(data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    metrics, rows = _reported(out)
    assert not any(key.startswith("ytvos/") for key in metrics) and metrics["unannotated"] == {"ytvos/rvos": 2}
    assert "syn/res" in metrics  # the annotated set is still scored
    assert "ytvos" not in "".join(line for line in printed.splitlines() if line.startswith("| "))
    notes = [line for line in printed.splitlines() if "no annotations" in line]
    assert len(notes) == 1 and "ytvos/rvos (2 records)" in notes[0] and "submission" in notes[0]
    records = list(iter_records(shards))
    for record in records:
        assert not has_annotations(record)
        for qi, _ in enumerate(record.queries):  # every frame of every query, although --submission is false
            folder = out / "submission" / "Annotations" / record.key / str(qi)
            assert len(list(folder.glob("*.png"))) == record.num_frames
    ytvos_rows = [row for row in rows if row["set"] == "ytvos"]
    assert len(ytvos_rows) == sum(len(r.queries) for r in records) and all(not row["J"] for row in ytvos_rows)
    assert {p.name for p in (out / "submission" / "Annotations").iterdir()} == {r.key for r in records}


def test_null_masks_alone_mark_a_record_unannotated(val_dir):
    record = next(iter_records(_shards(val_dir)))
    assert has_annotations(record)
    record.meta["objects"] = {k: {**o, "masks": [None] * record.num_frames} for k, o in record.meta["objects"].items()}
    assert not has_annotations(record)
    record.meta["objects"] = {}  # only no-target queries: annotated (an empty target is the truth)
    assert has_annotations(record)


def test_progress_total_from_tar_headers_or_summary_and_log_lines(val_dir, tmp_path):
    shards = _shards(val_dir)
    assert count_records(shards) == RECORDS
    assert count_records(shards[:1]) == RECORDS // 2
    copy = tmp_path / "converted"
    copy.mkdir()
    for shard in shards:
        (copy / Path(shard).name).write_bytes(Path(shard).read_bytes())
    (copy / "summary.json").write_text(json.dumps({"splits": {"val": {"shards": 2, "records": 1234}}}))
    assert count_records(_shards(copy)) == 1234  # the converter's count, without opening the shards
    assert count_records(_shards(copy)[:1]) == RECORDS // 2  # not the summary's split: the headers
    assert count_records(["pipe:cat x.tar"]) is None

    stream = io.StringIO()  # not a terminal: periodic lines
    bar = Progress(4, "evaluating", stream=stream, interval=0.0)
    for _ in range(4):
        time.sleep(0.01)
        bar.update()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("evaluating: 1/4 records (25 %)") and "records/s, ETA 00:00:0" in lines[0]
    assert lines[-1].startswith("evaluating: 4/4 records (100 %)")
    quiet = io.StringIO()
    bar = Progress(4, "evaluating", stream=quiet, interval=3600.0)
    bar.update()
    bar.update()
    assert len(quiet.getvalue().splitlines()) == 1  # the first line, then one per interval


def test_evaluation_prints_progress_lines_when_stderr_is_not_a_terminal(predictor, val_dir, tmp_path, capsys):
    evaluate_sets(predictor, [("syn", _shards(val_dir))], tmp_path, max_records=3, overlays=0)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("evaluating:")]
    assert lines[0].startswith("evaluating: 1/3 records") and lines[-1].startswith("evaluating: 3/3 records (100 %)")


# ----------------------------------------------------------------------------------------------------------------
# Remote shards


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def http_root(val_dir):
    """``http://127.0.0.1:<free port>`` serving ``val_dir`` (stopped at the end of the module)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(val_dir)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keys(urls) -> list[str]:
    return [record.key for record in iter_records(urls)]


def test_http_and_pipe_shards_read_like_local_ones(val_dir, http_root):
    local = _shards(val_dir)
    pattern = f"{http_root}/synthetic-val-{{000000..000001}}.tar"
    assert expand_urls(pattern) == [f"{http_root}/{Path(s).name}" for s in local]
    assert _keys(pattern) == _keys(local) and len(_keys(local)) == RECORDS
    assert _keys([f"pipe:cat {s}" for s in local]) == _keys(local)
    training_set = ShardSetConfig(name="web", urls=pattern)  # what every data config's shard sets go through
    assert training_set.shard_urls() == expand_urls(pattern)


def test_training_and_eval_streams_read_http_shards_like_local_ones(predictor, val_dir, http_root):
    """The datamodule's streams (every data config's train / val sets) over http: the same samples as locally."""
    from datamodules.pipeline import SampleBuilder
    from datamodules.streams import EvalStream, MixtureStream

    def samples(urls: str, training: bool) -> list[tuple]:
        builder = SampleBuilder(predictor.model.tokenizer, mask_size=32, clip_size=32, num_ref_frames=2,
                                training=training, one_query_per_record=training)  # fmt: skip
        sets = [ShardSetConfig(name="s", urls=urls)]
        if training:
            stream = MixtureStream(sets, builder, samples_per_epoch=12, batch_size=4, seed=0, shuffle_buffer=4)
            chosen = stream.iter_partition(rank=0, worker=0, num_workers=1)
        else:
            chosen = EvalStream(sets, builder).iter_partition(0, 1, 0, 1)
        return [(s["key"], s["query_id"], tuple(s["frame_indices"].tolist())) for s in chosen]

    web = f"{http_root}/synthetic-val-{{000000..000001}}.tar"
    for training in (True, False):
        local = samples(str(val_dir / "*.tar"), training)
        assert local and samples(web, training) == local


def test_evaluation_over_http_matches_local(predictor, http_root, reference, tmp_path):
    urls = expand_urls(f"{http_root}/synthetic-val-{{000000..000001}}.tar")
    results = evaluate_sets(predictor, [("syn", urls)], tmp_path, overlays=2, progress=False)
    assert {k: v for k, v in results.items() if k != "seconds"} == _reported(reference[0])[0]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("{root}/missing-000000.tar", "HTTP 404"),
        ("http://127.0.0.1:{port}/a.tar", "unreachable"),
        ("pipe:no-such-program-xyz {root}", "'no-such-program-xyz' is not installed"),
        ("pipe:echo not a tar", "wrote no tar data"),
        ("s3://bucket/a.tar", "does not open s3:// URLs; use a pipe"),
    ],
)
def test_bad_remote_url_is_one_clear_error_before_work(url, message, http_root, export_dir, tmp_path, capsys):
    url = url.format(root=http_root, port=_free_port())
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match=message) as err:
        check_remote_urls([url], timeout=5)
    assert url in str(err.value) and time.perf_counter() - start < 5
    data = tmp_path / "data.yaml"
    data.write_text(json.dumps({"data": {"init_args": {"val": [{"name": "web", "urls": url}]}}}))
    out = tmp_path / "out"
    assert cli_main(["evaluate", "--model", str(export_dir), "--data", str(data), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("instructseg: error: shard URL") and message in error[0]
    assert not out.exists()  # nothing was started


def test_one_bad_url_among_good_ones_is_named(http_root):
    urls = [f"{http_root}/synthetic-val-000000.tar", f"{http_root}/synthetic-val-000009.tar"]
    with pytest.raises(FileNotFoundError, match=r"synthetic-val-000009.tar.*HTTP 404.*1 of 2"):
        check_remote_urls(urls)
    check_remote_urls(urls[:1])  # the good one alone passes


# ----------------------------------------------------------------------------------------------------------------
# Official metric options


class OraclePredictor:
    """Predicts each instruction's ground truth (given by text), so the metric values are known in closed form."""

    def __init__(self, truth: dict[str, np.ndarray]) -> None:
        self.truth = truth

    def predict_image(self, image, texts, task, threshold=None, max_objects=1):
        return [SimpleNamespace(mask=self.truth[t][0], score=1.0, no_target=False, objects=[]) for t in texts]

    def predict_video(self, frames, texts, strategy, task, threshold=None, max_objects=1):
        n = len(frames)
        return [
            SimpleNamespace(masks=self.truth[t], scores=np.ones(n), no_target=np.zeros(n, bool), objects=[])
            for t in texts
        ]


def _square(size: int, top: int, left: int, side: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_official_options_reach_the_metrics(tmp_path):
    """Two overlapping objects, one query for both: the official ReVOS A counts only true negatives and R weighs an
    overlap pixel 1 (object counts as targets); the official epsilons move gIoU / cIoU off 1."""
    size, frames = 32, 2
    a = [_square(size, 2 + t, 2, 12) for t in range(frames)]
    b = [_square(size, 8, 8 + t, 12) for t in range(frames)]
    union = np.stack([x | y for x, y in zip(a, b)])
    objects = {"a": {"masks": [encode_rle(m) for m in a]}, "b": {"masks": [encode_rle(m) for m in b]}}
    image = np.zeros((size, size, 3), np.uint8)
    common = {"dataset": "toy", "height": size, "width": size}
    video_meta = {**common, "task": "reasonvos", "frames": frames, "objects": objects,
                  "queries": [{"text": "both", "object_ids": ["a", "b"], "type": "referring"}]}  # fmt: skip
    image_meta = {**common, "task": "res", "frames": 1, "objects": {"a": {"masks": objects["a"]["masks"][:1]}},
                  "queries": [{"text": "a", "object_ids": ["a"], "type": "referring"}]}  # fmt: skip
    with RecordWriter(str(tmp_path / "shards" / "toy-%06d.tar")) as writer:
        writer.write("video", video_meta, [image] * frames)
        writer.write("image", image_meta, [image])
    oracle = OraclePredictor({"both": union, "a": np.stack(a[:1])})
    sets = [("toy", writer.shards)]
    plain = evaluate_sets(oracle, sets, tmp_path / "plain", overlays=0, progress=False)
    official = evaluate_sets(oracle, sets, tmp_path / "official", overlays=0, progress=False,
                             options=MetricOptions(revos_official=True, official_epsilons=True))  # fmt: skip
    video, image_ = plain["toy/reasonvos"], plain["toy/res"]
    assert video["J"] == video["A"] == video["referring/R"] == 1.0 and image_["gIoU"] == image_["cIoU"] == 1.0
    overlap = np.stack([x & y for x, y in zip(a, b)]).sum((1, 2))
    expected_r = np.mean(1 - overlap / (union.sum((1, 2)) + 1e-6))
    expected_a = np.mean(1 - union.sum((1, 2)) / size**2)
    assert official["toy/reasonvos"]["J"] == 1.0
    assert official["toy/reasonvos"]["referring/R"] == pytest.approx(expected_r, abs=1e-12) and expected_r < 1
    assert official["toy/reasonvos"]["A"] == pytest.approx(expected_a, abs=1e-12)
    area = a[0].sum()
    assert official["toy/res"]["gIoU"] == pytest.approx(area / (area + 1e-5) / (1 + 1e-5), abs=1e-15)
    assert official["toy/res"]["cIoU"] == pytest.approx(area / (area + 1e-10), abs=1e-15)
    with pytest.raises(ValueError, match="other settings.*revos_official"):  # a resumed run keeps the options
        evaluate_sets(oracle, sets, tmp_path / "official", progress=False)
