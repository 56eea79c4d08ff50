"""SOS-VAE whose covariance factor P is read from the mean's decoder features.

default.py with likelihood.factor_trunk=None: P is a 3x3 conv of the
(detached) trunk features that the mean head also reads, the paper's shared
three-headed decoder, trained with the exact gradient of the likelihood
(mean_gradient='full', as in the paper). Kept as the reference of docs/structure_study.md: its P
collapses to one brightness direction, because a 3x3 readout of the mean's
features can only span what the mean could already have fitted.

Run (2500 steps of batch 64, about 6 minutes on 2 CPU cores):
  python -m experiments.main --config=experiments/configs/sos_shared_head.py \
      --workdir=runs/sos_shared_head

Expected (measured, 1000 test images at the posterior mean, after 2500
steps, seed 0; in brackets default.py): participation ratio of P's spectrum
1.07 (3.66), 1.9 components with s_k >= 0.1 s_1 (17.5), share of the
residual energy inside span(P) 0.58 against 0.55 for a fixed PCA basis of
rank 25 (0.24 / 0.24), MSE of means 0.025 (0.013).
"""

from experiments.configs import default


def get_config(arg: str | None = None):
  config = default.get_config(arg)
  config.likelihood.factor_trunk = None
  config.likelihood.mean_gradient = 'full'
  return config
