"""Gaussian VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: N(mu, I): unit variance, the uncalibrated decoder.
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/gaussian.py \
      --workdir=runs/sigma_vae/gaussian

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < 2184 nats, FID 112.5.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='gaussian_fixed_sigma', sigma=1.0), arg)
