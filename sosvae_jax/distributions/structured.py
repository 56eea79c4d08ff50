"""Gaussian images with a sparse local Cholesky factor of the precision."""

# Notation (dorta2018_vae_structured_residuals.txt section 4): an image has
# shape [H, W] and S = H * W pixels, flattened row-major (p = i * W + j). The
# precision is Lambda = L L^T with L lower triangular, non-zero only inside
# the n_f x n_f neighbourhood of each pixel (n_f = kernel_size, r = n_f // 2).
#
# Parameter layout, for pixel p = (i, j):
#   L[p, p]  = exp(log_diag[..., i, j])
#   L[q, p]  = off_diag[..., i, j, m]   with q = (i + a_m, j + b_m)
# where (a_m, b_m) = dilation * (di, dj) runs over the M = n_f**2 // 2 kernel
# positions that come AFTER the centre in row-major order of the n_f x n_f
# kernel: kernel index t = n_f**2 // 2 + 1 + m, di = t // n_f - r,
# dj = t % n_f - r. So m = 0 .. r-1 are the same-row neighbours to the right
# (di = 0, dj = 1 .. r), then come the rows di = 1 .. r with dj = -r .. r.
# This is the reference code's k x k kernel with its first k*k//2 entries
# zeroed and exp(log_diag) at the centre. Every such q comes after p in the
# row-major order, so L is lower triangular. Entries whose neighbour q falls
# outside the image are ignored (they never reach L; their gradient is zero).

from __future__ import annotations

import math
from typing import Sequence

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.distributions.numerics import compute_dtype

Array = jax.Array
Offsets = tuple[tuple[int, int], ...]

_LOG_2PI = math.log(2.0 * math.pi)


# ---------------------------------------------------------------- layout ----


def num_off_diag(kernel_size: int) -> int:
  """Number of off-diagonal weights per pixel, M = kernel_size**2 // 2."""
  return kernel_size * kernel_size // 2


def neighbour_offsets(kernel_size: int, dilation: int = 1) -> Offsets:
  """(row, col) offsets of the M neighbours after a pixel, in off_diag order.

  Returns a tuple of M pairs (a_m, b_m) = dilation * (di, dj).
  """
  r = kernel_size // 2
  first = num_off_diag(kernel_size) + 1  # kernel entry just after the centre
  return tuple(
      (dilation * (t // kernel_size - r), dilation * (t % kernel_size - r))
      for t in range(first, kernel_size * kernel_size))


def shift_image(x: Array, offsets: Offsets) -> Array:
  """out[..., i, j, m] = x[..., i + a_m, j + b_m], zero outside the image.

  x: [..., H, W] -> [..., H, W, M]. Zero padding then static slices, so the
  neighbours outside the image contribute nothing (no wrap-around).
  """
  if not offsets:
    return jnp.zeros(x.shape + (0,), x.dtype)
  h, w = x.shape[-2:]
  pr = max(a for a, _ in offsets)  # offsets only look down, never up
  pc = max(abs(b) for _, b in offsets)
  pad = [(0, 0)] * (x.ndim - 2) + [(0, pr), (pc, pc)]
  xp = jnp.pad(x, pad)  # (..., H + pr, W + 2 pc)
  return jnp.stack(
      [xp[..., a:a + h, pc + b:pc + b + w] for a, b in offsets], axis=-1)


def basis_off_diag(basis: Array, weights: Array) -> Array:
  """Off-diagonal weights from a learnable basis, L = s(B W(z)).

  dorta2018_vae_structured_residuals.txt section 4.3, eq. 15: every pixel's
  column of L is a linear combination of n_b shared basis kernels. Here the
  basis spans only the M off-diagonal entries; the diagonal stays a separate
  per-pixel log_diag so that exp keeps L invertible. The zero padding s(.) is
  the layout itself (kernel entries before the centre are never stored).

  Args:
    basis: [n_b, M] shared basis, M = kernel_size**2 // 2.
    weights: [..., H, W, n_b] per-pixel coefficients predicted from z.

  Returns:
    off_diag: [..., H, W, M].
  """
  return jnp.einsum('...b,bm->...m', weights, basis)


# ------------------------------------------------------------ linear maps ----


def apply_lt(residual: Array, log_diag: Array, off_diag: Array, *,
             kernel_size: int, dilation: int = 1) -> Array:
  """L^T r by shift filters, O(S M) time and memory, no S x S matrix.

  (L^T r)[p] = exp(log_diag[p]) r[p] + sum_m off_diag[p, m] r[p + offset_m]:
  the residual convolved with one-hot shift filters; section 4.4 of
  dorta2018_vae_structured_residuals.txt.

  Args:
    residual: [..., H, W].
    log_diag: [..., H, W] (broadcasts against residual).
    off_diag: [..., H, W, M].

  Returns:
    [..., H, W].
  """
  shifted = shift_image(residual, neighbour_offsets(kernel_size, dilation))
  return (jnp.exp(log_diag) * residual
          + jnp.sum(off_diag * shifted, axis=-1))  # (..., H, W)


def _row_factor(log_diag_row: Array, off_row: Array,
                same_row: Sequence[tuple[int, int]]) -> Array:
  """Dense [B, W, W] upper-triangular block of L^T for one image row.

  U[j, j] = exp(log_diag[j]), U[j, j + b] = off[j, m] for the same-row
  neighbours (m, b); entries with j + b >= W fall off the shifted identity.
  """
  w = log_diag_row.shape[-1]
  u = jnp.exp(log_diag_row)[..., :, None] * jnp.eye(w, dtype=off_row.dtype)
  for m, b in same_row:
    u = u + off_row[..., :, m, None] * jnp.eye(w, k=b, dtype=off_row.dtype)
  return u  # (B, W, W)


def _back_substitute_rows(rhs: Array, log_diag: Array, off_diag: Array,
                          offsets: Offsets) -> Array:
  """Solve L^T y = rhs row by row, bottom row first.

  rhs [B, H, W, K], log_diag [B, H, W], off_diag [B, H, W, M] -> [B, H, W, K].
  Row i of L^T y = rhs couples y[i] only to itself (same-row neighbours to
  the right) and to the rows i + a, a = 1 .. r*dilation below it, which are
  already solved when rows go bottom-up. A scan carries a window of the last
  r*dilation solved rows (zero beyond the image bottom), subtracts their
  contribution and solves the row's own [W, W] triangular block for all K
  right-hand sides at once.
  """
  bsz, h, w, k = rhs.shape
  same_row = [(m, b) for m, (a, b) in enumerate(offsets) if a == 0]
  below = [(m, a, b) for m, (a, b) in enumerate(offsets) if a > 0]
  depth = max([a for _, a, _ in below], default=1)
  pc = max([abs(b) for _, _, b in below], default=0)

  def step(window, xs):
    rhs_i, ld_i, off_i = xs  # (B, W, K), (B, W), (B, W, M)
    for m, a, b in below:
      # window[:, a - 1] is y[i + a], zero-padded by pc columns either side.
      y_below = window[:, a - 1, pc + b:pc + b + w, :]  # (B, W, K)
      rhs_i = rhs_i - off_i[..., m, None] * y_below
    u = _row_factor(ld_i, off_i, same_row)  # (B, W, W)
    y_i = jax.scipy.linalg.solve_triangular(u, rhs_i, lower=False)
    y_pad = jnp.pad(y_i, ((0, 0), (pc, pc), (0, 0)))[:, None]
    window = jnp.concatenate([y_pad, window[:, :-1]], axis=1)
    return window, y_i

  window0 = jnp.zeros((bsz, depth, w + 2 * pc, k), rhs.dtype)
  xs = (jnp.moveaxis(rhs, 1, 0), jnp.moveaxis(log_diag, 1, 0),
        jnp.moveaxis(off_diag, 1, 0))
  _, ys = jax.lax.scan(step, window0, xs, reverse=True)  # (H, B, W, K)
  return jnp.moveaxis(ys, 0, 1)


def solve_lt(rhs: Array, log_diag: Array, off_diag: Array, *,
             kernel_size: int, dilation: int = 1) -> Array:
  """y = L^{-T} rhs exactly, without a dense matrix.

  L^T is upper triangular with the same local sparsity, so back-substitution
  in reverse row-major order is exact; it is blocked by image rows (see
  `_back_substitute_rows`): H sequential scan steps, each a [W, W]
  triangular solve. Cost O(B K S (M + W)) flops, O(B K S) memory for the
  output plus O(B W^2) for one row's block, for B parameter batches and K
  right-hand sides per batch.

  Args:
    rhs: [..., *P, H, W]: the trailing dims broadcast against the parameter
      batch shape P; extra leading dims (e.g. samples) are solved together as
      multiple right-hand sides.
    log_diag: [*P, H, W].
    off_diag: [*P, H, W, M].

  Returns:
    [..., *P, H, W].
  """
  batch = jnp.broadcast_shapes(log_diag.shape[:-2], off_diag.shape[:-3])
  h, w = log_diag.shape[-2:]
  m = off_diag.shape[-1]
  # One dtype for the scan carry and the solves.
  dtype = jnp.result_type(rhs, log_diag, off_diag)
  rhs, log_diag, off_diag = (t.astype(dtype) for t in (rhs, log_diag,
                                                       off_diag))
  extra = rhs.shape[:max(0, rhs.ndim - len(batch) - 2)]
  rhs = jnp.broadcast_to(rhs, extra + batch + (h, w))
  n_extra, n_batch = math.prod(extra), math.prod(batch)
  # Right-hand sides last so one triangular solve per row serves all of them.
  b = jnp.moveaxis(rhs.reshape((n_extra, n_batch, h, w)), 0, -1)  # (B,H,W,K)
  ld = jnp.broadcast_to(log_diag, batch + (h, w)).reshape((n_batch, h, w))
  off = jnp.broadcast_to(off_diag, batch + (h, w, m)).reshape(
      (n_batch, h, w, m))
  y = _back_substitute_rows(b, ld, off, neighbour_offsets(kernel_size,
                                                          dilation))
  return jnp.moveaxis(y, -1, 0).reshape(extra + batch + (h, w))


def dense_cholesky_factor(log_diag: Array, off_diag: Array, *,
                          kernel_size: int, dilation: int = 1) -> Array:
  """Dense L over the row-major flattening, [..., H, W] -> [..., S, S].

  O(S^2) memory: for small images and tests only.
  """
  h, w = log_diag.shape[-2:]
  s = h * w
  batch = jnp.broadcast_shapes(log_diag.shape[:-2], off_diag.shape[:-3])
  rows, cols, ms = [], [], []  # L[q, p] = off_diag[p, m]
  for m, (a, b) in enumerate(neighbour_offsets(kernel_size, dilation)):
    for i in range(max(0, h - a)):
      for j in range(max(0, -b), min(w, w - b)):
        rows.append((i + a) * w + j + b)
        cols.append(i * w + j)
        ms.append(m)
  diag = jnp.exp(log_diag).reshape(log_diag.shape[:-2] + (s,))
  lower = jnp.broadcast_to(diag[..., None, :] * jnp.eye(s, dtype=diag.dtype),
                           batch + (s, s))
  if rows:
    off = off_diag.reshape(off_diag.shape[:-3] + (s, -1))
    vals = jnp.broadcast_to(off[..., np.array(cols), np.array(ms)],
                            batch + (len(rows),))
    lower = lower.at[..., np.array(rows), np.array(cols)].set(vals)
  return lower


# ------------------------------------------------------------ distribution ---


def _check_parameters(loc_shape: Sequence[int], log_diag_shape: Sequence[int],
                      off_diag_shape: Sequence[int], kernel_size: int,
                      dilation: int) -> tuple[int, ...]:
  """Raises ValueError on bad shapes or sizes; returns the batch shape."""
  if (not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1
      or kernel_size % 2 == 0):
    raise ValueError(
        f'kernel_size must be a positive odd int, got {kernel_size!r}.')
  if not isinstance(dilation, (int, np.integer)) or dilation < 1:
    raise ValueError(f'dilation must be a positive int, got {dilation!r}.')
  loc_shape, log_diag_shape = tuple(loc_shape), tuple(log_diag_shape)
  off_diag_shape = tuple(off_diag_shape)
  if len(loc_shape) < 2:
    raise ValueError(f'loc must be [..., H, W], got shape {loc_shape}.')
  if len(log_diag_shape) < 2 or log_diag_shape[-2:] != loc_shape[-2:]:
    raise ValueError(
        f'log_diag must be [..., H, W] with (H, W) = {loc_shape[-2:]} from '
        f'loc, got shape {log_diag_shape}.')
  m = num_off_diag(kernel_size)
  if len(off_diag_shape) < 3 or off_diag_shape[-3:] != loc_shape[-2:] + (m,):
    raise ValueError(
        f'off_diag must be [..., H, W, kernel_size**2 // 2] = [..., '
        f'{loc_shape[-2]}, {loc_shape[-1]}, {m}] for kernel_size='
        f'{kernel_size}, got shape {off_diag_shape}.')
  try:
    return jnp.broadcast_shapes(loc_shape[:-2], log_diag_shape[:-2],
                                off_diag_shape[:-3])
  except ValueError as e:
    raise ValueError(
        f'batch shapes do not broadcast: loc {loc_shape}, log_diag '
        f'{log_diag_shape}, off_diag {off_diag_shape}.') from e


class StructuredPrecisionNormal(distrax.Distribution):
  """Gaussian over [H, W] images with precision L L^T, L sparse and local.

  dorta2018_vae_structured_residuals.txt section 4, eq. 7; the parameter
  layout is documented at the top of this module. Batch shape is the
  broadcast of loc [..., H, W], log_diag [..., H, W] and off_diag
  [..., H, W, M]; event shape is (H, W).

  Costs: log_prob and entropy O(S M); sampling O(S (M + W)) flops in H
  sequential steps (see `solve_lt`); variance O(S^2 (M + W)) flops and
  O(S^2) memory; precision, covariance and cholesky_factor are dense
  [..., S, S] (covariance O(S^3)): small images only.
  """

  def __init__(self, loc: Array, log_diag: Array, off_diag: Array, *,
               kernel_size: int, dilation: int = 1):
    super().__init__()
    loc, log_diag, off_diag = (jnp.asarray(t) for t in (loc, log_diag,
                                                        off_diag))
    batch = _check_parameters(loc.shape, log_diag.shape, off_diag.shape,
                              kernel_size, dilation)
    # At least float32: exp(log_diag) and the triangular solves need it.
    dtype = compute_dtype(loc, log_diag, off_diag)
    event = loc.shape[-2:]
    self._loc = jnp.broadcast_to(loc.astype(dtype), batch + event)
    self._log_diag = jnp.broadcast_to(log_diag.astype(dtype), batch + event)
    self._off_diag = jnp.broadcast_to(
        off_diag.astype(dtype), batch + off_diag.shape[-3:])
    self._kernel_size = int(kernel_size)
    self._dilation = int(dilation)

  # -- parameters --
  @property
  def loc(self) -> Array:
    return self._loc

  @property
  def log_diag(self) -> Array:
    return self._log_diag

  @property
  def off_diag(self) -> Array:
    return self._off_diag

  @property
  def kernel_size(self) -> int:
    return self._kernel_size

  @property
  def dilation(self) -> int:
    return self._dilation

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._loc.shape[-2:])

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self._loc.shape[:-2])

  @property
  def _num_pixels(self) -> int:
    return math.prod(self.event_shape)

  def _kw(self) -> dict[str, int]:
    return dict(kernel_size=self._kernel_size, dilation=self._dilation)

  # -- densities --
  def log_prob(self, value: Array) -> Array:
    """[..., *batch, H, W] -> [..., *batch].

    log N(x; mu, (L L^T)^{-1}) = -S/2 log 2 pi + sum log_diag
    - |L^T (x - mu)|^2 / 2; the log-determinant is free because L is
    triangular with diagonal exp(log_diag).
    """
    z = apply_lt(value - self._loc, self._log_diag, self._off_diag,
                 **self._kw())  # (..., H, W)
    return (-0.5 * self._num_pixels * _LOG_2PI
            + jnp.sum(self._log_diag, axis=(-2, -1))
            - 0.5 * jnp.sum(jnp.square(z), axis=(-2, -1)))

  def entropy(self) -> Array:
    """S/2 (1 + log 2 pi) - sum log_diag, [*batch]."""
    return (0.5 * self._num_pixels * (1.0 + _LOG_2PI)
            - jnp.sum(self._log_diag, axis=(-2, -1)))

  def _sample_n(self, key: Array, n: int) -> Array:
    """x = mu + L^{-T} eps, eps ~ N(0, I): [n, *batch, H, W].

    Cov(L^{-T} eps) = (L L^T)^{-1}. The solve is the exact row-blocked
    back-substitution of `solve_lt`: H scan steps, O(n S (M + W)) flops per
    batch element, no S x S matrix.
    """
    eps = jax.random.normal(key, (n,) + self._loc.shape, self._loc.dtype)
    return self._loc + solve_lt(eps, self._log_diag, self._off_diag,
                                **self._kw())

  # -- moments --
  def mean(self) -> Array:
    return self._loc

  def mode(self) -> Array:
    return self._loc

  def variance(self) -> Array:
    """Marginal variances [*batch, H, W]: small images only.

    diag(Sigma)[p] = sum_q (L^{-T} e_q)[p]^2, solved for all S unit vectors
    at once with `solve_lt`: O(S^2) memory, O(S^2 (M + W)) flops.
    """
    h, w = self.event_shape
    unit = jnp.eye(self._num_pixels, dtype=self._loc.dtype).reshape(
        (self._num_pixels,) + (1,) * len(self.batch_shape) + (h, w))
    cols = solve_lt(unit, self._log_diag, self._off_diag, **self._kw())
    return jnp.sum(jnp.square(cols), axis=0)

  def stddev(self) -> Array:
    return jnp.sqrt(self.variance())

  def cholesky_factor(self) -> Array:
    """Dense L, [*batch, S, S] over the row-major flattening; small images."""
    return dense_cholesky_factor(self._log_diag, self._off_diag, **self._kw())

  def precision(self) -> Array:
    """Dense Lambda = L L^T, [*batch, S, S]; small images only."""
    lower = self.cholesky_factor()
    return lower @ jnp.swapaxes(lower, -1, -2)

  def covariance(self) -> Array:
    """Dense Sigma = L^{-T} L^{-1}, [*batch, S, S]; O(S^3), small images."""
    lower = self.cholesky_factor()
    eye = jnp.broadcast_to(jnp.eye(lower.shape[-1], dtype=lower.dtype),
                           lower.shape)
    inv_lower = jax.scipy.linalg.solve_triangular(lower, eye, lower=True)
    return jnp.swapaxes(inv_lower, -1, -2) @ inv_lower

  def __getitem__(self, index) -> 'StructuredPrecisionNormal':
    # Index the batch dims only, never the event dims (as distrax does).
    index = tuple(ix[index] for ix in np.indices(self.batch_shape))
    return StructuredPrecisionNormal(
        self._loc[index], self._log_diag[index], self._off_diag[index],
        **self._kw())


# -------------------------------------------------- precision diagonal ----


def precision_diagonal(log_diag: Array, off_diag: Array, *, kernel_size: int,
                       dilation: int = 1) -> Array:
  """diag(Lambda) = diag(L L^T) per pixel, [..., H, W], O(S M).

  Row q of L holds exp(log_diag[q]) on the diagonal and off_diag[p, m] for
  every p with p + offset_m = q, so Lambda[q, q] = exp(2 log_diag[q]) +
  sum_m off_diag[q - offset_m, m]^2 (terms with p outside the image are
  absent). The Gamma prior of dorta2018_vae_structured_residuals.txt
  section 4.2, eq. 13, is placed on these values.

  Args:
    log_diag: [..., H, W].
    off_diag: [..., H, W, M].

  Returns:
    [..., H, W] positive diagonal of the precision.
  """
  offsets = neighbour_offsets(kernel_size, dilation)
  sq = jnp.square(off_diag)  # (..., H, W, M)
  h, w = sq.shape[-3:-1]
  out = jnp.exp(2.0 * log_diag)
  if not offsets:
    return out
  pr = max(a for a, _ in offsets)
  pc = max(abs(b) for _, b in offsets)
  # Pad on top (rows above q) and both sides, then read p = q - offset.
  pad = [(0, 0)] * (sq.ndim - 3) + [(pr, 0), (pc, pc), (0, 0)]
  sp = jnp.pad(sq, pad)  # (..., H + pr, W + 2 pc, M)
  for m, (a, b) in enumerate(offsets):
    out = out + sp[..., pr - a:pr - a + h, pc - b:pc - b + w, m]
  return out
