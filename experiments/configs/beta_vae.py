"""beta-VAE baseline on Fashion-MNIST, same trunk and Lagrangian as SOS-VAE.

Pixel-wise independent Gaussian with per-pixel learned variance; beta is the
Lagrange multiplier of the KL constraint (sosvae_tmlr2022.txt section 4.1);
no entropy constraint (the paper found it detrimental for the beta-VAE).

Run:
  python -m experiments.main --config=experiments/configs/beta_vae.py \
      --workdir=runs/beta_vae
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  config = common.base_config()
  config.likelihood.name = 'diagonal_gaussian'
  config.constraints.entropy.enabled = False
  if arg == 'smoke':
    config = common.apply_smoke(config)
  return config
