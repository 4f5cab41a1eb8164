#!/usr/bin/env bash
# Create (or update) the project's virtual environment.
#   scripts/bootstrap.sh demo   runtime dependencies only
#   scripts/bootstrap.sh test   all extras (dev, parsl, horovod built from source)
# Re-running is cheap: a stamp file records what was installed for which pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."

what=${1:-demo}
venv=${VENV:-.venv}
python=${PYTHON:-python3}

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi

stamp="$venv/.candle-$what"
digest=$(cat pyproject.toml scripts/bootstrap.sh scripts/install_horovod.sh 2>/dev/null | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
  exit 0
fi

pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip setuptools wheel
# torch is pinned to the CPU build that installs from local disk; an unpinned torch would pull
# a multi-GB CUDA build. Install it first so nothing later resolves a different one.
"${pip[@]}" "torch==2.13.0"
# ISLP ships NCI60 (64 cell lines x 6,830 genes, 14 cancer types) as package data; its own
# dependencies (statsmodels, pygam, lifelines, ...) are not needed to read it: --no-deps.
"${pip[@]}" --no-deps "ISLP==0.6.0"
if [ "$what" = "test" ]; then
  "${pip[@]}" -e ".[dev,parsl]"
  # Horovod 0.28.1 needs a from-source build against torch 2.13 (see the script).
  scripts/install_horovod.sh "$venv"
  "${pip[@]}" -e ".[dev,parsl,horovod]"
  # the demo's stamp is implied by the test install
  echo "$digest" > "$venv/.candle-demo"
else
  "${pip[@]}" -e .
fi
echo "$digest" > "$stamp"
