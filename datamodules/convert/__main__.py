"""Command line: ``python -m datamodules.convert <name> --root <official dir> --out <shard dir> [options]``.

Run ``python -m datamodules.convert <name> --help`` for a dataset's layout and options. Exit status 0 on success,
2 for a problem with the top-level input (the message names the file; no shard is written).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from instructseg.cli import plain_help

from . import CONVERTERS
from .base import ConvertError
from .runner import convert_dataset


def build_parser() -> argparse.ArgumentParser:
    """The argument parser: one sub-command per dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m datamodules.convert",
        description="Convert an official dataset layout into record shards (WebDataset .tar).",
    )
    commands = parser.add_subparsers(dest="name", required=True, metavar="name", help=", ".join(CONVERTERS))
    for name, converter in CONVERTERS.items():
        sub = commands.add_parser(
            name,
            description=plain_help(sys.modules[converter.__module__].__doc__ or ""),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            help=(converter.__doc__ or "").split("\n")[0],
        )
        sub.add_argument("--root", type=Path, required=True, help="the official dataset folder (or file)")
        sub.add_argument("--out", type=Path, required=True, help="output folder of the shards and summary.json")
        sub.add_argument("--split", nargs="+", help="splits to convert (default: all found)")
        sub.add_argument(
            "--maxcount", type=int, help=f"records per shard (default {converter.default_maxcount}; fixed per output)"
        )
        sub.add_argument("--workers", type=int, default=1, help="processes converting items (default 1)")
        sub.add_argument("--overwrite", action="store_true", help="replace shards written with other settings")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar")
        converter.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the converter named on the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        with logging_redirect_tqdm():
            converter = CONVERTERS[args.name].from_args(args)
            convert_dataset(
                converter,
                args.out,
                maxcount=args.maxcount,
                workers=args.workers,
                overwrite=args.overwrite,
                progress=not args.no_progress,
            )
    except ConvertError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
