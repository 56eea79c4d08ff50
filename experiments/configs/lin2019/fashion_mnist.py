"""Lin et al. two-stage VAE on Fashion-MNIST (lin2019_balancing_elbo_learned_variance.txt).

Stage one (16 epochs): closed-form global variance; stage two (14 epochs):
per-pixel variance v(z) + sigma_dataset^2 / 2. Settings and the
architectural change: experiments/configs/lin2019/common.py.

Run (the IDX files of Debian's dataset-fashion-mnist):
  python -m experiments.main --config=experiments/configs/lin2019/fashion_mnist.py \
      --workdir=runs/lin2019/fashion_mnist
Switch on the ELBO plateau instead: add --config.likelihood.switch_on_plateau=True.

Paper (Table 3, IWAE test log-likelihood, 500 test images x 20 samples, latent
16): global variance 1145 nats (prior), input-dependent pixel variance 5708
nats (prior); VAE with sigma^2 = 0.5: -463; beta-VAE: -731. Table 2: FID 10.6
for samples from the approximate aggregate posterior.
"""

from __future__ import annotations

from experiments.configs import common as base
from experiments.configs.lin2019 import common


def get_config(arg: str | None = None):
  return common.get_config(base.fashion_mnist_data(), arg)
