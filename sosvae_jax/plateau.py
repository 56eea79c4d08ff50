"""Switching a staged likelihood head when the eval ELBO stops improving."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.models import SWITCH_STEP


def lower_switch_steps(model_state, step: int):
  """Every SWITCH_STEP statistic later than `step` set to `step`.

  Heads with stages (lin2019_balancing_elbo_learned_variance.txt Algorithm 1)
  compare the train step with their SWITCH_STEP variable inside jit; the
  loop lowers it when the ELBO stops improving.
  """
  def lower(path, value):
    if getattr(path[-1], 'key', None) == SWITCH_STEP:
      return jnp.minimum(value, jnp.asarray(step, value.dtype))
    return value
  return jax.tree_util.tree_map_with_path(lower, model_state)


class PlateauWatch:
  """Says once when the eval ELBO stops improving (switch_on_plateau)."""

  def __init__(self, likelihood_config):
    self.enabled = bool(likelihood_config.get('switch_on_plateau', False))
    self.tolerance = float(likelihood_config.get('plateau_tolerance', 0.0))
    self.patience = int(likelihood_config.get('plateau_patience', 1))
    self.best = -np.inf
    self.bad = 0
    self.fired = False

  def stalled(self, elbo: float) -> bool:
    if not self.enabled or self.fired:
      return False
    if elbo > self.best + self.tolerance:
      self.best, self.bad = elbo, 0
      return False
    self.bad += 1
    self.fired = self.bad >= self.patience
    return self.fired
