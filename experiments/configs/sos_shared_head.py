"""SOS-VAE whose covariance factor P comes from its own decoder trunk on z.

default.py's run with likelihood.factor_trunk=(16, 32): P is read by the same
3x3 factor head, but from a second ConvDecoderTrunk applied to
stop_gradient(z) instead of the mean's (detached) trunk features. The
shared-feature head can only span what a 3x3 readout of the mean's features
spans, and its spectrum collapses to one brightness direction; see
docs/structure_study.md.

Run (2500 steps of batch 64, about 10 minutes on 2 CPU cores):
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution \
  python -m experiments.main --config=experiments/configs/sos_factor_decoder.py \
      --workdir=runs/sos_factor_decoder

Expected (measured with the same model as a prototype on an earlier snapshot
of the code, 1000 test images at the posterior mean, after 2500 steps; in
brackets default.py under the same protocol): participation ratio of P's
spectrum 5.07 (1.11), 17.4 components with s_k >= 0.1 s_1 (2.0), share of the
residual energy inside span(P) 0.705 against 0.635 for a fixed rank-25 PCA
basis (0.624 / 0.606), negative share of the centre pixel's covariance row
0.040 (0.005), MSE of means 0.0257 (0.0234), KL 24.1, entropy -3332.9,
ELBO -327340 (-384970).
"""

from experiments.configs import common


def get_config(arg: str | None = None):
  arg = common.parse_arg(arg, smoke=False)
  config = common.base_config()
  config.likelihood.factor_trunk = (16, 32)
  if arg.smoke:
    config = common.apply_smoke(config)
  return config
