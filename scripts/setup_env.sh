#!/usr/bin/env bash
# Creates .venv (or $DEEPLAB_VENV) with Python >= 3.10 and installs this package with its requirements.
# Re-running is cheap: nothing is reinstalled unless requirements*.txt or setup.cfg changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DEEPLAB_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "error: deeplab_lightning needs Python >= 3.10; set PYTHON=/path/to/python3.x" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
stamp="$VENV/.deeplab-installed"
want="$(cat requirements.txt requirements-dev.txt setup.cfg | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing deeplab_lightning and its requirements into $VENV (PyTorch is several GB: a few minutes)..."
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -r requirements.txt -r requirements-dev.txt
  "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  echo "$want" > "$stamp"
fi
