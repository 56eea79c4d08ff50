"""The model without deep learning: Adam reaches the closed-form PPCA maximum."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.stats

from sosvae_jax import direct_lowrank_fit


def _data(rng, num, size, rank):
  weights = rng.normal(size=(size, rank)) * np.array([3.0, 2.0, 1.5])[:rank]
  return (1.0 + rng.normal(size=(num, rank)) @ weights.T
          + 0.5 * rng.normal(size=(num, size)))


def _dense_ppca(data, rank):
  """Tipping and Bishop 1999 from the eigh of the dense (1/N) sample covariance."""
  cov = np.cov(data, rowvar=False, bias=True)
  eigval = np.linalg.eigvalsh(cov)[::-1]
  sigma2 = eigval[rank:].mean()
  return sigma2, float(np.mean(scipy.stats.multivariate_normal(
      data.mean(0), _ppca_cov(cov, rank, sigma2)).logpdf(data)))


def _ppca_cov(cov, rank, sigma2):
  eigval, eigvec = np.linalg.eigh(cov)
  eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
  factor = eigvec[:, :rank] * np.sqrt(eigval[:rank] - sigma2)
  return factor @ factor.T + sigma2 * np.eye(cov.shape[0])


def _mean_logpdf(data, fit):
  cov = np.asarray(fit['cov_factor']) @ np.asarray(fit['cov_factor']).T
  cov = cov + np.diag(np.asarray(fit['cov_diag']))
  return float(np.mean(scipy.stats.multivariate_normal(
      np.asarray(fit['loc']), cov).logpdf(data)))


def test_isotropic_fit_reaches_ppca_maximum_float64():
  """Section 4.5: mu, P, sigma^2 learned by Adam reach the closed-form PPCA."""
  data = _data(np.random.default_rng(52), 200, 12, 3)
  sigma2, best = _dense_ppca(data, 3)
  with jax.enable_x64(True):
    fit = direct_lowrank_fit.fit_lowrank_observation_model(
        data, 3, steps=1500, learning_rate=0.05)
    history = np.asarray(fit['log_likelihood'])
  trained = _mean_logpdf(data, fit)
  assert trained <= best + 1e-9  # the closed form is the maximum
  assert best - trained < 1e-4, (best, trained)
  np.testing.assert_allclose(np.asarray(fit['cov_diag']), sigma2, rtol=1e-3)
  assert history.shape == (1500,) and history[-1] > history[0]


@pytest.mark.slow
def test_diagonal_fit_float32_beats_isotropic():
  """A free diagonal D fits at least as well as sigma^2 I (it contains it)."""
  rng = np.random.default_rng(11)
  data = (_data(rng, 300, 10, 3) * np.linspace(0.5, 2.0, 10)).astype(np.float32)
  isotropic = direct_lowrank_fit.fit_lowrank_observation_model(
      data, 3, steps=1500, learning_rate=0.05)
  diagonal = direct_lowrank_fit.fit_lowrank_observation_model(
      data, 3, steps=1500, learning_rate=0.05, isotropic=False)
  assert np.ptp(np.asarray(diagonal['cov_diag'])) > 0.0
  assert np.ptp(np.asarray(isotropic['cov_diag'])) == 0.0
  _, best_isotropic = _dense_ppca(data.astype(np.float64), 3)
  assert _mean_logpdf(data, isotropic) == pytest.approx(best_isotropic, abs=2e-3)
  assert _mean_logpdf(data, diagonal) > _mean_logpdf(data, isotropic)


@pytest.mark.slow
def test_fit_prints_progress_and_keeps_the_history(capsys):
  """The figures command's minute-long fit says how far it is, on stderr."""
  data = _data(np.random.default_rng(3), 50, 6, 2).astype(np.float32)
  steps = direct_lowrank_fit.STEPS_PER_CALL * 2 + 30  # two full calls and a short one
  fit = direct_lowrank_fit.fit_lowrank_observation_model(data, 2, steps=steps)
  lines = capsys.readouterr().err.splitlines()
  assert lines[0].startswith('low-rank fit: Adam steps: 100/230')
  assert lines[-1].startswith('low-rank fit: Adam steps: 230/230  average log-likelihood')
  assert np.asarray(fit['log_likelihood']).shape == (steps,)
  quiet = direct_lowrank_fit.fit_lowrank_observation_model(data, 2, steps=steps,
                                                           show_progress=False)
  assert capsys.readouterr().err == ''
  # Chunked calls continue one optimisation: the same result either way.
  np.testing.assert_allclose(quiet['log_likelihood'], fit['log_likelihood'], rtol=1e-6)
