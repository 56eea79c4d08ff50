"""SOS-VAE on 64x64 grayscale CelebA: Table 1 of sosvae_tmlr2022.txt.

Low-rank Gaussian N(mu, P P^T + 1e-5 I), rank 25; KL constraint xi_KL = 45
and entropy ceiling xi_H = -17630 nats (footnote 2 of the paper; the fixed
diagonal alone gives 0.5 * 4096 * (log(2 pi e) + log 1e-5) = -17765.6, so
135 nats are left for P); latent 128, Adam 1e-4, one epoch of mean-head
pretraining, 110 epochs of batch 64. Data preparation:
experiments/configs/table1/common.py.

Run (a GPU; not measured here, the data is not on this machine):
  python -m experiments.main \
      --config=experiments/configs/table1/celeba64_sos_vae.py \
      --workdir=runs/celeba64_sos_vae

Expected (the paper): samples with spatially coherent, semantically
meaningful variations around the mean (its Figure 3, right).
"""

from experiments.configs.table1 import common


def get_config(arg: str | None = None):
  common.check_arg(arg)
  config = common.celeba64_base()
  config.likelihood.name = 'lowrank_gaussian'
  config.likelihood.rank = 25
  config.likelihood.fixed_diag = 1e-5
  config.constraints.entropy.enabled = True
  config.constraints.entropy.target = -17630.0
  return common.shrink(config, arg)
