"""Soft constraints by the modified differential method of multipliers.

sosvae_tmlr2022.txt eq. 3 maximises

    E log p(x|z) - beta (KL - xi_KL) - lambda_H (H - xi_H)

with the multipliers (beta, lambda_H) following gradient *ascent* of the
loss while the network parameters follow descent (Platt and Barr, 1988).
Written as a loss to minimise, each constraint g with target xi adds

    lambda * (g - xi) + c * infeasibility^2

(c the damping, a constant). The reference code updates
lambda <- max(0, lambda + (g - xi)) after each model step: plain SGD ascent
with learning rate 1, projected onto lambda >= 0. `multiplier_optimizer`
is that rule as an optax transformation, applied in the same jit-compiled
step as the network update.

Constraint kinds:
  'eq': g should sit at xi (the KL target); damping pulls from both sides,
        infeasibility = g - xi, as in the reference code.
  'le': g should stay below xi (the entropy ceiling); damping only acts
        when the constraint is violated, infeasibility = max(0, g - xi),
        so a feasible model is not pushed up towards the ceiling.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

Array = jax.Array

KINDS = ('eq', 'le')


class Constraint(NamedTuple):
  target: float
  kind: str = 'eq'
  damping: float = 10.0


def constraints_from_config(cfg) -> dict[str, Constraint]:
  """config.constraints: {name: {enabled, target, kind, damping}}."""
  out = {}
  for name, c in cfg.items():
    if not c.get('enabled', True):
      continue
    if c.kind not in KINDS:
      raise ValueError(f'config.constraints.{name}.kind={c.kind!r}; '
                       f'choose one of {KINDS}.')
    out[name] = Constraint(float(c.target), c.kind, float(c.damping))
  return out


def with_values(constraints: Mapping[str, Constraint], targets: Mapping[str, Array],
                dampings: Mapping[str, Array]) -> dict[str, Constraint]:
  """The constraints with their targets and dampings replaced (e.g. traced
  per-run values); the kinds, which decide the maths, stay."""
  return {k: c._replace(target=targets[k], damping=dampings[k])
          for k, c in constraints.items()}


def infeasibility(value: Array, constraint: Constraint) -> Array:
  gap = value - constraint.target
  return gap if constraint.kind == 'eq' else jnp.maximum(gap, 0.0)


def constraint_loss(values: Mapping[str, Array], multipliers: Mapping[str, Array],
                    constraints: Mapping[str, Constraint]) -> Array:
  """sum_c lambda_c (g_c - xi_c) + c_c * infeasibility_c^2 (a scalar).

  Args:
    values: constraint values g_c, scalars (means over the global batch).
    multipliers: lambda_c >= 0, scalars.
    constraints: targets, kinds and dampings.
  """
  total = jnp.zeros((), jnp.float32)
  for name, c in constraints.items():
    g = values[name]
    total += multipliers[name] * (g - c.target)
    # The damping factor is a constant of the method, not a learnt quantity.
    total += jax.lax.stop_gradient(c.damping) * jnp.square(infeasibility(g, c))
  return total


def init_multipliers(constraints: Mapping[str, Constraint],
                     initial: Mapping[str, float] | None = None) -> dict[str, Array]:
  """Multipliers start at 0 (reference code) unless `initial` says otherwise."""
  initial = initial or {}
  return {n: jnp.asarray(initial.get(n, 0.0), jnp.float32) for n in constraints}


class MultiplierAscentState(NamedTuple):
  """No state: the rule is memoryless SGD."""


def multiplier_optimizer(
    learning_rate: float | Mapping[str, float] = 1.0) -> optax.GradientTransformation:
  """Projected gradient ascent: lambda <- max(0, lambda + lr * dloss/dlambda).

  Feed it the gradient of the *loss* w.r.t. the multipliers (g - xi); it
  returns updates for optax.apply_updates that move lambda up the loss and
  never below zero.

  Args:
    learning_rate: one rate for all multipliers, or {constraint name: rate}.
      The multiplier of a constraint settles near the exchange rate between
      its nats and log-likelihood nats, so constraints on very different
      scales (KL vs entropy under D = 1e-5) may need different rates.
  """
  rates = dict(learning_rate) if isinstance(learning_rate, Mapping) else None
  for lr in (rates.values() if rates is not None else [learning_rate]):
    # Array rates (a run's Hypers, traced in its step) were checked as config values.
    if isinstance(lr, (int, float)) and lr <= 0:
      raise ValueError(f'multiplier learning_rate={lr} must be > 0.')

  def init_fn(params):
    if rates is not None and set(params) - set(rates):
      raise ValueError(f'No multiplier learning rate for {sorted(set(params) - set(rates))}.')
    return MultiplierAscentState()

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError('multiplier_optimizer needs params to project onto >= 0.')
    lrs = rates if rates is not None else {k: learning_rate for k in params}
    new = {k: jnp.maximum(params[k] + lrs[k] * updates[k], 0.0) for k in params}
    return {k: new[k] - params[k] for k in params}, state

  return optax.GradientTransformation(init_fn, update_fn)


def multiplier_learning_rates(cfg, default: float) -> dict[str, float]:
  """{name: rate}: config.constraints.NAME.multiplier_lr, else the default."""
  return {name: float(c.get('multiplier_lr', None) or default)
          for name, c in cfg.items() if c.get('enabled', True)}
