#!/usr/bin/env bash
# The one front door. On a machine with only Python 3.11+, it creates a
# virtual environment, installs lra_jax with pinned dependencies, and runs:
#   ./run.sh quickstart            train + evaluate on offline-generated ListOps
#   ./run.sh test [pytest args]    the test suite (4 simulated CPU devices per worker)
#   ./run.sh train --config=FILE --workdir=DIR [--config.x=y ...]
#   ./run.sh sweep --tasks=T1,T2 --methods=M1,M2 --seeds=0,1,2 [--protocol=P] [--root=DIR] [--config.x=y ...]
# Environment: PYTHON (interpreter, default python3), LRA_JAX_VENV (default .venv),
# LRA_JAX_EXTRAS (pip extras, e.g. "cuda" or "tpu").
set -euo pipefail
cd "$(dirname "$0")"

venv="${LRA_JAX_VENV:-.venv}"
python="${PYTHON:-python3}"

setup() {
  if [ ! -x "$venv/bin/python" ]; then
    "$python" -m venv "$venv"
  fi
  local extras="test${LRA_JAX_EXTRAS:+,$LRA_JAX_EXTRAS}"
  # Reinstall only when the pins or the extras change.
  local stamp
  stamp="$venv/.installed-$(cat setup.py | cksum | cut -d' ' -f1)-${extras//,/_}"
  if [ ! -f "$stamp" ]; then
    echo "Installing lra_jax and its pinned dependencies into $venv ..." >&2
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[$extras]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
  fi
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
  quickstart)
    setup
    exec "$venv/bin/python" -m lra_jax.train --config=configs/quickstart.py \
      --workdir="${LRA_JAX_QUICKSTART_WORKDIR:-runs/quickstart}" "$@"
    ;;
  test)
    setup
    # One worker per core; with no paths given, pytest.ini points at tests/.
    exec "$venv/bin/python" -m pytest -n auto "$@"
    ;;
  train)
    setup
    exec "$venv/bin/python" -m lra_jax.train "$@"
    ;;
  sweep)
    setup
    exec "$venv/bin/python" -m lra_jax.sweep "$@"
    ;;
  *)
    echo "usage: ./run.sh quickstart | test [pytest args] | train --config=FILE --workdir=DIR | sweep --tasks=... --methods=... [--seeds=...]" >&2
    exit 2
    ;;
esac
