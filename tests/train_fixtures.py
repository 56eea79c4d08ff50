"""Shared test set-up: a smoke model with its state and jitted train step."""

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import default
from sosvae_jax import train


def smoke_step(config=None, multiplier_lr=None, *, pretrain_steps=0,
               variance_lr_scale=1.0, kl_weight=1.0):
  """(config, initial state, jitted train step) of `train.setup` for a smoke config.

  multiplier_lr: one rate for every multiplier (default: the config's).
  pretrain_steps, variance_lr_scale, kl_weight: set in a copy of the config
  (defaults: no pretraining, no slower variance heads, the plain ELBO).
  """
  config = (config or default.get_config('smoke')).copy_and_resolve_references()
  with config.unlocked():
    config.pretrain_steps = pretrain_steps
    config.optimizer.variance_lr_scale = variance_lr_scale
    config.kl_weight = kl_weight
    if multiplier_lr is not None:
      for constraint in config.constraints.values():
        constraint.multiplier_lr = multiplier_lr
  run = train.setup(config)
  return config, run.state, jax.jit(run.step)


def random_batch(seed: int, batch_size: int = 8, shape=(28, 28, 1)) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch_size,) + tuple(shape),
                                                          dtype=np.uint8))
