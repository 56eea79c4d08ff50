#!/usr/bin/env bash
# Installs sosvae_jax into ./.venv (exact versions from requirements.lock) and,
# when missing and possible, Debian's dataset-fashion-mnist (the default data).
#   bash scripts/install.sh            # what the runs and tests need
#   bash scripts/install.sh --extras   # also TensorBoard, JupyterLab, nbconvert
#                                      # (requirements-extras.lock)
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=0
for arg in "$@"; do
  case "$arg" in
    --extras) EXTRAS=1 ;;
    *) echo "[install] unknown argument $arg (known: --extras)" >&2; exit 2 ;;
  esac
done

FMNIST_DIR=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST_DIR/train-images-idx3-ubyte.gz" ] && [ ! -e "$FMNIST_DIR/train-images-idx3-ubyte" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "[install] Fashion-MNIST not found: installing Debian package dataset-fashion-mnist"
    ($SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist) \
      || echo "[install] could not install dataset-fashion-mnist; the default run needs it (see README)"
  else
    echo "[install] no apt-get: put the Fashion-MNIST IDX files in $FMNIST_DIR or set --config.data.idx_dir"
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "[install] installing pinned dependencies (requirements.lock)"
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -e .
if [ "$EXTRAS" -eq 1 ]; then
  echo "[install] installing the extras (requirements-extras.lock): tensorboard, jupyterlab, nbconvert"
  .venv/bin/python -m pip install -q -r requirements-extras.lock
fi
echo "[install] done: $(.venv/bin/python -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)')"
