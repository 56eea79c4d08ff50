"""LowRankMultivariateNormal against dense float64 numpy/scipy references."""

import math

import hypothesis
import hypothesis.strategies as hst
import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.distributions import LowRankNoise
from sosvae_jax.distributions import lowrank_entropy
from sosvae_jax.distributions import lowrank_log_det
from sosvae_jax.distributions import lowrank_log_prob
from sosvae_jax.distributions import lowrank_log_prob_and_entropy
from sosvae_jax.distributions import lowrank_log_prob_autodiff

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


def test_nearly_parallel_factor_float32_log_prob_within_its_log_det_error():
  """d = 1e-5 and three nearly parallel columns of P: C has eigenvalues near
  1 and ~2e8, beyond float32. The rounded Gram then misplaces a* along the
  near-null directions, which the ridge value turns into a log_prob too low
  by (a - a*)^T C (a - a*): measured up to 7.9 nats on these twelve images
  before a got a step of iterative refinement. What remains is of the order
  of the log-determinant's own rounding, seen in the entropy."""
  size, rank, worst_lp, worst_h = 784, 3, 0.0, 0.0
  for seed in range(3):
    rng = np.random.default_rng(seed)
    column = rng.normal(size=(4, size, 1))
    factor = np.repeat(column, rank, -1) + 1e-3 * rng.normal(size=(4, size, rank))
    diag = np.full((4, size), 1e-5)
    loc = rng.uniform(size=(4, size))
    x = (loc + (factor @ rng.normal(size=(4, rank, 1)))[..., 0]
         + 3e-3 * rng.normal(size=(4, size)))
    f32 = [jnp.asarray(a, jnp.float32) for a in (x, loc, factor, diag)]
    log_prob, entropy = jax.jit(lowrank_log_prob_and_entropy)(*f32)
    # The float64 reference of the float32 inputs.
    x, loc, factor, diag = (np.asarray(a, np.float64) for a in f32)
    for b in range(4):
      mvn = scipy.stats.multivariate_normal(loc[b], _dense_cov(factor[b], diag[b]))
      worst_lp = max(worst_lp, abs(float(log_prob[b]) - mvn.logpdf(x[b])))
      worst_h = max(worst_h, abs(float(entropy[b]) - mvn.entropy()))
  assert worst_h < 0.3  # the log-determinant's rounding: ~0.2 nat
  # Without the refinement: 7.9 nats. With it, 0.25 on an Intel Xeon and 0.55
  # on an AMD EPYC (one image; the dot kernels' rounding differs).
  assert worst_lp < 1.0


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


@pytest.mark.slow
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


# ----------------------------------------------------------------------------
# The hand-written VJP of lowrank_log_prob_and_entropy.
# ----------------------------------------------------------------------------
def _dense_gradients(x, loc, factor, diag):
  """float64 log N, entropy and their gradients by dense matrix calculus.

  With alpha = Sigma^-1 (x - mu): d log N / d(x, mu, P, d) = (-alpha, alpha,
  (alpha alpha^T - Sigma^-1) P, (alpha^2 - diag Sigma^-1) / 2) and
  dH / d(P, d) = (Sigma^-1 P, diag(Sigma^-1) / 2).
  """
  cov = _dense_cov(factor, diag)
  cho = scipy.linalg.cho_factor(cov, lower=True)
  prec = scipy.linalg.cho_solve(cho, np.eye(len(cov)))
  alpha = scipy.linalg.cho_solve(cho, x - loc)
  log_det = 2 * np.sum(np.log(np.diag(cho[0])))
  size = len(x)
  log_prob = -0.5 * (size * math.log(2 * math.pi) + log_det + (x - loc) @ alpha)
  entropy = 0.5 * (size * (1 + math.log(2 * math.pi)) + log_det)
  grad_lp = (-alpha, alpha, (np.outer(alpha, alpha) - prec) @ factor,
             0.5 * (alpha**2 - np.diag(prec)))
  grad_h = (prec @ factor, 0.5 * np.diag(prec))
  return log_prob, entropy, grad_lp, grad_h


def _dense_log_prob(x, loc, factor, diag):
  """float64 log N through a dense S x S Cholesky (cheaper than scipy's eigh)."""
  chol = np.linalg.cholesky(_dense_cov(factor, diag))
  white = scipy.linalg.solve_triangular(chol, x - loc, lower=True)
  return -0.5 * (len(x) * math.log(2 * math.pi) + 2 * np.sum(np.log(np.diag(chol)))
                 + white @ white)


def _weighted_objective(fn, weights_lp, weights_h):
  """sum(w_lp log_prob + w_h entropy): distinct cotangents per image and output."""
  def objective(x, loc, factor, diag):
    log_prob, entropy = fn(x, loc, factor, diag)
    return jnp.sum(weights_lp * log_prob) + jnp.sum(weights_h * entropy)
  return objective


def _plain_log_prob_and_entropy(x, loc, factor, diag):
  """The reference for autodiff: no custom VJP anywhere."""
  size = loc.shape[-1]
  log_det = lowrank_log_det(factor, diag)
  entropy = 0.5 * (size * (1.0 + math.log(2 * math.pi)) + log_det)
  return lowrank_log_prob_autodiff(x, loc, factor, diag), entropy


def _rel_err(got, want):
  got, want = np.asarray(got), np.asarray(want)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


@pytest.mark.slow
@hypothesis.settings(max_examples=8, deadline=None)
@hypothesis.given(batch=hst.lists(hst.integers(1, 3), max_size=2).map(tuple),
                  rank=hst.integers(1, 5), extra=hst.integers(0, 12),
                  log_diag=hst.floats(-5, 0), seed=hst.integers(0, 2**16))
def test_custom_vjp_matches_plain_autodiff(batch, rank, extra, log_diag, seed):
  """Every cotangent of (log_prob, entropy) against autodiff, float64, jitted."""
  rng = np.random.default_rng(seed)
  size = rank + 1 + extra
  with jax.enable_x64(True):
    loc, factor, diag = _params(rng, batch, size, rank)
    diag = diag * 10.0**log_diag
    x = rng.normal(size=batch + (size,))
    w_lp, w_h = rng.normal(size=batch), rng.normal(size=batch)
    grad = lambda fn: jax.jit(jax.grad(_weighted_objective(fn, w_lp, w_h),
                                       argnums=(0, 1, 2, 3)))(x, loc, factor, diag)
    ours = grad(lowrank_log_prob_and_entropy)
    plain = grad(_plain_log_prob_and_entropy)
  for name, got, want in zip(('x', 'loc', 'factor', 'diag'), ours, plain):
    assert got.shape == want.shape, name
    assert _rel_err(got, want) < 1e-8, name


@pytest.mark.parametrize('batch', BATCH_SHAPES)
@pytest.mark.parametrize('case', ['benign', 'tiny_diag', 'ill_conditioned'])
def test_custom_vjp_matches_dense_float64(x64, batch, case):
  """Values and gradients against dense float64 matrix calculus, jitted.

  tiny_diag is the paper's D = 1e-5 with a residual inside span(P);
  ill_conditioned adds singular values of P from 1 down to 1e-7.
  """
  rng = np.random.default_rng(11)
  size, rank = 30, 5
  loc, factor, diag = _params(rng, batch, size, rank)
  if case != 'benign':
    diag = np.full_like(diag, 1e-5)
  if case == 'ill_conditioned':
    u, _ = np.linalg.qr(rng.normal(size=(size, rank)))
    factor = np.broadcast_to((u * np.logspace(0, -7, rank)), batch + (size, rank)).copy()
    assert np.linalg.cond(factor.reshape(-1, size, rank)[0]) > 1e6
  x = (loc + np.einsum('...sr,...r->...s', factor, rng.normal(size=batch + (rank,)))
       + np.sqrt(diag) * rng.normal(size=batch + (size,)))
  w_lp, w_h = rng.normal(size=batch), rng.normal(size=batch)
  fn = jax.jit(jax.value_and_grad(_weighted_objective(lowrank_log_prob_and_entropy, w_lp, w_h),
                                  argnums=(0, 1, 2, 3)))
  value, grads = fn(x, loc, factor, diag)
  want_value, want = 0.0, [np.zeros_like(a) for a in (x, loc, factor, diag)]
  for idx in np.ndindex(batch):
    lp, h, g_lp, g_h = _dense_gradients(x[idx], loc[idx], factor[idx], diag[idx])
    want_value += w_lp[idx] * lp + w_h[idx] * h
    for k in range(4):
      want[k][idx] = w_lp[idx] * g_lp[k] + (w_h[idx] * g_h[k - 2] if k >= 2 else 0)
  np.testing.assert_allclose(value, want_value, rtol=1e-8)
  for name, got, ref in zip(('x', 'loc', 'factor', 'diag'), grads, want):
    assert _rel_err(got, ref) < 1e-7, name


def test_custom_vjp_against_finite_differences(x64):
  """Directional derivatives of both outputs, central differences in float64."""
  rng = np.random.default_rng(12)
  loc, factor, diag = _params(rng, (2,), 8, 3)
  x = rng.normal(size=(2, 8))
  lp_only = lambda *a: lowrank_log_prob_and_entropy(*a)[0]
  h_only = lambda *a: lowrank_log_prob_and_entropy(*a)[1]
  for fn in (lp_only, h_only):
    jax.test_util.check_grads(jax.jit(fn), (x, loc, factor, diag), order=1,
                              modes=['rev'], eps=1e-6, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize('case', ['benchmark', 'tiny_diag', 'ill_conditioned'])
def test_float32_gradients_against_float64(case):
  """float32 log_prob and gradients at S = 784, R = 25 against float64.

  benchmark: the likelihood benchmark's inputs (B = 64, d in [0.01, 0.1]);
  the batch's summed log_prob within 1e-6 relative, gradients within 1e-4
  (max abs error over max abs value, on two images). With d = 1e-5 float32
  cannot do as well (the capacitance has condition ~1e6): there the bound
  is that of plain autodiff of the same ridge form, which is no better.
  """
  rng = np.random.default_rng(13)
  batch, size, rank, checked = 64 if case == 'benchmark' else 8, 784, 25, 2
  loc = rng.uniform(0, 1, (batch, size))
  factor = 0.3 / np.sqrt(rank) * rng.standard_normal((batch, size, rank))
  diag = rng.uniform(0.01, 0.1, (batch, size))
  if case != 'benchmark':
    diag = np.full_like(diag, 1e-5)
  if case == 'ill_conditioned':
    u, _ = np.linalg.qr(rng.standard_normal((size, rank)))
    factor = np.stack([u * np.logspace(0, -6, rank)] * batch)
  x = (loc + np.einsum('bsr,br->bs', factor, rng.standard_normal((batch, rank)))
       + np.sqrt(diag) * rng.standard_normal((batch, size)))
  x, loc, factor, diag = (np.float64(np.float32(a)) for a in (x, loc, factor, diag))
  want_lp = sum(_dense_log_prob(x[b], loc[b], factor[b], diag[b]) for b in range(batch))
  want = [np.stack(g) for g in zip(*(_dense_gradients(x[b], loc[b], factor[b], diag[b])[2][1:3]
                                     for b in range(checked)))]
  loss = lambda fn: jax.jit(jax.value_and_grad(
      lambda l, p, x, d: jnp.sum(fn(x, l, p, d)), argnums=(0, 1)))
  args = [jnp.asarray(a, jnp.float32) for a in (loc, factor, x, diag)]
  value, grads = loss(lowrank_log_prob)(*args)
  assert value.dtype == jnp.float32
  _, plain_grads = loss(lowrank_log_prob_autodiff)(*args)
  lp_tol, grad_tol = {'benchmark': (1e-6, 1e-4), 'tiny_diag': (1e-6, 1e-3),
                      'ill_conditioned': (1e-6, 1e-3)}[case]
  assert abs(float(value) - want_lp) / abs(want_lp) < lp_tol
  for got, plain, ref in zip(grads, plain_grads, want):
    err = _rel_err(got[:checked], ref)
    assert err < grad_tol
    # No worse than plain autodiff beyond float32 noise (on an AMD EPYC the
    # ill-conditioned case's 5.5e-6 against autodiff's 1.9e-6).
    assert err <= 2 * _rel_err(plain[:checked], ref) + 1e-5


def _count_primitives(jaxpr, name):
  count = 0
  for eqn in jaxpr.eqns:
    count += eqn.primitive.name == name
    for sub in jax.core.jaxprs_in_params(eqn.params):
      count += _count_primitives(sub, name)
  return count


@pytest.mark.slow
def test_log_prob_and_entropy_share_one_factorisation(x64):
  """One Cholesky for value and gradient of log_prob + entropy; same values."""
  rng = np.random.default_rng(14)
  loc, factor, diag = _params(rng, (3,), 10, 4)
  x = rng.normal(size=(3, 10))
  dist = LowRankMultivariateNormal(loc, factor, diag)
  log_prob, entropy = jax.jit(dist.log_prob_and_entropy)(x)
  np.testing.assert_allclose(log_prob, dist.log_prob(x), rtol=1e-12)
  np.testing.assert_allclose(entropy, dist.entropy(), rtol=1e-12)
  objective = lambda l, p, d: jnp.sum(sum(lowrank_log_prob_and_entropy(x, l, p, d)))
  jaxpr = jax.make_jaxpr(jax.value_and_grad(objective, argnums=(0, 1, 2)))(loc, factor, diag)
  assert _count_primitives(jaxpr.jaxpr, 'cholesky') == 1
  # Two separate calls would factorise twice: the counter sees that.
  separate = lambda l, p, d: jnp.sum(lowrank_log_prob(x, l, p, d) + lowrank_entropy(p, d))
  assert _count_primitives(jax.make_jaxpr(separate)(loc, factor, diag).jaxpr, 'cholesky') == 2


def test_broadcast_parameters_get_summed_gradients(x64):
  """A factor shared by the batch gets the sum of the per-image gradients."""
  rng = np.random.default_rng(15)
  loc = rng.normal(size=(4, 6))
  factor = rng.normal(size=(6, 2))
  diag = rng.uniform(0.5, 1.0, size=(6,))
  x = rng.normal(size=(4, 6))
  fn = lambda impl: jax.jit(jax.grad(lambda l, p, d: jnp.sum(impl(x, l, p, d)),
                                     argnums=(0, 1, 2)))(loc, factor, diag)
  for got, want in zip(fn(lowrank_log_prob), fn(lowrank_log_prob_autodiff)):
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_bfloat16_inputs_compute_in_float32():
  rng = np.random.default_rng(16)
  loc, factor, diag = _params(rng, (2,), 12, 3)
  args = [jnp.asarray(a, jnp.bfloat16) for a in (rng.normal(size=(2, 12)), loc, factor, diag)]
  log_prob, entropy = lowrank_log_prob_and_entropy(*args)
  assert log_prob.dtype == jnp.float32 and entropy.dtype == jnp.float32
  grads = jax.jit(jax.grad(lambda p: jnp.sum(lowrank_log_prob(args[0], args[1], p, args[3]))))(
      args[2])
  assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))


@pytest.mark.slow
@pytest.mark.parametrize('diag_value', [None, 1e-5])
def test_diagonal_mean_gradient_routes_only_the_mean(x64, diag_value):
  """mean_gradient='diagonal': same values; d/dmu = D^-1 (x - mu), d/dP and d/dd
  those of the full density (dense matrix calculus), with a tiny diagonal too."""
  rng = np.random.default_rng(11)
  loc, factor, diag = _params(rng, (2,), 9, 3, diag=diag_value)
  x = loc + _dense_cov(factor, diag)[0, :, :1].T + rng.normal(size=(2, 9))

  def log_prob(use_joint, loc, factor, diag):
    dist = LowRankMultivariateNormal(loc, factor, diag, mean_gradient='diagonal')
    return jnp.sum(dist.log_prob_and_entropy(x)[0] if use_joint else dist.log_prob(x))

  exact = LowRankMultivariateNormal(loc, factor, diag).log_prob(x)
  prec = np.linalg.inv(_dense_cov(factor, diag))
  alpha = np.einsum('bst,bt->bs', prec, x - loc)
  outer = np.einsum('bs,bt->bst', alpha, alpha) - prec
  for use_joint in (False, True):
    value = LowRankMultivariateNormal(loc, factor, diag, mean_gradient='diagonal')
    value = value.log_prob_and_entropy(x)[0] if use_joint else value.log_prob(x)
    np.testing.assert_array_equal(value, exact)
    grads = jax.grad(log_prob, argnums=(1, 2, 3))(use_joint, loc, factor, diag)
    np.testing.assert_allclose(grads[0], (x - loc) / diag, rtol=1e-9)
    np.testing.assert_allclose(grads[1], outer @ factor, rtol=1e-7)
    np.testing.assert_allclose(grads[2], 0.5 * np.einsum('bss->bs', outer), rtol=1e-7)
  # Indexing keeps the setting; an unknown one is refused by name.
  sliced = LowRankMultivariateNormal(loc, factor, diag, mean_gradient='diagonal')[0]
  assert sliced.mean_gradient == 'diagonal'
  with pytest.raises(ValueError, match="mean_gradient='diag'.*'full', 'diagonal'"):
    LowRankMultivariateNormal(loc, factor, diag, mean_gradient='diag')


@pytest.mark.slow
def test_autodiff_form_scores_many_rows_with_shared_parameters(x64):
  """One mu, P, d for a batch of rows (the direct fit's and PPCA's case),
  also ill-conditioned: scipy per row; gradients equal lowrank_log_prob's."""
  rng = np.random.default_rng(12)
  # scipy's dense solve loses ~1e-8 relative on the ill-conditioned case.
  for diag_value, scale, rtol in ((None, 1.0, 1e-10), (1e-5, 30.0, 1e-7)):
    loc, factor, diag = _params(rng, (), 12, 3, factor_scale=scale, diag=diag_value)
    x = loc + rng.normal(size=(6, 12)) @ np.diag(np.sqrt(diag)) + rng.normal(size=(6, 3)) @ factor.T
    got = lowrank_log_prob_autodiff(x, loc, factor, diag)
    want = scipy.stats.multivariate_normal(loc, _dense_cov(factor, diag)).logpdf(x)
    np.testing.assert_allclose(got, want, rtol=rtol)
    mean_of = lambda fn: lambda *p: jnp.mean(fn(x, *p))
    grads = jax.grad(mean_of(lowrank_log_prob_autodiff), argnums=(0, 1, 2))(loc, factor, diag)
    fused = jax.grad(mean_of(lowrank_log_prob), argnums=(0, 1, 2))(loc, factor, diag)
    for g, f in zip(grads, fused):
      np.testing.assert_allclose(g, f, rtol=1e-7, atol=1e-9 * float(np.abs(f).max()))
