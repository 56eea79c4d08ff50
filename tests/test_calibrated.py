"""Calibrated Gaussian heads (sigma-VAE, Lin et al.) against float64 references."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from sosvae_jax.distributions import gaussian
from sosvae_jax.models import calibrated_heads as ch

B, H, W, C, F = 3, 4, 5, 2, 6
AXES = {'shared': (0, 1, 2, 3), 'per_image': (1, 2, 3), 'per_pixel': (0,),
        'per_channel': (0, 1, 2)}


def _features(seed=0, shape=(B, H, W, F)):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def _target(seed=1, shape=(B, H, W, C)):
  return jax.random.uniform(jax.random.PRNGKey(seed), shape)


def np_softclip(t, low):
  return low + np.logaddexp(0.0, t - low)


def np_variance_from_log_sigma(log_sigma, low):
  log_sigma = np.asarray(log_sigma, np.float64)
  return np.exp(2 * (np_softclip(log_sigma, low) if low is not None else log_sigma))


def np_gaussian_log_prob(x, mean, variance):
  """Sum over the image of log N(x; mean, variance), float64, per image."""
  x, mean = np.asarray(x, np.float64), np.asarray(mean, np.float64)
  variance = np.broadcast_to(np.asarray(variance, np.float64), x.shape)
  lp = stats.norm.logpdf(x, loc=mean, scale=np.sqrt(variance))
  return lp.reshape(x.shape[0], -1).sum(-1)


_JITTED = {}


def _apply(module, variables, features, target, *, train=False, step=None):
  """(log_prob, mean image, captured intermediates and stats) of one jitted call."""
  key = (id(module), train, step is None)
  if key not in _JITTED:
    def run(variables, features, target, step):
      dist, new = module.apply(variables, features, target, train=train, step=step,
                               capture_intermediates=True,
                               mutable=['intermediates', 'likelihood_stats'])
      return dist.log_prob(target.reshape((target.shape[0], -1))), dist.mean(), new
    _JITTED[key] = (module, jax.jit(run))  # keeps module alive: id stays unique
  log_prob, mean, new = _JITTED[key][1](variables, features, target, step)
  return log_prob, np.asarray(mean).reshape(target.shape), new


def _captured(new, name):
  return np.asarray(new['intermediates'][name]['__call__'][0], np.float64)


# ---------------------------------------------------------------------------
# Pure maths.
# ---------------------------------------------------------------------------
@pytest.mark.parametrize('axes', sorted(AXES))
@pytest.mark.parametrize('scale', [1.0, 1e-4, 1e3])
def test_optimal_variance_matches_float64_mean_square(axes, scale):
  rng = np.random.default_rng(3)
  # Ill-conditioned: entries spanning 6 decades inside one batch.
  residual = scale * rng.standard_normal((B, H, W, C)) * 10.0 ** rng.integers(-3, 3, (B, H, W, C))
  got = jax.jit(functools.partial(gaussian.optimal_variance, axes=axes))(
      jnp.asarray(residual, jnp.float32))
  want = np.mean(residual.astype(np.float64) ** 2, axis=AXES[axes], keepdims=True)
  assert got.shape == want.shape
  np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5)


def test_optimal_variance_rejects_unknown_axes_and_shapes():
  with pytest.raises(ValueError, match="axes='per_row'"):
    gaussian.optimal_variance(jnp.zeros((1, 2, 2, 1)), 'per_row')
  with pytest.raises(ValueError, match=r'\[B, H, W, C\]'):
    gaussian.optimal_variance(jnp.zeros((2, 4)), 'shared')


def test_optimal_variance_maximises_the_gaussian_likelihood():
  rng = np.random.default_rng(0)
  residual = rng.standard_normal((B, H, W, C)) * 0.1
  v = float(gaussian.optimal_variance(jnp.asarray(residual), 'shared').squeeze())
  total = lambda var: np_gaussian_log_prob(residual, 0 * residual, var).sum()
  assert total(v) > total(v * 1.01) and total(v) > total(v * 0.99)


def test_clip_variance_floors_zero_residual_at_lambda_min():
  got = np.asarray(gaussian.clip_variance(jnp.asarray([0.0, 1e-12, 0.25]), -6.0), np.float64)
  want = np_variance_from_log_sigma(0.5 * np.log(np.maximum([0.0, 1e-12, 0.25], 1e-30)), -6.0)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert got[0] >= math.exp(-12) * 0.999  # sigma >= e^-6 at zero error


def test_debiased_average_is_the_weighted_mean_from_the_first_update():
  decay, values = 0.9, [2.0, 5.0, 3.0]
  total = 0.0
  for v in values:
    total = decay * total + (1 - decay) * v
  got = float(gaussian.debiased_average(jnp.asarray(total), jnp.asarray(3), decay, -1.0))
  weights = np.array([decay ** 2, decay, 1.0])
  np.testing.assert_allclose(got, np.dot(weights, values) / weights.sum(), rtol=1e-6)
  assert float(gaussian.debiased_average(jnp.asarray(0.0), jnp.asarray(0), decay, 7.0)) == 7.0


# ---------------------------------------------------------------------------
# Heads' log_prob against float64 references.
# ---------------------------------------------------------------------------
@pytest.mark.slow
def test_fixed_sigma_log_prob():
  head = ch.GaussianFixedSigma(C, sigma=0.3)
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  log_prob, mean, _ = _apply(head, variables, f, x)
  np.testing.assert_allclose(log_prob, np_gaussian_log_prob(x, mean, 0.09), rtol=1e-5)


@pytest.mark.parametrize('log_sigma', [0.3, -3.0, -9.0])  # -9: deep below lambda_min
def test_shared_sigma_log_prob_with_soft_clip(log_sigma):
  head = ch.GaussianSharedSigma(C, min_log_sigma=-6.0)
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  variables = jax.tree.map(lambda v: v, variables)
  variables['params']['sigma_head']['log_sigma'] = jnp.asarray(log_sigma)
  log_prob, mean, _ = _apply(head, variables, f, x)
  want = np_gaussian_log_prob(x, mean, np_variance_from_log_sigma(log_sigma, -6.0))
  np.testing.assert_allclose(log_prob, want, rtol=2e-5)


@pytest.mark.parametrize('min_log_sigma', [-6.0, None])
def test_pixel_sigma_log_prob(min_log_sigma):
  head = ch.GaussianPixelSigma(C, init_variance=1e-5, min_log_sigma=min_log_sigma)
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  log_prob, mean, new = _apply(head, variables, f, x)
  raw = _captured(new, 'sigma_head')
  want = np_gaussian_log_prob(x, mean, np_variance_from_log_sigma(raw, min_log_sigma))
  np.testing.assert_allclose(log_prob, want, rtol=2e-5)
  if min_log_sigma is not None:  # log sigma ~ -5.8 at init: the clip matters here.
    assert not np.allclose(want, np_gaussian_log_prob(x, mean, np.exp(2 * raw)), rtol=1e-3)


@pytest.mark.parametrize('axes', sorted(AXES))
def test_optimal_sigma_log_prob_in_training(axes):
  head = ch.GaussianOptimalSigma(C, optimal_sigma_axes=axes)
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  log_prob, mean, _ = _apply(head, variables, f, x, train=True)
  residual = np.asarray(x, np.float64) - mean
  var = np.mean(residual ** 2, axis=AXES[axes], keepdims=True)
  want = np_gaussian_log_prob(x, mean, np_variance_from_log_sigma(0.5 * np.log(var), -6.0))
  np.testing.assert_allclose(log_prob, want, rtol=2e-5)


def test_optimal_sigma_per_image_with_a_perfect_reconstruction():
  """Extreme case: zero residual for one image -> sigma at the floor, finite."""
  head = ch.GaussianOptimalSigma(C, optimal_sigma_axes='per_image')
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  _, mean, _ = _apply(head, variables, f, x)
  x = jnp.asarray(x).at[0].set(jnp.asarray(mean[0]))
  log_prob, mean, _ = _apply(head, variables, f, x, train=True)
  var = np.mean((np.asarray(x, np.float64) - mean) ** 2, axis=(1, 2, 3), keepdims=True)
  assert var[0].item() < 1e-12
  want = np_gaussian_log_prob(
      x, mean, np_variance_from_log_sigma(0.5 * np.log(np.maximum(var, 1e-30)), -6.0))
  assert np.all(np.isfinite(np.asarray(log_prob)))
  np.testing.assert_allclose(log_prob, want, rtol=2e-5)


def test_optimal_sigma_requires_the_target_in_training():
  head = ch.GaussianOptimalSigma(C)
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  with pytest.raises(ValueError, match='target image'):
    head.apply(variables, f, None, train=True, mutable=['likelihood_stats'])


@pytest.mark.parametrize('axes', ['shared', 'per_image', 'per_pixel', 'per_channel'])
def test_running_average_is_used_at_evaluation(axes):
  decay = 0.5
  head = ch.GaussianOptimalSigma(C, optimal_sigma_axes=axes, running_average_decay=decay,
                                 init_variance=0.7, min_log_sigma=None)
  f = _features()
  x1, x2, x_eval = _target(1), _target(2), _target(3)
  variables = head.init(jax.random.PRNGKey(0), f, x1)
  # Before any train step: init_variance.
  log_prob, mean, _ = _apply(head, variables, f, x_eval)
  np.testing.assert_allclose(log_prob, np_gaussian_log_prob(x_eval, mean, 0.7), rtol=2e-5)
  seen = []
  for x in (x1, x2):
    _, mean, new = _apply(head, variables, f, x, train=True)
    var = np.mean((np.asarray(x, np.float64) - mean) ** 2, axis=AXES[axes], keepdims=True)
    seen.append(var.mean(axis=0, keepdims=True) if axes == 'per_image' else var)
    variables = {'params': variables['params'], 'likelihood_stats': new['likelihood_stats']}
  want_var = (decay * seen[0] + seen[1]) / (1 + decay)
  # Evaluation: the target differs from both batches, the variance does not follow it.
  log_prob, mean, new = _apply(head, variables, f, x_eval)
  np.testing.assert_allclose(log_prob, np_gaussian_log_prob(x_eval, mean, want_var), rtol=2e-5)
  # Decoding prior samples (no target) uses the same variance.
  dist = head.apply(variables, f, None)
  np.testing.assert_allclose(np.asarray(dist.variance()).reshape(x_eval.shape),
                             np.broadcast_to(want_var, x_eval.shape), rtol=2e-5)


def _optimal_sigma_grads(axes, stop, min_log_sigma):
  f, x = _features(), _target()
  head = ch.GaussianOptimalSigma(C, optimal_sigma_axes=axes,
                                 optimal_sigma_stop_gradient=stop,
                                 min_log_sigma=min_log_sigma)
  variables = head.init(jax.random.PRNGKey(0), f, x)

  def loss(params):
    dist, _ = head.apply({'params': params, **{k: v for k, v in variables.items()
                                               if k != 'params'}},
                         f, x, train=True, mutable=['likelihood_stats'])
    return -jnp.mean(dist.log_prob(x.reshape((B, -1))))
  return jax.jit(jax.grad(loss))(variables['params'])


@pytest.mark.parametrize('axes', sorted(AXES))
def test_stop_gradient_changes_no_gradient_without_the_clip(axes):
  """Envelope theorem: each sigma^2 maximises its block of the batch loss."""
  for a, b in zip(jax.tree.leaves(_optimal_sigma_grads(axes, True, None)),
                  jax.tree.leaves(_optimal_sigma_grads(axes, False, None))):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_stop_gradient_matters_where_the_clip_binds():
  # log sigma ~ -1.2 for these residuals; a floor at -1 bends it.
  a = _optimal_sigma_grads('per_pixel', True, -1.0)['mean_head']['kernel']
  b = _optimal_sigma_grads('per_pixel', False, -1.0)['mean_head']['kernel']
  assert not np.allclose(a, b, rtol=1e-2)


# ---------------------------------------------------------------------------
# Lin et al. two-stage head.
# ---------------------------------------------------------------------------
def _two_stage_call(head, variables, f, x, step):
  log_prob, mean, new = _apply(head, variables, f, x, train=True, step=jnp.asarray(step))
  return log_prob, mean, new


@pytest.mark.parametrize('dataset_variance', [None, 0.02])
def test_two_stage_switches_at_switch_step(dataset_variance):
  decay = 0.5
  head = ch.GaussianTwoStage(C, switch_step=2, dataset_variance=dataset_variance,
                             running_average_decay=decay, init_variance=0.3)
  f = _features()
  xs = [_target(i) for i in (1, 2, 3, 4)]
  variables = head.init(jax.random.PRNGKey(0), f, xs[0])
  stage_one = []
  for step, x in enumerate(xs):
    log_prob, mean, new = _two_stage_call(head, variables, f, x, step)
    stats_ = new['likelihood_stats']
    variables = {'params': variables['params'], 'likelihood_stats': stats_}
    var = np.mean((np.asarray(x, np.float64) - mean) ** 2)
    if step < 2:  # Stage one: closed-form global variance of the batch.
      stage_one.append(var)
      np.testing.assert_allclose(log_prob, np_gaussian_log_prob(x, mean, var), rtol=2e-5)
      assert int(stats_['in_stage_two']) == 0
    else:  # Stage two: softplus(head) + dataset variance / 2.
      raw = _captured(new, 'variance_head')
      frozen = (decay * stage_one[0] + stage_one[1]) / (1 + decay)
      floor = frozen if dataset_variance is None else dataset_variance
      want = np_gaussian_log_prob(x, mean, np.logaddexp(0.0, raw) + 0.5 * floor)
      np.testing.assert_allclose(log_prob, want, rtol=2e-5)
      assert int(stats_['in_stage_two']) == 1
      # The running average stopped at the switch (frozen sigma_dataset^2).
      got = gaussian.debiased_average(stats_['global_variance']['total'],
                                      stats_['global_variance']['count'], decay, 0.3)
      np.testing.assert_allclose(float(got.squeeze()), frozen, rtol=1e-5)
  # Evaluation keeps the stage of the last train step.
  x = _target(9)
  log_prob, mean, new = _apply(head, variables, f, x)
  raw = _captured(new, 'variance_head')
  frozen = (decay * stage_one[0] + stage_one[1]) / (1 + decay)
  floor = frozen if dataset_variance is None else dataset_variance
  np.testing.assert_allclose(
      log_prob, np_gaussian_log_prob(x, mean, np.logaddexp(0.0, raw) + 0.5 * floor), rtol=2e-5)


def test_two_stage_switch_step_is_a_variable_the_loop_can_lower():
  head = ch.GaussianTwoStage(C, switch_step=100)
  f, x = _features(), _target()
  variables = head.init(jax.random.PRNGKey(0), f, x)
  assert int(variables['likelihood_stats']['switch_step']) == 100
  variables['likelihood_stats']['switch_step'] = jnp.asarray(5, jnp.int32)
  _, _, new = _two_stage_call(head, variables, f, x, 5)
  assert int(new['likelihood_stats']['in_stage_two']) == 1
  _, _, new = _two_stage_call(head, variables, f, x, 4)
  assert int(new['likelihood_stats']['in_stage_two']) == 0


# ---------------------------------------------------------------------------
# Through the train loop.
# ---------------------------------------------------------------------------
def _stats_leaf(tree, name):
  """The one leaf called `name` in a nested dict of statistics."""
  found = [v for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
           if getattr(path[-1], 'key', None) == name]
  assert len(found) == 1, (name, tree)
  return found[0]


@pytest.mark.slow
def test_two_stage_switch_on_plateau_in_a_smoke_run(tmp_path):
  """The loop lowers switch_step when the eval ELBO stalls (switch by step:
  tests/test_sigma_configs.py, through the train step)."""
  from experiments.configs.lin2019 import fashion_mnist  # pylint: disable=import-outside-toplevel
  from sosvae_jax import checkpoints  # pylint: disable=import-outside-toplevel
  from sosvae_jax import train  # pylint: disable=import-outside-toplevel
  config = fashion_mnist.get_config('smoke')
  config.num_steps = 6
  config.eval_every_steps = 2
  config.checkpoint_every_steps = 6
  config.likelihood.switch_step = 1000  # never by step
  config.likelihood.switch_on_plateau = True
  config.likelihood.plateau_tolerance = 1e9  # any change counts as no improvement
  config.likelihood.plateau_patience = 1
  train.train_and_evaluate(config, str(tmp_path))
  run = checkpoints.restore_run(str(tmp_path))
  # The second evaluation (step 4) is the first with a previous ELBO to
  # compare with; train steps 4 and 5 then run in stage two.
  assert int(_stats_leaf(run.model_state, 'switch_step')) == 4
  assert int(_stats_leaf(run.model_state, 'in_stage_two')) == 1
