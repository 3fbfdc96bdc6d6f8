#!/usr/bin/env bash
# Runs the whole test suite, slow end-to-end tests included. Extra arguments go to pytest.
#
#   bash scripts/test.sh            # everything (about 4-6 minutes on 2 idle CPU cores)
#   bash scripts/test.sh -m "not slow"
#   PYTHON=/path/to/venv/bin/python bash scripts/test.sh     # that venv, without activating it
set -uo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"

"$python" -m pytest "$@"
status=$?

if ! "$python" -c "import solo" 2>/dev/null; then
    cat >&2 <<'MSG'

########################################################################################
#  solo-learn is NOT importable: every integration test above was SKIPPED, not passed. #
#  Install it with `bash scripts/install_solo_learn.sh [SOURCE_DIR]` and run again.    #
########################################################################################
MSG
fi
if [ "$status" -eq 5 ]; then
    echo "error: pytest collected no tests" >&2
    exit 1
fi
exit "$status"
