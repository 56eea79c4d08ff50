"""Shared settings of the Table 1 trio (sosvae_tmlr2022.txt section 4.2).

The SOS-VAE paper compares, on 64x64 grayscale CelebA, a beta-VAE (pixel-wise
Gaussian, beta = the multiplier of a KL constraint), Dorta et al.'s
structured-precision Gaussian (dorta2018_vae_structured_residuals.txt) and
SOS-VAE (low-rank Gaussian, rank 25, entropy ceiling xi_H = -17630): latent
128, KL target xi_KL = 45 for all of them, Adam 1e-4. Each model file here
changes the likelihood and its constraints only; everything else is shared
so that the three differ by the observation distribution alone.

The CelebA data must be prepared once, on a machine with network access:

  tfds build celeb_a --file_format=array_record [--data_dir=DIR]

(pass --config.data.tfds_data_dir=DIR if not the default
~/tensorflow_datasets). Images (218x178 RGB, aligned and cropped) are
centre-cropped to 148x148 around the face, converted to grayscale by PIL and
resized bilinearly to 64x64 (input_pipeline._to_image_shape).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import common

CELEBA_TRAIN_EXAMPLES = 162770  # tfds celeb_a 'train' split
CELEBA_BATCH = 64
CELEBA_STEPS_PER_EPOCH = CELEBA_TRAIN_EXAMPLES // CELEBA_BATCH  # 2543
CELEBA_EPOCHS = 110  # Dorta et al. section 5.1, also used for the comparison
CELEBA_CENTRE_CROP = 148


def check_arg(arg: str | None) -> None:
  common.parse_arg(arg, smoke=False)


def celeba64_gray_data() -> ml_collections.ConfigDict:
  """tfds celeb_a, centre crop 148, grayscale, 64x64 (see module docstring)."""
  data = common.fashion_mnist_data()
  data.source = 'tfds'
  data.name = 'celeb_a'
  data.train_split = 'train'
  data.eval_split = 'test'
  data.image_shape = (64, 64, 1)
  data.centre_crop = CELEBA_CENTRE_CROP
  return data


def celeba64_base() -> ml_collections.ConfigDict:
  """The CelebA settings every model of the trio shares."""
  config = common.base_config()
  config.data = celeba64_gray_data()
  config.model.channels = (32, 64, 128, 256)  # 64 -> 4x4 at the bottleneck
  config.model.latent_dim = 128
  config.constraints.kl.target = 45.0  # xi_KL
  config.constraints.entropy.enabled = False  # only SOS-VAE has xi_H
  config.optimizer.learning_rate = 1e-4
  config.batch_size = CELEBA_BATCH
  config.num_steps = CELEBA_EPOCHS * CELEBA_STEPS_PER_EPOCH
  config.pretrain_steps = CELEBA_STEPS_PER_EPOCH  # one epoch of mean only
  config.log_every_steps = 500
  config.eval_every_steps = 10 * CELEBA_STEPS_PER_EPOCH
  config.checkpoint_every_steps = CELEBA_STEPS_PER_EPOCH
  return config


def structured_likelihood(*, switch_step: int) -> ml_collections.ConfigDict:
  """Dorta et al.'s likelihood as used in the trio (grayscale, 3x3).

  Variance minimiser (eq. 14): alpha = 5e3 before `switch_step`, then 10
  (section 5.1: the first 10 epochs). No Gamma prior (section 4.2 found its
  parameters hard to set; gamma_prior_weight > 0 switches it on), no basis,
  no dilation (section 4.3 saw only marginal gains).
  """
  return ml_collections.ConfigDict(dict(
      name='structured_gaussian',
      kernel_size=3,
      dilation=1,
      num_basis=0,
      init_variance=0.05,
      max_log_diag=6.0,
      head_init_stddev=1e-5,
      detach_variance_features=False,  # one shared trunk, as in Fig. 2
      variance_minimiser_start=5e3,
      variance_minimiser_end=10.0,
      variance_minimiser_switch_step=switch_step,
      gamma_prior_weight=0.0,
      gamma_concentration=1.0,
      gamma_rate=1.0,
  ))


def shrink(config: ml_collections.ConfigDict, arg: str | None):
  """':smoke' for the trio: the base shrinking plus a tiny schedule."""
  if not common.parse_arg(arg, smoke=False).smoke:
    return config
  config = common.apply_smoke(config)
  if 'variance_minimiser_switch_step' in config.likelihood:
    config.likelihood.variance_minimiser_switch_step = 3
  return config
