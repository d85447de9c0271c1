"""LightningCLI entry point: ``instructseg fit --config ...`` / ``python train.py fit --config ...``.

Configs compose by concern (``configs/model``, ``configs/data``, ``configs/trainer``, ``configs/experiments``);
later ``--config`` files and ``--key value`` flags override earlier ones. The model config is typed
(:class:`~instructseg.config.InstructSegConfig`): every field shows in ``--help`` and ``--print_config`` and is
recorded in the run's ``config.yaml``. The model's input sizes, reference-frame count and tokenizer are linked into
the datamodule, so the data configs never repeat them. The datamodule is chosen by ``data.class_path``
(``datamodules.InstructSegDataModule`` in the shipped configs), so this package never imports ``datamodules``.

Bad input fails before the first training step with one ``instructseg: error: ...`` line and exit code 2: an unknown
key (on the command line or in a YAML file), a malformed YAML file (named, with line and column), a batch size or
epoch length below 1, a missing pretrained folder, a shard pattern that matches nothing, a missing or unreadable
``--ckpt_path``.

Resuming (``--ckpt_path``): the command line (configs and flags) defines the run, the checkpoint supplies the
trainable weights and the optimizer / scheduler / loop state. Unlike plain LightningCLI, the hyper-parameters stored
in the checkpoint never replace the command line's: ``--model.pretrained_root``, ``--model.frozen_dtype``,
``--model.warmup_ratio`` ... given with ``--ckpt_path`` are honoured (logged when they differ from the checkpoint's),
so a checkpoint resumes on another machine with that machine's pretrained paths. ``learning_rate`` and
``weight_decay`` live in the restored optimizer state, so a value other than the checkpoint's is an error rather than
silently dropped. A checkpoint of another architecture is refused.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import NoReturn

import yaml
from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from instructseg.cli import EXIT_BAD_INPUT, one_line, plain_help
from instructseg.lit_module import InstructSegModule
from instructseg.progress import quiet_expected_warnings

logger = logging.getLogger("instructseg.train")

#: model config field -> datamodule argument, linked when the command line is parsed.
LINKS = {
    "model.config.mask.image_size": "data.init_args.mask_size",
    "model.config.vision.image_size": "data.init_args.clip_size",
    "model.config.num_reference_frames": "data.init_args.num_ref_frames",
}
#: datamodule arguments checked before anything is built: name -> smallest allowed value.
DATA_MINIMUMS = {"batch_size": 1, "epoch_length": 1, "num_workers": 0}
#: module options stored in the optimizer state that ``fit --ckpt_path`` restores (a different value is an error).
OPTIMIZER_STATE_OPTIONS = ("learning_rate", "weight_decay")
#: ``--ckpt_path`` values Lightning resolves itself (no file to check).
SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")


class OneLineErrorParser(LightningArgumentParser):
    """A parser whose errors are one ``instructseg: error: ...`` line (exit 2) and whose help has no RST markup."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        prog = self.prog.replace(" [options]", "")
        print(f"instructseg: error: {one_line(message)} (see `{prog} --help`)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)

    def format_help(self) -> str:
        return plain_help(super().format_help())


def check_config_files(argv: list[str]) -> None:
    """Parse every ``--config`` / ``-c`` YAML file of ``argv`` once, so a malformed file is named.

    Raises:
        ValueError: a file that is not valid YAML, with the file, line and column.
        FileNotFoundError: a config path that does not exist.
    """
    for index, arg in enumerate(argv):
        if arg.startswith("--config="):
            value = arg.split("=", 1)[1]
        elif arg in ("--config", "-c") and index + 1 < len(argv):
            value = argv[index + 1]
        else:
            continue
        path = Path(value)
        if value.lstrip().startswith(("{", "[")) or "\n" in value:  # an inline config string
            continue
        if not path.is_file():
            raise FileNotFoundError(f"--config: no file at {path}.")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or type(err).__name__
            raise ValueError(f"--config {path}: malformed YAML{where} ({problem}); fix the file.") from None
        except UnicodeDecodeError:
            raise ValueError(f"--config {path}: not a UTF-8 text file.") from None


class InstructSegCLI(LightningCLI):
    """LightningCLI with the model → data links, checks before anything is built, and command-line-first resuming."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS.items():
            parser.link_arguments(source, target, apply_on="parse")
        parser.link_arguments("model.tokenizer", "data.init_args.tokenizer", apply_on="instantiate")
        parser.link_arguments("model.text_token_budget", "data.init_args.max_text_tokens", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Check ``--ckpt_path`` and log how its hyper-parameters differ from the command line's (which are kept)."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not ckpt_path or str(ckpt_path) in SPECIAL_CKPT_PATHS:
            return
        from instructseg.checkpoint import read_training_checkpoint

        try:
            _, _, stored = read_training_checkpoint(ckpt_path)
        except FileNotFoundError:
            raise FileNotFoundError(f"--ckpt_path: no checkpoint file at {ckpt_path}.") from None
        except ValueError as err:
            raise ValueError(f"--ckpt_path: {err}") from None
        model = self.config[subcommand]["model"]
        for key, value in stored.items():
            if key not in model or key == "config" or model[key] == value:
                continue
            if subcommand == "fit" and key in OPTIMIZER_STATE_OPTIONS:
                raise ValueError(
                    f"--model.{key} {model[key]} differs from the checkpoint's {value}, and resuming with --ckpt_path "
                    "restores the optimizer state (which holds it); drop the option to resume, or start a new run."
                )
            logger.warning("model.%s: %r from the command line (the checkpoint has %r).", key, model[key], value)

    def before_instantiate_classes(self) -> None:
        """Refuse datamodule sizes that would only fail inside the data stream (the message names the option)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        init_args = (config.get("data") or {}).get("init_args") or {}
        for name, minimum in DATA_MINIMUMS.items():
            value = init_args.get(name)
            if isinstance(value, int) and value < minimum:
                raise ValueError(f"--data.init_args.{name}: expected >= {minimum}, got {value}.")


def main(argv: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand (fit / validate).

    Parser errors print one line and raise ``SystemExit(2)``; other bad input raises ``ValueError`` /
    ``OSError`` (:func:`entry` and ``instructseg`` print those as one line too).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    check_config_files(argv)
    set_docstring_parse_options(attribute_docstrings=True)
    quiet_expected_warnings()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        return InstructSegCLI(
            InstructSegModule,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=argv,
            run=run,
            parser_class=OneLineErrorParser,
            parser_kwargs={"parser_mode": "yaml"},
        )


def entry(argv: list[str] | None = None) -> int:
    """``train.py``: :func:`main` with bad input as one ``instructseg: error: ...`` line; returns the exit code."""
    from instructseg.cli import main as cli_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("fit", "validate"):
        return cli_main(argv)
    main(argv)  # --help, or a parser error naming the subcommands
    return 0
