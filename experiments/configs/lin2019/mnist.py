"""Lin et al. two-stage VAE on MNIST (lin2019_balancing_elbo_learned_variance.txt).

Settings and the architectural change: experiments/configs/lin2019/common.py.
MNIST is read through tfds (source 'tfds', name 'mnist'), which must have
prepared it first (see the README's data section); nothing else differs from
the Fashion-MNIST config.

Run:
  python -m experiments.main --config=experiments/configs/lin2019/mnist.py \
      --workdir=runs/lin2019/mnist

Paper (Table 3, IWAE test log-likelihood, latent 16): global variance 1307
nats (prior), input-dependent pixel variance 6037 nats (prior); VAE with
sigma^2 = 0.5: -462; beta-VAE: -730. Table 2: FID 8.9 (approximate aggregate
posterior samples).
"""

from __future__ import annotations

from experiments.configs import common as base
from experiments.configs.lin2019 import common


def get_config(arg: str | None = None):
  data = base.fashion_mnist_data()
  data.source = 'tfds'
  data.name = 'mnist'
  return common.get_config(data, arg)
