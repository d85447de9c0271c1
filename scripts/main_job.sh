#!/usr/bin/env bash
# The README main job: tiny pretrained parts -> synthetic IVS benchmark -> train the tiny preset on CPU ->
# evaluate (metrics table + JSON/CSV + overlay pictures). Run from the repository root inside the project's venv.
set -euo pipefail
OUT=${OUT:-outputs/main-job}
STEPS=${STEPS:-1500}
instructseg make-tiny --out checkpoints/tiny-pretrained
python -m datamodules.synthetic --out data/synthetic --train 2000 --val 200 --seed 0
python train.py fit \
  --config configs/model/tiny.yaml --config configs/data/synthetic.yaml \
  --config configs/trainer/cpu.yaml --config configs/experiments/synthetic-tiny.yaml \
  --trainer.max_steps "$STEPS" --trainer.default_root_dir "$OUT/train"
CKPT=$(ls -t "$OUT"/train/lightning_logs/version_*/checkpoints/last.ckpt | head -n 1)
python eval.py --model "$CKPT" --data configs/data/synthetic.yaml --out "$OUT/eval" --overlays 24
echo "overlay pictures: $OUT/eval/overlays/"
