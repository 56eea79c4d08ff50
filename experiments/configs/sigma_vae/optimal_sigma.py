"""Optimal sigma-VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: sigma^2 in closed form, the mean squared error of the training batch,
inside every train step; a running average of it is used at evaluation
(section 4, appendix C).
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/optimal_sigma.py \
      --workdir=runs/sigma_vae/optimal_sigma

Paper (SVHN, 10 epochs): SVHN VAE column: -log p < -3333 nats, FID 27.25.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='gaussian_optimal_sigma',
      optimal_sigma_axes='shared', optimal_sigma_stop_gradient=True,
      running_average_decay=0.99, min_log_sigma=-6.0), arg)
