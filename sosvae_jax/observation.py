"""Exact tools on one low-rank observation distribution N(mu, P P^T + diag(d)).

Interpolation (sosvae_tmlr2022.txt section 4.2), principal components of the
covariance factor (section 4.3), conditional editing (section 4.4), covariance
rows (Figure 2) and the closed-form probabilistic PCA of the model without deep
learning (section 4.5). Images are flat [S] vectors, S = H * W * C, flattened
row-major from [H, W, C] as in `models/heads.py`.

Nothing here forms an S x S matrix: S can be 3 * 128 * 128. Every decomposition
is of an R x R matrix or of a tall [S (+ R), R] matrix, O(S R^2) at most.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.distributions import compute_dtype
from sosvae_jax.distributions.lowrank import LowRankMultivariateNormal
from sosvae_jax.distributions.lowrank import LowRankNoise
from sosvae_jax.distributions.lowrank import lowrank_log_prob_autodiff

Array = jax.Array

# Figure 5: each principal component scaled from -5 to +5 in steps of 0.5.
FIGURE5_SCALES = np.linspace(-5.0, 5.0, 21)


# ------------------------------------------------------------------ slerp ----


def _norm(x: Array) -> Array:
  """[..., R] -> [..., 1], with a gradient at 0."""
  tiny = jnp.finfo(x.dtype).tiny
  return jnp.sqrt(jnp.maximum(jnp.sum(x * x, -1, keepdims=True), tiny))


def _unit(x: Array) -> Array:
  """x / |x| over the last axis; 0 stays 0."""
  return x / _norm(x)


def slerp(a: Array, b: Array, t: Array | float) -> Array:
  """Spherical linear interpolation (sosvae_tmlr2022.txt appendix D).

  slerp(a, b, t) = sin((1 - t) w) / sin(w) a + sin(t w) / sin(w) b, with w the
  angle between a and b. The appendix's `cos^-1(|a| . |b|)` is garbled; the
  angle is that of the unit vectors a/|a| and b/|b|. It is computed as
  w = 2 atan2(|a^ - b^|, |a^ + b^|), accurate for all w, where arccos of a dot
  product loses half the digits near w = 0.

  When sin(w) < sqrt(eps), i.e. a and b are (anti-)parallel, the weights
  fall back to the linear (1 - t, t): the limit for parallel vectors; for
  anti-parallel ones the great circle is not unique and the chord through the
  origin is returned. t = 0 gives a and t = 1 gives b exactly. For equal norms
  the norm is constant in t and the angle to a is t w; otherwise the
  interpolant need not keep a constant norm.

  Args:
    a: [..., R].
    b: [..., R].
    t: scalar or array broadcasting against the batch dims [...] of a and b.

  Returns:
    [..., R], the broadcast of a, b and t[..., None].
  """
  dtype = compute_dtype(a, b)
  a = jnp.asarray(a, dtype)
  b = jnp.asarray(b, dtype)
  t = jnp.asarray(t, dtype)[..., None]  # (..., 1)
  a_hat, b_hat = _unit(a), _unit(b)
  omega = 2.0 * jnp.arctan2(_norm(a_hat - b_hat), _norm(a_hat + b_hat))
  sin_omega = jnp.sin(omega)  # (..., 1)
  linear = sin_omega < np.sqrt(jnp.finfo(dtype).eps)
  safe_sin = jnp.where(linear, 1.0, sin_omega)
  weight_a = jnp.where(linear, 1.0 - t, jnp.sin((1.0 - t) * omega) / safe_sin)
  weight_b = jnp.where(linear, t, jnp.sin(t * omega) / safe_sin)
  # Exact endpoints: compiled, sin(w) / sin(w) may round away from 1.
  weight_a = jnp.where(t == 0.0, 1.0, jnp.where(t == 1.0, 0.0, weight_a))
  weight_b = jnp.where(t == 0.0, 0.0, jnp.where(t == 1.0, 1.0, weight_b))
  return weight_a * a + weight_b * b


def slerp_noise_grid(corners: Array, steps: int) -> Array:
  """A [steps, steps] grid of noises slerped between four corners (Figure 4).

  Corners are (top_left, top_right, bottom_left, bottom_right). Each row i
  slerps the left and right edges at u = i / (steps - 1), each edge being a
  slerp of its two corners at u; column j then slerps along the row at
  v = j / (steps - 1). The four corners come back exactly at the corners.

  Args:
    corners: [4, R], e.g. four draws of omega_p ~ N(0, I_R).
    steps: number of points per side, >= 2.

  Returns:
    [steps, steps, R].
  """
  if corners.ndim != 2 or corners.shape[0] != 4:
    raise ValueError(f'corners must be [4, R]; got {corners.shape}.')
  if steps < 2:
    raise ValueError(f'steps must be >= 2; got {steps}.')
  dtype = compute_dtype(corners)
  t = jnp.linspace(0.0, 1.0, steps, dtype=dtype)  # (steps,)
  top_left, top_right, bottom_left, bottom_right = corners
  left = slerp(top_left, bottom_left, t)  # (steps, R)
  right = slerp(top_right, bottom_right, t)  # (steps, R)
  return slerp(left[:, None, :], right[:, None, :], t[None, :])


def samples_from_omega_p(loc: Array, cov_factor: Array, cov_diag: Array,
                         omega_p: Array, omega_d: Array) -> Array:
  """y = mu + P omega_p + sqrt(d) omega_d; sosvae_tmlr2022.txt eq. 4.

  The image noise omega_d is held fixed while omega_p varies (section 4.2: it
  only adds a little uncorrelated noise), so a grid of omega_p from
  `slerp_noise_grid` becomes a grid of samples (Figure 4).

  Args:
    loc: mu, [S].
    cov_factor: P, [S, R].
    cov_diag: d, [S].
    omega_p: [..., R], e.g. [steps, steps, R].
    omega_d: [S], shared by all samples.

  Returns:
    [..., S].
  """
  dist = LowRankMultivariateNormal(loc, cov_factor, cov_diag)
  noise = LowRankNoise(omega_p, jnp.broadcast_to(
      omega_d, omega_p.shape[:-1] + omega_d.shape[-1:]))
  return dist.sample_from_noise(noise)


# ------------------------------------------- principal components, eq. 5 ----


class FactorSVD(NamedTuple):
  """Thin SVD P = U diag(s) V^T of a covariance factor, s descending."""

  components: Array  # U, [..., S, R]
  singular_values: Array  # s, [..., R]
  right_vectors: Array  # V, [..., R, R]


def factor_svd(cov_factor: Array) -> FactorSVD:
  """Thin SVD of P from the R x R eigen-decomposition of P^T P.

  P^T P = V diag(s^2) V^T, then U = P V / s: O(S R^2 + R^3), no S x S array.
  Sorted by descending s. Columns with s <= s_max * sqrt(R eps) are treated as
  null: their s is set to 0 and their U column to 0 (a Gram matrix only
  resolves singular values down to ~sqrt(eps) s_max), so U has orthonormal
  columns for the non-null components and zero columns for the null ones,
  which carry no variance. Each column of V is signed so that its entry of
  largest magnitude is positive, making the result deterministic.

  Args:
    cov_factor: P, [..., S, R].

  Returns:
    FactorSVD(U [..., S, R], s [..., R], V [..., R, R]).
  """
  dtype = compute_dtype(cov_factor)
  p = jnp.asarray(cov_factor, dtype)
  gram = jnp.einsum('...sr,...sq->...rq', p, p)  # (..., R, R)
  eigval, v = jnp.linalg.eigh(gram)  # ascending
  eigval, v = eigval[..., ::-1], v[..., ::-1]  # descending
  pivot = jnp.take_along_axis(
      v, jnp.argmax(jnp.abs(v), axis=-2, keepdims=True), axis=-2)  # (..., 1, R)
  v = v * jnp.where(pivot < 0, -1.0, 1.0)
  rank = p.shape[-1]
  floor = eigval[..., :1] * rank * jnp.finfo(dtype).eps  # (..., 1)
  null = eigval <= floor
  s = jnp.where(null, 0.0, jnp.sqrt(jnp.where(null, 1.0, eigval)))  # (..., R)
  inv_s = jnp.where(null, 0.0, 1.0 / jnp.where(null, 1.0, s))
  u = jnp.einsum('...sr,...rq->...sq', p, v) * inv_s[..., None, :]
  return FactorSVD(u, s, v)


def factor_principal_components(cov_factor: Array) -> tuple[Array, Array]:
  """Principal components of the structured covariance P P^T.

  P P^T = U diag(s^2) U^T: U are the principal directions, s^2 their
  variances. See `factor_svd` for the method and the null components.

  Args:
    cov_factor: P, [..., S, R].

  Returns:
    (components U [..., S, R], singular_values s [..., R]), s descending.
  """
  svd = factor_svd(cov_factor)
  return svd.components, svd.singular_values


def rescaled_cov_factor(cov_factor: Array, component_scales: Array) -> Array:
  """P_A = U (S A) V^T, A = diag(component_scales); sosvae_tmlr2022.txt eq. 5.

  A = I gives back P (the null components contribute nothing either way).

  Args:
    cov_factor: P, [..., S, R].
    component_scales: the diagonal of A, [..., R], in descending-s order.

  Returns:
    [..., S, R].
  """
  u, s, v = factor_svd(cov_factor)
  scaled_u = u * (s * component_scales)[..., None, :]  # (..., S, R)
  return jnp.einsum('...sr,...qr->...sq', scaled_u, v)


def _component_rows(svd: FactorSVD, noise: LowRankNoise, loc: Array,
                    cov_diag: Array, component_index: int | Array,
                    scales: Array, *,
                    other_scale: float, mode: str) -> Array:
  """Samples [M, S] of eq. 5 for one component from a precomputed SVD."""
  u, s, v = svd
  z = jnp.einsum('rq,r->q', v, noise.omega_p)  # (R,) whitened coefficients
  # Sample with A = other_scale * I: mu + other_scale P omega_p + sqrt(d) w_d.
  structured = jnp.einsum('sr,r->s', u, s * z)  # (S,) = P omega_p
  base = loc + other_scale * structured + jnp.sqrt(cov_diag) * noise.omega_d
  u_k = jnp.take(u, component_index, axis=-1)  # (S,)
  s_k = jnp.take(s, component_index)
  z_k = jnp.take(z, component_index)
  coefficient = z_k if mode == 'scale' else jnp.ones_like(z_k)
  delta = (scales * coefficient - other_scale * z_k) * s_k  # (M,)
  return base[None, :] + delta[:, None] * u_k[None, :]


def scaled_component_samples(loc: Array, cov_factor: Array, cov_diag: Array,
                             noise: LowRankNoise, component_index: int | Array,
                             scales: Array, *, other_scale: float = 0.0,
                             mode: Literal['scale', 'set'] = 'scale') -> Array:
  """One row of Figure 5: a fixed-noise sample with component k rescaled.

  sosvae_tmlr2022.txt eq. 5 replaces P by U (S A) V^T with a diagonal A of
  scaling coefficients and keeps the noise fixed, so that

      y(A) = mu + U S A V^T omega_p + sqrt(d) omega_d
           = mu + sum_r a_r s_r z_r u_r + sqrt(d) omega_d,  z = V^T omega_p.

  z ~ N(0, I_R) is the sample's coefficient on the principal components, in
  standard deviations. A row of Figure 5 sets a_k = alpha for each alpha in
  `scales` and every other a_r = `other_scale`:

  * mode='scale' (eq. 5 literally): coefficient k becomes alpha z_k. With
    other_scale=0 only component k is shown, mu + alpha s_k z_k u_k + noise,
    which is what the authors' released code does for Figure 5 (it uses 0.03
    for the other scales, as its Cholesky needs them non-zero); other_scale=1
    is the ordinary sample with only component k rescaled (alpha = 1 gives it
    back). The effect's size depends on the drawn z_k.
  * mode='set': coefficient k is set to alpha itself, z_k := alpha, so the
    columns are alpha standard deviations along u_k whatever the noise.

  Cost O(S R^2 + M S): the rescaled samples differ from one another only along
  u_k.

  Args:
    loc: mu, [S].
    cov_factor: P, [S, R].
    cov_diag: d, [S].
    noise: omega_p [R], omega_d [S], held fixed.
    component_index: k, 0 for the component of largest singular value.
    scales: alpha, [M], e.g. FIGURE5_SCALES.
    other_scale: a_r for r != k.
    mode: 'scale' or 'set', see above.

  Returns:
    [M, S].
  """
  if mode not in ('scale', 'set'):
    raise ValueError(f"mode must be 'scale' or 'set'; got {mode!r}.")
  scales = jnp.asarray(scales, compute_dtype(cov_factor))
  return _component_rows(factor_svd(cov_factor), noise, loc, cov_diag,
                         component_index, scales, other_scale=other_scale,
                         mode=mode)


def scaled_component_grid(loc: Array, cov_factor: Array, cov_diag: Array,
                          noise: LowRankNoise, scales: Array, *,
                          num_components: int | None = None,
                          other_scale: float = 0.0,
                          mode: Literal['scale', 'set'] = 'scale') -> Array:
  """Figure 5: rows are the leading components, columns the scales.

  Args:
    loc, cov_factor, cov_diag, noise, scales, other_scale, mode: as in
      `scaled_component_samples`.
    num_components: K leading components, all R by default.

  Returns:
    [K, M, S].
  """
  if mode not in ('scale', 'set'):
    raise ValueError(f"mode must be 'scale' or 'set'; got {mode!r}.")
  num_components = num_components or cov_factor.shape[-1]
  scales = jnp.asarray(scales, compute_dtype(cov_factor))
  svd = factor_svd(cov_factor)  # once, shared by all rows
  row = lambda k: _component_rows(svd, noise, loc, cov_diag, k, scales,
                                  other_scale=other_scale, mode=mode)
  return jax.vmap(row)(jnp.arange(num_components))


# ------------------------------------------ conditional editing, eqs. 6-7 ----


class LowRankConditional(NamedTuple):
  """p(x | x_E = values) as mu~ + P~ omega_p + sqrt(d~) omega_d over all [S].

  Edited pixels hold their values with zero variance (zero rows of P~, zero
  d~), so this is for sampling with `lowrank_sample_from_noise` and for
  further conditioning on other pixels, not for densities.
  """

  loc: Array  # mu~, [S]: the edit on E, the conditional mean elsewhere
  cov_factor: Array  # P~ = P_K R^-1, [S, R]; zero rows on E
  cov_diag: Array  # d~, [S]: d elsewhere, 0 on E
  omega_mean: Array  # a = C^-1 P_E^T D_E^-1 (x_E - mu_E), [R]
  capacitance_factor: Array  # upper R [R, R] with R^T R = C


def _edit_posterior(cov_factor: Array, cov_diag: Array, mask: Array,
                    residual: Array) -> tuple[Array, Array]:
  """Posterior of omega_p given the edited pixels, as (mean a, factor R).

  With W = mask * D^-1/2 P and u = mask * D^-1/2 r, a minimises the ridge
  problem |u - W a|^2 + |a|^2, whose normal equations are the Woodbury R x R
  system C a = P_E^T D_E^-1 r_E, C = I + P_E^T D_E^-1 P_E. It is solved by a QR
  of the stacked [W; I] = Q R (R^T R = C), which conditions like sqrt(cond C):
  with d = 1e-5 and edited pixels whose factor rows are nearly collinear (a
  patch of neighbours), cond C reaches ~1e9, beyond a float32 Cholesky of C.
  Unedited rows of W are zero, so the mask has a fixed shape under jit; cost
  O(S R^2) whatever the number of edited pixels.

  Shapes: cov_factor [S, R], cov_diag [S], mask [S] bool, residual [S]
  -> ([R], [R, R]).
  """
  size, rank = cov_factor.shape
  scale = jnp.where(mask, jax.lax.rsqrt(jnp.where(mask, cov_diag, 1.0)), 0.0)
  w = cov_factor * scale[:, None]  # (S, R)
  u = jnp.where(mask, residual, 0.0) * scale  # (S,)
  stacked = jnp.concatenate([w, jnp.eye(rank, dtype=w.dtype)], 0)  # (S+R, R)
  q, r = jnp.linalg.qr(stacked)  # (S+R, R), (R, R)
  qtu = jnp.einsum('sr,s->r', q[:size], u)  # the stacked target is [u; 0]
  a = jax.scipy.linalg.solve_triangular(r, qtu, lower=False)
  return a, r


def conditional_distribution(loc: Array, cov_factor: Array, cov_diag: Array,
                             mask: Array, values: Array) -> LowRankConditional:
  """p(x_K | x_E = values) for an edit of the pixels E; eqs. 6-7.

  sosvae_tmlr2022.txt eq. 7 (there y_2 are the edited and y_1 the remaining
  pixels; here E = edited, K = the rest):

      mu~ = mu_K + Sigma_KE Sigma_EE^-1 (x_E - mu_E),
      Sigma~ = Sigma_KK - Sigma_KE Sigma_EE^-1 Sigma_EK.

  With Sigma = P P^T + D and E, K disjoint, Sigma_KE = P_K P_E^T, and the
  push-through form of the Woodbury identity gives
  P_E^T Sigma_EE^-1 = C^-1 P_E^T D_E^-1, C = I_R + P_E^T D_E^-1 P_E, so

      mu~ = mu_K + P_K a,          a = C^-1 P_E^T D_E^-1 (x_E - mu_E),
      Sigma~ = P_K C^-1 P_K^T + D_K   (as P_E^T Sigma_EE^-1 P_E = I - C^-1).

  The conditional is again low rank plus diagonal, with factor P_K R^-1
  (R^T R = C) and the same diagonal: in the sampling form x = mu + P omega_p +
  sqrt(d) omega_d, the edit only turns the prior N(0, I) of omega_p into the
  posterior N(a, C^-1). Only an R x R system is solved; Sigma_EE is never
  formed.

  Args:
    loc: mu, [S].
    cov_factor: P, [S, R].
    cov_diag: d, [S], positive on the edited pixels.
    mask: [S] bool, True on the edited pixels E.
    values: [S], the edit; read only where mask is True.

  Returns:
    LowRankConditional over all S pixels.
  """
  dtype = compute_dtype(loc, cov_factor, cov_diag, values)
  loc, cov_factor, cov_diag, values = (
      jnp.asarray(x, dtype) for x in (loc, cov_factor, cov_diag, values))
  mask = jnp.asarray(mask, bool)
  a, r = _edit_posterior(cov_factor, cov_diag, mask, values - loc)
  mean = jnp.where(mask, values, loc + cov_factor @ a)  # (S,)
  # P R^-1 = (R^-T P^T)^T.
  factor = jax.scipy.linalg.solve_triangular(r, cov_factor.T, trans='T',
                                             lower=False).T  # (S, R)
  factor = jnp.where(mask[:, None], 0.0, factor)
  diag = jnp.where(mask, 0.0, cov_diag)
  return LowRankConditional(mean, factor, diag, a, r)


def conditional_mean(loc: Array, cov_factor: Array, cov_diag: Array,
                     mask: Array, values: Array) -> Array:
  """The edited image: values on E, E[x_K | x_E] elsewhere; eq. 7.

  See `conditional_distribution`; only the mean is formed here, O(S R^2).

  Args:
    loc: mu, [S].
    cov_factor: P, [S, R].
    cov_diag: d, [S].
    mask: [S] bool, True on the edited pixels.
    values: [S], read only where mask is True.

  Returns:
    [S].
  """
  dtype = compute_dtype(loc, cov_factor, cov_diag, values)
  loc, cov_factor, cov_diag, values = (
      jnp.asarray(x, dtype) for x in (loc, cov_factor, cov_diag, values))
  mask = jnp.asarray(mask, bool)
  a, _ = _edit_posterior(cov_factor, cov_diag, mask, values - loc)
  return jnp.where(mask, values, loc + cov_factor @ a)


def sequential_conditional_means(loc: Array, cov_factor: Array,
                                 cov_diag: Array,
                                 edits: Sequence[tuple[Array, Array]]) -> Array:
  """Figure 6: edits applied one after another, each on all edits so far.

  After edit i the image is the conditional mean given the union of the masks
  of edits 0..i, so edit i conditions on every earlier edit as well as its own.
  A pixel edited twice keeps the later value (an earlier edit has zero
  conditional variance there, so it cannot be conditioned on again; the later
  value overrides it). For disjoint masks this is the same as conditioning the
  previous `conditional_distribution` on the new edit.

  Args:
    loc: mu, [S].
    cov_factor: P, [S, R].
    cov_diag: d, [S].
    edits: n pairs (mask [S] bool, values [S]).

  Returns:
    [n, S], the image after each edit.
  """
  if not edits:
    raise ValueError('edits is empty.')
  masks = jnp.stack([jnp.asarray(m, bool) for m, _ in edits])  # (n, S)
  values = jnp.stack([jnp.asarray(v) for _, v in edits])  # (n, S)
  values = values.astype(compute_dtype(loc, values))

  def step(carry, edit):
    union, merged = carry
    mask, value = edit
    union = union | mask
    merged = jnp.where(mask, value, merged)
    image = conditional_mean(loc, cov_factor, cov_diag, union, merged)
    return (union, merged), image

  init = (jnp.zeros_like(masks[0]), jnp.zeros_like(values[0]))
  _, images = jax.lax.scan(step, init, (masks, values))
  return images


# ------------------------------------------------ covariance rows, Fig. 2 ----


def covariance_row(cov_factor: Array, cov_diag: Array,
                   pixel_index: int | Array) -> Array:
  """Row i of Sigma = P P^T + diag(d): P P_i^T + d_i e_i, O(S R).

  Args:
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].
    pixel_index: i, a flat index into S (may be traced).

  Returns:
    [..., S].
  """
  size = cov_factor.shape[-2]
  p_i = jnp.take(cov_factor, pixel_index, axis=-2)  # (..., R)
  row = jnp.einsum('...sr,...r->...s', cov_factor, p_i)  # (..., S)
  d_i = jnp.take(cov_diag, pixel_index, axis=-1)[..., None]  # (..., 1)
  return row + jnp.where(jnp.arange(size) == pixel_index, d_i, 0.0)


def positive_negative_parts(x: Array) -> tuple[Array, Array]:
  """(max(x, 0), max(-x, 0)): both non-negative, x = positive - negative."""
  return jnp.maximum(x, 0.0), jnp.maximum(-x, 0.0)


def covariance_row_parts(cov_factor: Array, cov_diag: Array,
                         pixel_index: int | Array, *,
                         drop_variance: bool = True) -> tuple[Array, Array]:
  """Figure 2 rows 5-6: positive and negative covariance to pixel i.

  Args:
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].
    pixel_index: i, e.g. `central_pixel_index(...)`.
    drop_variance: zero entry i, the variance, which would dwarf the
      covariances on a shared colour scale.

  Returns:
    (positive [..., S], negative [..., S]), both >= 0.
  """
  row = covariance_row(cov_factor, cov_diag, pixel_index)
  if drop_variance:
    row = jnp.where(jnp.arange(row.shape[-1]) == pixel_index, 0.0, row)
  return positive_negative_parts(row)


def central_pixel_index(image_shape: tuple[int, int, int],
                        channel: int = 0) -> int:
  """Flat index of the centre pixel of an [H, W, C] image, row-major."""
  height, width, channels = image_shape
  return ((height // 2) * width + width // 2) * channels + channel


# ---------------------------------------- PPCA and PCA, section 4.5 ----------


class PCAFit(NamedTuple):
  """PCA of N samples [N, S] at rank R, with the maximum-likelihood scaling."""

  mean: Array  # [S]
  components: Array  # [S, R], orthonormal, by descending variance
  variances: Array  # [R], leading eigenvalues of the (1/N) sample covariance
  residual_variance: Array  # [], mean of the S - R discarded eigenvalues


def pca_fit(data: Array, rank: int) -> PCAFit:
  """PCA through the thin SVD of the centred data, never an S x S covariance.

  X - mean = U diag(sv) V^T; the sample covariance (1/N) (X - mean)^T
  (X - mean) has eigenvalues sv^2 / N with eigenvectors V, and S - min(N, S)
  further zero eigenvalues when N < S, which count among the discarded ones.
  Cost O(N S min(N, S)).

  Args:
    data: [N, S].
    rank: R, 1 <= R < S and R <= N.

  Returns:
    PCAFit.
  """
  num, size = data.shape
  if not 1 <= rank < size or rank > num:
    raise ValueError(
        f'rank must satisfy 1 <= rank < S and rank <= N; got rank={rank} '
        f'for data {data.shape}.')
  data = jnp.asarray(data, compute_dtype(data))
  mean = jnp.mean(data, 0)  # (S,)
  _, sv, vt = jnp.linalg.svd(data - mean, full_matrices=False)  # (K,), (K, S)
  eigval = jnp.square(sv) / num  # (K,)
  residual = jnp.sum(eigval[rank:]) / (size - rank)
  return PCAFit(mean, vt[:rank].T, eigval[:rank], residual)


def ppca_max_likelihood(data: Array, rank: int) -> tuple[Array, Array, Array]:
  """Closed-form ML probabilistic PCA (Tipping and Bishop 1999).

  The model of section 4.5 with a shared diagonal, N(mu, P P^T + sigma2 I):
  mu = data mean, sigma2 = mean of the S - R discarded eigenvalues of the
  sample covariance, P = U_R (Lambda_R - sigma2 I)^(1/2) (up to a rotation on
  the right, taken as I). sigma2 = 0, a degenerate fit, when the centred data
  have rank <= R.

  Args:
    data: [N, S].
    rank: R, 1 <= R < S and R <= N.

  Returns:
    (mu [S], P [S, R], sigma2 []).
  """
  fit = pca_fit(data, rank)
  excess = jnp.maximum(fit.variances - fit.residual_variance, 0.0)  # (R,)
  return fit.mean, fit.components * jnp.sqrt(excess), fit.residual_variance


def ppca_log_likelihood(data: Array, mu: Array, cov_factor: Array,
                        sigma2: Array) -> Array:
  """Average log N(x; mu, P P^T + sigma2 I) over the rows of data, in nats.

  Args:
    data: [N, S].
    mu: [S].
    cov_factor: P, [S, R].
    sigma2: [], positive.

  Returns:
    [].
  """
  cov_diag = jnp.broadcast_to(jnp.asarray(sigma2, mu.dtype), mu.shape)
  # One mu, P, sigma2 for every row: one factorisation, P not broadcast.
  return jnp.mean(lowrank_log_prob_autodiff(data, mu, cov_factor, cov_diag))


def pca_reconstruction(data: Array, fit: PCAFit) -> Array:
  """Projection onto the R principal components: mean + (x - mean) U U^T.

  Args:
    data: [..., S].
    fit: from `pca_fit`.

  Returns:
    [..., S].
  """
  codes = (data - fit.mean) @ fit.components  # (..., R)
  return fit.mean + codes @ fit.components.T


def pca_samples(key: Array, fit: PCAFit, num: int) -> Array:
  """Samples of the linear PCA model with R features (Figure 7, right).

  mean + U (sqrt(variances) * z), z ~ N(0, I_R): a Gaussian on the principal
  subspace, with no noise off it (unlike PPCA's sigma2 I).

  Args:
    key: PRNG key.
    fit: from `pca_fit`.
    num: number of samples.

  Returns:
    [num, S].
  """
  rank = fit.variances.shape[0]
  z = jax.random.normal(key, (num, rank), fit.mean.dtype)
  return fit.mean + (z * jnp.sqrt(fit.variances)) @ fit.components.T
