"""The capacitance jitter remedy of the low-rank likelihood, against float64 numpy."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import scipy.linalg

from sosvae_jax import config_checks
from sosvae_jax import train
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.distributions import lowrank
from sosvae_jax.models.likelihoods import LIKELIHOODS

from experiments.configs import common

SIZE, RANK, DIAG = 784, 3, 1e-5
JITTER = 1e-6  # the value the non-finite message suggests


def _failing_case(seed=0, batch=2):
  """Parallel factor columns far above a tiny diagonal, all in float32.

  C = I + P^T D^-1 P has eigenvalues 1, 1 and ~2e8: exact, C is fine, but
  its float32 Gram is indefinite and the plain Cholesky returns NaN.
  """
  rng = np.random.default_rng(seed)
  column = rng.normal(size=(batch, SIZE, 1)).astype(np.float32)
  factor = np.repeat(column, RANK, -1)
  diag = np.full((batch, SIZE), DIAG, np.float32)
  loc = rng.uniform(size=(batch, SIZE)).astype(np.float32)
  x = (loc + (factor @ rng.normal(size=(batch, RANK, 1)))[..., 0]
       + 3e-3 * rng.normal(size=(batch, SIZE))).astype(np.float32)
  return x, loc, factor, diag


def _dense(x, loc, factor, diag, delta):
  """float64 log N, entropy and d/dP of both for N(loc, P P^T / (1 + delta) + D)."""
  x, loc, factor, diag = (np.asarray(a, np.float64) for a in (x, loc, factor, diag))
  cov = factor @ factor.T / (1.0 + delta) + np.diag(diag)
  cho = scipy.linalg.cho_factor(cov, lower=True)
  alpha = scipy.linalg.cho_solve(cho, x - loc)
  prec = scipy.linalg.cho_solve(cho, np.eye(len(x)))
  log_det = 2.0 * np.sum(np.log(np.diag(cho[0])))
  log_prob = -0.5 * (len(x) * math.log(2 * math.pi) + log_det + (x - loc) @ alpha)
  entropy = 0.5 * (len(x) * (1 + math.log(2 * math.pi)) + log_det)
  # dSigma / dP = 2 P / (1 + delta) with delta held constant.
  grad_lp = (np.outer(alpha, alpha) - prec) @ factor / (1.0 + delta)
  grad_h = prec @ factor / (1.0 + delta)
  return log_prob, entropy, grad_lp, grad_h


def _value_and_grads(x, loc, factor, diag, jitter):
  fn = jax.jit(lambda p: lowrank.lowrank_log_prob_and_entropy(
      x, loc, p, diag, capacitance_jitter=jitter))
  log_prob, entropy = fn(factor)
  grad_lp = jax.grad(lambda p: jnp.sum(fn(p)[0]))(factor)
  grad_h = jax.grad(lambda p: jnp.sum(fn(p)[1]))(factor)
  return log_prob, entropy, grad_lp, grad_h


def test_plain_factorisation_fails_silently_on_the_case():
  """The premise: without the remedy (the default) the result is NaN, no error."""
  x, loc, factor, diag = _failing_case()
  for dist in (LowRankMultivariateNormal(loc, factor, diag),
               LowRankMultivariateNormal(loc, factor, diag, capacitance_jitter=0.0)):
    assert np.all(np.isnan(dist.log_prob(x)))
    assert np.all(np.isnan(dist.entropy()))


# jitter -> relative tolerance of the gradients of log_prob and entropy
# w.r.t. P. The case's columns are equal: their common direction, the mean
# of log_prob's gradient's columns, is well resolved (MEAN_RTOL); how a gradient
# splits between them lies along the near-null directions of the float32
# Gram, which float32 resolves to ~10 u / jitter after the jitter, and how
# much each gradient weighs them depends on the CPU's dot kernels.
GRAD_RTOL = {JITTER: 0.3, 1e-4: 1e-2}
MEAN_RTOL = 1e-2


@pytest.mark.slow
@pytest.mark.parametrize('jitter', sorted(GRAD_RTOL))
def test_jitter_gives_the_density_of_the_shrunk_factor(jitter):
  x, loc, factor, diag = _failing_case()
  delta = np.asarray(lowrank.capacitance_jitter_added(factor, diag, jitter))
  # delta is a rung of the ladder: JITTER * 10^k * mean(diag C).
  w = factor.astype(np.float64) / np.sqrt(diag.astype(np.float64))[..., None]
  mean_diag = 1.0 + np.mean(np.einsum('bsr,bsr->br', w, w), -1)  # (B,)
  rungs = delta / (jitter * mean_diag)
  np.testing.assert_allclose(rungs, 10.0 ** np.round(np.log10(rungs)), rtol=1e-4)
  top = 10.0 ** (lowrank.CAPACITANCE_JITTER_TRIES - 1)
  assert np.all(rungs > 0.999) and np.all(rungs < 1.001 * top)

  log_prob, entropy, grad_lp, grad_h = _value_and_grads(x, loc, factor, diag, jitter)
  for b in range(len(x)):
    want = _dense(x[b], loc[b], factor[b], diag[b], float(delta[b]))
    # Float32 and a log-likelihood of ~4e3 nats: a few hundredths of a nat.
    # Both hold the log-determinant of a capacitance of condition ~1e8, whose
    # float32 rounding depends on the CPU's dot kernels: the entropy was
    # 0.003 nat off on an Intel Xeon and 0.078 on an AMD EPYC.
    np.testing.assert_allclose(log_prob[b], want[0], atol=0.1)
    np.testing.assert_allclose(entropy[b], want[1], atol=0.1)
    for got, ref in zip((grad_lp[b], grad_h[b]), want[2:]):
      assert np.all(np.isfinite(got))
      assert np.max(np.abs(got - ref)) <= GRAD_RTOL[jitter] * np.max(np.abs(ref))
    mean_got, mean_ref = np.mean(grad_lp[b], -1), np.mean(want[2], -1)  # (S,)
    assert np.max(np.abs(mean_got - mean_ref)) <= MEAN_RTOL * np.max(np.abs(mean_ref))
    # The exact density of the unshrunk P differs by more: delta is not free.
    exact = _dense(x[b], loc[b], factor[b], diag[b], 0.0)
    assert abs(exact[0] - want[0]) > 1.0


@pytest.mark.slow
def test_x64_factorises_in_float64_without_jitter():
  """With jax_enable_x64 the same float32 case factorises exactly: delta = 0."""
  x, loc, factor, diag = _failing_case()
  with jax.enable_x64(True):
    assert lowrank.best_capacitance_dtype(jnp.float32) == jnp.float64
    delta = lowrank.capacitance_jitter_added(factor, diag, JITTER)
    log_prob, entropy, grad_lp, grad_h = _value_and_grads(x, loc, factor, diag, JITTER)
    plain = lowrank.lowrank_log_prob(x, loc, factor, diag)
  np.testing.assert_array_equal(delta, 0.0)
  assert np.all(np.isnan(plain))  # float32 inputs: the plain path stays float32
  assert log_prob.dtype == grad_h.dtype == jnp.float32  # results in the inputs' dtype
  for b in range(len(x)):
    want = _dense(x[b], loc[b], factor[b], diag[b], 0.0)
    np.testing.assert_allclose(log_prob[b], want[0], atol=0.01)
    np.testing.assert_allclose(entropy[b], want[1], atol=0.01)
    for got, ref in zip((grad_lp[b], grad_h[b]), want[2:]):
      assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))


def test_jitter_is_bit_exact_where_the_capacitance_factorises():
  """A mixed batch: the sound example gets exactly the plain value and gradient."""
  x, loc, factor, diag = _failing_case(batch=2)
  rng = np.random.default_rng(3)
  factor[1] = (1e-3 * rng.normal(size=(SIZE, RANK))).astype(np.float32)
  delta = np.asarray(lowrank.capacitance_jitter_added(factor, diag, JITTER))
  assert delta[0] > 0 and delta[1] == 0
  with_jitter = _value_and_grads(x, loc, factor, diag, JITTER)
  plain = _value_and_grads(x, loc, factor, diag, 0.0)
  for got, want in zip(with_jitter, plain):
    assert np.all(np.isfinite(got[0])) and np.all(np.isnan(want[0]))
    np.testing.assert_array_equal(got[1], want[1])


def test_capacitance_cholesky_with_jitter_factorises_the_shrunk_capacitance():
  _, _, factor, diag = _failing_case(batch=1)
  chol = np.asarray(lowrank.capacitance_cholesky(factor, diag, capacitance_jitter=JITTER),
                    np.float64)
  delta = float(lowrank.capacitance_jitter_added(factor, diag, JITTER)[0])
  w = factor[0].astype(np.float64) / np.sqrt(diag[0].astype(np.float64))[:, None]
  shrunk = np.eye(RANK) + w.T @ w / (1.0 + delta)
  np.testing.assert_allclose(chol[0] @ chol[0].T, shrunk, rtol=1e-4)


@pytest.mark.parametrize('off', [None, 0.0])
def test_nonfinite_message_names_the_remedy_and_the_remedy_works(off):
  x, loc, factor, diag = _failing_case()
  message = train.capacitance_diagnosis(factor, diag, capacitance_jitter=off)
  assert 'float32 Cholesky returned NaN for 2 of 2 images' in message
  assert 'set --config.likelihood.capacitance_jitter=1e-6' in message and 'README' in message
  log_prob = lowrank.lowrank_log_prob(x, loc, factor, diag, capacitance_jitter=1e-6)
  assert np.all(np.isfinite(log_prob))


# ------------------------------------------------------- the run's diagnosis
def _capacitance64(factor, diag):
  w = factor.astype(np.float64) / np.sqrt(diag.astype(np.float64))[..., None]
  return np.eye(factor.shape[-1]) + np.einsum('bsr,bsq->brq', w, w)  # (B, R, R)


def _mixed_case():
  """Two failing images and a sound one, with the likelihood's own verdict:
  its jittered log_prob is finite exactly where the jitter mends C."""
  x, loc, factor, diag = _failing_case(batch=3)
  factor[2] = (1e-3 * np.random.default_rng(3).normal(size=(SIZE, RANK))).astype(np.float32)
  return x, loc, factor, diag


def _ladder_steps(delta, factor, diag, jitter):
  """k where delta = jitter * 10^k * mean(diag C), C in float64 (asserted)."""
  mean_diag = np.mean(np.diagonal(_capacitance64(factor, diag), axis1=-2, axis2=-1), -1)
  rungs = np.asarray(delta, np.float64) / (jitter * mean_diag)
  steps = np.round(np.log10(rungs))
  np.testing.assert_allclose(rungs, 10.0 ** steps, rtol=1e-4)
  return steps


def test_check_against_float64_reference():
  _, _, factor, diag = _mixed_case()
  reference = np.linalg.cond(_capacitance64(factor, diag))
  for jitter in (None, JITTER):
    check = lowrank.capacitance_check(factor, diag, capacitance_jitter=jitter)
    np.testing.assert_allclose(check.condition, reference, rtol=1e-10)
    assert reference[:2].min() > 1e8 and reference[2] < 2
    np.testing.assert_array_equal(check.plain_failed, [True, True, False])
    np.testing.assert_array_equal(check.overflow, False)
    assert check.dtype == np.float32
  np.testing.assert_array_equal(
      lowrank.capacitance_check(factor, diag).failed, [True, True, False])
  check = lowrank.capacitance_check(factor, diag, capacitance_jitter=JITTER)
  np.testing.assert_array_equal(check.failed, False)
  # The jitter added is the likelihood's own: a rung of the ladder.
  np.testing.assert_allclose(check.jitter_added,
                             lowrank.capacitance_jitter_added(factor, diag, JITTER), rtol=1e-6)
  assert check.jitter_added[2] == 0
  steps = _ladder_steps(check.jitter_added[:2], factor[:2], diag[:2], JITTER)
  assert np.all((steps >= 0) & (steps < lowrank.CAPACITANCE_JITTER_TRIES))


def test_diagnosis_with_a_jitter_that_mends_claims_no_failure():
  x, loc, factor, diag = _mixed_case()
  message = train.capacitance_diagnosis(factor, diag, capacitance_jitter=JITTER)
  assert np.all(np.isfinite(lowrank.lowrank_log_prob(x, loc, factor, diag,
                                                     capacitance_jitter=JITTER)))
  delta = lowrank.capacitance_jitter_added(factor, diag, JITTER)
  condition = np.linalg.cond(_capacitance64(factor, diag)).max()
  assert message.startswith('not the R x R capacitance')
  assert 'returned NaN' not in message and 'set --config' not in message
  assert 'float32 Cholesky failed for 2 of 3 images' in message
  assert f'condition numbers up to {condition:.2g}' in message
  assert ('the jitter remedy (config.likelihood.capacitance_jitter=1e-06) factorised '
          f'every one of them, adding up to {np.max(delta):.2g} to its diagonal') in message
  # Nothing to report where C factorises without the jitter.
  assert train.capacitance_diagnosis(factor[2:], diag[2:], capacitance_jitter=JITTER) == ''


def test_diagnosis_when_every_jitter_try_fails():
  """A jitter far below float32's rounding: the last try (jitter * 100 *
  mean diag C) still does not factorise, which the likelihood shows as NaN."""
  tiny = 1e-13
  x, loc, factor, diag = _mixed_case()
  log_prob = lowrank.lowrank_log_prob(x, loc, factor, diag, capacitance_jitter=tiny)
  np.testing.assert_array_equal(np.isfinite(log_prob), [False, False, True])
  check = lowrank.capacitance_check(factor, diag, capacitance_jitter=tiny)
  np.testing.assert_array_equal(check.failed, [True, True, False])
  last = lowrank.CAPACITANCE_JITTER_TRIES - 1
  np.testing.assert_array_equal(
      _ladder_steps(check.jitter_added[:2], factor[:2], diag[:2], tiny), [last, last])
  message = train.capacitance_diagnosis(factor, diag, capacitance_jitter=tiny)
  assert 'returned NaN' not in message and 'set --config' not in message
  assert ('float32 Cholesky failed for 2 of 3 images, and the jitter remedy '
          '(config.likelihood.capacitance_jitter=1e-13) failed for 2: for 2 even the last '
          f'of its 3 tries, adding {check.jitter_added.max():.2g}, did not factorise') in message
  assert 'raise config.likelihood.capacitance_jitter above 1e-13' in message
  assert 'config.likelihood.fixed_diag' in message


def test_diagnosis_when_the_capacitance_overflows_float32():
  """P so large that C overflows float32 (finite in float64): no jitter
  mends it, and a larger jitter is not advised."""
  x, loc, factor, diag = _mixed_case()
  factor[1] *= 1e18
  c64 = _capacitance64(factor, diag)
  assert np.all(np.isfinite(c64))
  np.testing.assert_array_equal(np.abs(c64).max((-2, -1)) > np.finfo(np.float32).max,
                                [False, True, False])
  log_prob = lowrank.lowrank_log_prob(x, loc, factor, diag, capacitance_jitter=JITTER)
  np.testing.assert_array_equal(np.isfinite(log_prob), [True, False, True])
  check = lowrank.capacitance_check(factor, diag, capacitance_jitter=JITTER)
  np.testing.assert_array_equal(check.overflow, [False, True, False])
  message = train.capacitance_diagnosis(factor, diag, capacitance_jitter=JITTER)
  delta0 = lowrank.capacitance_jitter_added(factor[:1], diag[:1], JITTER)[0]
  assert ('float32 Cholesky failed for 2 of 3 images, and the jitter remedy '
          '(config.likelihood.capacitance_jitter=1e-06) factorised 1 of them, adding up '
          f'to {delta0:.2g} to its diagonal, but failed for 1: C exceeds the range of '
          'float32 for 1, which no jitter mends') in message
  assert 'returned NaN' not in message and 'capacitance_jitter above' not in message
  assert 'set --config' not in message and 'config.likelihood.fixed_diag' in message


def test_diagnosis_under_x64_reports_the_float64_factorisation():
  """With jax_enable_x64 the jittered likelihood factorises C in float64:
  nothing fails there, while the plain float32 factorisation still does."""
  _, _, factor, diag = _mixed_case()
  with jax.enable_x64(True):
    check = lowrank.capacitance_check(factor, diag, capacitance_jitter=JITTER)
    assert check.dtype == np.float64 and not check.plain_failed.any()
    assert train.capacitance_diagnosis(factor, diag, capacitance_jitter=JITTER) == ''
    assert 'float32 Cholesky returned NaN for 2 of 3' in train.capacitance_diagnosis(
        factor, diag, capacitance_jitter=None)


# ------------------------------------------------------------------ config
def _config(**likelihood):
  # A fresh section: the base config's typed float field would refuse a
  # string before the checks see it, as a config read from JSON does not.
  config = common.base_config()
  config.likelihood = ml_collections.ConfigDict({**config.likelihood.to_dict(), **likelihood})
  return config


def test_the_field_reaches_the_distribution():
  config = _config(capacitance_jitter=JITTER, rank=RANK)
  head = LIKELIHOODS['lowrank_gaussian'].build(config.likelihood, channels=1)
  assert head.capacitance_jitter == JITTER
  features = jnp.zeros((2, 28, 28, 4))
  variables = head.init(jax.random.key(0), features)
  dist = head.apply(variables, features)
  assert dist.capacitance_jitter == JITTER
  # The default head is the exact likelihood.
  default = LIKELIHOODS['lowrank_gaussian'].build(_config(rank=RANK).likelihood, channels=1)
  assert default.capacitance_jitter == 0.0
  assert default.apply(variables, features).capacitance_jitter == 0.0


@pytest.mark.parametrize('value', [-1e-6, float('nan'), float('inf'), 1.0, 'small', None])
def test_bad_jitter_is_a_config_error(value):
  config = _config(capacitance_jitter=value)
  problems = LIKELIHOODS['lowrank_gaussian'].problems(config)
  assert any(p.startswith(f'config.likelihood.capacitance_jitter={value!r}:')
             and 'capacitance_jitter=1e-6' in p for p in problems), problems
  with pytest.raises(config_checks.ConfigError, match='capacitance_jitter'):
    config_checks.check_config(config)


@pytest.mark.parametrize('value', [0, 0.0, 1e-6])
def test_valid_jitter_passes_the_checks(value):
  assert LIKELIHOODS['lowrank_gaussian'].problems(_config(capacitance_jitter=value)) == []


def _blow_up_factor_head(params, scale):
  """P with parallel columns far larger than D allows (grayscale images: the
  kernel's output channels are the R columns of P)."""
  def grow(path, leaf):
    names = [getattr(k, 'key', None) for k in path]
    if 'factor_head' not in names or names[-1] != 'kernel':
      return leaf
    return jnp.repeat(leaf[..., :1], leaf.shape[-1], -1) * scale
  return jax.tree_util.tree_map_with_path(grow, params)


@pytest.mark.slow
def test_train_step_reads_the_field():
  """Through train.setup: a fresh model (P ~ 1e-5) gets bit for bit the exact
  step; with P blown up the exact step is non-finite and the jittered one not."""
  import train_fixtures  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  with config.unlocked():
    config.likelihood.capacitance_jitter = JITTER
  batch = train_fixtures.random_batch(0)
  sound, blown = [], []
  for cfg in (default.get_config('smoke'), config):
    _, state, step = train_fixtures.smoke_step(cfg)
    sound.append(jax.device_get(step(state, batch)))
    state = state.replace(params=_blow_up_factor_head(state.params, 1e6))
    blown.append(jax.device_get(step(state, batch)[1]['loss']))
  (state0, metrics0), (state1, metrics1) = sound
  for a, b in zip(jax.tree.leaves((state0.params, metrics0)),
                  jax.tree.leaves((state1.params, metrics1))):
    np.testing.assert_array_equal(a, b)
  assert not np.isfinite(blown[0]) and np.isfinite(blown[1]), blown


@pytest.mark.slow
@pytest.mark.parametrize('jitter', [0.0, JITTER])
def test_the_run_diagnoses_with_its_own_jitter(jitter):
  """train.batch_diagnosis (what the run calls on non-finite steps) on a
  model whose P is blown up: the jitter the config set is the one judged."""
  import train_fixtures  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  with config.unlocked():
    config.likelihood.capacitance_jitter = jitter
  run = train.setup(config)
  state = run.state.replace(params=_blow_up_factor_head(run.state.params, 1e6))
  message = train.batch_diagnosis(config, run.parts.model, state,
                                  train_fixtures.random_batch(0), jax.random.key(0))
  if jitter:
    assert message.startswith('not the R x R capacitance'), message
    assert 'capacitance_jitter=1e-06) factorised every one' in message
    assert 'returned NaN' not in message and 'set --config' not in message
  else:
    assert 'float32 Cholesky returned NaN for 8 of 8 images' in message, message
    assert 'set --config.likelihood.capacitance_jitter=1e-6' in message
