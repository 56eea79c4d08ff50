"""Structure of a low-rank covariance factor P: spectrum, span, negative mass.

SOS-VAE's p(x|z) = N(mu, P P^T + D) is meant to hold distinct variations in
the columns of P (sosvae_tmlr2022.txt section 3, Figures 2 and 5). These
numbers say whether it does, per image and then aggregated:

* singular values s_1 >= ... >= s_R of P [S, R] (the square roots of the
  eigenvalues of P P^T), averaged over images position by position;
* participation ratio (sum s^2)^2 / sum s^4: 1 for one direction, k for k
  equal ones; computed per image, then the mean over images;
* number of components with s_i >= 0.1 s_1, per image, then the mean;
* span share: the residual energy |x - mu|^2 inside span(P), from the
  least-squares fit of r by P's columns. Aggregated as sum over images of
  the projected energy / sum over images of the energy (energy-weighted, so
  images with a near-perfect mean do not dominate with a noisy ratio);
* the same share for one fixed global basis of equal rank (the reference
  any per-image P should beat): by default the top-R principal directions of
  the same residuals, uncentred (the span of P passes through the origin,
  and Eckart-Young makes the uncentred basis the best fixed rank-R subspace
  for exactly this energy, fitted in-sample: an upper bound for any fixed
  basis on these images);
* negative share of one pixel's covariance row: row c of P P^T without its
  diagonal entry c (the variance, positive by construction; leaving it in
  would dilute the share by a term that says nothing about how pixel c
  co-varies with the others; D, being diagonal, then drops out too):
  sum_n sum_{s != c} |negative entries| / sum_n sum_{s != c} |entries|,
  energy-weighted over images like the span share (a background centre pixel
  with near-zero covariance contributes nothing instead of a noisy ratio).

Everything runs per image under `jax.lax.map` in chunks, so 1000 images x
784 pixels x rank 25 is a fraction of a second; sums are taken in float64 on
the host.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# Components with s_i >= COMPONENT_THRESHOLD * s_1 count as present.
COMPONENT_THRESHOLD = 0.1
# Names of the scalar entries of `structure_report`, in table order (stable:
# they are columns of evaluation results and sweep tables).
REPORT_KEYS = ('participation_ratio', 'num_components', 'span_share',
               'pca_span_share', 'centre_negative_share')
# Their headers in results.md and the report table.
REPORT_LABELS = {
    'participation_ratio': 'participation ratio of P (1 = one direction)',
    'num_components': f'components with s_i >= {COMPONENT_THRESHOLD} s_1',
    'span_share': 'residual energy inside span(P)',
    'pca_span_share': 'residual energy inside a PCA basis of equal rank',
    'centre_negative_share': "negative share of the centre pixel's covariance row",
}


def _span_basis(matrix: Array) -> tuple[Array, Array]:
  """Singular values and an orthonormal basis of span(matrix), rank-masked.

  Args:
    matrix: [S, R].

  Returns:
    (s [R] descending, u [S, R]): columns of u whose singular value is below
    numpy lstsq's default cut-off (s_1 * max(S, R) * eps) are zeroed, so that
    u u^T is the least-squares projector onto span(matrix) (zero if it is 0).
  """
  u, s, _ = jnp.linalg.svd(matrix, full_matrices=False)  # (S, R), (R,)
  cutoff = s[0] * max(matrix.shape) * jnp.finfo(matrix.dtype).eps
  keep = s > cutoff  # (R,); all False for a zero matrix
  return s, u * keep[None, :]


def participation_ratio(singular_values: Array) -> Array:
  """(sum s^2)^2 / sum s^4 over the last axis; 0 for an all-zero spectrum.

  Args:
    singular_values: [..., R].

  Returns:
    [...], in [1, R] (or 0).
  """
  power = jnp.square(singular_values)  # (..., R)
  total = power.sum(-1)
  fourth = jnp.square(power).sum(-1)
  safe = jnp.where(fourth > 0, fourth, 1.0)
  return jnp.where(fourth > 0, jnp.square(total) / safe, 0.0)


def num_components(singular_values: Array, *,
                   threshold: float = COMPONENT_THRESHOLD) -> Array:
  """How many s_i >= threshold * s_1 (s_1 the largest); 0 for all zeros.

  Args:
    singular_values: [..., R], any order.
    threshold: relative cut-off.

  Returns:
    [...] int32.
  """
  top = singular_values.max(-1, keepdims=True)
  present = (singular_values >= threshold * top) & (singular_values > 0)
  return present.sum(-1).astype(jnp.int32)


def row_negative_parts(cov_factor: Array, pixel_index: int) -> tuple[Array, Array]:
  """Negative and absolute mass of row c of P P^T, diagonal entry excluded.

  Args:
    cov_factor: P, [S, R].
    pixel_index: c, flat index into S.

  Returns:
    (sum_{s != c} max(-row_s, 0), sum_{s != c} |row_s|), both [].
  """
  row = cov_factor @ cov_factor[pixel_index]  # (S,)
  row = jnp.where(jnp.arange(row.shape[0]) == pixel_index, 0.0, row)
  return jnp.maximum(-row, 0.0).sum(), jnp.abs(row).sum()


def image_statistics(cov_factor: Array, residual: Array | None = None, *,
                     pixel_index: int) -> dict[str, Array]:
  """Per-image structure numbers of one factor P (vmap or lax.map it).

  Args:
    cov_factor: P, [S, R].
    residual: r = x - mu, [S], or None (e.g. for prior samples).
    pixel_index: c, the pixel whose covariance row is measured.

  Returns:
    singular_values [R] (descending), participation_ratio [],
    num_components [], negative_mass [], row_mass [], and with a residual
    also span_energy [] (|u u^T r|^2) and energy [] (|r|^2).
  """
  s, u = _span_basis(cov_factor)
  negative, mass = row_negative_parts(cov_factor, pixel_index)
  stats = dict(singular_values=s, participation_ratio=participation_ratio(s),
               num_components=num_components(s), negative_mass=negative,
               row_mass=mass)
  if residual is not None:
    stats['span_energy'] = jnp.sum(jnp.square(u.T @ residual))
    stats['energy'] = jnp.sum(jnp.square(residual))
  return stats


def batch_statistics(cov_factor: Array, residual: Array | None = None, *,
                     pixel_index: int, chunk_size: int = 100) -> dict[str, np.ndarray]:
  """`image_statistics` of every image, chunk_size images at a time.

  Args:
    cov_factor: P, [N, S, R].
    residual: [N, S] or None.
    pixel_index: c.
    chunk_size: images per vectorised step (bounds memory).

  Returns:
    The keys of `image_statistics` with a leading [N] axis, on the host.
  """
  stats = _mapped_statistics(cov_factor, residual, pixel_index=pixel_index,
                             chunk_size=chunk_size)
  return {k: np.asarray(v) for k, v in stats.items()}


@functools.partial(jax.jit, static_argnames=('pixel_index', 'chunk_size'))
def _mapped_statistics(cov_factor, residual, *, pixel_index, chunk_size):
  fn = lambda args: image_statistics(*args, pixel_index=pixel_index)
  return jax.lax.map(fn, (cov_factor, residual), batch_size=chunk_size)


def residual_basis(residual: Array, rank: int, *, chunk_size: int = 1000) -> Array:
  """Fixed global basis: the top principal directions of residuals, uncentred.

  The S x S second moment sum_n r_n r_n^T is accumulated in chunks, so N
  can be large; its top eigenvectors span the rank-`rank` subspace holding
  the most residual energy (Eckart-Young).

  Args:
    residual: [N, S].
    rank: number of directions.
    chunk_size: residuals per accumulation step.

  Returns:
    [S, rank], orthonormal columns, by descending energy.
  """
  residual = np.asarray(residual)
  moment = 0.0
  for start in range(0, residual.shape[0], chunk_size):
    chunk = jnp.asarray(residual[start:start + chunk_size])
    moment = moment + chunk.T @ chunk  # (S, S)
  _, vectors = jnp.linalg.eigh(moment)  # ascending eigenvalues
  return vectors[:, ::-1][:, :rank]


def basis_span_energy(basis: Array, residual: Array) -> tuple[Array, Array]:
  """Energy of each residual inside one fixed span, by least squares.

  Args:
    basis: [S, K], any (not necessarily orthonormal) spanning columns.
    residual: [N, S].

  Returns:
    (projected energy [N], energy [N]).
  """
  _, u = _span_basis(jnp.asarray(basis))
  coords = jnp.asarray(residual) @ u  # (N, K)
  return jnp.sum(jnp.square(coords), -1), jnp.sum(jnp.square(residual), -1)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> float:
  total = float(np.sum(denominator, dtype=np.float64))
  return float(np.sum(numerator, dtype=np.float64)) / total if total > 0 else float('nan')


def summarise(stats: dict[str, np.ndarray],
              basis_energy: tuple[np.ndarray, np.ndarray] | None = None
              ) -> dict[str, Any]:
  """Aggregates per-image statistics (see the module docstring for how).

  Args:
    stats: output of `batch_statistics` (or concatenated chunks of it).
    basis_energy: (projected, total) energies [N] of a fixed basis, or None.

  Returns:
    singular_values (list [R], mean over images), participation_ratio,
    num_components, centre_negative_share, and where residuals were given
    span_share (and pca_span_share with basis_energy).
  """
  report = dict(
      singular_values=np.mean(stats['singular_values'], 0, dtype=np.float64).tolist(),
      participation_ratio=float(np.mean(stats['participation_ratio'], dtype=np.float64)),
      num_components=float(np.mean(stats['num_components'], dtype=np.float64)),
      centre_negative_share=_ratio(stats['negative_mass'], stats['row_mass']))
  if 'span_energy' in stats:
    report['span_share'] = _ratio(stats['span_energy'], stats['energy'])
  if basis_energy is not None:
    report['pca_span_share'] = _ratio(*(np.asarray(e) for e in basis_energy))
  return report


def structure_report(cov_factor: Array, residual: Array | None = None, *,
                     pixel_index: int, basis: Array | None = None,
                     chunk_size: int = 100) -> dict[str, Any]:
  """All structure numbers of factors P, with stable names (`REPORT_KEYS`).

  Args:
    cov_factor: P, [N, S, R] (e.g. decoded at posterior means of test images,
      or at prior samples).
    residual: r = x - mu, [N, S]; None gives the spectrum and covariance-row
      numbers only.
    pixel_index: c for the covariance row, e.g. the centre pixel.
    basis: fixed reference basis [S, K]; None fits the uncentred rank-R
      principal basis of these residuals (`residual_basis`).
    chunk_size: images per vectorised step.

  Returns:
    dict: singular_values (list, mean spectrum), participation_ratio,
    num_components (mean count of s_i >= 0.1 s_1), centre_negative_share,
    and with residuals span_share and pca_span_share.
  """
  stats = batch_statistics(cov_factor, residual, pixel_index=pixel_index,
                           chunk_size=chunk_size)
  basis_energy = None
  if residual is not None:
    if basis is None:
      basis = residual_basis(residual, cov_factor.shape[-1])
    basis_energy = tuple(np.asarray(e) for e in basis_span_energy(basis, residual))
  return summarise(stats, basis_energy)
