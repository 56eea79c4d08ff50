"""Discrete and Student-t heads: float64 references, normalisation, smoke training."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from scipy import special
from scipy import stats

from sosvae_jax.distributions import bits_per_dim
from sosvae_jax.models import likelihoods
from sosvae_jax.models import discrete_heads as dh

B, H, W, C, F = 2, 3, 4, 2, 5


def _inputs(seed=0):
  f = jax.random.normal(jax.random.PRNGKey(seed), (B, H, W, F))
  levels = jax.random.randint(jax.random.PRNGKey(seed + 1), (B, H, W, C), 0, 256)
  levels = levels.at[0, 0, 0, 0].set(0).at[0, 0, 0, 1].set(255)  # both open edge bins
  return f, levels.astype(jnp.float32) / 255.0, np.asarray(levels)


def _run(head, f, x):
  """(log_prob [B], captured head outputs) under jit."""
  variables = head.init(jax.random.PRNGKey(0), f, x)

  @jax.jit
  def run(variables, f, x):
    dist, new = head.apply(variables, f, x, capture_intermediates=True,
                           mutable=['intermediates'])
    return dist.log_prob(x), new['intermediates']
  log_prob, inter = run(variables, f, x)
  return np.asarray(log_prob, np.float64), inter, variables


def _out(inter, name):
  return np.asarray(inter[name]['__call__'][0], np.float64)


@pytest.mark.slow
def test_bernoulli_head_against_float64():
  f, x, _ = _inputs()
  log_prob, inter, _ = _run(dh.BernoulliHead(C), f, x)
  logits, xx = _out(inter, 'logits'), np.asarray(x, np.float64)
  want = (xx * -np.logaddexp(0, -logits) + (1 - xx) * -np.logaddexp(0, logits)).sum((1, 2, 3))
  np.testing.assert_allclose(log_prob, want, rtol=1e-5)


def test_categorical_head_and_bits_per_dim_against_float64():
  f, x, levels = _inputs()
  log_prob, inter, _ = _run(dh.CategoricalHead(C), f, x)
  logits = _out(inter, 'logits').reshape(B, H, W, C, 256)
  log_p = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  want = np.take_along_axis(log_p, levels[..., None], -1)[..., 0].sum((1, 2, 3))
  np.testing.assert_allclose(log_prob, want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(bits_per_dim(log_prob, H * W * C)),
                             -want / (H * W * C * math.log(2)), rtol=1e-5)


def test_bitwise_head_against_float64():
  f, x, levels = _inputs()
  log_prob, inter, _ = _run(dh.BitwiseCategoricalHead(C), f, x)
  logits = _out(inter, 'logits').reshape(B, H, W, C, 8)
  bits = (levels[..., None] >> np.arange(7, -1, -1)) & 1  # most significant first
  per_bit = np.where(bits == 1, -np.logaddexp(0, -logits), -np.logaddexp(0, logits))
  np.testing.assert_allclose(log_prob, per_bit.sum((-1, 1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize('k', [1, 3])
def test_logistic_mixture_head_against_float64(k):
  f, x, levels = _inputs()
  log_prob, inter, _ = _run(dh.LogisticMixtureHead(C, num_mixtures=k), f, x)
  out = _out(inter, 'mixture').reshape(B, H, W, C, 3 * k)
  logit_w, means, raw_log_s = out[..., :k], out[..., k:2 * k], out[..., 2 * k:]
  log_s = -8.0 + np.logaddexp(0, raw_log_s + 8.0)  # soft clip at MIN_LOG_SCALE
  lev = levels[..., None].astype(np.float64)
  scale = np.exp(log_s)
  u = np.where(lev == 255, np.inf, ((lev + 0.5) / 255 - means) / scale)
  l = np.where(lev == 0, -np.inf, ((lev - 0.5) / 255 - means) / scale)
  # float64 log-masses without cancellation: bins left of the centre through
  # the CDF, bins right of it through the survival function, both in logs.
  log_cdf = lambda t: -np.logaddexp(0.0, -t)
  with np.errstate(divide='ignore', invalid='ignore'):
    left = log_cdf(u) + np.log1p(-np.exp(log_cdf(l) - log_cdf(u)))
    right = log_cdf(-l) + np.log1p(-np.exp(log_cdf(-u) - log_cdf(-l)))
  log_mass = np.where(u + l < 0, left, right)
  log_w = logit_w - special.logsumexp(logit_w, axis=-1, keepdims=True)
  want = special.logsumexp(log_w + log_mass, axis=-1).sum((1, 2, 3))
  assert np.all(np.isfinite(want))
  np.testing.assert_allclose(log_prob, want, rtol=1e-5)


@pytest.mark.parametrize('df', [None, 2.5])
def test_student_t_head_against_float64(df):
  f, x, _ = _inputs()
  head = dh.StudentTHead(C, student_t_df=df, init_variance=1e-6)  # log-scale starts below -6
  log_prob, inter, variables = _run(head, f, x)
  loc, raw = _out(inter, 'loc'), _out(inter, 'scale_head')
  log_scale = -6.0 + np.logaddexp(0, raw + 6.0)
  dof = df if df is not None else 1.0 + np.logaddexp(0, float(variables['params']['raw_df']))
  if df is None:
    np.testing.assert_allclose(dof, 3.0, rtol=1e-6)  # init_df
  want = stats.t.logpdf(np.asarray(x, np.float64), dof, loc=loc,
                        scale=np.exp(log_scale)).sum((1, 2, 3))
  np.testing.assert_allclose(log_prob, want, rtol=1e-5)


@pytest.mark.parametrize('head', [dh.CategoricalHead(C), dh.BitwiseCategoricalHead(C),
                                  dh.LogisticMixtureHead(C, num_mixtures=4)],
                         ids=['categorical', 'bitwise', 'logistic_mixture'])
def test_head_masses_over_256_levels_sum_to_one(head):
  f, x, _ = _inputs()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  # Scale the head's weights up: sharp, extreme distributions.
  variables = jax.tree.map(lambda v: 30.0 * v, variables)

  @jax.jit
  def all_levels(variables, f):
    dist = head.apply(variables, f, None)
    images = jnp.broadcast_to(jnp.arange(256.0)[:, None, None, None, None] / 255.0,
                              (256, B, H, W, C))
    return jax.vmap(dist.subpixel_log_prob)(images)  # (256, B, H, W, C)
  log_p = np.asarray(all_levels(variables, f), np.float64)
  np.testing.assert_allclose(special.logsumexp(log_p, axis=0), 0.0, atol=2e-4)


# ---------------------------------------------------------------------------
# Through the registry. (A full train step of these heads is in
# tests/test_sigma_configs.py; compiling one per head would be too slow here.)
# ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('name', ['bernoulli', 'categorical', 'bitwise_categorical',
                                  'logistic_mixture', 'student_t'])
def test_head_from_the_registry_learns_a_batch(name):
  extra = {'num_mixtures': 2} if name == 'logistic_mixture' else {}
  cfg = ml_collections.ConfigDict(dict(name=name, **extra))
  entry = likelihoods.LIKELIHOODS[name]
  assert entry.discrete == (name in ('categorical', 'bitwise_categorical',
                                     'logistic_mixture'))
  assert not entry.problems(ml_collections.ConfigDict(
      dict(likelihood=cfg, data=dict(image_shape=(H, W, C)))))
  head = entry.build(cfg, C)
  f, x, _ = _inputs()
  params = head.init(jax.random.PRNGKey(0), f, x)['params']
  tx = optax.adam(3e-2)

  @jax.jit
  def step(params, opt_state):
    def nll(p):
      dist = head.apply({'params': p}, f, x, train=True, step=jnp.asarray(0))
      return -jnp.mean(dist.log_prob(x.reshape((B,) + tuple(dist.event_shape))))
    loss, grads = jax.value_and_grad(nll)(params)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state, losses = tx.init(params), []
  for _ in range(5):
    params, opt_state, loss = step(params, opt_state)
    losses.append(float(loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 1.0, losses
  if entry.discrete:  # a probability mass of 8-bit levels: -log p >= 0
    assert min(losses) > 0.0
