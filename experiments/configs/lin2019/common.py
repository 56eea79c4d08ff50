"""Lin et al.'s MNIST / Fashion-MNIST setting, shared by both datasets.

lin2019_balancing_elbo_learned_variance.txt appendix B.1: latent 16, batch
256, Adam with learning rate 5e-4, 16 epochs of stage one (closed-form
global variance) then 14 of stage two (input-dependent variance floored by
half the stage-one variance), Algorithm 1. Epochs are expressed in steps of
ceil(60000 / 256) = 235: switch at 16 * 235 = 3760, stop at 30 * 235 = 7050.

Architecture: the paper pads 28x28 to 32x32 and uses three stride-2 convs
(16, 64, 256 channels) with a separate transposed-conv variance branch.
Here the images stay 28x28 (not padded), so only two stride-2 levels fit:
channels (16, 64) (28 -> 14 -> 7), and the variance head is one 3x3 conv
on the shared decoder trunk's output. The plain ELBO, no constraints.

The switch happens at likelihood.switch_step, or earlier when
likelihood.switch_on_plateau is True and the evaluation ELBO (evaluated once
per epoch) has not improved by more than plateau_tolerance nats over
plateau_patience evaluations (Algorithm 1's delta_ELBO < epsilon_1).
"""

from __future__ import annotations

import math

import ml_collections

from experiments.configs import common

TRAIN_EXAMPLES = 60000
BATCH_SIZE = 256
STAGE_ONE_EPOCHS = 16
STAGE_TWO_EPOCHS = 14


def get_config(data: ml_collections.ConfigDict,
               arg: str | None = None) -> ml_collections.ConfigDict:
  """Two-stage Gaussian VAE on `data`; arg 'smoke' shrinks it."""
  smoke = common.parse_arg(arg, smoke=False).smoke
  steps_per_epoch = math.ceil(TRAIN_EXAMPLES / BATCH_SIZE)
  config = common.base_config()
  config.data = data
  config.model.channels = (16, 64)
  config.model.latent_dim = 16
  config.likelihood = ml_collections.ConfigDict(dict(
      name='gaussian_two_stage',
      switch_step=STAGE_ONE_EPOCHS * steps_per_epoch,
      switch_on_plateau=False,
      plateau_tolerance=0.0,
      plateau_patience=1,
      dataset_variance=ml_collections.FieldReference(None, field_type=float),
      running_average_decay=0.99,
      init_variance=1.0,  # Algorithm 1: sigma initialised as 1
      head_init_stddev=None,
      detach_variance_features=False))
  config.constraints.kl.enabled = False
  config.constraints.entropy.enabled = False
  config.kl_weight = 1.0
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=5e-4, grad_clip_norm=0.0, variance_lr_scale=1.0))
  config.batch_size = BATCH_SIZE
  config.num_steps = (STAGE_ONE_EPOCHS + STAGE_TWO_EPOCHS) * steps_per_epoch
  config.pretrain_steps = 0
  config.log_every_steps = 100
  config.eval_every_steps = steps_per_epoch
  config.checkpoint_every_steps = steps_per_epoch
  config.eval_examples = 10000
  # Samples from a 30-component Gaussian mixture fitted to the aggregate
  # posterior (section 3.5: M = 30 for MNIST and Fashion-MNIST).
  config.sampler = 'gmm'
  config.gmm_components = 30
  if smoke:
    config = common.apply_smoke(config)
    config.likelihood.switch_step = 3
  return config
