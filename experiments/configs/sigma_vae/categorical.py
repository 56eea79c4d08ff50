"""Categorical VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: a 256-way soft-max per subpixel (section 3.2); discrete, so the ELBO
is a bound on the probability of the 8-bit image and bits/dim = -ELBO / (H W C
ln 2).
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/categorical.py \
      --workdir=runs/sigma_vae/categorical

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < 9179 nats, FID 46.13.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='categorical'), arg)
