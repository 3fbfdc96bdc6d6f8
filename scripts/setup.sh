#!/usr/bin/env bash
# One-command set-up on a fresh machine: PyTorch, this package with every extra needed by the
# tests (DALI, diffusers, open_clip, matplotlib), and solo-learn at the pinned commit.
#
#   bash scripts/setup.sh
#   PYTHON=/path/to/venv/bin/python bash scripts/setup.sh    # into that venv, without activating it
#
# solo-learn comes from GitHub, or, when GitHub cannot be reached, from the vendored archive
# ../shared/vendor/solo-learn-9187ea3.tar.gz (see scripts/install_solo_learn.sh);
# SOLO_LEARN_SRC=/path/to/solo-learn (a source folder or .tar.gz) installs it from there instead.
# If neither works, set-up still finishes, and the test command reports the integration tests
# as skipped, loudly.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

if ! "$python" -c "import torch, torchvision" 2>/dev/null; then
    "$python" -m pip install torch==2.14.1 torchvision==0.29.1
fi
"$python" -m pip install -e '.[test]'

if "$python" - <<'PY' 2>/dev/null
from importlib import metadata
from solo_stablerep._solo import SOLO_LEARN_VERSION, check_solo_learn
check_solo_learn()
assert metadata.version("solo-learn") == SOLO_LEARN_VERSION
PY
then
    echo "solo-learn $("$python" -c 'from importlib import metadata; print(metadata.version("solo-learn"))') already installed"
elif ! bash scripts/install_solo_learn.sh ${SOLO_LEARN_SRC:+"$SOLO_LEARN_SRC"}; then
    echo "WARNING: solo-learn could not be installed (no network and no vendored archive? set SOLO_LEARN_SRC=/path/to/solo-learn);" >&2
    echo "WARNING: the integration tests will be skipped." >&2
fi
