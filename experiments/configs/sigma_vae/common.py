"""The sigma-VAE appendix's small conv VAE, shared by every Table 2 row.

rybkin2021_sigma_vae_calibrated_decoders.txt appendix B: 3 conv layers of
32, 64 and 128 channels in the encoder (mirrored in the decoder), latent 20,
Adam with learning rate 1e-3, batch 128, 10 epochs, unit Gaussian prior and
diagonal Gaussian posterior, the plain ELBO (no constraints). Every row
differs only in config.likelihood (and the beta-VAE row in config.kl_weight).

The dataset is chosen by the config argument (or, equally, by the
config.data fields and config.model.channels on the command line):

* fashion_mnist (default): the IDX files, 28x28x1. 28 is not divisible by
  2**3, so the three stride-2 levels cannot all be used: the encoder keeps
  the first two, channels (32, 64) (28 -> 14 -> 7), and the input is not
  padded. This is the only architectural change from the appendix.
* svhn: tfds svhn_cropped, 32x32x3, channels (32, 64, 128) as in the
  appendix (the paper's Table 2 "SVHN VAE" column). tfds must have prepared
  it first (see the README's data section).
* cifar10: tfds cifar10, 32x32x3, channels (32, 64, 128) (Table 3).

Tokens combine with commas, e.g. `:svhn,smoke`.
"""

from __future__ import annotations

import math

import ml_collections

from experiments.configs import common

DATASETS = ('fashion_mnist', 'svhn', 'cifar10')
TRAIN_EXAMPLES = {'fashion_mnist': 60000, 'svhn': 73257, 'cifar10': 50000}
EPOCHS = 10
BATCH_SIZE = 128


def parse_arg(arg: str | None) -> tuple[str, bool]:
  """'svhn,smoke' -> ('svhn', True); raises ValueError naming a bad token."""
  parsed = common.parse_arg(arg, dataset=DATASETS, smoke=False)
  return parsed.dataset, parsed.smoke


def data_config(dataset: str) -> ml_collections.ConfigDict:
  """config.data for one of DATASETS."""
  data = common.fashion_mnist_data()
  if dataset == 'fashion_mnist':
    return data
  data.source = 'tfds'
  data.name = {'svhn': 'svhn_cropped', 'cifar10': 'cifar10'}[dataset]
  data.image_shape = (32, 32, 3)
  return data


def get_config(likelihood: dict, arg: str | None = None, *,
               kl_weight: float = 1.0) -> ml_collections.ConfigDict:
  """The appendix-B VAE with the given config.likelihood fields."""
  dataset, smoke = parse_arg(arg)
  config = common.base_config()
  config.data = data_config(dataset)
  config.model.channels = (32, 64) if dataset == 'fashion_mnist' else (32, 64, 128)
  config.model.latent_dim = 20
  # head_init_stddev None: flax's default kernel init for the heads.
  config.likelihood = ml_collections.ConfigDict(dict(head_init_stddev=None, **likelihood))
  config.constraints.kl.enabled = False
  config.constraints.entropy.enabled = False
  config.kl_weight = kl_weight
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, grad_clip_norm=0.0, variance_lr_scale=1.0))
  config.batch_size = BATCH_SIZE
  steps_per_epoch = math.ceil(TRAIN_EXAMPLES[dataset] / BATCH_SIZE)
  config.num_steps = EPOCHS * steps_per_epoch
  config.pretrain_steps = 0
  config.log_every_steps = 100
  config.eval_every_steps = steps_per_epoch
  config.checkpoint_every_steps = steps_per_epoch
  config.eval_examples = 10000
  if smoke:
    config = common.apply_smoke(config)
  return config
