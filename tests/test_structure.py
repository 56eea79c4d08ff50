"""Structure report of a covariance factor against float64 numpy and known answers."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from sosvae_jax.evaluation import structure

_S, _R = 40, 5


@pytest.fixture(autouse=True, scope='module')
def _float64():
  with jax.enable_x64(True):
    yield


def _orthonormal(rng, rows, cols):
  q, _ = np.linalg.qr(rng.normal(size=(rows, cols)))
  return q


def _factor_with_spectrum(rng, spectrum, size=_S):
  """P = U diag(s) V^T with orthonormal U [S, R] and orthogonal V [R, R]."""
  rank = len(spectrum)
  return (_orthonormal(rng, size, rank) * np.asarray(spectrum)) @ _orthonormal(
      rng, rank, rank).T


# ------------------------------------------------------ numpy reference ----


def _reference(factors, residuals, pixel, basis=None):
  """Dense float64 report: SVD, lstsq projections, the full P P^T row."""
  spectra, prs, counts, span, energy, neg, mass = [], [], [], [], [], [], []
  for p, r in zip(factors, residuals):
    s = np.linalg.svd(p, compute_uv=False)
    spectra.append(s)
    prs.append(np.sum(s ** 2) ** 2 / np.sum(s ** 4))
    counts.append(np.sum(s >= 0.1 * s[0]))
    coef = np.linalg.lstsq(p, r, rcond=None)[0]
    span.append(np.sum((p @ coef) ** 2))
    energy.append(np.sum(r ** 2))
    # Dense P P^T where cheap; at evaluation size only its row c.
    row = np.delete((p @ p.T)[pixel] if len(p) <= 100 else p @ p[pixel], pixel)
    neg.append(np.sum(-row[row < 0]))
    mass.append(np.sum(np.abs(row)))
  if basis is None:  # top right singular vectors of the uncentred residuals
    basis = np.linalg.svd(residuals, full_matrices=False)[2][:factors.shape[-1]].T
  coef = np.linalg.lstsq(basis, residuals.T, rcond=None)[0]
  pca = np.sum((basis @ coef) ** 2) / np.sum(residuals ** 2)
  return dict(singular_values=np.mean(spectra, 0), participation_ratio=np.mean(prs),
              num_components=np.mean(counts), span_share=np.sum(span) / np.sum(energy),
              centre_negative_share=np.sum(neg) / np.sum(mass), pca_span_share=pca)


def _assert_report(report, expected, rtol=1e-8):
  assert set(structure.REPORT_KEYS) <= set(report)
  for key, value in expected.items():
    np.testing.assert_allclose(report[key], value, rtol=rtol, atol=1e-10, err_msg=key)


# ------------------------------------------------------- known answers ----


def test_participation_ratio_and_count_of_a_chosen_spectrum():
  rng = np.random.default_rng(0)
  spectrum = [4.0, 2.0, 1.0, 0.5, 0.3]
  p = _factor_with_spectrum(rng, spectrum)
  stats = structure.batch_statistics(p[None], pixel_index=3)
  np.testing.assert_allclose(stats['singular_values'][0], spectrum, atol=1e-12)
  power = np.square(spectrum)
  np.testing.assert_allclose(stats['participation_ratio'][0],
                             power.sum() ** 2 / np.sum(power ** 2), rtol=1e-12)
  assert stats['num_components'][0] == 4  # 0.5 >= 0.1 * 4 > 0.3


def test_equal_components_give_participation_ratio_k():
  rng = np.random.default_rng(1)
  for k in (1, 3, 5):
    p = _factor_with_spectrum(rng, [2.0] * k + [0.0] * (_R - k))
    report = structure.structure_report(p[None], pixel_index=0)
    np.testing.assert_allclose(report['participation_ratio'], k, rtol=1e-12)
    assert report['num_components'] == k
    assert 'span_share' not in report  # no residuals, no span numbers


def test_zero_factor_has_no_structure():
  residual = np.random.default_rng(2).normal(size=(1, _S))
  report = structure.structure_report(np.zeros((1, _S, _R)), residual, pixel_index=0)
  assert report['participation_ratio'] == 0
  assert report['num_components'] == 0
  assert report['span_share'] == 0


def test_span_share_inside_outside_and_mixed():
  rng = np.random.default_rng(3)
  p = _factor_with_spectrum(rng, [3.0, 1.0, 0.5, 0.2, 0.1])
  u = np.linalg.svd(p, full_matrices=False)[0]
  inside = p @ rng.normal(size=_R)
  outside = rng.normal(size=_S)
  outside -= u @ (u.T @ outside)
  factors = np.stack([p, p, p])
  for residual, share in [(inside, 1.0), (outside, 0.0)]:
    report = structure.structure_report(p[None], residual[None], pixel_index=0)
    np.testing.assert_allclose(report['span_share'], share, atol=1e-12)
  # Energy-weighted over images: (|a|^2 + 0 + |a|^2) / (|a|^2 + |b|^2 + |a + b|^2).
  residuals = np.stack([inside, outside, inside + outside])
  a, b = np.sum(inside ** 2), np.sum(outside ** 2)
  report = structure.structure_report(factors, residuals, pixel_index=0)
  np.testing.assert_allclose(report['span_share'], 2 * a / (2 * a + 2 * b), rtol=1e-12)


def test_span_share_of_a_rank_deficient_factor_is_least_squares():
  rng = np.random.default_rng(4)
  p = rng.normal(size=(_S, _R))
  p[:, 3] = p[:, 0]  # rank 3: two columns are combinations of the others
  p[:, 4] = 2 * p[:, 1] - p[:, 2]
  residual = rng.normal(size=(1, _S))
  report = structure.structure_report(p[None], residual, pixel_index=0)
  coef = np.linalg.lstsq(p, residual[0], rcond=None)[0]
  expected = np.sum((p @ coef) ** 2) / np.sum(residual ** 2)
  np.testing.assert_allclose(report['span_share'], expected, rtol=1e-10)
  assert report['num_components'] == 3


def test_negative_share_of_a_constructed_row():
  # p_0 = [1, 0] -> row 0 of P P^T is [1, -1, 1, 0]; without entry 0: 1 / 2.
  p = np.array([[1.0, 0.0], [-1.0, 0.0], [1.0, -2.0], [0.0, 3.0]])
  report = structure.structure_report(p[None], pixel_index=0)
  np.testing.assert_allclose(report['centre_negative_share'], 1 / 2)  # diagonal out
  # Pixel 2: p_2 = [1, -2] -> row [1, -1, 5, -6], without entry 2: 7 / 8 negative.
  report = structure.structure_report(p[None], pixel_index=2)
  np.testing.assert_allclose(report['centre_negative_share'], 7 / 8)


def test_negative_share_is_mass_weighted_over_images():
  p1 = np.array([[1.0], [-1.0], [1.0]])  # row 0 without diagonal: [-1, 1]
  p2 = 3 * np.array([[1.0], [1.0], [1.0]])  # [9, 9], no negative mass
  report = structure.structure_report(np.stack([p1, p2]), pixel_index=0)
  np.testing.assert_allclose(report['centre_negative_share'], 1 / (2 + 18))


def test_pca_basis_share_is_eckart_young():
  rng = np.random.default_rng(5)
  residuals = rng.normal(size=(60, _S)) * np.linspace(3, 0.1, _S)
  basis = structure.residual_basis(residuals, _R, chunk_size=7)
  sigma = np.linalg.svd(residuals, compute_uv=False)
  projected, energy = structure.basis_span_energy(basis, residuals)
  np.testing.assert_allclose(np.sum(projected) / np.sum(energy),
                             np.sum(sigma[:_R] ** 2) / np.sum(sigma ** 2), rtol=1e-10)
  np.testing.assert_allclose(np.asarray(basis).T @ basis, np.eye(_R), atol=1e-10)


def test_given_basis_need_not_be_orthonormal():
  rng = np.random.default_rng(6)
  residuals = rng.normal(size=(8, _S))
  basis = rng.normal(size=(_S, 3))
  factors = rng.normal(size=(8, _S, _R))
  report = structure.structure_report(factors, residuals, pixel_index=5, basis=basis)
  _assert_report(report, _reference(factors, residuals, 5, basis=basis))


# --------------------------------------------- random factors vs numpy ----


@pytest.mark.parametrize('num, chunk', [(1, 100), (7, 3), (12, 4)])
def test_report_matches_numpy_reference(num, chunk):
  rng = np.random.default_rng(num)
  factors = rng.normal(size=(num, _S, _R)) * np.geomspace(1, 0.01, _R)
  residuals = rng.normal(size=(num, _S))
  report = structure.structure_report(factors, residuals, pixel_index=_S // 2,
                                      chunk_size=chunk)
  _assert_report(report, _reference(factors, residuals, _S // 2))


@pytest.mark.slow
def test_float32_at_evaluation_size():
  # The size evaluation uses: 1000 images of 28x28, rank 25, in float32.
  rng = np.random.default_rng(7)
  num, size, rank = 1000, 784, 25
  base = rng.normal(size=(size, rank)) * np.geomspace(1, 0.05, rank)
  factors = (base + 0.3 * rng.normal(size=(num, size, rank))).astype(np.float32)
  residuals = factors[:, :, :3].sum(-1) + rng.normal(size=(num, size))
  residuals = residuals.astype(np.float32)
  with jax.enable_x64(False):
    report = structure.structure_report(factors, residuals, pixel_index=406)
  expected = _reference(factors.astype(np.float64), residuals.astype(np.float64), 406)
  _assert_report(report, expected, rtol=1e-4)
