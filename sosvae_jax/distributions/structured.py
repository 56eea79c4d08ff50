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
    dtype = jnp.promote_types(jnp.result_type(loc, log_diag, off_diag),
                              jnp.float32)
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


# ------------------------------------------------------------------ colour ---

# ITU-R BT.601 luma weights, full range (JFIF): Y = KR R + KG G + KB B,
# Cb = 0.5 + (B - Y) / (2 (1 - KB)), Cr = 0.5 + (R - Y) / (2 (1 - KR)).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_RGB_TO_YCBCR = np.array([
    [_KR, _KG, _KB],
    [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
    [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
])
# Per-pixel log |det d(YCbCr)/d(RGB)|, the colour change of variables.
YCBCR_LOG_ABS_DET = float(np.linalg.slogdet(_RGB_TO_YCBCR)[1])


def rgb_to_ycbcr(x: Array) -> Array:
  """BT.601 full range, [..., 3] RGB in [0, 1] -> [..., 3] YCbCr in [0, 1]."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = _KR * r + _KG * g + _KB * b
  cb = 0.5 + (b - y) / (2.0 * (1.0 - _KB))
  cr = 0.5 + (r - y) / (2.0 * (1.0 - _KR))
  return jnp.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(x: Array) -> Array:
  """Exact inverse of `rgb_to_ycbcr`: [..., 3] YCbCr -> [..., 3] RGB."""
  y, cb, cr = x[..., 0], x[..., 1], x[..., 2]
  r = y + 2.0 * (1.0 - _KR) * (cr - 0.5)
  b = y + 2.0 * (1.0 - _KB) * (cb - 0.5)
  g = (y - _KR * r - _KB * b) / _KG
  return jnp.stack([r, g, b], axis=-1)


def avg_pool(x: Array, factor: int) -> Array:
  """Mean over factor x factor blocks, [..., H, W, C] -> [..., H/f, W/f, C]."""
  h, w, c = x.shape[-3:]
  if factor < 1 or h % factor or w % factor:
    raise ValueError(
        f'avg_pool factor {factor} must be >= 1 and divide (H, W) = '
        f'({h}, {w}).')
  blocks = x.reshape(x.shape[:-3] + (h // factor, factor, w // factor,
                                     factor, c))
  return jnp.mean(blocks, axis=(-4, -2))


def ycbcr_targets(rgb: Array, factor: int) -> tuple[Array, Array]:
  """Split an RGB target into full-resolution Y and pooled (Cb, Cr).

  dorta2018_vae_structured_residuals.txt section 4.1: the chroma channels
  are modelled at a resolution lowered by `factor` (64 -> 16 in the paper).

  Args:
    rgb: [..., H, W, 3] in [0, 1].

  Returns:
    luma [..., H, W] and chroma [..., H/f, W/f, 2].
  """
  ycc = rgb_to_ycbcr(rgb)
  return ycc[..., 0], avg_pool(ycc[..., 1:], factor)


def _diag_normal_log_prob(x: Array, loc: Array, log_scale: Array) -> Array:
  """Sum of N(loc, exp(log_scale)^2) log densities over [..., h, w, c]."""
  z = (x - loc) * jnp.exp(-log_scale)
  return jnp.sum(-0.5 * _LOG_2PI - log_scale - 0.5 * jnp.square(z),
                 axis=(-3, -2, -1))


def ycbcr_log_prob(rgb: Array, luma: StructuredPrecisionNormal,
                   chroma_loc: Array, chroma_log_scale: Array, *,
                   factor: int, space: str = 'ycbcr') -> Array:
  """Structured Y times diagonal low-resolution Cb, Cr; eqs. 8-12, section 4.1.

  The density is over the target t(x) = (Y [H, W], pool_f(Cb), pool_f(Cr))
  of the RGB image x, with Y ~ `luma` (structured) and the pooled chroma
  independent Gaussians N(chroma_loc, exp(chroma_log_scale)^2).

  space='ycbcr' (default): the log density of t(x) in YCbCr space, as the
    paper's bound is evaluated.
  space='rgb': the log density of x itself in RGB space, i.e. plus
    H W log|det M| for the per-pixel colour matrix M. Only defined for
    factor == 1: with pooling, t is many-to-one and has no RGB density.

  Args:
    rgb: [..., H, W, 3] in [0, 1].
    luma: distribution over [H, W] with batch shape broadcasting with [...].
    chroma_loc, chroma_log_scale: [..., H/f, W/f, 2] for (Cb, Cr).

  Returns:
    [...] log densities.
  """
  if space not in ('ycbcr', 'rgb'):
    raise ValueError(f"space must be 'ycbcr' or 'rgb', got {space!r}.")
  if space == 'rgb' and factor != 1:
    raise ValueError(
        f"space='rgb' needs factor=1: pooled chroma (factor={factor}) is not "
        'an invertible map of RGB, so it has no RGB density.')
  y, chroma = ycbcr_targets(rgb, factor)
  log_p = luma.log_prob(y) + _diag_normal_log_prob(chroma, chroma_loc,
                                                   chroma_log_scale)
  if space == 'rgb':
    log_p = log_p + y.shape[-2] * y.shape[-1] * YCBCR_LOG_ABS_DET
  return log_p


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


# ------------------------------------------------------ colour as RGB ----


def upsample_nearest(x: Array, factor: int) -> Array:
  """Each pixel repeated factor x factor times, [..., h, w, C] -> [..., hf, wf, C]."""
  return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


def _ycbcr_to_rgb_matrix() -> np.ndarray:
  return np.linalg.inv(_RGB_TO_YCBCR)


class StructuredYCbCrNormal(distrax.Distribution):
  """Gaussian over RGB images [H, W, 3]: structured Y, low-resolution Cb, Cr.

  dorta2018_vae_structured_residuals.txt section 4.1 (eqs. 8-12): the image
  is converted to YCbCr (BT.601, `rgb_to_ycbcr`); Y [H, W] follows the
  structured-precision Gaussian `luma`; the chroma channels, averaged over
  f x f blocks (f = `factor`, 64 -> 16 in the paper), follow independent
  Gaussians N(chroma_loc, exp(chroma_log_scale)^2) at [H/f, W/f, 2].

  To make this a density of the RGB image itself (so that its log_prob is
  comparable with the other likelihoods and includes the colour Jacobian),
  the chroma detail inside each block, c - upsample(pool(c)), which the
  paper's bound ignores, gets an isotropic Gaussian of fixed scale
  `detail_scale` on the f^2 - 1 dimensional within-block subspace. With
  the orthonormal block basis (block mean direction 1/f, plus its
  complement), log p of one block's chroma values v is
    log N(mean(v); mu, s^2) - log f
    + (f^2 - 1) (-log(2 pi)/2 - log tau) - |v - mean(v)|^2 / (2 tau^2),
  and log p(rgb) = log p(ycbcr) + H W log|det M| for the per-pixel colour
  matrix M. For factor 1 the detail term vanishes and this is exactly the
  paper's model read in RGB space. `paper_log_prob` gives the paper's
  bound term (Y and pooled chroma densities in YCbCr space).

  Mean and samples are RGB: Y from `luma`, chroma upsampled by
  repetition (plus detail noise for samples), then `ycbcr_to_rgb`.
  """

  def __init__(self, luma: StructuredPrecisionNormal, chroma_loc: Array,
               chroma_log_scale: Array, *, factor: int,
               detail_scale: float = 0.01):
    super().__init__()
    h, w = luma.event_shape
    if not isinstance(factor, (int, np.integer)) or factor < 1:
      raise ValueError(f'factor must be a positive int, got {factor!r}.')
    if h % factor or w % factor:
      raise ValueError(
          f'factor={factor} must divide the image size (H, W) = ({h}, {w}); '
          'choose a chroma downsampling factor that divides both.')
    if not detail_scale > 0:
      raise ValueError(
          f'detail_scale must be > 0 (the scale of the within-block chroma '
          f'detail), got {detail_scale!r}.')
    chroma_loc = jnp.asarray(chroma_loc, luma.loc.dtype)
    chroma_log_scale = jnp.asarray(chroma_log_scale, luma.loc.dtype)
    want = (h // factor, w // factor, 2)
    for name, t in (('chroma_loc', chroma_loc),
                    ('chroma_log_scale', chroma_log_scale)):
      if t.ndim < 3 or tuple(t.shape[-3:]) != want:
        raise ValueError(
            f'{name} must be [..., H/f, W/f, 2] = [..., {want[0]}, {want[1]}, '
            f'2] for (H, W) = ({h}, {w}) and factor {factor}, got shape '
            f'{tuple(t.shape)}.')
    batch = jnp.broadcast_shapes(luma.batch_shape, chroma_loc.shape[:-3],
                                 chroma_log_scale.shape[:-3])
    self._luma = luma
    self._chroma_loc = jnp.broadcast_to(chroma_loc, batch + want)
    self._chroma_log_scale = jnp.broadcast_to(chroma_log_scale, batch + want)
    self._factor = int(factor)
    self._detail_scale = float(detail_scale)
    self._batch = tuple(batch)

  @property
  def luma(self) -> StructuredPrecisionNormal:
    return self._luma

  @property
  def chroma_loc(self) -> Array:
    return self._chroma_loc

  @property
  def chroma_log_scale(self) -> Array:
    return self._chroma_log_scale

  @property
  def factor(self) -> int:
    return self._factor

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._luma.event_shape) + (3,)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self._batch

  def _num_blocks(self) -> int:
    h, w = self._luma.event_shape
    return (h // self._factor) * (w // self._factor)

  def _detail_log_prob(self, chroma: Array) -> Array:
    """Within-block chroma detail term, [..., H, W, 2] -> [...]."""
    f = self._factor
    if f == 1:
      return jnp.zeros(chroma.shape[:-3], chroma.dtype)
    detail = chroma - upsample_nearest(avg_pool(chroma, f), f)
    log_tau = math.log(self._detail_scale)
    dims = 2 * self._num_blocks() * (f * f - 1)
    return (dims * (-0.5 * _LOG_2PI - log_tau)
            - 0.5 * jnp.sum(jnp.square(detail), axis=(-3, -2, -1))
            / self._detail_scale ** 2
            - 2 * self._num_blocks() * math.log(f))

  def paper_log_prob(self, value: Array) -> Array:
    """The bound term of eq. 9: log p(Y) + log p(pooled Cb, Cr), YCbCr space."""
    return ycbcr_log_prob(value, self._luma, self._chroma_loc,
                          self._chroma_log_scale, factor=self._factor)

  def log_prob(self, value: Array) -> Array:
    """RGB density, [..., *batch, H, W, 3] -> [..., *batch] (see class doc)."""
    ycc = rgb_to_ycbcr(value)
    h, w = self._luma.event_shape
    return (self.paper_log_prob(value) + self._detail_log_prob(ycc[..., 1:])
            + h * w * YCBCR_LOG_ABS_DET)

  def entropy(self) -> Array:
    """H(Y) + H(chroma at full resolution) - H W log|det M|, [*batch]."""
    f = self._factor
    h, w = self._luma.event_shape
    chroma = jnp.sum(0.5 * (1.0 + _LOG_2PI) + self._chroma_log_scale,
                     axis=(-3, -2, -1))
    chroma = chroma + 2 * self._num_blocks() * (
        math.log(f) + (f * f - 1) * (0.5 * (1.0 + _LOG_2PI)
                                     + math.log(self._detail_scale)))
    return (jnp.broadcast_to(self._luma.entropy(), self._batch) + chroma
            - h * w * YCBCR_LOG_ABS_DET)

  def _ycbcr_image(self, y: Array, chroma_low: Array) -> Array:
    chroma = upsample_nearest(chroma_low, self._factor)
    y = jnp.broadcast_to(y, chroma.shape[:-1])
    return jnp.concatenate([y[..., None], chroma], axis=-1)

  def _sample_n(self, key: Array, n: int) -> Array:
    """[n, *batch, H, W, 3] RGB samples.

    Y by the exact sparse solve of the luma distribution; pooled chroma
    N(loc, s^2); detail tau * (e - block mean of e) for e ~ N(0, I), which
    has covariance tau^2 (I - 1 1^T / f^2) inside each block.
    """
    k_y, k_c, k_d = jax.random.split(key, 3)
    y = self._luma.sample(seed=k_y, sample_shape=(n,))
    y = jnp.broadcast_to(y, (n,) + self._batch + tuple(self._luma.event_shape))
    eps = jax.random.normal(k_c, (n,) + self._chroma_loc.shape,
                            self._chroma_loc.dtype)
    low = self._chroma_loc + jnp.exp(self._chroma_log_scale) * eps
    ycc = self._ycbcr_image(y, low)
    if self._factor > 1:
      e = jax.random.normal(k_d, ycc.shape[:-1] + (2,), ycc.dtype)
      e = e - upsample_nearest(avg_pool(e, self._factor), self._factor)
      ycc = ycc.at[..., 1:].add(self._detail_scale * e)
    return ycbcr_to_rgb(ycc)

  def mean(self) -> Array:
    """RGB of (mu_Y, upsampled chroma means), [*batch, H, W, 3]."""
    return ycbcr_to_rgb(self._ycbcr_image(self._luma.mean(),
                                          self._chroma_loc))

  def mode(self) -> Array:
    return self.mean()

  def ycbcr_variance(self) -> Array:
    """Marginal variances in YCbCr, [*batch, H, W, 3]; Y part O(S^2) memory."""
    f = self._factor
    chroma = (jnp.exp(2.0 * self._chroma_log_scale)
              + self._detail_scale ** 2 * (1.0 - 1.0 / (f * f)))
    y = jnp.broadcast_to(self._luma.variance(),
                         self._batch + tuple(self._luma.event_shape))
    return self._ycbcr_image(y, chroma)

  def variance(self) -> Array:
    """Marginal RGB variances [*batch, H, W, 3]: Y, Cb, Cr are independent
    at each pixel, so Var(rgb_c) = sum_k (M^{-1})_{ck}^2 Var(ycbcr_k)."""
    inv_sq = jnp.asarray(np.square(_ycbcr_to_rgb_matrix()),
                         self._chroma_loc.dtype)
    return jnp.einsum('...k,ck->...c', self.ycbcr_variance(), inv_sq)

  def stddev(self) -> Array:
    return jnp.sqrt(self.variance())
