#!/usr/bin/env bash
# Set up the environment, then run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec "${DEEPLAB_VENV:-.venv}/bin/python" -m pytest "$@"
