"""The low-rank normal's hand-written VJP at the edges: R = 1, nearly parallel
factors with singular values over six decades, d = 1e-5, the benchmark's
shapes in float32; every check against float64 numpy/scipy references."""

import math

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
import scipy.linalg

from sosvae_jax.distributions import lowrank_entropy
from sosvae_jax.distributions import lowrank_log_prob
from sosvae_jax.distributions import lowrank_log_prob_and_entropy
from sosvae_jax.distributions import lowrank_log_prob_autodiff
from test_lowrank import _weighted_objective

BATCH_SHAPES = [(), (3,), (2, 3)]
ARG_NAMES = ('x', 'loc', 'factor', 'diag')


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _dense_reference(x, loc, factor, diag):
  """float64 log N, entropy and both gradients by dense S x S matrix calculus.

  With alpha = Sigma^-1 (x - mu): d log N / d(x, mu, P, d) = (-alpha, alpha,
  (alpha alpha^T - Sigma^-1) P, (alpha^2 - diag Sigma^-1) / 2) and
  dH / d(x, mu, P, d) = (0, 0, Sigma^-1 P, diag(Sigma^-1) / 2).
  """
  cov = factor @ factor.T + np.diag(diag)
  cho = scipy.linalg.cho_factor(cov, lower=True)
  prec = scipy.linalg.cho_solve(cho, np.eye(len(cov)))
  alpha = scipy.linalg.cho_solve(cho, x - loc)
  log_det = 2 * np.sum(np.log(np.diag(cho[0])))
  size = len(x)
  log_prob = -0.5 * (size * math.log(2 * math.pi) + log_det + (x - loc) @ alpha)
  entropy = 0.5 * (size * (1 + math.log(2 * math.pi)) + log_det)
  zero = np.zeros_like(x)
  grad_lp = (-alpha, alpha, (np.outer(alpha, alpha) - prec) @ factor,
             0.5 * (alpha**2 - np.diag(prec)))
  grad_h = (zero, zero, prec @ factor, 0.5 * np.diag(prec))
  return log_prob, entropy, grad_lp, grad_h


def _woodbury_reference(x, loc, factor, diag):
  """The same quantities as _dense_reference in O(S R^2), numpy float64.

  For the benchmark's S = 12288, where S x S is too big; written apart from
  the package (scipy Cholesky of C = I + P^T D^-1 P, Woodbury identity).
  """
  size, rank = factor.shape
  r = x - loc
  p_d = factor / diag[:, None]  # D^-1 P
  cho = scipy.linalg.cho_factor(np.eye(rank) + factor.T @ p_d, lower=True)
  alpha = r / diag - p_d @ scipy.linalg.cho_solve(cho, p_d.T @ r)  # Sigma^-1 r
  prec_p = p_d @ scipy.linalg.cho_solve(cho, np.eye(rank))  # Sigma^-1 P
  prec_diag = 1 / diag - np.sum(prec_p * p_d, -1)  # diag(Sigma^-1)
  log_det = np.sum(np.log(diag)) + 2 * np.sum(np.log(np.diag(cho[0])))
  log_prob = -0.5 * (size * math.log(2 * math.pi) + log_det + r @ alpha)
  entropy = 0.5 * (size * (1 + math.log(2 * math.pi)) + log_det)
  zero = np.zeros_like(x)
  grad_lp = (-alpha, alpha, np.outer(alpha, alpha @ factor) - prec_p,
             0.5 * (alpha**2 - prec_diag))
  grad_h = (zero, zero, prec_p, 0.5 * prec_diag)
  return log_prob, entropy, grad_lp, grad_h


def _nearly_parallel_factor(rng, size, rank, low=1e-3, high=1e3):
  """P = U diag(s) V^T, s from `high` down to `low`: columns all close to U[:, 0]."""
  u, _ = np.linalg.qr(rng.normal(size=(size, rank)))
  v, _ = np.linalg.qr(rng.normal(size=(rank, rank)))
  v[:, 0] = np.abs(v[:, 0]) + 1.0  # every column leans on the top direction
  v, _ = np.linalg.qr(v)
  return (u * np.logspace(math.log10(high), math.log10(low), rank)) @ v.T


def _case(rng, batch, size, rank, kind, high=1e3):
  """(x, loc, factor, diag) of one named case; x is drawn from the model.

  benign: Gaussian P, d in [0.1, 2]; parallel: nearly parallel P with
  singular values from `high` down to 1e-3; parallel_tiny_diag: the same
  with the paper's d = 1e-5.
  """
  loc = rng.normal(size=batch + (size,))
  diag = rng.uniform(0.1, 2.0, size=batch + (size,))
  if kind == 'benign':
    factor = rng.normal(size=batch + (size, rank))
  else:
    factor = np.stack([_nearly_parallel_factor(rng, size, rank, high=high)
                       for _ in range(math.prod(batch))]).reshape(batch + (size, rank))
  if kind == 'parallel_tiny_diag':
    diag = np.full_like(diag, 1e-5)
  x = (loc + np.einsum('...sr,...r->...s', factor, rng.normal(size=batch + (rank,)))
       + np.sqrt(diag) * rng.normal(size=batch + (size,)))
  return x, loc, factor, diag


def _reference_weighted(reference, args, w_lp, w_h):
  """The weighted objective's value and gradients, image by image in float64."""
  batch = args[0].shape[:-1]
  value, grads = 0.0, [np.zeros_like(a) for a in args]
  for idx in np.ndindex(batch):
    lp, h, g_lp, g_h = reference(*(a[idx] for a in args))
    value += w_lp[idx] * lp + w_h[idx] * h
    for k in range(4):
      grads[k][idx] = w_lp[idx] * g_lp[k] + w_h[idx] * g_h[k]
  return value, grads


def _rel_err(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def test_nearly_parallel_factor_is_what_it_says():
  p = _nearly_parallel_factor(np.random.default_rng(0), 40, 6)
  s = np.linalg.svd(p, compute_uv=False)
  np.testing.assert_allclose([s[0], s[-1]], [1e3, 1e-3], rtol=1e-8)
  unit = p / np.linalg.norm(p, axis=0)
  assert np.min(np.abs(unit.T @ unit)) > 0.9  # every pair of columns nearly parallel


@pytest.mark.parametrize('batch', BATCH_SHAPES)
@pytest.mark.parametrize('rank', [1, 5])
@pytest.mark.parametrize('kind', ['benign', 'parallel', 'parallel_tiny_diag'])
def test_value_and_all_gradients_match_dense_float64(x64, batch, rank, kind):
  """log_prob and entropy with distinct cotangents, gradients w.r.t. x, mu, P, d."""
  rng = np.random.default_rng([len(batch), rank, len(kind)])
  args = _case(rng, batch, 24, rank, kind)
  w_lp, w_h = rng.normal(size=batch), rng.normal(size=batch)
  fn = jax.jit(jax.value_and_grad(_weighted_objective(lowrank_log_prob_and_entropy, w_lp, w_h),
                                  argnums=(0, 1, 2, 3)))
  value, grads = fn(*args)
  want_value, want = _reference_weighted(_dense_reference, args, w_lp, w_h)
  # cond(Sigma) reaches 1e11 with d = 1e-5: float64 itself keeps ~5 digits.
  tol = 1e-9 if kind == 'benign' else 1e-5
  np.testing.assert_allclose(value, want_value, rtol=tol)
  for name, got, ref in zip(ARG_NAMES, grads, want):
    assert got.shape == ref.shape, name
    assert _rel_err(got, ref) < tol, name


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['benign', 'parallel'])
def test_gradients_against_float64_finite_differences(x64, kind):
  """Directional derivatives of log_prob and entropy, R = 1 and R = 4."""
  rng = np.random.default_rng(1)
  for rank in (1, 4):
    args = _case(rng, (2,), 10, rank, kind)
    if kind == 'parallel':  # finite differences need a modest scale
      args = (args[0] * 1e-2, args[1] * 1e-2, args[2] * 1e-2, args[3])
    for out in (0, 1):
      fn = jax.jit(lambda *a, out=out: lowrank_log_prob_and_entropy(*a)[out])
      jax.test_util.check_grads(fn, args, order=1, modes=['rev'], eps=1e-6,
                                atol=1e-6, rtol=1e-6)


def test_public_functions_share_the_gradients(x64):
  """lowrank_log_prob and lowrank_entropy alone: gradients of the dense model."""
  rng = np.random.default_rng(2)
  args = _case(rng, (), 16, 3, 'parallel')
  g_lp = jax.jit(jax.grad(lowrank_log_prob, argnums=(0, 1, 2, 3)))(*args)
  g_h = jax.jit(jax.grad(lowrank_entropy, argnums=(0, 1)))(args[2], args[3])
  _, _, want_lp, want_h = _dense_reference(*args)
  for name, got, ref in zip(ARG_NAMES, g_lp, want_lp):
    assert _rel_err(got, ref) < 1e-6, name
  for name, got, ref in zip(ARG_NAMES[2:], g_h, want_h[2:]):
    assert _rel_err(got, ref) < 1e-6, name


def test_vmap_of_grad_matches_grad_of_batch(x64):
  """The custom VJP under jax.vmap (per-example gradients) is the batched one."""
  rng = np.random.default_rng(3)
  args = _case(rng, (4,), 12, 3, 'benign')
  single = jax.grad(lambda *a: lowrank_log_prob(*a), argnums=(1, 2, 3))
  per_example = jax.jit(jax.vmap(single))(*args)
  batched = jax.jit(jax.grad(lambda *a: jnp.sum(lowrank_log_prob(*a)), argnums=(1, 2, 3)))(*args)
  for got, want in zip(per_example, batched):
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_reference_woodbury_agrees_with_dense(x64):
  """The O(S R^2) float64 reference used at the benchmark's shapes is right."""
  rng = np.random.default_rng(4)
  args = _case(rng, (), 50, 4, 'benign')
  dense, woodbury = _dense_reference(*args), _woodbury_reference(*args)
  np.testing.assert_allclose(woodbury[:2], dense[:2], rtol=1e-12)
  for got, want in zip(woodbury[2] + woodbury[3], dense[2] + dense[3]):
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)


def _magnitude(log_prob, entropy, size):
  """|S log 2 pi| + |log det Sigma| + Mahalanobis: the terms log_prob sums."""
  log_2pi = size * math.log(2 * math.pi)
  log_det = 2 * entropy - size - log_2pi
  return log_2pi + abs(log_det) + (-2 * log_prob - log_2pi - log_det)


def _benchmark_inputs(rng, batch, size, rank):
  """The likelihood benchmark's float32 inputs (benchmarks/likelihood_benchmark.py)."""
  loc = rng.uniform(0, 1, (batch, size))
  factor = 0.3 / np.sqrt(rank) * rng.standard_normal((batch, size, rank))
  diag = rng.uniform(0.01, 0.1, (batch, size))
  x = (loc + np.einsum('bsr,br->bs', factor, rng.standard_normal((batch, rank)))
       + np.sqrt(diag) * rng.standard_normal((batch, size)))
  return tuple(np.float32(a) for a in (x, loc, factor, diag))


@pytest.mark.parametrize('size', [784, 3072, 12288])
def test_float32_at_benchmark_shapes_within_goal(size):
  """float32, R = 25, two images: log_prob within 1e-6 of float64 and every
  gradient (x, mu, P, d; log_prob and entropy) within 1e-4, relative.

  One image's log_prob is a small difference of large terms (here about
  11 = -(S log 2 pi + log det Sigma + Mahalanobis) / 2 with terms in the
  thousands), so its error is taken relative to the terms' magnitude; the
  benchmark takes it relative to the batch's sum.
  """
  rng = np.random.default_rng(5)
  args = _benchmark_inputs(rng, 2, size, 25)
  w_lp, w_h = np.float32([1.0, 0.7]), np.float32([-0.3, 1.0])
  log_prob = jax.jit(lowrank_log_prob)(*args)
  assert log_prob.dtype == jnp.float32
  grads = jax.jit(jax.grad(_weighted_objective(lowrank_log_prob_and_entropy, w_lp, w_h),
                           argnums=(0, 1, 2, 3)))(*args)
  args64 = tuple(np.float64(a) for a in args)
  for b in range(2):
    want, entropy = _woodbury_reference(*(a[b] for a in args64))[:2]
    assert abs(float(log_prob[b]) - want) / _magnitude(want, entropy, size) < 1e-6
  _, want = _reference_weighted(_woodbury_reference, args64, np.float64(w_lp), np.float64(w_h))
  for name, got, ref in zip(ARG_NAMES, grads, want):
    assert got.dtype == jnp.float32, name
    assert _rel_err(got, ref) < 1e-4, name


@pytest.mark.parametrize('kind,high', [('parallel', 1e3), ('parallel_tiny_diag', 1.0)])
def test_float32_ill_conditioned_no_worse_than_autodiff(kind, high):
  """Nearly parallel P, float32 against float64.

  With d = 1e-5 the top singular value is 1 here: at 1e3 the float32
  capacitance (entries up to 1e11) does not factorise at all (NaN; the
  capacitance jitter remedy's case).

  There float32 cannot reach the benchmark's bounds: the Gram rounds away
  what the small singular directions add to C (cond C up to 1e11), so the
  value is off by about 1e-4 relative and the gradients more. The bound is
  plain autodiff of the same ridge form, on value and gradients.
  """
  rng = np.random.default_rng(6)
  args = tuple(np.float32(a) for a in _case(rng, (3,), 64, 6, kind, high))
  args64 = tuple(np.float64(a) for a in args)
  loss = lambda fn: jax.jit(jax.value_and_grad(lambda *a: jnp.sum(fn(*a)), argnums=(1, 2, 3)))
  value, grads = loss(lowrank_log_prob)(*args)
  plain_value, plain = loss(lowrank_log_prob_autodiff)(*args)
  want_value, want = _reference_weighted(_dense_reference, args64, np.ones(3), np.zeros(3))
  value_err = abs(float(value) - want_value) / abs(want_value)
  assert value_err <= 2 * abs(float(plain_value) - want_value) / abs(want_value) + 1e-6
  for name, got, auto, ref in zip(ARG_NAMES[1:], grads, plain, want[1:]):
    assert bool(jnp.all(jnp.isfinite(got))), name
    err, auto_err = _rel_err(got, ref), _rel_err(auto, ref)
    # Within the benchmark's 1e-4 goal, or no worse than twice autodiff.
    assert err < 1e-4 or err <= 2 * auto_err, name


def test_default_value_equals_autodiff_form_to_float32_rounding():
  """The VJP's forward is the plain ridge formula: same log_prob in float32,
  to a few roundings of the terms it sums (the value itself is their small
  difference)."""
  rng = np.random.default_rng(7)
  args = _benchmark_inputs(rng, 4, 784, 25)
  ours = jax.jit(lowrank_log_prob)(*args)
  plain = jax.jit(lowrank_log_prob_autodiff)(*args)
  for b in range(4):
    want, entropy = _woodbury_reference(*(np.float64(a[b]) for a in args))[:2]
    gap = abs(float(ours[b]) - float(plain[b])) / _magnitude(want, entropy, 784)
    assert gap < 8 * np.finfo(np.float32).eps
