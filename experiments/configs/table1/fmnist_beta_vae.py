"""beta-VAE on Fashion-MNIST: the offline stand-in of Table 1's first row.

Exactly experiments/configs/beta_vae.py (pixel-wise Gaussian, KL
constraint 25, latent 32, 2500 steps of batch 64), so that the trio below
runs without CelebA; see that file for the measured results.

Run (about 5 minutes on 2 CPU cores):
  python -m experiments.main \
      --config=experiments/configs/table1/fmnist_beta_vae.py \
      --workdir=runs/fmnist_beta_vae
"""

from experiments.configs import beta_vae
from experiments.configs.table1 import common


def get_config(arg: str | None = None):
  common.check_arg(arg)
  return beta_vae.get_config(arg)
