"""A likelihood registered inside a test trains, checks, resumes and evaluates."""

import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import train_fixtures

from experiments.configs import default
from sosvae_jax import config_checks
from sosvae_jax import train
from sosvae_jax.evaluation import evaluate
from sosvae_jax.models import Likelihood
from sosvae_jax.models import LIKELIHOODS
from sosvae_jax.models import register_likelihood
from sosvae_jax.models import variance_parameter_mask

NAME = 'toy_normal'


class ToyNormalHead(nn.Module):
  """N(mean, diag(scale^2)) per subpixel; log scale from its own conv."""

  channels: int
  init_scale: float = 0.3

  @nn.compact
  def __call__(self, features, target=None, *, train=False, step=None):
    del target, train, step
    b = features.shape[0]
    mean = nn.Conv(self.channels, (3, 3), padding='SAME', name='toy_mean')(features)
    log_scale = nn.Conv(self.channels, (3, 3), padding='SAME', name='toy_scale',
                        bias_init=nn.initializers.constant(math.log(self.init_scale)))(
                            features)
    return distrax.Independent(distrax.Normal(
        mean.astype(jnp.float32).reshape((b, -1)),
        jnp.exp(log_scale.astype(jnp.float32)).reshape((b, -1))), 1)


def _init_scale_check(field, value):
  if isinstance(value, (int, float)) and value > 0:
    return []
  return [f'config.likelihood.{field}={value!r}: the toy scale must be > 0; pass 0.3.']


@pytest.fixture(autouse=True)
def toy_registered():
  register_likelihood(NAME, Likelihood(
      ToyNormalHead, variance_heads=('toy_scale',),
      field_checks={'init_scale': _init_scale_check}))
  yield
  del LIKELIHOODS[NAME]


def _config(num_steps: int, **likelihood) -> ml_collections.ConfigDict:
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  config.data.name = 'fashion_mnist'
  config.likelihood = ml_collections.ConfigDict(dict(name=NAME, **likelihood))
  config.constraints.entropy.enabled = False
  config.num_steps = num_steps
  config.pretrain_steps = 2
  config.checkpoint_every_steps = 2
  config.eval_every_steps = 2
  config.log_every_steps = 1
  return config


def test_its_config_check_and_field_names_reach_the_checker():
  with tfds.testing.mock_data(num_examples=8):
    config_checks.check_config(_config(4, init_scale=0.5), num_devices=1)
    with pytest.raises(config_checks.ConfigError, match='init_scale=-1.0: the toy scale'):
      config_checks.check_config(_config(4, init_scale=-1.0), num_devices=1)
    with pytest.raises(config_checks.ConfigError, match=f"'{NAME}' has no such field"):
      config_checks.check_config(_config(4, scale=0.5), num_devices=1)


@pytest.mark.slow
def test_it_trains_freezes_its_variance_head_resumes_and_evaluates(tmp_path):
  run = train.setup(_config(4))
  initial = run.state.params['likelihood']
  mask = variance_parameter_mask(initial, NAME)
  assert all(mask['toy_scale'].values()) and not any(mask['toy_mean'].values())
  step = jax.jit(run.step)
  state = run.state
  batch = train_fixtures.random_batch(0)
  for _ in range(2):  # pretrain_steps = 2: the variance head is frozen
    state, _ = step(state, batch)
  head = state.params['likelihood']
  for leaf in ('kernel', 'bias'):
    np.testing.assert_array_equal(head['toy_scale'][leaf], initial['toy_scale'][leaf])
  assert not np.array_equal(head['toy_mean']['kernel'], initial['toy_mean']['kernel'])
  state, _ = step(state, batch)  # then it trains
  assert not np.array_equal(state.params['likelihood']['toy_scale']['bias'],
                            head['toy_scale']['bias'])
  with tfds.testing.mock_data(num_examples=32):
    first = train.train_and_evaluate(_config(3), str(tmp_path))
    assert int(first.step) == 3
    resumed = train.train_and_evaluate(_config(4), str(tmp_path))  # from step 3
    assert int(resumed.step) == 4
    results = evaluate.evaluate_and_write(
        str(tmp_path), num_samples=8, eval_examples=16, iwae_k=2, iwae_chunk=2,
        batch_size=8, mi_examples=8, mi_samples=2, gmm_examples=16,
        classifier_fid=False, coherence_examples=8)
  assert results['likelihood'] == NAME and not results['discrete']
  metrics = results['metrics']
  assert np.isfinite(metrics['nll_elbo_nats']) and np.isfinite(metrics['nll_iwae_nats'])
  assert jax.tree.all(jax.tree.map(np.isfinite, metrics))
