#!/usr/bin/env bash
# The one front door. On a machine with only Python 3.11+, it creates a
# virtual environment, installs lra_jax with pinned dependencies, and runs:
#   ./run.sh quickstart            train + evaluate on offline-generated ListOps
#   ./run.sh test [pytest args]    the test suite (4 simulated CPU devices per worker)
#   ./run.sh train --config=FILE --workdir=DIR [--config.x=y ...]
#   ./run.sh sweep --tasks=T1,T2 --methods=M1,M2 --seeds=0,1,2 [--protocol=P] [--root=DIR] [--config.x=y ...]
#   ./run.sh benchmark attention [flags]   python -m lra_jax.benchmark (docs/benchmarks.md)
# Environment: PYTHON (interpreter, default python3), LRA_JAX_VENV (default .venv),
# LRA_JAX_EXTRAS (pip extras, e.g. "cuda" or "tpu"), GLIBC_TUNABLES (see below).
set -euo pipefail
cd "$(dirname "$0")"

venv="${LRA_JAX_VENV:-.venv}"

# XLA:CPU mallocs each call's scratch memory; glibc maps blocks over 32 MiB
# fresh from the kernel every time, and every 4 KiB page of them then faults
# on first touch. With transparent huge pages for malloc the same memory comes
# in 2 MiB pages. Nyström forward+backward at length 4096 on this project's
# 2 CPU cores: 13,190 page faults and 98-106 ms per call without, about 420
# faults and 81-89 ms with (3 alternating processes each); PyTorch's exact
# softmax at 4096: 2095 -> 1174 ms. A GLIBC_TUNABLES you set yourself, even
# empty, is kept as it is.
export GLIBC_TUNABLES="${GLIBC_TUNABLES-glibc.malloc.hugetlb=1}"
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
  benchmark)
    setup
    exec "$venv/bin/python" -m lra_jax.benchmark "$@"
    ;;
  *)
    echo "usage: ./run.sh quickstart | test [pytest args] | train --config=FILE --workdir=DIR | sweep --tasks=... --methods=... [--seeds=...] | benchmark attention [flags]" >&2
    exit 2
    ;;
esac
