"""beta-VAE on 64x64 grayscale CelebA: Table 1 of sosvae_tmlr2022.txt.

Pixel-wise Gaussian with per-pixel learned variance; beta is the multiplier
of the KL constraint xi_KL = 45 (no entropy constraint); latent 128, Adam
1e-4, 110 epochs of batch 64. Shared settings and the data preparation
(`tfds build celeb_a --file_format=array_record`) are in
experiments/configs/table1/common.py.

Run (a GPU; not measured here, the data is not on this machine):
  python -m experiments.main \
      --config=experiments/configs/table1/celeba64_beta_vae.py \
      --workdir=runs/celeba64_beta_vae

Expected (the paper, not reproduced here): samples are the mean plus
independent pixel noise; FID of means 90.97 (Table 1, as read from the
extracted text).
"""

from experiments.configs import common as base_common
from experiments.configs.table1 import common


def get_config(arg: str | None = None):
  common.check_arg(arg)
  config = common.celeba64_base()
  config.likelihood = base_common.diagonal_gaussian_likelihood()
  return common.shrink(config, arg)
