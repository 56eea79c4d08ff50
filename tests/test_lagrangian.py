"""Constraint terms and the projected-ascent multiplier update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sosvae_jax import lagrangian
from sosvae_jax.lagrangian import Constraint


def _step(multipliers, values, constraints, lr=1.0):
  """One multiplier update from the gradient of the constraint loss."""
  grads = jax.grad(lambda m: lagrangian.constraint_loss(values, m, constraints))(multipliers)
  tx = lagrangian.multiplier_optimizer(lr)
  updates, _ = tx.update(grads, tx.init(multipliers), multipliers)
  return optax.apply_updates(multipliers, updates)


def test_update_is_reference_rule():
  """lambda <- max(0, lambda + lr (g - xi)) (shared/papers/README.md)."""
  constraints = {'kl': Constraint(45.0, 'eq', 10.0), 'entropy': Constraint(-100.0, 'le', 10.0)}
  multipliers = {'kl': jnp.float32(2.0), 'entropy': jnp.float32(0.5)}
  values = {'kl': jnp.float32(50.0), 'entropy': jnp.float32(-103.0)}
  new = _step(multipliers, values, constraints)
  assert float(new['kl']) == pytest.approx(2.0 + 5.0)
  assert float(new['entropy']) == pytest.approx(0.0)  # 0.5 - 3 clipped at 0
  new = _step(multipliers, values, constraints, lr=0.1)
  assert float(new['kl']) == pytest.approx(2.5)
  assert float(new['entropy']) == pytest.approx(0.2)


def test_multipliers_never_negative_over_many_steps():
  constraints = {'kl': Constraint(10.0)}
  multipliers = {'kl': jnp.float32(0.0)}
  rng = np.random.default_rng(0)
  for _ in range(50):
    multipliers = _step(multipliers, {'kl': jnp.float32(rng.normal(8.0, 3.0))}, constraints)
    assert float(multipliers['kl']) >= 0.0


def test_loss_value_and_damping_kinds():
  eq = {'g': Constraint(5.0, 'eq', 10.0)}
  le = {'g': Constraint(5.0, 'le', 10.0)}
  lam = {'g': jnp.float32(3.0)}
  # Above the target: lambda (g - xi) + c (g - xi)^2 for both kinds.
  for c in (eq, le):
    assert float(lagrangian.constraint_loss({'g': jnp.float32(7.0)}, lam, c)) == pytest.approx(3 * 2 + 10 * 4)
  # Below the target: 'eq' still damps, 'le' does not.
  assert float(lagrangian.constraint_loss({'g': jnp.float32(4.0)}, lam, eq)) == pytest.approx(-3 + 10)
  assert float(lagrangian.constraint_loss({'g': jnp.float32(4.0)}, lam, le)) == pytest.approx(-3)


def test_gradient_wrt_constraint_value():
  """d loss / d g = lambda + 2 c infeasibility: what the network descends."""
  c = {'g': Constraint(5.0, 'eq', 10.0)}
  grad = jax.grad(lambda g: lagrangian.constraint_loss({'g': g}, {'g': jnp.float32(3.0)}, c))(jnp.float32(7.0))
  assert float(grad) == pytest.approx(3 + 2 * 10 * 2)


def test_mdmm_solves_a_constrained_quadratic():
  """min (x - 3)^2 s.t. x <= 1 converges to x = 1, lambda = 4 (KKT)."""
  constraints = {'g': Constraint(1.0, 'le', 1.0)}
  x, lam = jnp.float32(0.0), {'g': jnp.float32(0.0)}
  tx, mtx = optax.sgd(0.05), lagrangian.multiplier_optimizer(0.05)
  opt_state, mstate = tx.init(x), mtx.init(lam)

  @jax.jit
  def step(x, lam, opt_state, mstate):
    def loss(x, lam):
      return jnp.square(x - 3.0) + lagrangian.constraint_loss({'g': x}, lam, constraints)
    gx, gl = jax.grad(loss, argnums=(0, 1))(x, lam)
    ux, opt_state = tx.update(gx, opt_state, x)
    ul, mstate = mtx.update(gl, mstate, lam)
    return optax.apply_updates(x, ux), optax.apply_updates(lam, ul), opt_state, mstate

  for _ in range(3000):
    x, lam, opt_state, mstate = step(x, lam, opt_state, mstate)
  assert float(x) == pytest.approx(1.0, abs=1e-3)
  assert float(lam['g']) == pytest.approx(4.0, abs=1e-2)


def test_config_validation():
  import ml_collections
  cfg = ml_collections.ConfigDict({'kl': {'enabled': True, 'target': 1.0, 'kind': 'ge', 'damping': 1.0}})
  with pytest.raises(ValueError, match="kind='ge'"):
    lagrangian.constraints_from_config(cfg)
  with pytest.raises(ValueError, match='learning_rate'):
    lagrangian.multiplier_optimizer(0.0)


def test_per_constraint_learning_rates():
  import ml_collections
  cfg = ml_collections.ConfigDict({
      'kl': {'enabled': True, 'target': 1.0, 'kind': 'eq', 'damping': 1.0, 'multiplier_lr': 2.0},
      'entropy': {'enabled': True, 'target': 0.0, 'kind': 'le', 'damping': 1.0},
      'off': {'enabled': False, 'target': 0.0, 'kind': 'le', 'damping': 1.0}})
  rates = lagrangian.multiplier_learning_rates(cfg, 5.0)
  assert rates == {'kl': 2.0, 'entropy': 5.0}
  tx = lagrangian.multiplier_optimizer(rates)
  lam = {'kl': jnp.float32(0.0), 'entropy': jnp.float32(0.0)}
  updates, _ = tx.update({'kl': jnp.float32(1.0), 'entropy': jnp.float32(1.0)}, tx.init(lam), lam)
  assert float(updates['kl']) == 2.0 and float(updates['entropy']) == 5.0
  with pytest.raises(ValueError, match='No multiplier learning rate'):
    lagrangian.multiplier_optimizer({'kl': 1.0}).init(lam)
