"""Optimal per-image sigma-VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: one closed-form sigma^2 per training image, its own mean squared
error (section 5.3). The per-image value depends on the image scored, so
evaluation uses the running average of the batch mean of these variances (one
shared sigma): the reported ELBO is that of a shared-sigma decoder.
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/per_image_optimal_sigma.py \
      --workdir=runs/sigma_vae/per_image_optimal_sigma

Paper (SVHN, 10 epochs): SVHN VAE column: FID 26.28 (no -log p reported).
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='gaussian_optimal_sigma',
      optimal_sigma_axes='per_image', optimal_sigma_stop_gradient=True,
      running_average_decay=0.99, min_log_sigma=-6.0), arg)
