"""ELBO pieces against closed forms computed independently in numpy."""

import types

import distrax
import jax
import numpy as np
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


def _fake_output(rng, batch=3, latent=4, pixels=(2, 3, 1)):
  """A VAE output with a diagonal normal p(x|z), float64, and its images."""
  size = int(np.prod(pixels))
  loc, scale = rng.normal(size=(batch, size)), np.exp(rng.normal(size=(batch, size)))
  out = types.SimpleNamespace(
      observation=distrax.MultivariateNormalDiag(loc, scale), loc=loc, scale=scale,
      posterior_mean=rng.normal(size=(batch, latent)),
      posterior_log_var=rng.normal(size=(batch, latent)),
      z=rng.normal(size=(batch, latent)))
  return out, rng.uniform(size=(batch,) + pixels)


def test_elbo_terms_against_scipy():
  rng = np.random.default_rng(2)
  with jax.enable_x64(True):
    out, x = _fake_output(rng)
    terms = objectives.elbo_terms(out, x)
  flat = x.reshape(3, -1)
  loc, scale = out.loc, out.scale
  log_lik = scipy.stats.norm(loc, scale).logpdf(flat).sum(-1)
  mean, var = out.posterior_mean, np.exp(out.posterior_log_var)
  kl = np.sum(-0.5 * out.posterior_log_var + (var + mean ** 2) / 2 - 0.5, -1)
  np.testing.assert_allclose(terms['log_likelihood'], log_lik, rtol=1e-12)
  np.testing.assert_allclose(terms['kl'], kl, rtol=1e-12)
  np.testing.assert_allclose(terms['elbo'], log_lik - kl, rtol=1e-12)
  np.testing.assert_allclose(terms['squared_error'], np.mean((loc - flat) ** 2, -1),
                             rtol=1e-12)
  entropy = scipy.stats.norm(loc, scale).entropy().sum(-1)
  np.testing.assert_allclose(terms['entropy'], entropy, rtol=1e-12)


def test_log_importance_weight_against_scipy():
  rng = np.random.default_rng(3)
  with jax.enable_x64(True):
    out, x = _fake_output(rng)
    got = objectives.log_importance_weight(out, x)
  loc, scale = out.loc, out.scale
  log_px = scipy.stats.norm(loc, scale).logpdf(x.reshape(3, -1)).sum(-1)
  log_pz = scipy.stats.norm(0, 1).logpdf(out.z).sum(-1)
  log_qz = scipy.stats.norm(out.posterior_mean,
                            np.exp(0.5 * out.posterior_log_var)).logpdf(out.z).sum(-1)
  np.testing.assert_allclose(got, log_px + log_pz - log_qz, rtol=1e-12)
