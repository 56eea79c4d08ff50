"""Dorta et al.'s structured Gaussian on 64x64 grayscale CelebA (Table 1).

dorta2018_vae_structured_residuals.txt: precision L L^T with L sparse in a
3x3 neighbourhood, log-likelihood by shift convolutions; variance minimiser
of eq. 14 with alpha = 5e3 for the first 10 epochs (10 * 2543 steps) and 10
afterwards (section 5.1). As in the SOS-VAE paper's comparison the model is
trained with the same KL constraint xi_KL = 45, latent 128, Adam 1e-4 and
110 epochs as the other two (Dorta's own code uses the plain ELBO:
--config.constraints.kl.enabled=False). The reference code's two-phase
option (mean first, then covariance) is config.pretrain_steps: the
precision heads are variance heads of the registry entry and stay frozen for
those steps (one epoch here; 0 = one phase). Data preparation:
experiments/configs/table1/common.py.

Run (a GPU; not measured here, the data is not on this machine):
  python -m experiments.main \
      --config=experiments/configs/table1/celeba64_structured.py \
      --workdir=runs/celeba64_structured

Expected (the SOS-VAE paper's Figure 3, left): samples vary around the
mean with spatially correlated but high-frequency distortions.
"""

from experiments.configs.table1 import common


def get_config(arg: str | None = None):
  common.check_arg(arg)
  config = common.celeba64_base()
  config.likelihood = common.structured_likelihood(
      switch_step=10 * common.CELEBA_STEPS_PER_EPOCH)
  config.optimizer.variance_lr_scale = 1.0
  return common.shrink(config, arg)
