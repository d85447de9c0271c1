"""Train or validate InstructSeg: ``python train.py fit --config configs/experiments/synthetic-tiny.yaml``."""

from instructseg.train_cli import main

if __name__ == "__main__":
    main()
