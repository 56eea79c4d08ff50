"""Gaussian-mixture sampler of the aggregate posterior: known answers, float64 references."""

import numpy as np
import pytest
import scipy.stats

from sosvae_jax.evaluation import gmm


def _two_clusters(n=2000, seed=0):
  """A well-separated 2-component mixture in 3-d with correlated components."""
  rng = np.random.default_rng(seed)
  means = np.array([[-6.0, 0.0, 2.0], [6.0, 1.0, -2.0]])
  covs = np.array([[[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.5]],
                   [[0.5, -0.2, 0.1], [-0.2, 2.0, 0.0], [0.1, 0.0, 1.0]]])
  weights = np.array([0.3, 0.7])
  labels = rng.random(n) < weights[0]
  z = np.where(labels[:, None],
               rng.multivariate_normal(means[0], covs[0], n),
               rng.multivariate_normal(means[1], covs[1], n))
  return z, weights, means, covs


def _order(mixture):
  return np.argsort(mixture.means[:, 0])


@pytest.mark.parametrize('covariance_type', gmm.COVARIANCE_TYPES)
def test_recovers_well_separated_mixture(covariance_type):
  z, weights, means, covs = _two_clusters()
  fitted = gmm.fit_gaussian_mixture(z, 2, covariance_type=covariance_type, seed=1)
  order = _order(fitted)
  assert fitted.converged
  np.testing.assert_allclose(fitted.weights[order], weights, atol=0.03)
  np.testing.assert_allclose(fitted.means[order], means, atol=0.15)
  expected = covs if covariance_type == 'full' else np.stack([np.diag(np.diag(c)) for c in covs])
  np.testing.assert_allclose(fitted.full_covariances()[order], expected, atol=0.2)


@pytest.mark.parametrize('covariance_type', gmm.COVARIANCE_TYPES)
def test_log_prob_matches_scipy_float64(covariance_type):
  z, *_ = _two_clusters(n=300)
  fitted = gmm.fit_gaussian_mixture(z, 3, covariance_type=covariance_type)
  points = np.concatenate([z[:50], [[40.0, -30.0, 25.0]]])  # one far in the tail
  dens = np.stack([scipy.stats.multivariate_normal(m, c).logpdf(points)
                   for m, c in zip(fitted.means, fitted.full_covariances())], 1)
  expected = scipy.special.logsumexp(dens + np.log(fitted.weights), axis=1)
  np.testing.assert_allclose(fitted.log_prob(points), expected, rtol=1e-10)
  assert np.isclose(fitted.log_likelihood, fitted.log_prob(z).mean())


def test_ill_conditioned_component_log_prob():
  """Rotated covariance with condition number 1e10 against an eigendecomposition reference."""
  q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
  eigvals = np.array([1e-5, 1.0, 1e5])
  cov = (q * eigvals) @ q.T
  mixture = gmm.GaussianMixture(np.array([1.0]), np.zeros((1, 3)), cov[None], 'full')
  points = (np.random.default_rng(0).normal(size=(20, 3)) * np.sqrt(eigvals)) @ q.T
  maha = np.sum((points @ q) ** 2 / eigvals, axis=1)
  expected = -0.5 * (3 * np.log(2 * np.pi) + np.sum(np.log(eigvals)) + maha)
  np.testing.assert_allclose(mixture.log_prob(points), expected, rtol=1e-6)


def test_samples_follow_the_mixture():
  z, weights, means, covs = _two_clusters(n=500)
  mixture = gmm.GaussianMixture(weights, means, covs, 'full')
  draws = mixture.sample(20000, seed=3)
  assert draws.shape == (20000, 3)
  first = draws[:, 0] < 0
  assert abs(first.mean() - weights[0]) < 0.015
  np.testing.assert_allclose(draws[first].mean(0), means[0], atol=0.05)
  np.testing.assert_allclose(np.cov(draws[~first].T), covs[1], atol=0.08)
  np.testing.assert_array_equal(draws, mixture.sample(20000, seed=3))


def test_dict_round_trip():
  z, *_ = _two_clusters(n=200)
  fitted = gmm.fit_gaussian_mixture(z, 2, covariance_type='diag')
  again = gmm.GaussianMixture.from_dict(fitted.to_dict())
  np.testing.assert_array_equal(again.log_prob(z), fitted.log_prob(z))


def test_bad_input_is_explained():
  z, *_ = _two_clusters(n=10)
  with pytest.raises(ValueError, match='num_components=11'):
    gmm.fit_gaussian_mixture(z, 11)
  with pytest.raises(ValueError, match="covariance_type='spherical'"):
    gmm.fit_gaussian_mixture(z, 2, covariance_type='spherical')
  with pytest.raises(ValueError, match='non-finite'):
    gmm.fit_gaussian_mixture(np.full((10, 3), np.nan), 2)
  with pytest.raises(ValueError, match=r'\[N, 3\]'):
    gmm.fit_gaussian_mixture(z, 2).log_prob(np.zeros((4, 2)))
