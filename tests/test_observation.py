"""Observation-space tools against dense float64 numpy/scipy references."""

from __future__ import annotations

import functools

import chex
import hypothesis
from hypothesis import strategies as hst
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from sosvae_jax import observation
from sosvae_jax.distributions import LowRankNoise
from sosvae_jax.distributions import lowrank_sample_from_noise

_S, _R = 30, 4  # a small image: dense S x S references stay cheap
_BATCHES = [(), (3,), (2, 2)]


@pytest.fixture(autouse=True, scope='module')
def _float64():
  # Dense references are compared in float64; restored after this module.
  with jax.enable_x64(True):
    yield


# ----------------------------------------------------- dense references ----


def _params(rng, size=_S, rank=_R, *, factor_scale=1.0, diag=None,
            batch=()):
  loc = rng.normal(size=batch + (size,))
  factor = factor_scale * rng.normal(size=batch + (size, rank))
  if diag is None:
    diag = rng.uniform(0.1, 1.0, size=batch + (size,))
  else:
    diag = np.full(batch + (size,), float(diag))
  return loc, factor, diag


def _dense_cov(factor, diag):
  return factor @ np.swapaxes(factor, -1, -2) + np.vectorize(
      np.diag, signature='(s)->(s,s)')(diag)


def _np_slerp(a, b, t):
  """Textbook slerp with the arccos of the normalised dot product."""
  cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  omega = np.arccos(np.clip(cos, -1.0, 1.0))
  return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def _angle(a, b):
  cos = np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) *
                             np.linalg.norm(b, axis=-1))
  return np.arccos(np.clip(cos, -1.0, 1.0))


def _dense_conditional(loc, factor, diag, mask, values):
  """Schur complement of eq. 7 with a dense solve of Sigma_EE."""
  cov = _dense_cov(factor, diag)
  e, k = mask, ~mask
  gain = np.linalg.solve(cov[np.ix_(e, e)], cov[np.ix_(e, k)]).T  # (K, E)
  mean = loc.copy()
  mean[e] = values[e]
  mean[k] = loc[k] + gain @ (values[e] - loc[e])
  cov_k = cov[np.ix_(k, k)] - gain @ cov[np.ix_(e, k)]
  return mean, cov_k


def _mask(rng, count, size=_S):
  mask = np.zeros(size, bool)
  mask[rng.choice(size, count, replace=False)] = True
  return mask


# ------------------------------------------------------------------ slerp ----


def test_slerp_endpoints_broadcast_and_reference():
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 5, 7))
  t = np.linspace(0.0, 1.0, 9)
  out = jax.jit(observation.slerp)(a[:, None], b[:, None], t[None, :])
  assert out.shape == (5, 9, 7)
  np.testing.assert_array_equal(out[:, 0], a)
  np.testing.assert_array_equal(out[:, -1], b)
  for i in range(5):
    for j, tj in enumerate(t[1:-1], 1):
      np.testing.assert_allclose(out[i, j], _np_slerp(a[i], b[i], tj),
                                 rtol=1e-12, atol=1e-12)
  # A scalar t and an array t of the batch shape.
  np.testing.assert_allclose(observation.slerp(a, b, 0.3),
                             observation.slerp(a, b, np.full(5, 0.3)),
                             rtol=1e-15)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(seed=hst.integers(0, 2**31 - 1),
                  norm=hst.floats(1e-3, 1e3),
                  cos=hst.floats(-0.99, 0.9999))
def test_slerp_constant_norm_and_angle_linear_in_t(seed, norm, cos):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=6)
  a *= norm / np.linalg.norm(a)
  ortho = rng.normal(size=6)
  ortho -= (ortho @ a) / (a @ a) * a
  ortho *= norm / np.linalg.norm(ortho)
  b = cos * a + np.sqrt(1 - cos**2) * ortho  # |b| = |a|, cos(a, b) = cos
  t = np.linspace(0.0, 1.0, 11)
  out = np.asarray(_jit_slerp(a, b, t))  # (11, 6)
  np.testing.assert_allclose(np.linalg.norm(out, axis=-1), norm, rtol=1e-12)
  omega = np.arccos(cos)
  np.testing.assert_allclose(_angle(out, a), t * omega, atol=1e-7)
  np.testing.assert_allclose(_angle(out, b), (1 - t) * omega, atol=1e-7)


_jit_slerp = jax.jit(observation.slerp)


def test_slerp_parallel_and_antiparallel_fall_back_to_linear():
  a = np.array([1.0, 2.0, -0.5])
  t = np.linspace(0.0, 1.0, 5)
  for b in (3.0 * a, -2.0 * a, a):
    out = _jit_slerp(a, b, t)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, (1 - t)[:, None] * a + t[:, None] * b,
                               rtol=1e-14)
  # Nearly parallel: continuous with the linear limit.
  b = a + 1e-9 * np.array([0.3, -1.0, 0.2])
  np.testing.assert_allclose(_jit_slerp(a, b, t),
                             (1 - t)[:, None] * a + t[:, None] * b, rtol=1e-12)
  # Just above the threshold the slerp weights are used and still accurate.
  b = a + 1e-6 * np.array([0.3, -1.0, 0.2])
  np.testing.assert_allclose(_jit_slerp(a, b, 0.25), _np_slerp(a, b, 0.25),
                             rtol=1e-9)


@pytest.mark.slow
def test_slerp_noise_grid_and_samples():
  rng = np.random.default_rng(1)
  corners = rng.normal(size=(4, _R))
  steps = 5
  grid = jax.jit(observation.slerp_noise_grid, static_argnums=1)(corners, steps)
  assert grid.shape == (steps, steps, _R)
  for (i, j), c in zip([(0, 0), (0, -1), (-1, 0), (-1, -1)], corners):
    np.testing.assert_allclose(grid[i, j], c, rtol=1e-14)
  t = np.linspace(0.0, 1.0, steps)
  for i in range(steps):
    left = _np_slerp(corners[0], corners[2], t[i]) if 0 < i < steps - 1 else (
        corners[0] if i == 0 else corners[2])
    right = _np_slerp(corners[1], corners[3], t[i]) if 0 < i < steps - 1 else (
        corners[1] if i == 0 else corners[3])
    for j in range(1, steps - 1):
      np.testing.assert_allclose(grid[i, j], _np_slerp(left, right, t[j]),
                                 rtol=1e-12)
  # Equal-norm corners stay on their sphere.
  on_sphere = corners / np.linalg.norm(corners, axis=-1, keepdims=True)
  np.testing.assert_allclose(
      np.linalg.norm(observation.slerp_noise_grid(on_sphere, steps), axis=-1),
      1.0, rtol=1e-12)

  loc, factor, diag = _params(rng)
  omega_d = rng.normal(size=_S)
  samples = jax.jit(observation.samples_from_omega_p)(loc, factor, diag, grid,
                                                      omega_d)
  assert samples.shape == (steps, steps, _S)
  expected = loc + np.asarray(grid) @ factor.T + np.sqrt(diag) * omega_d
  np.testing.assert_allclose(samples, expected, rtol=1e-12)
  with pytest.raises(ValueError, match='corners'):
    observation.slerp_noise_grid(corners[:3], steps)


# ------------------------------------------- principal components, eq. 5 ----


def _check_components(factor, u, s):
  u_ref, s_ref, _ = np.linalg.svd(factor, full_matrices=False)
  np.testing.assert_allclose(s, s_ref, rtol=1e-10, atol=1e-12)
  # Columns equal the left singular vectors up to sign.
  signs = np.sign(np.sum(u * u_ref, -2, keepdims=True))
  np.testing.assert_allclose(u, u_ref * signs, atol=1e-10)
  eye = np.broadcast_to(np.eye(u.shape[-1]), u.shape[:-2] + (u.shape[-1],) * 2)
  np.testing.assert_allclose(np.swapaxes(u, -1, -2) @ u, eye, atol=1e-12)
  np.testing.assert_allclose((u * s[..., None, :]**2) @ np.swapaxes(u, -1, -2),
                             factor @ np.swapaxes(factor, -1, -2), atol=1e-10)


@pytest.mark.parametrize('batch', _BATCHES)
def test_principal_components_match_dense_svd(batch):
  rng = np.random.default_rng(2)
  # Spread singular values so the sort order is unambiguous.
  factor = rng.normal(size=batch + (_S, _R)) * np.array([5.0, 0.1, 2.0, 1.0])
  u, s = jax.jit(observation.factor_principal_components)(factor)
  assert u.shape == factor.shape and s.shape == batch + (_R,)
  assert np.all(np.diff(s, axis=-1) <= 0)
  _check_components(factor, np.asarray(u), np.asarray(s))


def test_principal_components_rank_deficient_are_finite():
  rng = np.random.default_rng(3)
  factor = rng.normal(size=(_S, _R))
  factor[:, 2] = 0.0
  factor[:, 3] = 2.0 * factor[:, 0]  # rank 2
  u, s = jax.jit(observation.factor_principal_components)(factor)
  u, s = np.asarray(u), np.asarray(s)
  assert np.all(np.isfinite(u)) and np.all(np.isfinite(s))
  np.testing.assert_array_equal(s[2:], 0.0)
  np.testing.assert_array_equal(u[:, 2:], 0.0)
  np.testing.assert_allclose(u[:, :2].T @ u[:, :2], np.eye(2), atol=1e-12)
  np.testing.assert_allclose((u * s**2) @ u.T, factor @ factor.T, atol=1e-10)
  zero_u, zero_s = observation.factor_principal_components(np.zeros((_S, _R)))
  np.testing.assert_array_equal(zero_u, 0.0)
  np.testing.assert_array_equal(zero_s, 0.0)


def test_rescaled_cov_factor_is_eq5():
  rng = np.random.default_rng(4)
  _, factor, _ = _params(rng)
  rescale = jax.jit(observation.rescaled_cov_factor)
  np.testing.assert_allclose(rescale(factor, np.ones(_R)), factor, atol=1e-12)
  scales = rng.normal(size=_R)
  u, s, vt = np.linalg.svd(factor, full_matrices=False)
  np.testing.assert_allclose(rescale(factor, scales),
                             u @ np.diag(s * scales) @ vt, atol=1e-12)


@pytest.mark.parametrize('other_scale', [0.0, 1.0, 0.03])
def test_scaled_component_samples_scale_mode(other_scale):
  rng = np.random.default_rng(5)
  loc, factor, diag = _params(rng)
  noise = LowRankNoise(rng.normal(size=_R), rng.normal(size=_S))
  scales = observation.FIGURE5_SCALES
  fn = jax.jit(functools.partial(observation.scaled_component_samples,
                                 other_scale=other_scale))
  u, s, vt = np.linalg.svd(factor, full_matrices=False)
  for k in range(_R):
    out = fn(loc, factor, diag, noise, k, scales)
    assert out.shape == (len(scales), _S)
    for m, alpha in enumerate(scales):
      a = np.full(_R, other_scale)
      a[k] = alpha
      expected = (loc + u @ np.diag(s * a) @ vt @ noise.omega_p +
                  np.sqrt(diag) * noise.omega_d)
      np.testing.assert_allclose(out[m], expected, atol=1e-12)
  if other_scale == 1.0:  # alpha = 1 is the ordinary sample
    out = fn(loc, factor, diag, noise, 1, np.array([1.0]))
    np.testing.assert_allclose(
        out[0], lowrank_sample_from_noise(loc, factor, diag, noise), atol=1e-12)


def test_scaled_component_set_mode_and_grid():
  rng = np.random.default_rng(6)
  loc, factor, diag = _params(rng)
  noise = LowRankNoise(rng.normal(size=_R), rng.normal(size=_S))
  scales = np.array([-5.0, -0.5, 0.0, 2.5])
  grid = jax.jit(functools.partial(observation.scaled_component_grid,
                                   mode='set', num_components=3))(
                                       loc, factor, diag, noise, scales)
  assert grid.shape == (3, len(scales), _S)
  u, s = observation.factor_principal_components(factor)
  u, s = np.asarray(u), np.asarray(s)
  for k in range(3):
    row = observation.scaled_component_samples(loc, factor, diag, noise, k,
                                               scales, mode='set')
    np.testing.assert_allclose(grid[k], row, rtol=1e-14)
    # With other_scale = 0 the structured part is alpha s_k u_k exactly.
    structured = np.asarray(row) - loc - np.sqrt(diag) * noise.omega_d
    np.testing.assert_allclose(structured, np.outer(scales * s[k], u[:, k]),
                               atol=1e-12)
  with pytest.raises(ValueError, match='mode'):
    observation.scaled_component_samples(loc, factor, diag, noise, 0, scales,
                                         mode='sets')


# ------------------------------------------ conditional editing, eqs. 6-7 ----

_conditional = jax.jit(observation.conditional_distribution)
_conditional_mean = jax.jit(observation.conditional_mean)


def _check_conditional(loc, factor, diag, mask, values, rtol):
  mean_ref, cov_ref = _dense_conditional(loc, factor, diag, mask, values)
  scale = np.max(np.abs(mean_ref))
  np.testing.assert_allclose(_conditional_mean(loc, factor, diag, mask, values),
                             mean_ref, rtol=rtol, atol=rtol * scale)
  cond = _conditional(loc, factor, diag, mask, values)
  np.testing.assert_allclose(cond.loc, mean_ref, rtol=rtol, atol=rtol * scale)
  keep = ~mask
  p = np.asarray(cond.cov_factor)
  cov = p[keep] @ p[keep].T + np.diag(np.asarray(cond.cov_diag)[keep])
  np.testing.assert_allclose(cov, cov_ref, rtol=rtol,
                             atol=rtol * np.max(np.abs(cov_ref)))
  np.testing.assert_array_equal(p[mask], 0.0)
  np.testing.assert_array_equal(np.asarray(cond.cov_diag)[mask], 0.0)


@pytest.mark.parametrize('num_edited', [1, 3, 12, 25])
def test_conditional_matches_dense_schur(num_edited):
  rng = np.random.default_rng(10 + num_edited)
  loc, factor, diag = _params(rng)
  mask = _mask(rng, num_edited)
  values = rng.normal(size=_S) + np.where(mask, 0.0, np.nan)  # NaN is ignored
  _check_conditional(loc, factor, diag, mask, values, rtol=1e-10)


@pytest.mark.parametrize('num_edited,clustered', [(3, False), (25, False),
                                                  (12, True)])
def test_conditional_ill_conditioned(num_edited, clustered):
  # The paper's d = 1e-5 with large factors: Sigma_EE has cond ~ 1e8 and more.
  rng = np.random.default_rng(20 + num_edited)
  loc, factor, diag = _params(rng, factor_scale=10.0, diag=1e-5)
  mask = _mask(rng, num_edited)
  if clustered:
    # Neighbouring edited pixels have nearly equal factor rows, so C =
    # I + P_E^T D_E^-1 P_E has eigenvalues from ~1 to ~1e9: solving it by a
    # float32 Cholesky was off by several percent in such cases.
    row = 10.0 * rng.normal(size=_R)
    factor[mask] = row + 1e-2 * rng.normal(size=(num_edited, _R))
  omega = rng.normal(size=_R)
  sample = loc + factor @ omega + np.sqrt(diag) * rng.normal(size=_S)
  values = sample + 0.3 * rng.normal(size=_S)  # an edit off the model
  _check_conditional(loc, factor, diag, mask, values, rtol=1e-6)
  # float32 against the float64 reference: the QR keeps it usable.
  mean_ref, _ = _dense_conditional(loc, factor, diag, mask, values)
  f32 = [np.asarray(x, np.float32) for x in (loc, factor, diag, values)]
  mean32 = jax.jit(observation.conditional_mean)(*f32[:3], mask, f32[3])
  assert mean32.dtype == jnp.float32
  np.testing.assert_allclose(mean32, mean_ref,
                             atol=1e-3 * np.max(np.abs(mean_ref)))


def test_conditional_no_and_all_pixels_edited():
  rng = np.random.default_rng(30)
  loc, factor, diag = _params(rng)
  values = rng.normal(size=_S)
  none = _conditional(loc, factor, diag, np.zeros(_S, bool), values)
  np.testing.assert_allclose(none.loc, loc, rtol=1e-15)
  np.testing.assert_allclose(
      np.asarray(none.cov_factor) @ np.asarray(none.cov_factor).T,
      factor @ factor.T, rtol=1e-12, atol=1e-12)
  np.testing.assert_array_equal(
      _conditional_mean(loc, factor, diag, np.ones(_S, bool), values), values)


@hypothesis.settings(max_examples=20, deadline=None)
@hypothesis.given(seed=hst.integers(0, 2**31 - 1),
                  log_diag=hst.floats(-5.0, 1.0),
                  factor_scale=hst.floats(0.1, 10.0),
                  num_edited=hst.integers(0, _S))
def test_conditional_mean_property(seed, log_diag, factor_scale, num_edited):
  rng = np.random.default_rng(seed)
  loc, factor, _ = _params(rng, factor_scale=factor_scale)
  diag = 10.0**log_diag * rng.uniform(0.5, 2.0, size=_S)
  mask = _mask(rng, num_edited)
  values = loc + factor @ rng.normal(size=_R) + rng.normal(size=_S)
  mean_ref, _ = _dense_conditional(loc, factor, diag, mask, values)
  np.testing.assert_allclose(
      _conditional_mean(loc, factor, diag, mask, values), mean_ref,
      rtol=1e-6, atol=1e-6 * np.max(np.abs(mean_ref)))


def test_conditional_mean_compiles_once_for_all_masks():
  rng = np.random.default_rng(31)
  loc, factor, diag = _params(rng)
  fn = jax.jit(chex.assert_max_traces(observation.conditional_mean, n=1))
  for count in (1, 5, 20):
    fn(loc, factor, diag, _mask(rng, count), rng.normal(size=_S))


def test_conditioning_the_conditional_equals_joint_edit():
  rng = np.random.default_rng(32)
  loc, factor, diag = _params(rng, factor_scale=3.0)
  order = rng.permutation(_S)
  first, second = np.zeros(_S, bool), np.zeros(_S, bool)
  first[order[:4]], second[order[4:10]] = True, True
  values = rng.normal(size=_S)
  step1 = _conditional(loc, factor, diag, first, values)
  step2 = _conditional(step1.loc, step1.cov_factor, step1.cov_diag, second,
                       values)
  joint = first | second
  _check_conditional(loc, factor, diag, joint, values, rtol=1e-10)
  mean_ref, cov_ref = _dense_conditional(loc, factor, diag, joint, values)
  np.testing.assert_allclose(step2.loc, mean_ref, rtol=1e-10, atol=1e-10)
  p = np.asarray(step2.cov_factor)[~joint]
  np.testing.assert_allclose(
      p @ p.T + np.diag(np.asarray(step2.cov_diag)[~joint]), cov_ref,
      rtol=1e-10, atol=1e-10)


def test_sequential_edits_equal_joint_edits():
  rng = np.random.default_rng(33)
  loc, factor, diag = _params(rng, factor_scale=2.0)
  order = rng.permutation(_S)
  masks = [np.isin(np.arange(_S), order[a:b]) for a, b in [(0, 3), (3, 5),
                                                           (5, 11)]]
  values = [rng.normal(size=_S) for _ in masks]
  out = jax.jit(observation.sequential_conditional_means)(
      loc, factor, diag, list(zip(masks, values)))
  assert out.shape == (3, _S)
  union, merged = np.zeros(_S, bool), np.zeros(_S)
  for i, (m, v) in enumerate(zip(masks, values)):
    union |= m
    merged = np.where(m, v, merged)
    mean_ref, _ = _dense_conditional(loc, factor, diag, union, merged)
    np.testing.assert_allclose(out[i], mean_ref, rtol=1e-10, atol=1e-10)
  # A pixel edited again takes the later value.
  again = [(masks[0], values[0]), (masks[0] | masks[1], values[1])]
  out = observation.sequential_conditional_means(loc, factor, diag, again)
  joint, _ = _dense_conditional(loc, factor, diag, masks[0] | masks[1],
                                values[1])
  np.testing.assert_allclose(out[-1], joint, rtol=1e-10, atol=1e-10)


# ------------------------------------------------ covariance rows, Fig. 2 ----


@pytest.mark.parametrize('batch', _BATCHES)
def test_covariance_row_matches_dense(batch):
  rng = np.random.default_rng(40)
  _, factor, diag = _params(rng, batch=batch)
  cov = _dense_cov(factor, diag)
  row_fn = jax.jit(observation.covariance_row)
  parts_fn = jax.jit(observation.covariance_row_parts)
  for i in (0, 13, _S - 1):
    row = row_fn(factor, diag, i)
    np.testing.assert_allclose(row, cov[..., i, :], rtol=1e-12)
    pos, neg = parts_fn(factor, diag, i)
    assert np.all(pos >= 0) and np.all(neg >= 0)
    expected = cov[..., i, :].copy()
    expected[..., i] = 0.0
    np.testing.assert_allclose(pos - neg, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(np.minimum(pos, neg), 0.0)
  pos, neg = observation.covariance_row_parts(factor, diag, 2,
                                              drop_variance=False)
  np.testing.assert_allclose(pos - neg, cov[..., 2, :], rtol=1e-12)


def test_central_pixel_index():
  for shape in [(5, 6, 3), (4, 4, 1), (7, 3, 2)]:
    h, w, c = shape
    for channel in range(c):
      assert observation.central_pixel_index(shape, channel) == (
          np.ravel_multi_index((h // 2, w // 2, channel), shape))


# ---------------------------------------- PPCA and PCA, section 4.5 ----------


def _ppca_data(rng, num=200, size=12, rank=3):
  weights = rng.normal(size=(size, rank)) * np.array([3.0, 2.0, 1.5])[:rank]
  latents = rng.normal(size=(num, rank))
  return 1.0 + latents @ weights.T + 0.5 * rng.normal(size=(num, size))


def _dense_ppca(data, rank):
  """Tipping and Bishop from the eigh of the dense (1/N) sample covariance."""
  mu = data.mean(0)
  cov = np.cov(data, rowvar=False, bias=True)
  eigval, eigvec = np.linalg.eigh(cov)
  eigval, eigvec = eigval[::-1], eigvec[:, ::-1]
  sigma2 = eigval[rank:].mean()
  factor = eigvec[:, :rank] * np.sqrt(eigval[:rank] - sigma2)
  return mu, factor, sigma2


def _scipy_mean_logpdf(data, mu, factor, sigma2):
  cov = factor @ factor.T + sigma2 * np.eye(len(mu))
  return np.mean(scipy.stats.multivariate_normal(mu, cov).logpdf(data))


_ppca_ll = jax.jit(observation.ppca_log_likelihood)


@pytest.mark.parametrize('num,size,rank', [(200, 12, 3), (8, 20, 3)])
def test_ppca_closed_form_matches_dense(num, size, rank):
  rng = np.random.default_rng(50)
  data = _ppca_data(rng, num, size, rank)
  mu, factor, sigma2 = jax.jit(observation.ppca_max_likelihood,
                               static_argnums=1)(data, rank)
  mu_ref, factor_ref, sigma2_ref = _dense_ppca(data, rank)
  np.testing.assert_allclose(mu, mu_ref, rtol=1e-12)
  np.testing.assert_allclose(sigma2, sigma2_ref, rtol=1e-10)
  np.testing.assert_allclose(np.asarray(factor) @ np.asarray(factor).T,
                             factor_ref @ factor_ref.T, rtol=1e-9, atol=1e-10)
  ll = _ppca_ll(data, mu, factor, sigma2)
  np.testing.assert_allclose(
      ll, _scipy_mean_logpdf(data, mu_ref, factor_ref, sigma2_ref), rtol=1e-10)


def test_ppca_closed_form_is_a_maximum():
  rng = np.random.default_rng(51)
  data = _ppca_data(rng)
  mu, factor, sigma2 = observation.ppca_max_likelihood(data, 3)
  best = _ppca_ll(data, mu, factor, sigma2)
  # Invariant to a rotation of the factor.
  rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
  np.testing.assert_allclose(_ppca_ll(data, mu, factor @ rotation, sigma2),
                             best, rtol=1e-12)
  for eps in (1e-1, 1e-2, 1e-3):
    for _ in range(5):
      perturbed = (mu + eps * rng.normal(size=mu.shape),
                   factor + eps * rng.normal(size=factor.shape),
                   sigma2 * np.exp(eps * rng.normal()))
      assert _ppca_ll(data, *perturbed) < best


def test_pca_reconstruction_and_samples():
  rng = np.random.default_rng(53)
  data = _ppca_data(rng, 50, 12, 3)
  fit = jax.jit(observation.pca_fit, static_argnums=1)(data, 3)
  centred = data - data.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  basis = vt[:3].T
  np.testing.assert_allclose(
      observation.pca_reconstruction(data, fit),
      data.mean(0) + centred @ basis @ basis.T, rtol=1e-10, atol=1e-10)
  samples = observation.pca_samples(jax.random.key(0), fit, 500)
  assert samples.shape == (500, 12)
  offsets = np.asarray(samples) - data.mean(0)
  np.testing.assert_allclose(offsets - offsets @ basis @ basis.T, 0.0,
                             atol=1e-10)  # in the principal subspace
  with pytest.raises(ValueError, match='rank'):
    observation.pca_fit(data, 12)
