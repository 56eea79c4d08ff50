"""Shared config pieces: data sources and the ':smoke' shrinking."""

from __future__ import annotations

import ml_collections


def fashion_mnist_data() -> ml_collections.ConfigDict:
  """Full Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist."""
  return ml_collections.ConfigDict(dict(
      source='idx',  # 'idx' or 'tfds'
      name='fashion_mnist',
      idx_dir='/usr/share/datasets/fashion-mnist',
      tfds_data_dir='',  # '' = tfds default (~/tensorflow_datasets)
      folder_dir='',  # source='folder': images, optionally in train/ and test/
      train_split='train',
      eval_split='test',
      image_shape=(28, 28, 1),
      centre_crop=0,
      num_threads=2,
  ))


def base_config() -> ml_collections.ConfigDict:
  """Fields every experiment has; experiments override a few."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = fashion_mnist_data()
  config.model = ml_collections.ConfigDict(dict(
      channels=(16, 32), latent_dim=32, dtype='float32'))
  config.likelihood = ml_collections.ConfigDict(dict(
      name='lowrank_gaussian', rank=25, fixed_diag=1e-5, min_variance=1e-5,
      init_variance=0.05, head_init_stddev=1e-5,
      detach_variance_features=True))
  config.constraints = ml_collections.ConfigDict(dict(
      kl=dict(enabled=True, target=25.0, kind='eq', damping=10.0,
              initial_multiplier=0.0, multiplier_lr=10.0),
      entropy=dict(enabled=True, target=-3330.0, kind='le', damping=10.0,
                   initial_multiplier=0.0, multiplier_lr=100.0),
  ))
  config.multiplier_learning_rate = 10.0
  # Weight (beta) of the KL in the plain ELBO, used when no KL constraint is
  # enabled: 1 is the ELBO, beta != 1 a beta-VAE with fixed beta.
  config.kl_weight = 1.0
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, grad_clip_norm=0.0, variance_lr_scale=0.1))
  config.batch_size = 64
  config.num_steps = 2500
  config.pretrain_steps = 500
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 500
  config.checkpoints_to_keep = 3
  config.max_nonfinite_steps = 20  # consecutive skipped steps before stopping
  config.eval_examples = 1024
  config.num_figure_images = 10
  # Latent sampler of the evaluation (--mode=evaluate): 'prior' z ~ N(0, I), or
  # 'gmm', a Gaussian mixture of gmm_components components ('full' or 'diag'
  # covariance) fitted to posterior means of training images after training
  # (lin2019_balancing_elbo_learned_variance.txt section 3.5).
  config.sampler = 'prior'
  config.gmm_components = 10
  config.gmm_covariance = 'full'
  return config


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """':smoke': the same experiment shrunk to a run of seconds on a CPU."""
  config.model.channels = (8, 16)
  config.model.latent_dim = 4
  if 'rank' in config.likelihood:
    config.likelihood.rank = min(config.likelihood.rank, 3)
  config.batch_size = 8
  config.num_steps = 6
  config.pretrain_steps = 2
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.eval_examples = 16
  config.num_figure_images = 4
  config.data.num_threads = 1
  return config
