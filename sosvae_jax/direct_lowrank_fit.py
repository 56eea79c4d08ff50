"""The model without deep learning: N(mu, P P^T + D) fitted to images by Adam."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from sosvae_jax import progress as progress_lib
from sosvae_jax.distributions import lowrank_log_prob_autodiff

Array = jax.Array


# Steps per compiled call: a progress line between calls, while each call is
# long enough that the Python loop costs nothing.
STEPS_PER_CALL = 100


def fit_lowrank_observation_model(data: Array, rank: int, *, steps: int = 2000,
                                  learning_rate: float = 0.02, seed: int = 0,
                                  isotropic: bool = True,
                                  show_progress: bool = True) -> dict[str, Array]:
  """The model without deep learning (sosvae_tmlr2022.txt section 4.5).

  mu, P and the diagonal of N(mu, P P^T + D) are learned directly by Adam on
  the average log-likelihood of data [N, S] (full batch, cosine-decayed
  rate). With an isotropic D = sigma^2 I this is probabilistic PCA, whose
  maximum is known in closed form (`observation.ppca_max_likelihood`): the fit
  should reach it. With `show_progress`, a line on stderr every few seconds
  (the fit of 2000 images takes under a minute on a CPU).

  Returns:
    {'loc' [S], 'cov_factor' [S, R], 'cov_diag' [S], 'log_likelihood' [steps]
    (the average log-likelihood before each step)}.
  """
  data = jnp.asarray(data)
  _, size = data.shape
  key = jax.random.PRNGKey(seed)
  params = {
      'loc': jnp.mean(data, 0),
      'cov_factor': 0.01 * jax.random.normal(key, (size, rank), data.dtype),
      'log_diag': jnp.log(jnp.var(data)) * (jnp.ones(()) if isotropic else jnp.ones(size)),
  }
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps, alpha=0.01))

  def average_log_likelihood(p):
    diag = jnp.broadcast_to(jnp.exp(p['log_diag']), (size,))
    return jnp.mean(lowrank_log_prob_autodiff(data, p['loc'], p['cov_factor'], diag))

  def step(carry, _):
    p, opt_state = carry
    value, grads = jax.value_and_grad(lambda q: -average_log_likelihood(q))(p)
    updates, opt_state = tx.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), -value

  @functools.partial(jax.jit, static_argnums=1)
  def run(carry, length: int):
    return jax.lax.scan(step, carry, None, length=length)

  carry, history = (params, tx.init(params)), []
  progress = progress_lib.Progress('low-rank fit: Adam steps', steps) if show_progress else None
  for start in range(0, steps, STEPS_PER_CALL):
    carry, values = run(carry, min(STEPS_PER_CALL, steps - start))
    history.append(values)
    if progress is not None:
      progress.update(start + len(values),
                      lambda: f'average log-likelihood {float(values[-1]):.1f}')
  params = carry[0]
  history = jnp.concatenate(history) if history else jnp.zeros((0,), data.dtype)
  return {'loc': params['loc'], 'cov_factor': params['cov_factor'],
          'cov_diag': jnp.broadcast_to(jnp.exp(params['log_diag']), (size,)),
          'log_likelihood': history}
