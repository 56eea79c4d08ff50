"""LowRankMultivariateNormal against dense float64 numpy/scipy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.distributions import LowRankNoise
from sosvae_jax.distributions import lowrank_log_prob

BATCH_SHAPES = [(), (3,), (2, 3)]


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _params(rng, batch, size, rank, factor_scale=1.0, diag=None):
  loc = rng.normal(size=batch + (size,))
  factor = factor_scale * rng.normal(size=batch + (size, rank))
  if diag is None:
    diag = rng.uniform(0.1, 2.0, size=batch + (size,))
  else:
    diag = np.full(batch + (size,), diag)
  return loc, factor, diag


def _dense_cov(factor, diag):
  return factor @ np.swapaxes(factor, -1, -2) + np.vectorize(
      np.diag, signature='(s)->(s,s)')(diag)


def _scipy(fn, loc, factor, diag, *args):
  """Applies fn(mvn, *args) over the batch with scipy in float64."""
  batch = loc.shape[:-1]
  cov = _dense_cov(factor, diag)
  out = np.empty(batch)
  for idx in np.ndindex(batch):
    mvn = scipy.stats.multivariate_normal(loc[idx], cov[idx])
    out[idx] = fn(mvn, *(a[idx] for a in args))
  return out


@pytest.mark.parametrize('batch', BATCH_SHAPES)
@pytest.mark.parametrize('rank', [1, 4])
def test_log_prob_and_entropy_match_scipy(x64, batch, rank):
  rng = np.random.default_rng(0)
  loc, factor, diag = _params(rng, batch, 7, rank)
  x = rng.normal(size=batch + (7,))

  @jax.jit
  def f(loc, factor, diag, x):
    dist = LowRankMultivariateNormal(loc, factor, diag)
    return dist.log_prob(x), dist.entropy()

  log_prob, entropy = f(loc, factor, diag, x)
  np.testing.assert_allclose(log_prob, _scipy(lambda m, v: m.logpdf(v), loc,
                                              factor, diag, x), rtol=1e-10)
  np.testing.assert_allclose(entropy, _scipy(lambda m: m.entropy(), loc, factor,
                                             diag), rtol=1e-10)


@pytest.mark.parametrize('batch', BATCH_SHAPES)
def test_moments_match_dense(x64, batch):
  rng = np.random.default_rng(1)
  loc, factor, diag = _params(rng, batch, 6, 3)
  dist = LowRankMultivariateNormal(jnp.asarray(loc), jnp.asarray(factor),
                                   jnp.asarray(diag))
  cov = _dense_cov(factor, diag)
  np.testing.assert_allclose(dist.mean(), loc)
  np.testing.assert_allclose(dist.variance(), np.diagonal(cov, 0, -2, -1), rtol=1e-12)
  np.testing.assert_allclose(dist.covariance(), cov, rtol=1e-12)
  np.testing.assert_allclose(dist.log_det_covariance(), np.linalg.slogdet(cov)[1],
                             rtol=1e-10)
  assert dist.batch_shape == batch and dist.event_shape == (6,)


def test_batch_shapes_broadcast(x64):
  rng = np.random.default_rng(2)
  loc = rng.normal(size=(4, 5))
  factor = rng.normal(size=(1, 5, 2))
  diag = rng.uniform(0.5, 1.0, size=(5,))
  dist = LowRankMultivariateNormal(loc, factor, diag)
  assert dist.batch_shape == (4,)
  x = rng.normal(size=(4, 5))
  expected = [scipy.stats.multivariate_normal(loc[i], _dense_cov(factor[0], diag)).logpdf(x[i])
              for i in range(4)]
  np.testing.assert_allclose(dist.log_prob(x), expected, rtol=1e-10)


def test_tiny_diagonal_large_factor_float32_accuracy(x64):
  """d = 1e-5 (the paper's D) with large factors and an in-span residual.

  The textbook Woodbury form |u|^2 - b^T C^-1 b cancels catastrophically
  here; the ridge form keeps float32 close to the float64 truth.
  """
  rng = np.random.default_rng(3)
  size, rank = 784, 25
  loc, factor, diag = _params(rng, (), size, rank, factor_scale=3.0, diag=1e-5)
  x = loc + factor @ rng.normal(size=rank) + np.sqrt(diag) * rng.normal(size=size)
  # Dense float64 reference by Cholesky of the full covariance.
  cov = _dense_cov(factor, diag)
  chol = np.linalg.cholesky(cov)
  white = scipy.linalg.solve_triangular(chol, x - loc, lower=True)
  reference = -0.5 * (size * math.log(2 * math.pi) + 2 * np.sum(np.log(np.diag(chol)))
                      + white @ white)
  f32 = jax.jit(lowrank_log_prob)(*(jnp.asarray(a, jnp.float32)
                                    for a in (x, loc, factor, diag)))
  assert f32.dtype == jnp.float32
  # log|Sigma| is about -8800 here, the Mahalanobis term about 800.
  np.testing.assert_allclose(float(f32), reference, rtol=2e-6, atol=0.05)
  # The naive subtraction in float32, for contrast: far less accurate.
  p, d, r = (np.float32(a) for a in (factor, diag, x - loc))
  u = r / np.sqrt(d)
  w = p / np.sqrt(d)[:, None]
  cap = np.eye(rank, dtype=np.float32) + w.T @ w
  b = w.T @ u
  naive_maha = u @ u - b @ np.linalg.solve(cap, b)
  maha_ref = white @ white
  ours_maha = -2 * float(f32) - size * math.log(2 * math.pi) - 2 * np.sum(np.log(np.diag(chol)))
  assert abs(ours_maha - maha_ref) < abs(naive_maha - maha_ref)


def test_ill_conditioned_float64_exact(x64):
  """Nearly collinear factor columns, d spanning five orders of magnitude."""
  rng = np.random.default_rng(4)
  size, rank = 40, 6
  base = rng.normal(size=(size, 1))
  factor = 5.0 * (base + 1e-4 * rng.normal(size=(size, rank)))
  diag = 10.0 ** rng.uniform(-5, 0, size=size)
  loc = rng.normal(size=size)
  x = rng.normal(size=size)
  cov = _dense_cov(factor, diag)
  assert np.linalg.cond(cov) > 1e8
  expected = scipy.stats.multivariate_normal(loc, cov).logpdf(x)
  got = jax.jit(lowrank_log_prob)(x, loc, factor, diag)
  np.testing.assert_allclose(got, expected, rtol=1e-8)


def test_gradients_match_closed_form(x64):
  """d log N / d(mu, P, d) against the dense matrix-calculus formulas."""
  rng = np.random.default_rng(5)
  loc, factor, diag = _params(rng, (), 9, 3)
  x = rng.normal(size=9)
  grads = jax.jit(jax.grad(lowrank_log_prob, argnums=(1, 2, 3)))(x, loc, factor, diag)
  prec = np.linalg.inv(_dense_cov(factor, diag))
  alpha = prec @ (x - loc)
  outer = np.outer(alpha, alpha) - prec  # d log N / d Sigma, times 2
  np.testing.assert_allclose(grads[0], alpha, rtol=1e-9)
  np.testing.assert_allclose(grads[1], outer @ factor, rtol=1e-9)
  np.testing.assert_allclose(grads[2], 0.5 * np.diag(outer), rtol=1e-9)


def test_gradients_finite_with_tiny_diagonal():
  rng = np.random.default_rng(6)
  loc, factor, diag = _params(rng, (2,), 300, 5, factor_scale=0.3, diag=1e-5)
  x = rng.uniform(size=(2, 300))
  args = [jnp.asarray(a, jnp.float32) for a in (x, loc, factor, diag)]
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(lowrank_log_prob(*a)),
                           argnums=(1, 2)))(*args)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)


def test_sample_covariance_and_noise_parts(x64):
  rng = np.random.default_rng(7)
  loc, factor, diag = _params(rng, (2,), 4, 2)
  dist = LowRankMultivariateNormal(loc, factor, diag)
  samples, noise = dist.sample_with_noise(seed=jax.random.PRNGKey(0),
                                          sample_shape=(40000,))
  assert samples.shape == (40000, 2, 4)
  assert noise.omega_p.shape == (40000, 2, 2) and noise.omega_d.shape == (40000, 2, 4)
  # The sample is exactly mu + P omega_p + sqrt(d) omega_d.
  rebuilt = loc + np.einsum('bsr,nbr->nbs', factor, noise.omega_p) + np.sqrt(diag) * noise.omega_d
  np.testing.assert_allclose(samples, rebuilt, rtol=1e-12)
  cov = _dense_cov(factor, diag)
  for b in range(2):
    emp = np.cov(np.asarray(samples[:, b]).T)
    np.testing.assert_allclose(emp, cov[b], atol=0.06 * np.abs(cov[b]).max())
    np.testing.assert_allclose(samples[:, b].mean(0), loc[b],
                               atol=5 * np.sqrt(np.diag(cov[b]).max() / 40000))
  direct = dist.sample(seed=jax.random.PRNGKey(1), sample_shape=3)
  assert direct.shape == (3, 2, 4)


def test_sample_from_given_noise(x64):
  rng = np.random.default_rng(8)
  loc, factor, diag = _params(rng, (), 5, 2)
  dist = LowRankMultivariateNormal(loc, factor, diag)
  noise = LowRankNoise(np.array([1.0, -2.0]), np.zeros(5))
  np.testing.assert_allclose(dist.sample_from_noise(noise),
                             loc + factor @ np.array([1.0, -2.0]))


@pytest.mark.parametrize('loc_shape,factor_shape,diag_shape,match', [
    ((5,), (4, 2), (5,), 'Event sizes disagree'),
    ((5,), (5, 2), (4,), 'Event sizes disagree'),
    ((5,), (5,), (5,), 'cov_factor'),
    ((3, 5), (2, 5, 2), (5,), 'do not broadcast'),
    ((5,), (5, 0), (5,), 'rank R=0'),
])
def test_bad_shapes_raise_clear_errors(loc_shape, factor_shape, diag_shape, match):
  with pytest.raises(ValueError, match=match):
    LowRankMultivariateNormal(jnp.zeros(loc_shape), jnp.zeros(factor_shape),
                              jnp.ones(diag_shape))


def _max_square_dim_product(jaxpr, size):
  """Largest number of axes of length >= size in any value of the jaxpr."""
  worst = 0

  def visit(jx):
    nonlocal worst
    for eqn in jx.eqns:
      for var in list(eqn.outvars) + list(eqn.invars):
        shape = getattr(getattr(var, 'aval', None), 'shape', ())
        worst = max(worst, sum(1 for d in shape if d >= size))
      for param in eqn.params.values():
        subs = param if isinstance(param, (list, tuple)) else [param]
        for sub in subs:
          if hasattr(sub, 'jaxpr'):
            visit(sub.jaxpr if hasattr(sub.jaxpr, 'eqns') else sub.jaxpr.jaxpr)
          elif hasattr(sub, 'eqns'):
            visit(sub)

  visit(jaxpr.jaxpr)
  return worst


def test_no_s_by_s_array_at_128x128_rgb():
  """log_prob (+grad), entropy, sample and variance never build S x S."""
  size, rank = 3 * 128 * 128, 25
  loc = jax.ShapeDtypeStruct((2, size), jnp.float32)
  factor = jax.ShapeDtypeStruct((2, size, rank), jnp.float32)
  diag = jax.ShapeDtypeStruct((2, size), jnp.float32)
  key = jax.random.PRNGKey(0)

  def all_ops(loc, factor, diag):
    dist = LowRankMultivariateNormal(loc, factor, diag)
    x = dist.sample(seed=key)
    return (jnp.sum(dist.log_prob(x)) + jnp.sum(dist.entropy())
            + jnp.sum(dist.variance()))

  fns = {
      'forward': all_ops,
      'gradient': jax.grad(all_ops, argnums=(0, 1, 2)),
  }
  for name, fn in fns.items():
    jaxpr = jax.make_jaxpr(fn)(loc, factor, diag)
    assert _max_square_dim_product(jaxpr, size) <= 1, name
  # The detector does catch a dense covariance.
  dense = jax.make_jaxpr(lambda l, f, d: LowRankMultivariateNormal(l, f, d).covariance())(
      jax.ShapeDtypeStruct((size // 16,), jnp.float32),
      jax.ShapeDtypeStruct((size // 16, rank), jnp.float32),
      jax.ShapeDtypeStruct((size // 16,), jnp.float32))
  assert _max_square_dim_product(dense, size // 16) == 2
