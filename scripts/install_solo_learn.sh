#!/usr/bin/env bash
# Installs solo-learn at the commit solo-stablerep is built against (upstream 9187ea3, v1.0.6).
#
#   bash scripts/install_solo_learn.sh            # from GitHub, exactly that commit; if GitHub cannot
#                                                 # be reached, from the vendored source archive
#   bash scripts/install_solo_learn.sh SOURCE     # from a local source folder or .tar.gz (offline)
#
# The vendored archive is ../shared/vendor/solo-learn-9187ea3.tar.gz next to the repository (a
# `git archive` of that commit, not part of this repository); SOLO_LEARN_ARCHIVE=/path overrides it.
#
# Why not a plain `pip install`: PyPI's solo-learn is the 2021 release 1.0.2, and the pinned
# commit's setup.py imports pkg_resources (gone from setuptools >= 81) and pins lightning==2.1.2 /
# torchmetrics<0.12, which conflict with the versions this package runs on. So we build it
# without isolation against setuptools<81 and take its dependencies from solo-stablerep instead.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"

SOLO_LEARN_COMMIT=9187ea39c2c3f43c455ab06664d2b019a9802954
github_spec="git+https://github.com/vturrisi/solo-learn.git@${SOLO_LEARN_COMMIT}"
archive="${SOLO_LEARN_ARCHIVE:-$repo/../shared/vendor/solo-learn-${SOLO_LEARN_COMMIT:0:7}.tar.gz}"
python="${PYTHON:-python3}"

install() {
    "$python" -m pip install --quiet --no-deps --no-build-isolation "$1"
}

"$python" -m pip install --quiet 'setuptools<81' wheel
if [ $# -ge 1 ]; then
    source_spec="$1"
    if [ -d "$source_spec" ]; then
        if [ ! -f "$source_spec/setup.py" ] || [ ! -d "$source_spec/solo" ]; then
            echo "error: '$source_spec' is not a solo-learn source folder (no setup.py or solo/)" >&2
            exit 2
        fi
        source_spec="$(cd "$source_spec" && pwd)"
    elif [ -f "$source_spec" ]; then
        source_spec="$(cd "$(dirname "$source_spec")" && pwd)/$(basename "$source_spec")"
    else
        echo "error: '$source_spec' is neither a solo-learn source folder nor an archive" >&2
        exit 2
    fi
    install "$source_spec"
elif ! install "$github_spec"; then
    if [ ! -f "$archive" ]; then
        echo "error: GitHub unreachable and no vendored archive at '$archive' (set SOLO_LEARN_ARCHIVE)" >&2
        exit 1
    fi
    echo "GitHub unreachable: installing solo-learn from the vendored archive $archive"
    install "$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")"
fi
"$python" - <<'PY'
import solo.methods
print(f"solo-learn installed: {solo.methods.__file__}")
PY
