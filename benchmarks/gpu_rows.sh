#!/usr/bin/env bash
# The GPU rows of benchmarks/README.md still to measure, in one device call of about 9 minutes (H100/H200):
#   1. where `deeplab-lightning fit` (paper V3+ R101 config, JPEGs from disk) loses time to the plain loop:
#      Lightning's profiler splits the fit into waiting for the data workers and the training step;
#   2. the same fit with `--model.compile true`: throughput after compiling, and the wall time of both fits
#      (their difference over the same steps is the compile time a user pays);
#   3. the same-architecture peer row (ours_as_smp_v3plus_r101_os16 vs smp's DeepLabV3Plus) and the CRF time.
# The device's python lacks jsonargparse and segmentation-models-pytorch: put their wheels in .whl/ (gitignored;
# `pip download --no-deps -d .whl jsonargparse docstring-parser typeshed-client segmentation-models-pytorch`)
# and carry it: run(command="bash benchmarks/gpu_rows.sh", carry=[".whl"]). Results go to $OUT (or a new
# benchmarks/results/gpu_rows_<date-time>/, so no earlier run is overwritten): one JSON and one log each.
set -u
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD WANDB_MODE=disabled PYTHONUNBUFFERED=1
out=${OUT:-benchmarks/results/gpu_rows_$(date +%Y-%m-%d_%H%M%S)}
mkdir -p "$out"
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuDNN', torch.backends.cudnn.version())"

run() {  # run NAME TIMEOUT COMMAND...: log to $out/NAME.log, print the wall time and the log's last lines
  local name=$1 limit=$2 start
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  echo "== $name: rc=$? wall $(( $(date +%s) - start )) s"
  grep -E "img/s over|waiting for|│ (ours|smp|deeplab|pydense)" "$out/$name.log" | tail -8
}

run fit_profile 150 python3 benchmarks/fit_protocol.py --steps 60 --workers 14 --profile --json "$out/fit_profile.json"
run fit_eager 130 python3 benchmarks/fit_protocol.py --steps 60 --workers 14 --json "$out/fit_eager.json"
run fit_compile 200 python3 benchmarks/fit_protocol.py --steps 60 --workers 14 --json "$out/fit_compile.json" \
  -- --model.compile true
run peers 90 python3 benchmarks/bench.py --device cuda --models smp_v3plus_r101_os16 ours_as_smp_v3plus_r101_os16 \
  ours_v3plus_r101_os16 --modes bf16_cl --loop-arch none --crf 375x500x21 --json "$out/peers.json"
