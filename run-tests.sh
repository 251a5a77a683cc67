#!/usr/bin/env bash
# Set up (or reuse) .venv with the development extras, then lint and run the whole test suite.
#   ./run-tests.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/pytest ] || ! .venv/bin/python -c "import edgeml.toolkit, skl2onnx, pyarrow" 2>/dev/null; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet --upgrade pip
  .venv/bin/pip install --quiet -e ".[dev,server]"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/pytest "$@"
