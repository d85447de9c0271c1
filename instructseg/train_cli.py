"""LightningCLI entry point: ``instructseg fit --config ...`` / ``python train.py fit --config ...``.

Configs compose by concern (``configs/model``, ``configs/data``, ``configs/trainer``, ``configs/experiments``);
later ``--config`` files and ``--key value`` flags override earlier ones. The model config is typed
(:class:`~instructseg.config.InstructSegConfig`): every field shows in ``--help`` and ``--print_config`` and is
recorded in the run's ``config.yaml``. The model's input sizes, reference-frame count and tokenizer are linked into
the datamodule, so the data configs never repeat them. Unknown keys, missing pretrained paths and shard patterns
that match nothing fail before the first training step. The datamodule is chosen by ``data.class_path``
(``datamodules.InstructSegDataModule`` in the shipped configs), so this package never imports ``datamodules``.
"""

from __future__ import annotations

from jsonargparse import set_docstring_parse_options
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from instructseg.lit_module import InstructSegModule

#: model config field -> datamodule argument, linked when the command line is parsed.
LINKS = {
    "model.config.mask.image_size": "data.init_args.mask_size",
    "model.config.vision.image_size": "data.init_args.clip_size",
    "model.config.num_reference_frames": "data.init_args.num_ref_frames",
}


class InstructSegCLI(LightningCLI):
    """LightningCLI with the model → data links."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target in LINKS.items():
            parser.link_arguments(source, target, apply_on="parse")
        parser.link_arguments("model.tokenizer", "data.init_args.tokenizer", apply_on="instantiate")


def main(argv: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand (fit / validate)."""
    set_docstring_parse_options(attribute_docstrings=True)
    return InstructSegCLI(
        InstructSegModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
        run=run,
        parser_kwargs={"parser_mode": "yaml"},
    )
