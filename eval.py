"""Evaluate a checkpoint or an export: ``python eval.py --model M --data configs/data/X.yaml --out outputs/eval``.

A thin entry point over ``instructseg evaluate`` (:mod:`instructseg.evaluation`); ``--help`` lists every option.
"""

import sys

from instructseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["evaluate", *sys.argv[1:]]))
