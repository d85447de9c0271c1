"""Train or validate InstructSeg: ``python train.py fit --config configs/experiments/synthetic-tiny.yaml``."""

import sys

from instructseg.train_cli import entry

if __name__ == "__main__":
    sys.exit(entry())
