"""Every sigma-VAE (Table 2) and Lin et al. config builds, passes the checker and trains."""

from __future__ import annotations

import functools
import importlib
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs.sigma_vae import common as sv
from sosvae_jax import config_checks
from sosvae_jax import train
from sosvae_jax.models import build_model
import train_fixtures

SIGMA_VAE_ROWS = ('bernoulli', 'categorical', 'bitwise_categorical', 'logistic_mixture',
                  'gaussian', 'per_pixel_sigma', 'student_t', 'beta_vae', 'shared_sigma',
                  'optimal_sigma', 'per_image_optimal_sigma')
CONFIGS = ([f'sigma_vae.{r}' for r in SIGMA_VAE_ROWS]
           + ['lin2019.fashion_mnist', 'lin2019.mnist'])


def _get(name, arg=None):
  return importlib.import_module(f'experiments.configs.{name}').get_config(arg)


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', [None, 'smoke'])
def test_config_builds_and_passes_the_checker(name, arg):
  config = _get(name, arg)
  assert not any(c.get('enabled', True) for c in config.constraints.values())
  if config.data.source == 'idx':  # tfds data (MNIST) may not be prepared here.
    config_checks.check_config(config, num_devices=1)
  model = build_model(config)
  shape = (1,) + tuple(config.data.image_shape)
  # Shapes only: no compilation.
  variables = jax.eval_shape(
      lambda: model.init({'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)},
                         jnp.zeros(shape)))
  assert 'params' in variables
  assert config.pretrain_steps == 0
  if arg is None:
    want = (20, 128) if name.startswith('sigma_vae') else (16, 256)
    assert (config.model.latent_dim, config.batch_size) == want


def test_appendix_architecture_and_epochs():
  config = _get('sigma_vae.optimal_sigma')
  assert config.model.channels == (32, 64)  # 28x28: two stride-2 levels
  assert config.optimizer.learning_rate == 1e-3
  assert config.num_steps == 10 * math.ceil(60000 / 128)
  svhn = _get('sigma_vae.optimal_sigma', 'svhn')
  assert svhn.model.channels == (32, 64, 128) and tuple(svhn.data.image_shape) == (32, 32, 3)
  assert svhn.data.name == 'svhn_cropped' and svhn.data.source == 'tfds'
  lin = _get('lin2019.fashion_mnist')
  assert lin.likelihood.switch_step == 16 * 235 and lin.num_steps == 30 * 235
  assert lin.optimizer.learning_rate == 5e-4


def test_beta_vae_row_is_the_paper_objective():
  config = _get('sigma_vae.beta_vae')
  # -log N(x; mu, 1/2 I) = SSE + const, so the loss is SSE + beta KL.
  assert config.likelihood.sigma == pytest.approx(math.sqrt(0.5))
  assert config.kl_weight > 0


@pytest.mark.slow
def test_fixed_sigma_equals_beta_vae_up_to_the_scale_beta():
  """sigma-VAE section 3: SSE + beta KL = beta * (negative ELBO at sigma = sqrt(beta/2))."""
  beta = 0.04
  batch = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 28, 28, 1), np.uint8))
  grads = []
  for sigma, kl_weight in ((math.sqrt(beta / 2), 1.0), (math.sqrt(0.5), beta)):
    config = sv.get_config(dict(name='gaussian_fixed_sigma', sigma=sigma), 'smoke',
                           kl_weight=kl_weight)
    model = build_model(config)
    variables = model.init({'params': jax.random.PRNGKey(0), 'sample': jax.random.PRNGKey(1)},
                           jnp.zeros((1, 28, 28, 1)))
    loss = functools.partial(train.loss_fn, model=model, constraints={}, kl_weight=kl_weight)
    grad = jax.jit(jax.grad(lambda p: loss(p, {}, {}, batch, jax.random.PRNGKey(2),
                                           jnp.asarray(0))[0]))
    grads.append(grad(variables['params']))
  flat_a, flat_b = jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])
  assert len(flat_a) == len(flat_b) > 4
  for a, b in zip(flat_a, flat_b):
    b = np.asarray(b)  # float32 sums: tolerance relative to the leaf's largest entry
    np.testing.assert_allclose(beta * np.asarray(a), b, rtol=2e-4,
                               atol=1e-4 * np.abs(b).max())


def test_unknown_config_argument_is_named():
  with pytest.raises(ValueError, match="'imagenet'"):
    sv.parse_arg('smoke,imagenet')


def test_bad_likelihood_fields_are_reported_by_the_checker():
  config = _get('sigma_vae.optimal_sigma', 'smoke')
  config.likelihood.optimal_sigma_axes = 'per_row'
  config.likelihood.running_average_decay = 1.0
  with pytest.raises(config_checks.ConfigError) as e:
    config_checks.check_config(config, num_devices=1)
  assert 'optimal_sigma_axes' in str(e.value) and 'running_average_decay' in str(e.value)
  lin = _get('lin2019.fashion_mnist', 'smoke')
  lin.likelihood.switch_step = -1
  with pytest.raises(config_checks.ConfigError, match='switch_step'):
    config_checks.check_config(lin, num_devices=1)


@pytest.mark.slow
def test_lin2019_smoke_config_switches_stage_at_switch_step():
  """Through the train step: stage one until step 3, then stage two."""
  config = _get('lin2019.fashion_mnist', 'smoke')
  assert config.likelihood.switch_step == 3
  # No constraint is enabled: one multiplier rate for the (empty) set.
  config, state, step = train_fixtures.smoke_step(config, multiplier_lr=1.0,
                                                  kl_weight=config.kl_weight)
  stats = lambda: state.model_state['likelihood_stats']['likelihood']
  for i in range(5):
    state, metrics = step(state, train_fixtures.random_batch(i))
    assert int(stats()['in_stage_two']) == int(i >= 3), i
    assert np.isfinite(float(metrics['loss'])), i
  # The stage-one variance is averaged over steps 0-2 only, then frozen.
  assert int(stats()['global_variance']['count']) == 3
  assert int(state.nonfinite_total) == 0
