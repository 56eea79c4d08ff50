"""Evaluation estimators against cases with known answers (float64 references)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from sosvae_jax import evaluation
from sosvae_jax import objectives

# Linear-Gaussian model z ~ N(0, I_L), x | z ~ N(W z + b, S^2 I_D).
_L, _D, _S = 2, 5, 0.5
# One batch size and few sample counts for every IWAE test: each distinct
# shape costs a compilation, the bulk of this file's run time on CPU.
_BATCH = 512


def _make_linear_gaussian(seed: int, batch: int = _BATCH):
  """Parameters, data from the model, exact posterior and exact log p(x) (float64)."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(_D, _L))
  b = rng.normal(size=(_D,))
  x = (rng.normal(size=(batch, _L)) @ w.T + b
       + _S * rng.normal(size=(batch, _D)))  # (B, D)
  post_cov = np.linalg.inv(np.eye(_L) + w.T @ w / _S ** 2)  # (L, L)
  post_mean = (x - b) @ w @ post_cov / _S ** 2  # (B, L); post_cov is symmetric
  exact = scipy.stats.multivariate_normal(b, w @ w.T + _S ** 2 * np.eye(_D)).logpdf(x)
  return dict(w=w, b=b, x=x, post_mean=post_mean, post_cov=post_cov, exact=exact)


def _mvn_log_prob(v, mean, chol):
  """log N(v; mean, chol chol^T) for v [..., B, L], mean [B, L], chol [L, L]."""
  sol = jax.scipy.linalg.solve_triangular(
      chol, jnp.moveaxis(v - mean, -1, 0).reshape(chol.shape[0], -1), lower=True)
  maha = jnp.sum(jnp.square(sol), 0).reshape(v.shape[:-1])
  log_det = 2 * jnp.sum(jnp.log(jnp.diag(chol)))
  return -0.5 * (maha + log_det + chol.shape[0] * math.log(2 * math.pi))


@jax.jit(static_argnames="n")
def _terms(model, proposal_mean, proposal_cov, key, n):
  """(log p(x|z), log p(z), log q(z|x)), each [n, B], for z ~ N(proposal)."""
  chol = jnp.linalg.cholesky(jnp.asarray(proposal_cov))
  mean = jnp.asarray(proposal_mean)
  eps = jax.random.normal(key, (n,) + mean.shape, mean.dtype)  # (n, B, L)
  z = mean + eps @ chol.T
  x_mean = z @ model["w"].T + model["b"]  # (n, B, D)
  log_px_z = jnp.sum(jax.scipy.stats.norm.logpdf(model["x"], x_mean, _S), -1)
  log_pz = jnp.sum(jax.scipy.stats.norm.logpdf(z), -1)
  return log_px_z, log_pz, _mvn_log_prob(z, mean, chol)


def _imperfect_proposal(model):
  """A diagonal q, too narrow and shifted: a clearly loose bound."""
  mean = model["post_mean"] + 0.5 * np.sqrt(np.diag(model["post_cov"]))
  return mean, 0.4 * np.diag(np.diag(model["post_cov"]))


def test_iwae_is_log_mean_weight():
  rng = np.random.default_rng(1)
  a, b, c = (rng.normal(size=(7, 3)) for _ in range(3))
  got = jax.jit(evaluation.iwae_bound)(a, b, c)
  expected = np.log(np.mean(np.exp(a + b - c), 0))
  np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.slow
def test_iwae_below_exact_and_tightens_with_k():
  model = _make_linear_gaussian(seed=0)
  mean, cov = _imperfect_proposal(model)
  with jax.enable_x64(True):
    bounds = []
    for i, k in enumerate((1, 10, 100, 1000)):
      terms = _terms(model, mean, cov, jax.random.PRNGKey(i), k)
      bounds.append(float(np.mean(evaluation.iwae_bound(*terms))))
  exact = float(np.mean(model["exact"]))
  assert all(bound < exact for bound in bounds), (bounds, exact)
  assert all(lo < hi for lo, hi in zip(bounds, bounds[1:])), bounds
  assert exact - bounds[-1] < 0.2 * (exact - bounds[0])  # 0.03 vs 1.0 nats here


@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_iwae_exact_for_exact_posterior(k):
  model = _make_linear_gaussian(seed=2)
  with jax.enable_x64(True):
    terms = _terms(model, model["post_mean"], model["post_cov"],
                   jax.random.PRNGKey(k), k)
    got = evaluation.iwae_bound(*terms)
  np.testing.assert_allclose(got, model["exact"], rtol=0, atol=1e-9)


def _log_weight_fn(model, mean, cov):
  def fn(x, key, n):
    del x  # the model closes over its data
    log_px_z, log_pz, log_qz = _terms(model, mean, cov, key, n)
    return log_px_z + log_pz - log_qz
  return fn


@pytest.mark.parametrize("num_samples,chunk_size", [(100, 100), (100, 10), (100, 30)])
def test_chunked_iwae_equals_unchunked(num_samples, chunk_size):
  model = _make_linear_gaussian(seed=3)
  fn = _log_weight_fn(model, *_imperfect_proposal(model))
  key = jax.random.PRNGKey(0)
  with jax.enable_x64(True):
    got = evaluation.chunked_iwae(fn, model["x"], key, num_samples, chunk_size)
    sizes = [min(chunk_size, num_samples - s) for s in range(0, num_samples, chunk_size)]
    log_w = jnp.concatenate(
        [fn(model["x"], jax.random.fold_in(key, i), n) for i, n in enumerate(sizes)])
    expected = evaluation.iwae_bound(log_w, jnp.zeros_like(log_w), jnp.zeros_like(log_w))
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_chunked_iwae_exact_posterior():
  model = _make_linear_gaussian(seed=4)
  fn = _log_weight_fn(model, model["post_mean"], model["post_cov"])
  with jax.enable_x64(True):
    got = evaluation.chunked_iwae(fn, model["x"], jax.random.PRNGKey(1), 1000, 100)
  np.testing.assert_allclose(got, model["exact"], rtol=0, atol=1e-9)


_MI = jax.jit(evaluation.mutual_information_and_marginal_kl, static_argnums=3)
_MI_N, _MI_L, _MI_SAMPLES = 8, 2, 1000  # one shape, one compilation


def _mi(mean, log_var, seed=0):
  with jax.enable_x64(True):
    mi, mkl = _MI(jnp.asarray(mean), jnp.asarray(log_var), jax.random.PRNGKey(seed),
                  _MI_SAMPLES)
    kl = float(np.mean(objectives.gaussian_kl(mean, log_var)))
  return float(mi), float(mkl), kl


def test_rate_decomposition_identity():
  # rybkin2021_sigma_vae_calibrated_decoders.txt eq. 6: E KL(q||p) = I_e + KL(m||p).
  rng = np.random.default_rng(5)
  shape = (_MI_N, _MI_L)
  mean, log_var = rng.normal(size=shape), rng.normal(-1.0, 0.5, size=shape)
  mi, mkl, kl = _mi(mean, log_var)
  assert 0 < mi <= math.log(_MI_N) and mkl > 0
  # Monte Carlo standard error of the sum is about sqrt(Var(log q - log p) / 8000) < 0.02.
  assert abs(mi + mkl - kl) < 0.06, (mi, mkl, kl)


def test_mutual_information_zero_for_identical_posteriors():
  mean = np.tile([[0.3, -1.0]], (_MI_N, 1))
  log_var = np.tile([[-0.5, -2.0]], (_MI_N, 1))
  mi, mkl, kl = _mi(mean, log_var)
  assert abs(mi) < 1e-9
  assert abs(mkl - kl) < 0.1 * kl  # m = q: all of the rate is marginal KL


def test_mutual_information_log_n_for_separated_narrow_posteriors():
  n = _MI_N
  mean = 10.0 * np.stack([np.cos(np.arange(n)), np.sin(np.arange(n))], 1)  # (8, 2)
  log_var = np.full((n, 2), -6.0)
  mi, _, _ = _mi(mean, log_var)
  assert mi <= math.log(n) + 1e-12
  assert math.log(n) - mi < 1e-6


def _random_cov(rng, f, rank=None):
  a = rng.normal(size=(f, rank or f))
  return a @ a.T / f + (0 if rank else 0.1 * np.eye(f))


def test_frechet_closed_form_for_diagonal_covariances():
  rng = np.random.default_rng(6)
  mu1, mu2 = rng.normal(size=4), rng.normal(size=4)
  a, b = rng.uniform(0.1, 3.0, 4), rng.uniform(0.1, 3.0, 4)
  got = evaluation.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_frechet_zero_for_identical_and_symmetric():
  rng = np.random.default_rng(7)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  c1, c2 = _random_cov(rng, 6), _random_cov(rng, 6)
  assert abs(evaluation.frechet_distance(mu1, c1, mu1, c1)) < 1e-10
  np.testing.assert_allclose(evaluation.frechet_distance(mu1, c1, mu2, c2),
                             evaluation.frechet_distance(mu2, c2, mu1, c1), rtol=1e-10)


def test_frechet_non_commuting_against_scipy_sqrtm():
  rng = np.random.default_rng(8)
  mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
  c1, c2 = _random_cov(rng, 5), _random_cov(rng, 5)
  assert not np.allclose(c1 @ c2, c2 @ c1)
  root = np.real(scipy.linalg.sqrtm(c1 @ c2))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1 + c2 - 2 * root)
  np.testing.assert_allclose(evaluation.frechet_distance(mu1, c1, mu2, c2),
                             expected, rtol=1e-9)


def test_frechet_near_singular_covariances():
  rng = np.random.default_rng(9)
  c1, c2 = _random_cov(rng, 6, rank=2), _random_cov(rng, 6, rank=3)
  mu = np.zeros(6)
  d = evaluation.frechet_distance(mu, c1, mu, c2)
  assert np.isfinite(d) and d > 0
  assert abs(evaluation.frechet_distance(mu, c1, mu, c1)) < 1e-8
  # W2^2 of zero-mean Gaussians is at most (sqrt(tr C1) + sqrt(tr C2))^2.
  assert d <= (np.sqrt(np.trace(c1)) + np.sqrt(np.trace(c2))) ** 2


def test_chunked_feature_statistics_equal_one_shot():
  rng = np.random.default_rng(10)
  features = 1e4 + rng.normal(size=(50_000, 8)).astype(np.float32)  # large common offset
  stats = evaluation.FeatureStatistics()
  for start in range(0, len(features), 7000):  # 7 chunks and a remainder
    stats.update(features[start:start + 7000])
  mu, cov = stats.statistics()
  mu_ref, cov_ref = evaluation.feature_statistics(features)
  assert stats.count == 50_000
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-13)
  np.testing.assert_allclose(cov, cov_ref, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(cov_ref, np.cov(features.astype(np.float64), rowvar=False),
                             rtol=1e-9)


def _coherence(residual):
  return jax.jit(evaluation.residual_coherence)(
      jnp.asarray(residual, jnp.float32), jnp.zeros(residual.shape, jnp.float32))


def test_high_frequency_mask_counts_bins_outside_quarter_disc():
  # (k/28)^2 + (l/28)^2 > (1/4)^2  <=>  k^2 + l^2 > 49, integers k, l in [-14, 13].
  ks = np.arange(-14, 14)
  count = sum(1 for k in ks for l in ks if k * k + l * l > 49)
  assert evaluation.high_frequency_mask(28, 28).sum() == count
  assert abs(evaluation.high_frequency_mask(512, 512).mean() - (1 - math.pi / 16)) < 1e-3


def test_coherence_of_white_noise():
  residual = np.random.default_rng(11).normal(size=(16, 28, 28, 1))
  got = _coherence(residual)
  expected_fraction = evaluation.high_frequency_mask(28, 28).mean()
  assert abs(float(got["autocorrelation"])) < 0.04
  assert abs(float(got["high_frequency_fraction"]) - expected_fraction) < 0.02
  np.testing.assert_allclose(got["white_noise_high_frequency_fraction"],
                             expected_fraction, rtol=1e-6)


def test_coherence_of_constant_offset_per_image():
  offsets = np.random.default_rng(12).normal(size=(6, 1, 1, 3))
  got = _coherence(np.broadcast_to(offsets, (6, 20, 24, 3)))
  np.testing.assert_allclose(got["autocorrelation"], 1.0, atol=1e-5)
  assert float(got["high_frequency_fraction"]) < 1e-6


def test_coherence_of_gaussian_smoothed_noise():
  sigma = 3.0
  noise = np.random.default_rng(13).normal(size=(32, 32, 32, 1))
  f = np.fft.fftfreq(32)
  transfer = np.exp(-2 * (math.pi * sigma) ** 2 * (f[:, None] ** 2 + f[None, :] ** 2))
  smooth = np.real(np.fft.ifft2(np.fft.fft2(noise, axes=(1, 2)) * transfer[..., None],
                                axes=(1, 2)))
  got = _coherence(smooth)
  # Autocorrelation of white noise blurred by a Gaussian of width sigma: exp(-h^2 / (4 sigma^2)).
  assert abs(float(got["autocorrelation"]) - math.exp(-1 / (4 * sigma ** 2))) < 0.02
  assert float(got["high_frequency_fraction"]) < 1e-3


def test_residual_coherence_rejects_mismatched_shapes():
  with pytest.raises(ValueError, match="samples and means"):
    evaluation.residual_coherence(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4, 3)))
