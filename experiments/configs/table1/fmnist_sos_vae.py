"""SOS-VAE on Fashion-MNIST: the offline stand-in of Table 1's last row.

Exactly experiments/configs/default.py (rank 25, KL target 25, entropy
ceiling -3330 nats, latent 32, 2500 steps of batch 64); see that file for
the reasoning and the measured results.

Run (about 8 minutes on 2 CPU cores):
  python -m experiments.main \
      --config=experiments/configs/table1/fmnist_sos_vae.py \
      --workdir=runs/fmnist_sos_vae
"""

from experiments.configs import default
from experiments.configs.table1 import common


def get_config(arg: str | None = None):
  common.check_arg(arg)
  return default.get_config(arg)
