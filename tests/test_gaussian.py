"""Pixel-wise Gaussian pieces and the entropy floor against float64 scipy."""

import jax
import numpy as np
import pytest
import scipy.stats

from experiments.configs import beta_vae
from experiments.configs import default
from sosvae_jax import config_checks
from sosvae_jax.distributions import diagonal_normal
from sosvae_jax.distributions import softclip


@pytest.mark.parametrize('batch', [(), (3,), (2, 3)])
def test_diagonal_normal_matches_scipy(batch):
  rng = np.random.default_rng(0)
  loc = rng.normal(size=batch + (6,))
  variance = 10.0 ** rng.uniform(-5, 0, size=batch + (6,))  # down to the 1e-5 floor
  x = loc + np.sqrt(variance) * rng.normal(size=batch + (6,))
  with jax.enable_x64(True):
    @jax.jit
    def stats(loc, variance, x):
      dist = diagonal_normal(loc, variance)
      return dist.log_prob(x), dist.entropy(), dist.variance()
    log_prob, entropy, var = (np.asarray(a) for a in stats(loc, variance, x))
  for idx in np.ndindex(batch):
    ref = scipy.stats.multivariate_normal(loc[idx], np.diag(variance[idx]))
    np.testing.assert_allclose(log_prob[idx], ref.logpdf(x[idx]), rtol=1e-10)
    np.testing.assert_allclose(entropy[idx], ref.entropy(), rtol=1e-10)
  np.testing.assert_allclose(var, variance, rtol=1e-12)


def test_diagonal_normal_rejects_mismatched_event():
  with pytest.raises(ValueError, match='event dimension'):
    diagonal_normal(np.zeros(5), np.ones(4))


def test_softclip_is_minimum_plus_softplus():
  x = np.linspace(-30, 30, 121)
  with jax.enable_x64(True):
    got = np.asarray(softclip(x, -6.0))
  np.testing.assert_allclose(got, -6.0 + np.logaddexp(0.0, x + 6.0), rtol=1e-12)
  assert np.all(got > -6.0) and np.allclose(got[x > 20], x[x > 20])


@pytest.mark.parametrize('module,field,diag', [
    (default, 'likelihood.fixed_diag', 1e-5),     # fixed D of the low-rank model
    (beta_vae, 'likelihood.min_variance', 1e-5),  # floor of the learned variances
])
def test_entropy_floor_is_entropy_of_the_diagonal_alone(module, field, diag):
  config = module.get_config()
  floor, named = config_checks.entropy_floor(config)
  size = int(np.prod(config.data.image_shape))
  expected = scipy.stats.multivariate_normal(np.zeros(size), diag * np.eye(size)).entropy()
  assert named == field
  np.testing.assert_allclose(floor, expected, rtol=1e-10)
