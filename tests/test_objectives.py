"""ELBO pieces against closed forms computed independently in numpy."""

import jax
import numpy as np
import pytest
import scipy.stats

from sosvae_jax import objectives


def test_gaussian_kl_matches_monte_carlo_free_closed_form():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 5))
  log_var = rng.normal(size=(3, 5))
  with jax.enable_x64(True):
    got = objectives.gaussian_kl(mean, log_var)
  var = np.exp(log_var)
  # KL of two univariate normals, summed: log(s2/s1) + (s1^2 + m^2)/(2 s2^2) - 1/2.
  expected = np.sum(-0.5 * log_var + (var + mean ** 2) / 2 - 0.5, -1)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_gaussian_kl_by_quadrature_of_one_dimension():
  m, lv = 0.7, -0.4
  s = np.exp(0.5 * lv)
  xs = np.linspace(-10, 10, 200001)
  q = scipy.stats.norm(m, s)
  integrand = q.pdf(xs) * (q.logpdf(xs) - scipy.stats.norm(0, 1).logpdf(xs))
  numeric = np.trapezoid(integrand, xs)
  with jax.enable_x64(True):
    got = float(objectives.gaussian_kl(np.array([m]), np.array([lv])))
  assert abs(got - numeric) < 1e-8


def test_bits_per_dim():
  assert float(objectives.nats_to_bits_per_dim(-np.log(2.0) * 784 * 3, 784)) == pytest.approx(3.0, rel=1e-6)
