"""Per-pixel sigma-VAE (rybkin2021_sigma_vae_calibrated_decoders.txt Table 2).

Decoder: log sigma per subpixel from a conv head, soft-clipped below at
lambda_min = -6 (section 3.1).
Network and training: experiments/configs/sigma_vae/common.py (appendix B).

Run (Fashion-MNIST; add `:svhn` for the paper's SVHN column):
  python -m experiments.main \
      --config=experiments/configs/sigma_vae/per_pixel_sigma.py \
      --workdir=runs/sigma_vae/per_pixel_sigma

Paper (SVHN, 10 epochs): SVHN VAE column: FID 114.7; the -log p cell reads "<
2184" in our copy of the paper, the same as the Gaussian VAE's, probably an
extraction error.
"""

from __future__ import annotations

from experiments.configs.sigma_vae import common


def get_config(arg: str | None = None):
  return common.get_config(dict(name='gaussian_pixel_sigma', min_log_sigma=-6.0), arg)
