"""Bitwise-categorical VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: each 8-bit level as 8 independent bits, 8 logits per subpixel
(appendix D); discrete.
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/bitwise_categorical.py \
      --workdir=runs/sigma_vae/bitwise_categorical

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < 10800 nats, FID 33.84.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='bitwise_categorical'), arg)
