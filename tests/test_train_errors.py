"""`instructseg fit` / `train.py` on bad input: one `instructseg: error:` line naming the option or file, exit 2;
`--ckpt_path` keeps the command line's options and resumes with this machine's pretrained paths."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from test_train import tiny_args

from datamodules.synthetic import generate
from instructseg.cli import main as cli_main
from instructseg.cli import plain_help
from instructseg.train_cli import entry, main

pytestmark = pytest.mark.slow  # trains, launches processes or a browser: the full suite only


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, train=40, val=8, seed=0, size=64, records_per_shard=10)
    return out


def error_line(capsys) -> str:
    """The only `instructseg: error:` line on stderr (and no traceback)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("instructseg: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


@pytest.fixture
def fit_args(tiny_root, synthetic_dir, tmp_path):
    def make(*extra: str, root: Path = tiny_root) -> list[str]:
        return ["fit", *tiny_args(root, synthetic_dir, tmp_path / "run", "--trainer.max_steps", "1", *extra)]

    return make


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--model.config.decoder.no_such_key", "3"], "no_such_key"),
        (["--model.config.nope.depth", "3"], "nope"),
        (["--data.init_args.batch_size", "0"], "--data.init_args.batch_size: expected >= 1, got 0"),
        (["--data.init_args.epoch_length", "-1"], "--data.init_args.epoch_length: expected >= 1"),
        (["--ckpt_path", "/nonexistent/last.ckpt"], "--ckpt_path: no checkpoint file at /nonexistent/last.ckpt"),
    ],
)
def test_bad_option_is_one_line_exit_2(fit_args, capsys, extra, expected):
    assert cli_main(fit_args(*extra)) == 2
    assert expected in error_line(capsys)


def test_bad_files_are_named(fit_args, tmp_path, capsys):
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    assert cli_main(fit_args("--ckpt_path", str(garbage))) == 2
    line = error_line(capsys)
    assert f"--ckpt_path: {garbage} is not a readable training checkpoint" in line and "weights_only" not in line

    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model:\n  learning_rate: [1, 2\n  x: :\n")
    assert cli_main(fit_args("--config", str(bad_yaml))) == 2
    line = error_line(capsys)
    assert str(bad_yaml) in line and "line 3" in line and "<unicode string>" not in line

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  config:\n    decoder:\n      no_such_key: 3\n")
    assert cli_main(fit_args("--config", str(unknown))) == 2
    assert "model.config.decoder.no_such_key" in error_line(capsys)

    nothing = str(tmp_path / "nothing_here/*.tar")
    assert cli_main(fit_args("--data.init_args.train", json.dumps([{"name": "x", "urls": nothing}]))) == 2
    assert nothing in error_line(capsys)

    missing_root = tmp_path / "no_pretrained"
    assert cli_main(fit_args("--model.pretrained_root", str(missing_root))) == 2
    line = error_line(capsys)
    assert str(missing_root) in line and "instructseg make-tiny" in line


def test_train_py_entry_gives_the_same_one_line(fit_args, capsys):
    assert entry(fit_args("--data.init_args.batch_size", "0")) == 2
    assert "--data.init_args.batch_size" in error_line(capsys)


def test_resume_keeps_command_line_options_and_uses_this_machines_pretrained_parts(
    tiny_root,
    synthetic_dir,
    tmp_path,
):
    """Train with parts in folder A, delete A ("another machine"), resume with folder B and another warmup: the
    checkpoint's stored pretrained_root / warmup_ratio must not win over the command line."""
    machine_a, machine_b = tmp_path / "a-parts", tmp_path / "b-parts"
    shutil.copytree(tiny_root, machine_a)
    shutil.copytree(tiny_root, machine_b)
    first = main(["fit", *tiny_args(machine_a, synthetic_dir, tmp_path / "run-a", "--trainer.max_steps", "3")])
    ckpt = tmp_path / "run-a/ckpt/last.ckpt"
    assert first.trainer.global_step == 3 and ckpt.is_file()
    shutil.rmtree(machine_a)

    stored = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]
    assert stored["pretrained_root"] == str(machine_a) and stored["warmup_ratio"] != 0.5

    resumed = main(["fit", *tiny_args(machine_b, synthetic_dir, tmp_path / "run-b", "--trainer.max_steps", "4",
                                      "--model.warmup_ratio", "0.5", "--ckpt_path", str(ckpt))])  # fmt: skip
    assert resumed.trainer.global_step == 4
    assert resumed.model.hparams.warmup_ratio == 0.5 and resumed.model.hparams.pretrained_root == str(machine_b)
    assert resumed.model.model_config.llm.path == str(machine_b / "llm")


def test_resume_with_another_learning_rate_is_an_error(tiny_root, synthetic_dir, tmp_path, capsys):
    """The learning rate lives in the restored optimizer state: a different one is refused, not dropped."""
    main(["fit", *tiny_args(tiny_root, synthetic_dir, tmp_path / "run", "--trainer.max_steps", "1")])
    ckpt = tmp_path / "run/ckpt/last.ckpt"
    args = tiny_args(tiny_root, synthetic_dir, tmp_path / "run2", "--trainer.max_steps", "2", "--ckpt_path", str(ckpt))
    assert cli_main(["fit", *args, "--model.learning_rate", "0.5"]) == 2
    assert "--model.learning_rate 0.5 differs from the checkpoint's 0.001" in error_line(capsys)


def test_help_has_no_rst_markup(capsys):
    assert plain_help("Default: ``'auto'``, see :class:`~a.b.Trainer` or :func:`x.y`.") == (
        "Default: 'auto', see Trainer or x.y."
    )
    for command in (["fit", "--help"], ["validate", "--help"], ["predict", "--help"], ["evaluate", "--help"],
                    ["export", "--help"], ["convert", "folder", "--help"]):  # fmt: skip
        try:
            code = cli_main(command)
        except SystemExit as exit_:  # jsonargparse's own --help exits
            code = exit_.code
        assert code in (0, None), command
        out = capsys.readouterr().out
        assert out.strip() and "``" not in out and ":class:" not in out and ":func:" not in out, command
