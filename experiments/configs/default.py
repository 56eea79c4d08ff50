"""SOS-VAE on Fashion-MNIST: the default demo (sosvae_tmlr2022.txt section 4.1).

Run:
  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/default
  python -m experiments.main --config=experiments/configs/default.py:smoke \
      --workdir=/tmp/smoke        # seconds, for tests
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  if arg == 'smoke':
    config = common.apply_smoke(config)
  return config
