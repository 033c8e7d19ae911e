#!/usr/bin/env bash
# The main job: set up the environment, then train the quickstart model on the toy dataset (CPU, ~8 min).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${DEEPLAB_VENV:-.venv}/bin/deeplab-lightning" fit --config experiments/quickstart.yaml "$@"
