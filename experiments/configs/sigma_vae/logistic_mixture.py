"""Logistic mixture VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: a mixture of 10 discretized logistics per subpixel without channel
autoregression (appendix D); discrete.
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/logistic_mixture.py \
      --workdir=runs/sigma_vae/logistic_mixture

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < 9085 nats, FID 43.19.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='logistic_mixture', num_mixtures=10), arg)
