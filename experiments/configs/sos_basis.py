"""SOS-VAE whose factor P comes from a learned basis: the cheap step, a weaker covariance.

default.py with `likelihood.factor_basis=128` in place of its conv factor
decoder: P(z) = U A(z), U a learned [S, 128] basis of image space shared by
every image and A(z) the [128, R] coefficients of a small MLP on
stop_gradient(z) (models/heads.py FactorBasisDecoder). No convolution runs at
image resolution for P, so the train step costs 1.15x the beta-VAE's on the
same trunk at 28x28x1 (1.51x at 64x64x3), against about 2x with the conv
factor decoder (benchmarks/train_step_benchmark.py --factor_basis=128).

Measured against default.py (seeds 0 / 1 / 2, 2500 steps, 2000 test images;
structure on 1000 at the posterior mean; docs/structure_study.md): the mean,
KL and FID of the means are the same (the mean never sees P's gradient), P
spreads over more directions (participation ratio 13.5 / 10.0 / 12.4 against
3.7 / 3.5 / 7.0), but it holds half the residual energy (span share 0.12 /
0.10 / 0.12 against 0.24 / 0.26 / 0.26), its samples' deviations are far
less coherent (lag-1 autocorrelation 0.43 against 0.86) and the ELBO is
about 75,000 nats lower. A fixed basis of 128 directions cannot follow the
local edges a conv decoder places per image, so default.py keeps the conv
decoder.

Run (2500 steps of batch 64):
  python -m experiments.main --config=experiments/configs/sos_basis.py \
      --workdir=runs/sos_basis
Three seeds, evaluated with the structure report:
  python -m experiments.sweep --config=experiments/configs/sos_basis.py \
      --sweep=experiments/sweeps/seeds.py --workdir=runs/sweeps/sos_basis \
      --mode=loop --evaluate --config.evaluation.eval_examples=2000 \
      --config.evaluation.iwae_k=0 --config.evaluation.num_samples=5000
"""

from experiments.configs import common
from experiments.configs import default

BASIS = 128


def get_config(arg: str | None = None):
  smoke = common.parse_arg(arg, smoke=False).smoke
  config = default.get_config(arg)
  config.likelihood.factor_trunk = None
  config.likelihood.factor_basis = 4 * config.likelihood.rank if smoke else BASIS
  return config
