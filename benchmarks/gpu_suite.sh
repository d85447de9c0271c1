#!/usr/bin/env bash
# Every GPU measurement of the project in one run (< 10 minutes on one GPU), summarised in one table:
#   * full-size training step (random weights, frozen parts in bf16, autocast bf16), batch 1 and 4, with and
#     without gradient checkpointing: s / step, samples / s, peak CUDA memory   (benchmarks/model_step.py --full-size)
#   * full-size video inference, 64 frames, naive / per_frame / shared, bf16: time, frames / s, speed-up, peak CUDA
#     memory, and whether per_frame reproduces naive's masks                     (benchmarks/video_inference.py)
#   * with --release: the converted release-layout checkpoint on the GPU        (benchmarks/full_size.py, ~5 min more)
#
#   benchmarks/gpu_suite.sh                # on a machine with a CUDA GPU
#   benchmarks/gpu_suite.sh --smoke        # CPU, tiny preset, CI-sized: the same scripts and table, so it cannot rot
#
# Each benchmark's own table is kept in $LOG_DIR (default: a temporary directory); the summary is printed last.
set -euo pipefail

SMOKE=0
RELEASE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    --release) RELEASE=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "gpu_suite.sh: unknown argument $arg (expected --smoke, --release)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
LOG_DIR="${LOG_DIR:-$(mktemp -d -t instructseg-gpu-suite-XXXXXX)}"
mkdir -p "$LOG_DIR"
PY="${PYTHON:-python}"

if [[ $SMOKE == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_suite.sh: no CUDA device; run with --smoke for the CPU check" >&2
  exit 2
fi

start=$(date +%s)
if [[ $SMOKE == 1 ]]; then
  timeout 600 "$PY" benchmarks/model_step.py --steps 1 | tee "$LOG_DIR/model_step.md"
  timeout 300 "$PY" benchmarks/video_inference.py --preset tiny --frames 4 --height 48 --width 64 --repeats 1 \
    | tee "$LOG_DIR/video_inference.md"
else
  timeout 330 "$PY" benchmarks/model_step.py --full-size --steps 3 | tee "$LOG_DIR/model_step.md"
  timeout 240 "$PY" benchmarks/video_inference.py --preset instructseg-phi2 --device cuda --dtype bfloat16 \
    --frames 64 --repeats 1 | tee "$LOG_DIR/video_inference.md"
  if [[ $RELEASE == 1 ]]; then
    timeout 420 "$PY" benchmarks/full_size.py --device cuda --dtypes bfloat16 | tee "$LOG_DIR/full_size.md"
  fi
fi
elapsed=$(( $(date +%s) - start ))

"$PY" - "$LOG_DIR" "$elapsed" <<'EOF'
"""One table from the benchmarks' markdown tables."""
import sys
from pathlib import Path


def rows(path: Path) -> list[list[str]]:
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.startswith("|") and not line.startswith("|---")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]  # skip the header


log_dir, elapsed = Path(sys.argv[1]), sys.argv[2]
video_header = next((l for l in (log_dir / "video_inference.md").read_text().splitlines() if l.startswith("preset")), "")
print(f"\n## GPU suite summary ({elapsed} s; logs in {log_dir})\n")
print("| measurement | configuration | time | rate | peak memory |")
print("|---|---|---:|---:|---:|")
for preset, device, batch, clip, ckpt, seconds, rate, peak in rows(log_dir / "model_step.md"):
    print(f"| train step | {preset}, {device}, batch {batch}, {clip}, grad ckpt {ckpt} | {seconds} s | "
          f"{rate} samples/s | {peak} |")
for strategy, seconds, fps, speedup, peak, same in rows(log_dir / "video_inference.md"):
    config = video_header.split(";")[0].replace("`", "")
    print(f"| video {strategy} | {config}, masks == naive: {same} | {seconds} s | {fps} frames/s ({speedup}) | "
          f"{peak} MiB |")
for cells in rows(log_dir / "full_size.md"):
    print(f"| converted release | {cells[0]}, image / per_frame | {cells[7]} s / {cells[9]} s/frame | "
          f"load {cells[5]} s | {cells[14]} GiB RSS |")
EOF
