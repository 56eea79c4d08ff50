"""Bernoulli VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: intensities in [0, 1] used as soft Bernoulli labels (after Gregor et
al. 2015); not a normalised likelihood for non-binary pixels, so the paper
reports no -log p.
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/bernoulli.py \
      --workdir=runs/sigma_vae/bernoulli

Paper (SVHN, 10 epochs): SVHN VAE column: -log p not reported (not
normalised), FID 43.26.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='bernoulli'), arg)
