#!/usr/bin/env bash
# Installs solo-learn at the commit solo-stablerep is built against (upstream 9187ea3, v1.0.6).
#
#   bash scripts/install_solo_learn.sh            # from GitHub, exactly that commit
#   bash scripts/install_solo_learn.sh DIR        # from a local source folder (offline machines)
#
# Why not a plain `pip install`: PyPI's solo-learn is the 2021 release 1.0.2, and the pinned
# commit's setup.py imports pkg_resources (gone from setuptools >= 81) and pins lightning==2.1.2 /
# torchmetrics<0.12, which conflict with the versions this package runs on. So we build it
# without isolation against setuptools<81 and take its dependencies from solo-stablerep instead.
set -euo pipefail

SOLO_LEARN_COMMIT=9187ea39c2c3f43c455ab06664d2b019a9802954
source_spec="${1:-git+https://github.com/vturrisi/solo-learn.git@${SOLO_LEARN_COMMIT}}"
python="${PYTHON:-python3}"

if [ -d "$source_spec" ]; then
    if [ ! -f "$source_spec/setup.py" ] || [ ! -d "$source_spec/solo" ]; then
        echo "error: '$source_spec' is not a solo-learn source folder (no setup.py or solo/)" >&2
        exit 2
    fi
    source_spec="$(cd "$source_spec" && pwd)"
fi

"$python" -m pip install --quiet 'setuptools<81' wheel
"$python" -m pip install --quiet --no-deps --no-build-isolation "$source_spec"
"$python" - <<'PY'
import solo.methods
print(f"solo-learn installed: {solo.methods.__file__}")
PY
