"""beta-VAE baseline on Fashion-MNIST, same trunk and Lagrangian as SOS-VAE.

Pixel-wise independent Gaussian with per-pixel learned variance; beta is the
Lagrange multiplier of the KL constraint (sosvae_tmlr2022.txt section 4.1);
no entropy constraint (the paper found it detrimental for the beta-VAE).

Run (about 5 minutes on 2 CPU cores):
  python -m experiments.main --config=experiments/configs/beta_vae.py \
      --workdir=runs/beta_vae

Expected (measured, test set after 2500 steps): KL 22.9 (target 25), ELBO
+890 nats, MSE of means 0.018; samples are the mean plus independent pixel
noise (lag-1 autocorrelation of sample - mean 0.002), the paper's Figure 2a.
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  config.likelihood = common.diagonal_gaussian_likelihood()
  config.constraints.entropy.enabled = False
  if arg.smoke:
    config = common.apply_smoke(config)
  return config
