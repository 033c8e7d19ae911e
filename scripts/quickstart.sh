#!/usr/bin/env bash
# The main job: set up the environment, then train the quickstart model on the toy dataset (CPU).
# bf16 autocast only where the CPU computes bf16 natively (AVX512-BF16 or AMX): elsewhere it is emulated and,
# measured on a 2-core AMD EPYC without AVX-512, 20x slower than fp32 (13.2 vs 0.68 s per training step). In
# fp32 on that CPU channels-last is slower too (0.77 vs 0.71 s per quickstart step; benchmarks/README.md), so
# it goes with bf16 (the YAML's defaults are fp32 without channels-last, right for every CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
precision=32-true
channels_last=false
if grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo 2>/dev/null; then
  precision=bf16-mixed
  channels_last=true
fi
echo "Quickstart: trainer.precision=$precision, model.channels_last=$channels_last (chosen from this CPU's" \
  "instruction set; pass --trainer.precision / --model.channels_last to override)"
exec "${DEEPLAB_VENV:-.venv}/bin/deeplab-lightning" fit --config experiments/quickstart.yaml \
  --trainer.precision "$precision" --model.channels_last "$channels_last" "$@"
