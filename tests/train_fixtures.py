"""Shared test set-up: a smoke model with its state and jitted train step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import default
from sosvae_jax import lagrangian
from sosvae_jax import train
from sosvae_jax.models import build_model


def smoke_step(config=None, multiplier_lr=None, **step_kwargs):
  """(config, initial state, jitted train_step) for a smoke config.

  multiplier_lr: one rate for every multiplier (default: the config's).
  step_kwargs go to train.train_step (pretrain_steps defaults to 0).
  """
  config = config or default.get_config('smoke')
  model = build_model(config)
  tx = train.make_optimizer(config)
  constraints = lagrangian.constraints_from_config(config.constraints)
  mtx = lagrangian.multiplier_optimizer(
      multiplier_lr or lagrangian.multiplier_learning_rates(
          config.constraints, config.multiplier_learning_rate))
  state = train.create_train_state(config, model, tx, mtx, constraints)
  step_kwargs.setdefault('pretrain_steps', 0)
  step = jax.jit(functools.partial(train.train_step, model=model, tx=tx, multiplier_tx=mtx,
                                   constraints=constraints, **step_kwargs))
  return config, state, step


def random_batch(seed: int, batch_size: int = 8, shape=(28, 28, 1)) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch_size,) + tuple(shape),
                                                          dtype=np.uint8))
