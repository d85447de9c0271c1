#!/usr/bin/env bash
# The README main job: stage 0 (tiny parts pretrained on the synthetic domain; reused when present) -> synthetic IVS
# benchmark -> train the tiny preset on CPU -> evaluate (metrics table + JSON/CSV + overlay pictures) -> export ->
# the README's Python example on the exported model (example inputs and a picture of the answers).
# Run from the repository root inside the project's venv. STEPS=N trains N steps; PRETRAIN=0 uses random tiny parts
# (written to checkpoints/tiny-random) instead of stage 0.
set -euo pipefail
OUT=${OUT:-outputs/main-job}
STEPS=${STEPS:-1500}
PRETRAIN=${PRETRAIN:-1}
START=$SECONDS
stage() { echo "[main job] $1 ($((SECONDS - START)) s elapsed)"; }

if [ "$PRETRAIN" = 1 ]; then
  PARTS=checkpoints/tiny-pretrained
  stage "stage 0: pretrained tiny parts -> $PARTS"
  instructseg make-tiny --out "$PARTS" --pretrain true
else
  PARTS=checkpoints/tiny-random
  stage "random tiny parts -> $PARTS"
  instructseg make-tiny --out "$PARTS"
fi
stage "synthetic benchmark -> data/synthetic"
instructseg synthetic --out data/synthetic --train 2000 --val 200 --seed 0
stage "training $STEPS steps -> $OUT/train"
instructseg fit \
  --config configs/model/tiny.yaml --config configs/data/synthetic.yaml \
  --config configs/trainer/cpu.yaml --config configs/experiments/synthetic-tiny.yaml \
  --model.pretrained_root "$PARTS" --trainer.max_steps "$STEPS" --trainer.default_root_dir "$OUT/train"
CKPT=$(ls -t "$OUT"/train/lightning_logs/version_*/checkpoints/last.ckpt | head -n 1)
stage "evaluating $CKPT -> $OUT/eval"
instructseg evaluate --model "$CKPT" --data configs/data/synthetic.yaml --out "$OUT/eval" --overlays 24 --resume false
stage "exporting -> exports/instructseg-tiny"
instructseg export --checkpoint "$CKPT" --out exports/instructseg-tiny --metrics "$OUT/eval/metrics.json" \
  $( [ -d exports/instructseg-tiny ] && echo --overwrite true )
stage "the README's Python example -> $OUT/examples"
python scripts/predict_examples.py --model exports/instructseg-tiny --out "$OUT/examples"
stage "done"
echo "overlay pictures: $OUT/eval/overlays/   predictor example: $OUT/examples/predictions.png"
