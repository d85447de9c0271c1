"""LightningCLI entry point: ``python train.py fit --config ...`` / ``instructseg fit --config ...``.

Configs compose by concern (``configs/model``, ``configs/data``, ``configs/trainer``, ``configs/experiments``);
later ``--config`` files and ``--key value`` flags override earlier ones. Unknown keys, missing pretrained paths and
shard patterns that match nothing fail before the first training step. The datamodule is chosen by
``data.class_path`` (``datamodules.InstructSegDataModule`` in the shipped configs), so this package never imports
``datamodules``.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from instructseg.lit_module import InstructSegModule


def main(argv: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the chosen subcommand (fit / validate / test)."""
    return LightningCLI(
        InstructSegModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
        run=run,
        parser_kwargs={"parser_mode": "yaml"},
    )
