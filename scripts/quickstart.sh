#!/usr/bin/env bash
# Installs everything, then trains the default SOS-VAE on Fashion-MNIST
# (minutes on 2 CPU cores; README gives the measured time). Extra arguments go
# to experiments.main, e.g. --config.num_steps=500.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
WORKDIR=${WORKDIR:-runs/default}
echo "[quickstart] training; progress below, results in $WORKDIR"
.venv/bin/python -m experiments.main --config=experiments/configs/default.py --workdir="$WORKDIR" "$@"
echo "[quickstart] done: see $WORKDIR/figures/ and $WORKDIR/metrics.jsonl. Next:"
echo "  .venv/bin/python -m experiments.main --mode=evaluate --workdir=$WORKDIR   # metrics -> $WORKDIR/eval/"
echo "  .venv/bin/python -m experiments.figures --workdir=$WORKDIR                # paper figures"
echo "  bash scripts/install.sh --extras && .venv/bin/tensorboard --logdir runs   # TensorBoard, JupyterLab"
