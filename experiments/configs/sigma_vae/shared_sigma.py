"""Shared sigma-VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: one log sigma for all pixels and images, learned by gradient descent
with the network (section 3.1).
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/shared_sigma.py \
      --workdir=runs/sigma_vae/shared_sigma

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < -3349 nats, FID 22.25.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='gaussian_shared_sigma'), arg)
