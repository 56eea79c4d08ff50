"""Structured-precision Gaussian and YCbCr against dense float64 references."""

from __future__ import annotations

import math

import hypothesis
from hypothesis import strategies as hst
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from sosvae_jax.distributions import colour
from sosvae_jax.distributions import structured
from sosvae_jax.distributions import structured_ycbcr

_H, _W = 5, 6  # big enough for a 5x5 kernel with dilation 2 to reach inside
_BATCHES = [(), (3,), (2, 2)]
_KERNELS = [(3, 1), (3, 2), (5, 1), (5, 2)]  # (kernel_size, dilation)


@pytest.fixture(autouse=True, scope='module')
def _float64():
  # Dense references are compared in float64; restored after this module.
  with jax.enable_x64(True):
    yield


# ----------------------------------------------------- dense references ----


def _dense_lower(log_diag: np.ndarray, off_diag: np.ndarray, k: int,
                 d: int) -> np.ndarray:
  """L [S, S] of one [H, W] image, built pixel by pixel from the layout."""
  h, w = log_diag.shape
  r, centre = k // 2, k * k // 2
  lower = np.zeros((h * w, h * w))
  for i in range(h):
    for j in range(w):
      p = i * w + j
      lower[p, p] = np.exp(log_diag[i, j])
      for t in range(centre + 1, k * k):  # kernel entries after the centre
        qi, qj = i + d * (t // k - r), j + d * (t % k - r)
        if 0 <= qi < h and 0 <= qj < w:
          lower[qi * w + qj, p] = off_diag[i, j, t - centre - 1]
  return lower


def _dense_batch(log_diag, off_diag, k, d):
  """[*B, S, S] lower factors and covariances inv(L L^T)."""
  batch = log_diag.shape[:-2]
  s = log_diag.shape[-2] * log_diag.shape[-1]
  lower = np.zeros(batch + (s, s))
  cov = np.zeros(batch + (s, s))
  for b in np.ndindex(batch):
    lower[b] = _dense_lower(log_diag[b], off_diag[b], k, d)
    cov[b] = np.linalg.inv(lower[b] @ lower[b].T)
  return lower, cov


def _dense_log_prob(lower: np.ndarray, residual: np.ndarray) -> float:
  """log N(r; 0, (L L^T)^{-1}) from a dense L, without inverting anything."""
  z = lower.T @ residual.ravel()
  return (-0.5 * z.size * math.log(2 * math.pi)
          + np.log(np.diag(lower)).sum() - 0.5 * z @ z)


def _params(seed, batch, k, *, h=_H, w=_W, spread=0.3, off_scale=0.3):
  rng = np.random.default_rng(seed)
  loc = rng.normal(size=batch + (h, w))
  log_diag = spread * rng.normal(size=batch + (h, w))
  off_diag = off_scale * rng.normal(size=batch + (h, w, k * k // 2))
  return loc, log_diag, off_diag


def _key(seed: int) -> jax.Array:
  # XLA's RngBitGenerator: threefry over 10^6 draws takes seconds to compile
  # on these CPUs; the sampler itself does not care which key it gets.
  return jax.random.key(seed, impl='rbg')


def _make(loc, log_diag, off_diag, k, d):
  return structured.StructuredPrecisionNormal(
      jnp.asarray(loc), jnp.asarray(log_diag), jnp.asarray(off_diag),
      kernel_size=k, dilation=d)


# ----------------------------------------------------------- densities ----


@pytest.mark.parametrize('batch', _BATCHES)
@pytest.mark.parametrize('k,d', _KERNELS)
def test_log_prob_and_entropy_match_scipy(batch, k, d):
  loc, log_diag, off_diag = _params(0, batch, k)
  x = np.random.default_rng(1).normal(size=(2,) + batch + (_H, _W))
  _, cov = _dense_batch(log_diag, off_diag, k, d)

  @jax.jit
  def run(loc, log_diag, off_diag, x):
    dist = structured.StructuredPrecisionNormal(
        loc, log_diag, off_diag, kernel_size=k, dilation=d)
    return dist.log_prob(x), dist.entropy()

  log_prob, entropy = run(loc, log_diag, off_diag, x)
  assert log_prob.shape == (2,) + batch and entropy.shape == batch
  for b in np.ndindex(batch):
    mvn = scipy.stats.multivariate_normal(loc[b].ravel(), cov[b])
    np.testing.assert_allclose(entropy[b], mvn.entropy(), rtol=1e-10)
    for n in range(2):
      np.testing.assert_allclose(log_prob[(n,) + b],
                                 mvn.logpdf(x[(n,) + b].ravel()), rtol=1e-10)


@pytest.mark.parametrize('batch,k,d', [((), 3, 1), ((2, 2), 3, 2),
                                       ((2, 2), 5, 1), ((3,), 5, 2)])
def test_dense_moments_match_numpy(batch, k, d):
  loc, log_diag, off_diag = _params(2, batch, k)
  lower, cov = _dense_batch(log_diag, off_diag, k, d)

  @jax.jit
  def run(loc, log_diag, off_diag):
    dist = structured.StructuredPrecisionNormal(
        loc, log_diag, off_diag, kernel_size=k, dilation=d)
    return (dist.mean(), dist.variance(), dist.cholesky_factor(),
            dist.precision(), dist.covariance())

  mean, var, chol, prec, cov_jax = run(loc, log_diag, off_diag)
  np.testing.assert_array_equal(mean, loc)
  # exp may differ from numpy's in the last bit.
  np.testing.assert_allclose(chol, lower, rtol=1e-15, atol=0)
  np.testing.assert_allclose(prec, lower @ np.swapaxes(lower, -1, -2),
                             rtol=1e-12, atol=1e-12)
  np.testing.assert_allclose(cov_jax, cov, rtol=1e-9, atol=1e-12)
  np.testing.assert_allclose(
      var, np.diagonal(cov, axis1=-2, axis2=-1).reshape(batch + (_H, _W)),
      rtol=1e-9)


@pytest.mark.parametrize('k,d', _KERNELS)
def test_apply_and_solve_match_dense_triangular(k, d):
  """L^T r and the sampler's back-substitution L^{-T} e, extra leading dims."""
  _, log_diag, off_diag = _params(3, (2,), k)
  lower, _ = _dense_batch(log_diag, off_diag, k, d)
  e = np.random.default_rng(4).normal(size=(3, 2, _H, _W))
  kw = dict(kernel_size=k, dilation=d)
  apply = jax.jit(lambda *a: structured.apply_lt(*a, **kw))(
      e, log_diag, off_diag)
  solve = jax.jit(lambda *a: structured.solve_lt(*a, **kw))(
      e, log_diag, off_diag)
  for n, b in np.ndindex(3, 2):
    rhs = e[n, b].ravel()
    np.testing.assert_allclose(apply[n, b].ravel(), lower[b].T @ rhs,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        solve[n, b].ravel(),
        scipy.linalg.solve_triangular(lower[b].T, rhs, lower=False),
        rtol=1e-10, atol=1e-12)


def test_out_of_image_weights_are_ignored():
  k, d = 3, 2
  loc, log_diag, off_diag = _params(5, (), k)
  x = np.random.default_rng(6).normal(size=(_H, _W))
  lower = _dense_lower(log_diag, off_diag, k, d)
  # Weights whose neighbour falls outside: last rows, and the right column
  # for rightward offsets; change them all and nothing may move.
  noisy = off_diag.copy()
  noisy[-d:, :, k // 2:] += 100.0
  noisy[:, -d:, :k // 2] += 100.0
  np.testing.assert_array_equal(_dense_lower(log_diag, noisy, k, d), lower)
  log_prob = jax.jit(lambda o: _make(loc, log_diag, o, k, d).log_prob(x))
  np.testing.assert_allclose(log_prob(noisy), log_prob(off_diag), rtol=1e-13)


# ------------------------------------------------------------- sampling ----


@pytest.mark.parametrize('k,d', [(3, 1), (5, 2)])
def test_sample_covariance_matches_dense(k, d):
  h, w, n, batch = 4, 5, 20000, (2,)
  loc, log_diag, off_diag = _params(7, batch, k, h=h, w=w)
  _, cov = _dense_batch(log_diag, off_diag, k, d)

  @jax.jit
  def sample(key, loc, log_diag, off_diag):
    dist = structured.StructuredPrecisionNormal(
        loc, log_diag, off_diag, kernel_size=k, dilation=d)
    return dist.sample(seed=key, sample_shape=(n,))

  x = np.asarray(sample(_key(0), loc, log_diag, off_diag))
  assert x.shape == (n,) + batch + (h, w)
  for b in np.ndindex(batch):
    flat = x[(slice(None),) + b].reshape(n, h * w)
    var = np.diagonal(cov[b])
    # Standard errors of the sample mean and covariance of a Gaussian.
    mean_z = (flat.mean(0) - loc[b].ravel()) / np.sqrt(var / n)
    emp = np.cov(flat, rowvar=False)
    cov_se = np.sqrt((np.outer(var, var) + cov[b] ** 2) / n)
    assert np.abs(mean_z).max() < 5.0
    assert np.abs((emp - cov[b]) / cov_se).max() < 5.0


def test_sample_and_log_prob_pytree_jit_and_indexing():
  """The distribution passes through jit as a pytree, traced once."""
  k, d = 3, 1
  loc, log_diag, off_diag = _params(8, (3,), k)
  dist = _make(loc, log_diag, off_diag, k, d)
  traces = []

  @jax.jit
  def sample_and_lp(dist, key):
    traces.append(1)
    return dist.sample_and_log_prob(seed=key, sample_shape=(2, 4))

  for seed in range(2):  # the distribution is a pytree argument
    x, lp = sample_and_lp(dist, _key(seed))
  assert len(traces) == 1
  assert x.shape == (2, 4, 3, _H, _W) and lp.shape == (2, 4, 3)
  _, cov = _dense_batch(log_diag, off_diag, k, d)
  for b in range(3):
    mvn = scipy.stats.multivariate_normal(loc[b].ravel(), cov[b])
    xb = np.asarray(x[:, :, b]).reshape(8, -1)
    np.testing.assert_allclose(np.asarray(lp[:, :, b]).ravel(),
                               mvn.logpdf(xb), rtol=1e-10)
  assert dist[1:].batch_shape == (2,)
  np.testing.assert_allclose(dist[-1].log_prob(x[0, 0, -1]), lp[0, 0, -1])


def test_ill_conditioned():
  """log_diag over 3 orders of magnitude: float64 exact, float32 close."""
  k, d = 5, 1
  rng = np.random.default_rng(9)
  loc, _, off_unit = _params(9, (2,), k)
  log_diag = math.log(10.0) * rng.uniform(-1.5, 1.5, size=(2, _H, _W))
  # Off-diagonals on the scale of their column's diagonal (L = L0 D with L0
  # unit triangular): precision diagonals span 6 orders of magnitude while
  # cov stays within what scipy's eigenvalue cut-off accepts.
  off_diag = off_unit * np.exp(log_diag)[..., None]
  lower, cov = _dense_batch(log_diag, off_diag, k, d)
  assert min(np.linalg.cond(c) for c in cov) > 1e6
  # A typical draw x = mu + L^{-T} eps (dense numpy), so the quadratic form
  # is O(S) and not dominated by the stiffest direction.
  x = loc + np.stack([scipy.linalg.solve_triangular(
      lower[b].T, rng.normal(size=_H * _W)) for b in range(2)]).reshape(
          loc.shape)
  e = rng.normal(size=(2, _H, _W))
  ref = [scipy.stats.multivariate_normal(loc[b].ravel(), cov[b]).logpdf(
      x[b].ravel()) for b in range(2)]

  @jax.jit
  def run(loc, log_diag, off_diag, x, e):
    dist = _make(loc, log_diag, off_diag, k, d)
    solve = structured.solve_lt(e, log_diag, off_diag, kernel_size=k,
                                dilation=d)
    return dist.log_prob(x), solve

  lp64, y64 = run(loc, log_diag, off_diag, x, e)
  # scipy inverts cov by eigh and loses about cond(cov) * eps; the formula
  # straight from the dense L is the tight reference.
  np.testing.assert_allclose(lp64, ref, rtol=0, atol=1e-5)
  direct = [_dense_log_prob(lower[b], x[b] - loc[b]) for b in range(2)]
  np.testing.assert_allclose(lp64, direct, rtol=1e-12)
  f32 = [np.asarray(a, np.float32) for a in (loc, log_diag, off_diag, x, e)]
  lp32, y32 = run(*f32)
  assert lp32.dtype == jnp.float32 and y32.dtype == jnp.float32
  np.testing.assert_allclose(lp32, direct, rtol=1e-5, atol=1e-3)
  for b in range(2):
    exact = scipy.linalg.solve_triangular(lower[b].T, e[b].ravel())
    np.testing.assert_allclose(y64[b].ravel(), exact, rtol=1e-8)
    # Backward error of the float32 solve: L^T y reproduces e.
    resid = lower[b].T @ np.asarray(y32[b], np.float64).ravel() - e[b].ravel()
    scale = np.abs(lower[b].T) @ np.abs(np.asarray(y32[b]).ravel())
    assert np.max(np.abs(resid) / (scale + 1e-30)) < 1e-5


@hypothesis.settings(max_examples=12, deadline=None)
@hypothesis.given(seed=hst.integers(0, 2**31 - 1),
                  spread=hst.floats(0.0, 3.0), off_scale=hst.floats(0.0, 2.0))
def test_solve_backward_error_and_log_prob_property(seed, spread, off_scale):
  """Any conditioning: L^T (L^{-T} e) = e to rounding, log_prob exact."""
  loc, log_diag, off_diag = _params(seed, (2,), 3, spread=spread,
                                    off_scale=off_scale)
  rng = np.random.default_rng(seed + 1)
  x, e = loc + rng.normal(size=loc.shape), rng.normal(size=loc.shape)
  lp, y = _solve_and_log_prob(loc, log_diag, off_diag, x, e)
  for b in range(2):
    lower = _dense_lower(log_diag[b], off_diag[b], 3, 2)
    yb = np.asarray(y[b]).ravel()
    # Componentwise backward error of a triangular solve is O(eps).
    resid = np.abs(lower.T @ yb - e[b].ravel())
    scale = np.abs(lower.T) @ np.abs(yb) + np.abs(e[b].ravel())
    assert np.max(resid / scale) < 1e-12
    np.testing.assert_allclose(
        lp[b], _dense_log_prob(lower, x[b] - loc[b]), rtol=1e-10)


@jax.jit
def _solve_and_log_prob(loc, log_diag, off_diag, x, e):
  kw = dict(kernel_size=3, dilation=2)
  lp = structured.StructuredPrecisionNormal(loc, log_diag, off_diag,
                                            **kw).log_prob(x)
  return lp, structured.solve_lt(e, log_diag, off_diag, **kw)


# ---------------------------------------------------------------- basis ----


@pytest.mark.parametrize('k,d', [(3, 2), (5, 1)])
def test_basis_off_diag(k, d):
  rng = np.random.default_rng(10)
  n_b, batch = 4, (2,)
  basis = rng.normal(size=(n_b, k * k // 2))
  weights = 0.2 * rng.normal(size=batch + (_H, _W, n_b))
  loc, log_diag, _ = _params(11, batch, k)
  off = np.einsum('...b,bm->...m', weights, basis)  # dense B W, eq. 15
  _, cov = _dense_batch(log_diag, off, k, d)
  x = rng.normal(size=batch + (_H, _W))

  @jax.jit
  def run(basis, weights, x):
    off_diag = structured.basis_off_diag(basis, weights)
    return off_diag, _make(loc, log_diag, off_diag, k, d).log_prob(x)

  off_jax, lp = run(basis, weights, x)
  np.testing.assert_allclose(off_jax, off, rtol=1e-12)
  for b in range(2):
    np.testing.assert_allclose(
        lp[b], scipy.stats.multivariate_normal(loc[b].ravel(), cov[b]).logpdf(
            x[b].ravel()), rtol=1e-10)
  grad = jax.grad(lambda bs: run(bs, weights, x)[1].sum())(basis)
  assert grad.shape == basis.shape and np.all(np.isfinite(grad))


# --------------------------------------------------------------- checks ----


@pytest.mark.parametrize('loc_shape,ld_shape,off_shape,k,d,match', [
    ((4, 5), (4, 5), (4, 5, 8), 4, 1, 'kernel_size'),
    ((4, 5), (4, 5), (4, 5, 4), 3, 0, 'dilation'),
    ((4, 5), (4, 5), (4, 5, 8), 3, 1, r'\[\.\.\., 4, 5, 4\]'),
    ((4, 5), (5, 4), (4, 5, 4), 3, 1, 'log_diag'),
    ((4, 5), (4, 5), (4, 6, 4), 3, 1, 'off_diag'),
    ((5,), (5,), (5, 4), 3, 1, 'loc'),
    ((2, 4, 5), (3, 4, 5), (4, 5, 4), 3, 1, 'broadcast'),
])
def test_check_parameters_raises(loc_shape, ld_shape, off_shape, k, d, match):
  with pytest.raises(ValueError, match=match):
    structured.StructuredPrecisionNormal(
        np.zeros(loc_shape), np.zeros(ld_shape), np.zeros(off_shape),
        kernel_size=k, dilation=d)


def test_kernel_size_one_is_diagonal():
  loc, log_diag, off_diag = _params(12, (2,), 1)
  x = np.random.default_rng(13).normal(size=(2, _H, _W))

  @jax.jit
  def run(x):
    dist = _make(loc, log_diag, off_diag, 1, 1)
    return dist.log_prob(x), dist.variance()

  log_prob, var = run(x)
  ref = scipy.stats.norm(loc, np.exp(-log_diag)).logpdf(x).sum((-2, -1))
  np.testing.assert_allclose(log_prob, ref, rtol=1e-12)
  np.testing.assert_allclose(var, np.exp(-2 * log_diag), rtol=1e-12)


# --------------------------------------------------------------- colour ----

_KR, _KB = 0.299, 0.114  # ITU-R BT.601 defining constants


def _ycbcr_matrix() -> np.ndarray:
  kg = 1 - _KR - _KB
  return np.array([[_KR, kg, _KB],
                   [-_KR / (2 - 2 * _KB), -kg / (2 - 2 * _KB), 0.5],
                   [0.5, -kg / (2 - 2 * _KR), -_KB / (2 - 2 * _KR)]])


def test_ycbcr_round_trip_and_jfif_table():
  rgb = np.random.default_rng(14).uniform(size=(2, 4, 6, 3))
  ycc = jax.jit(colour.rgb_to_ycbcr)(rgb)
  np.testing.assert_allclose(jax.jit(colour.ycbcr_to_rgb)(ycc), rgb,
                             rtol=0, atol=1e-14)
  # The JFIF table of BT.601 full range, published to 6 decimals.
  jfif = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5],
                   [0.5, -0.418688, -0.081312]])
  np.testing.assert_allclose(ycc, rgb @ jfif.T + [0, 0.5, 0.5], atol=2e-6)
  rgb32 = rgb.astype(np.float32)
  back32 = jax.jit(lambda x: colour.ycbcr_to_rgb(
      colour.rgb_to_ycbcr(x)))(rgb32)
  assert back32.dtype == jnp.float32
  np.testing.assert_allclose(back32, rgb32, atol=1e-6)
  assert colour.YCBCR_LOG_ABS_DET == pytest.approx(
      np.linalg.slogdet(jfif)[1], abs=1e-5)


def _colour_case(factor, seed=15):
  k, d, h, w = 3, 1, 4, 6
  rng = np.random.default_rng(seed)
  loc, log_diag, off_diag = _params(seed, (2,), k, h=h, w=w)
  loc = 0.5 + 0.1 * loc
  chroma_loc = rng.uniform(0.4, 0.6, size=(2, h // factor, w // factor, 2))
  chroma_log_scale = rng.uniform(-3, -1, size=chroma_loc.shape)
  rgb = rng.uniform(size=(2, h, w, 3))
  return k, d, loc, log_diag, off_diag, chroma_loc, chroma_log_scale, rgb


def test_ycbcr_log_prob_pooled_chroma():
  factor = 2
  k, d, loc, log_diag, off_diag, c_loc, c_ls, rgb = _colour_case(factor)

  @jax.jit
  def run(rgb):
    return structured_ycbcr.ycbcr_log_prob(
        rgb, _make(loc, log_diag, off_diag, k, d), c_loc, c_ls,
        factor=factor)

  lp = run(rgb)
  _, cov = _dense_batch(log_diag, off_diag, k, d)
  ycc = rgb @ _ycbcr_matrix().T + [0.0, 0.5, 0.5]
  b_, h, w, _ = ycc.shape
  pooled = ycc[..., 1:].reshape(b_, h // factor, factor, w // factor, factor,
                                2).mean((2, 4))
  for b in range(2):
    ref = scipy.stats.multivariate_normal(loc[b].ravel(), cov[b]).logpdf(
        ycc[b, ..., 0].ravel())
    ref += scipy.stats.norm(c_loc[b], np.exp(c_ls[b])).logpdf(pooled[b]).sum()
    np.testing.assert_allclose(lp[b], ref, rtol=1e-10)


def test_ycbcr_log_prob_in_rgb_space_is_a_dense_rgb_gaussian():
  """factor 1, space='rgb': the implied 3S-dim Gaussian on RGB pixels."""
  k, d, loc, log_diag, off_diag, c_loc, c_ls, rgb = _colour_case(1)
  lp = jax.jit(lambda rgb: structured_ycbcr.ycbcr_log_prob(
      rgb, _make(loc, log_diag, off_diag, k, d), c_loc, c_ls, factor=1,
      space='rgb'))(rgb)
  _, cov_y = _dense_batch(log_diag, off_diag, k, d)
  s = loc.shape[-2] * loc.shape[-1]
  # YCbCr vector per pixel (p, c) is A @ rgb + offset, A = I_S kron M.
  a = np.kron(np.eye(s), _ycbcr_matrix())
  a_inv = np.linalg.inv(a)
  offset = np.tile([0.0, 0.5, 0.5], s)
  for b in range(2):
    mean_t = np.stack([loc[b].ravel(), c_loc[b, ..., 0].ravel(),
                       c_loc[b, ..., 1].ravel()], -1).ravel()
    cov_t = np.diag(np.stack([np.zeros(s), np.exp(2 * c_ls[b, ..., 0]).ravel(),
                              np.exp(2 * c_ls[b, ..., 1]).ravel()],
                             -1).ravel())
    cov_t[0::3, 0::3] = cov_y[b]
    mvn = scipy.stats.multivariate_normal(a_inv @ (mean_t - offset),
                                          a_inv @ cov_t @ a_inv.T)
    np.testing.assert_allclose(lp[b], mvn.logpdf(rgb[b].ravel()), rtol=1e-9)
  with pytest.raises(ValueError, match='factor=1'):
    structured_ycbcr.ycbcr_log_prob(rgb, _make(loc, log_diag, off_diag, k, d),
                              c_loc, c_ls, factor=2, space='rgb')


# ------------------------------------------------- precision diagonal ----


@pytest.mark.parametrize('batch', [(), (2, 3)])
@pytest.mark.parametrize('k,d', _KERNELS)
def test_precision_diagonal_matches_dense(batch, k, d):
  _, log_diag, off_diag = _params(20, batch, k)
  lower, _ = _dense_batch(log_diag, off_diag, k, d)
  got = jax.jit(lambda a, b: structured.precision_diagonal(
      a, b, kernel_size=k, dilation=d))(log_diag, off_diag)
  want = np.einsum('...ij,...ij->...i', lower, lower)  # diag(L L^T)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want,
                             rtol=1e-12)
  # Extreme: diagonals 1e-6 .. 1e6 next to O(1) off-diagonals.
  wide = np.linspace(-7, 7, log_diag.size).reshape(log_diag.shape)
  lower, _ = _dense_batch(wide, off_diag, k, d)
  got = structured.precision_diagonal(wide, off_diag, kernel_size=k,
                                      dilation=d)
  want = np.einsum('...ij,...ij->...i', lower, lower)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want,
                             rtol=1e-12)


# ------------------------------------------------ colour as an RGB law ----


def _colour_dist(factor, *, seed=21, h=4, w=6, k=3, d=1, detail=0.05,
                 spread=0.3):
  rng = np.random.default_rng(seed)
  loc, log_diag, off_diag = _params(seed, (2,), k, h=h, w=w, spread=spread)
  loc = 0.5 + 0.1 * loc
  c_loc = rng.uniform(0.4, 0.6, size=(2, h // factor, w // factor, 2))
  c_ls = rng.uniform(-3, -1, size=c_loc.shape)
  dist = structured_ycbcr.StructuredYCbCrNormal(
      _make(loc, log_diag, off_diag, k, d), c_loc, c_ls, factor=factor,
      detail_scale=detail)
  return dist, (loc, log_diag, off_diag, c_loc, c_ls)


def _dense_rgb_gaussian(params, factor, k, d, detail):
  """[B, 3S] mean and [B, 3S, 3S] covariance of the RGB image, built from
  the YCbCr-space covariance pixel by pixel (index p * 3 + channel)."""
  loc, log_diag, off_diag, c_loc, c_ls = params
  _, cov_y = _dense_batch(log_diag, off_diag, k, d)
  bsz, h, w = loc.shape
  s = h * w
  a_inv = np.linalg.inv(np.kron(np.eye(s), _ycbcr_matrix()))
  offset = np.tile([0.0, 0.5, 0.5], s)
  means, covs = [], []
  for b in range(bsz):
    mean_t = np.zeros(3 * s)
    cov_t = np.zeros((3 * s, 3 * s))
    mean_t[0::3] = loc[b].ravel()
    cov_t[0::3, 0::3] = cov_y[b]
    for p in range(s):
      for q in range(s):
        bp = (p // w // factor, p % w // factor)
        bq = (q // w // factor, q % w // factor)
        if bp != bq:
          continue
        for c in (1, 2):
          var = np.exp(2 * c_ls[b][bp + (c - 1,)])
          cov_t[3 * p + c, 3 * q + c] = (
              var + detail ** 2 * ((p == q) - 1.0 / factor ** 2))
      for c in (1, 2):
        mean_t[3 * p + c] = c_loc[b][(p // w // factor, p % w // factor,
                                      c - 1)]
    means.append(a_inv @ (mean_t - offset))
    covs.append(a_inv @ cov_t @ a_inv.T)
  return np.stack(means), np.stack(covs)


@pytest.mark.slow
@pytest.mark.parametrize('factor,k,d', [(1, 3, 1), (2, 3, 1), (2, 5, 2)])
def test_ycbcr_normal_is_a_dense_rgb_gaussian(factor, k, d):
  h, w, detail = 4, 6, 0.05
  dist, params = _colour_dist(factor, h=h, w=w, k=k, d=d, detail=detail)
  rgb = np.random.default_rng(22).uniform(size=(3, 2, h, w, 3))
  lp, ent, mean, var, paper = jax.jit(
      lambda dist, x: (dist.log_prob(x), dist.entropy(), dist.mean(),
                       dist.variance(), dist.paper_log_prob(x)))(dist, rgb)
  assert dist.event_shape == (h, w, 3) and dist.batch_shape == (2,)
  assert lp.shape == (3, 2) and ent.shape == (2,)
  means, covs = _dense_rgb_gaussian(params, factor, k, d, detail)
  for b in range(2):
    mvn = scipy.stats.multivariate_normal(means[b], covs[b])
    np.testing.assert_allclose(lp[:, b], mvn.logpdf(rgb[:, b].reshape(3, -1)),
                               rtol=1e-10)
    np.testing.assert_allclose(ent[b], mvn.entropy(), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(mean[b]).ravel(), means[b],
                               atol=1e-13)
    np.testing.assert_allclose(np.asarray(var[b]).ravel(),
                               np.diagonal(covs[b]), rtol=1e-10)
  # The paper's bound term is the YCbCr-space density of the pooled target.
  np.testing.assert_allclose(paper, structured_ycbcr.ycbcr_log_prob(
      rgb, dist.luma, params[3], params[4], factor=factor), rtol=1e-13)
  if factor == 1:  # no detail term: exactly the RGB-space paper model
    np.testing.assert_allclose(lp, structured_ycbcr.ycbcr_log_prob(
        rgb, dist.luma, params[3], params[4], factor=1, space='rgb'),
                               rtol=1e-13)


def test_ycbcr_normal_ill_conditioned():
  """Precision diagonals over 6 decades and tiny chroma/detail scales."""
  factor, k, d, h, w, detail = 2, 3, 1, 4, 4, 1e-3
  dist, params = _colour_dist(factor, h=h, w=w, k=k, d=d, detail=detail,
                              spread=2.5, seed=23)
  loc, log_diag, off_diag, c_loc, _ = params
  c_ls = np.full(c_loc.shape, math.log(1e-3))
  dist = structured_ycbcr.StructuredYCbCrNormal(dist.luma, c_loc, c_ls,
                                          factor=factor, detail_scale=detail)
  means, covs = _dense_rgb_gaussian((loc, log_diag, off_diag, c_loc, c_ls),
                                    factor, k, d, detail)
  # The covariance is too ill-conditioned to invert accurately, so the
  # reference uses the dense YCbCr-space precision Lambda_t: L L^T for Y,
  # the inverse block covariance below for each f x f chroma block.
  lower, _ = _dense_batch(log_diag, off_diag, k, d)
  s = h * w
  a = np.kron(np.eye(s), _ycbcr_matrix())
  rng = np.random.default_rng(24)
  for b in range(2):
    prec_t = np.zeros((3 * s, 3 * s))
    prec_t[0::3, 0::3] = lower[b] @ lower[b].T
    for p in range(s):
      for q in range(s):
        bp = (p // w // factor, p % w // factor)
        if bp != (q // w // factor, q % w // factor):
          continue
        for c in (1, 2):
          # inv(s^2 J + tau^2 (I - J/f^2)) with J = 1 1^T over the block.
          var = np.exp(2 * c_ls[b][bp + (c - 1,)])
          prec_t[3 * p + c, 3 * q + c] = (
              1.0 / (factor ** 4 * var)
              + ((p == q) - 1.0 / factor ** 2) / detail ** 2)
    x = rng.multivariate_normal(means[b], covs[b], size=2)
    # Change of variables t = A x + offset: forming A^T Lambda_t A would mix
    # scales 1e-6..1e7 and lose 8 digits, so the density is read in t.
    r = (x - means[b]) @ a.T
    ref = (-0.5 * 3 * s * math.log(2 * math.pi)
           + 0.5 * np.linalg.slogdet(prec_t)[1] + np.linalg.slogdet(a)[1]
           - 0.5 * np.einsum('ni,ij,nj->n', r, prec_t, r))
    lp = jax.jit(dist.log_prob)(
        np.stack([np.broadcast_to(xi.reshape(h, w, 3), (2, h, w, 3))
                  for xi in x]))
    np.testing.assert_allclose(np.asarray(lp)[:, b], ref, rtol=1e-9)


def test_ycbcr_normal_sample_covariance_matches_dense():
  factor, k, d, h, w, detail, n = 2, 3, 1, 4, 4, 0.05, 40000
  dist, params = _colour_dist(factor, h=h, w=w, k=k, d=d, detail=detail)
  x = np.asarray(jax.jit(lambda dist, key: dist.sample(
      seed=key, sample_shape=(n,)))(dist, _key(3)))
  assert x.shape == (n, 2, h, w, 3)
  means, covs = _dense_rgb_gaussian(params, factor, k, d, detail)
  for b in range(2):
    flat = x[:, b].reshape(n, -1)
    var = np.diagonal(covs[b])
    mean_z = (flat.mean(0) - means[b]) / np.sqrt(var / n)
    emp = np.cov(flat, rowvar=False)
    cov_se = np.sqrt((np.outer(var, var) + covs[b] ** 2) / n)
    assert np.abs(mean_z).max() < 5.0
    assert np.abs((emp - covs[b]) / cov_se).max() < 5.5


def test_ycbcr_normal_checks_parameters():
  dist, (_, _, _, c_loc, c_ls) = _colour_dist(2)
  with pytest.raises(ValueError, match='must divide'):
    structured_ycbcr.StructuredYCbCrNormal(dist.luma, c_loc, c_ls, factor=4)
  with pytest.raises(ValueError, match=r'chroma_loc must be \[\.\.\., H/f'):
    structured_ycbcr.StructuredYCbCrNormal(dist.luma, c_loc, c_ls, factor=1)
  with pytest.raises(ValueError, match='detail_scale must be > 0'):
    structured_ycbcr.StructuredYCbCrNormal(dist.luma, c_loc, c_ls, factor=2,
                                     detail_scale=0.0)
