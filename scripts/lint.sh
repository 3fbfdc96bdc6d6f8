#!/usr/bin/env bash
# Lint and format check with ruff (rules and 100-column width in pyproject.toml); changes nothing.
# Fails if either finds something; both always run.
#
#   bash scripts/lint.sh
#   PYTHON=/path/to/venv/bin/python bash scripts/lint.sh     # that venv, without activating it
#
# To fix: `python -m ruff format .` (layout), then `python -m ruff check --fix .` (safe fixes;
# long strings and comments are wrapped by hand).
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

"$python" -m ruff check .
check=$?
"$python" -m ruff format --check .
format=$?
if [ "$check" -ne 0 ] || [ "$format" -ne 0 ]; then
    echo "error: ruff check exited $check, ruff format --check exited $format" >&2
    exit 1
fi
