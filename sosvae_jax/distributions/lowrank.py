"""Low-rank multivariate normal N(mu, P P^T + diag(d)) in O(S R^2 + R^3).

The covariance form of SOS-VAE (sosvae_tmlr2022.txt section 3): the decoder
predicts the mean mu [S], a covariance factor P [S, R] and a positive diagonal
d [S]. Every quantity here goes through the R x R capacitance matrix

    C = I_R + W^T W,   W = diag(d)^(-1/2) P                       # [R, R]

so no S x S array is ever formed:

* determinant lemma: log det(P P^T + D) = sum(log d) + log det C;
* Woodbury identity: (P P^T + D)^(-1) = D^-1 - D^-1 P C^-1 P^T D^-1.

The Mahalanobis term is evaluated in the equivalent ridge form

    r^T Sigma^-1 r = min_a |u - W a|^2 + |a|^2,   u = D^(-1/2) r,
    a* = C^-1 W^T u,

i.e. as |u - W a*|^2 + |a*|^2, a sum of two non-negative terms. The textbook
form |u|^2 - b^T C^-1 b subtracts two numbers of size |u|^2 and loses all
precision in float32 when d is tiny (d = 1e-5 in the paper) and the residual
lies mostly in the span of P; the ridge form is stationary in a, so errors of
the solve enter only at second order: as (a - a*)^T C (a - a*), always
lowering log_prob. Where C is ill-conditioned in float32 (tiny d and nearly
parallel columns of P) its rounded Gram still moves a by enough for that to
cost nats, so a gets one step of iterative refinement whose residual
W^T y - a (y = u - W a) is computed from W rather than from the rounded C.

distrax's MultivariateNormalDiagPlusLowRank is a different distribution: its
low rank is on the scale (Sigma = S S^T with S = diag + U V^T), see
docs/architecture.md.

Capacitance jitter (opt-in, `capacitance_jitter`): jnp.linalg.cholesky returns
NaN silently where C, rounded to float32, is not positive definite (P far
larger than D allows). With a jitter eps the R x R capacitance is then
factorised as in GPyTorch's psd_safe_cholesky: in float64 where JAX allows
it (jax_enable_x64: then the whole log_prob / entropy kernel runs in
float64, as its gradients need C^-1 to float64 accuracy too; otherwise
float64 is not available and float32 is used), retried at C + delta I with
delta = eps * 10^k * mean(diag C), k < CAPACITANCE_JITTER_TRIES, the first
that factorises kept. Since C + delta I = (1 + delta) C' with C' the
capacitance of P / sqrt(1 + delta), the density is then exactly that of
N(mu, P P^T / (1 + delta) + D): a shrunk factor, still a normalised
density (delta is held constant under differentiation). Where the plain
factorisation succeeds delta = 0 and the result is the exact one. In float32
the jittered factor is accurate to about 10 u / eps (u = 6e-8) along the
directions where C is nearly singular: with eps = 1e-6 log_prob and entropy
within ~0.1 nat, the entropy's gradient w.r.t. P within ~20% (1e-4: 0.2%);
a larger eps is more accurate but shrinks P more (the variance along P is
capped near R d / eps where jitter is needed).

Mean gradient (opt-in, `mean_gradient='diagonal'`): the value of log_prob is
unchanged, but its gradient w.r.t. mu is that of log N(x; mu, D), i.e.
-(mu - x) / d, while P and d get the gradient of the full density at a held
mu. With the exact gradient the mean's error along span(P) is divided by
s^2 + d instead of d: the more of the residual P explains, the less the
mean is pushed to remove it, and a run whose P grows early settles on a
blurred mean (docs/structure_study.md). This is a training device, not a
different distribution: densities, samples and moments are the same.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.distributions.numerics import compute_dtype

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)
# Retries of a failed capacitance factorisation, at jitter eps * 10^k.
CAPACITANCE_JITTER_TRIES = 3
# Where log_prob's gradient w.r.t. the mean comes from (LowRankMultivariateNormal).
MEAN_GRADIENTS = ('full', 'diagonal')


class LowRankNoise(NamedTuple):
  """The two auxiliary noise parts of a sample (sosvae_tmlr2022.txt eq. 4).

  x = mu + P omega_p + sqrt(d) * omega_d.
  """

  omega_p: Array  # [..., R]
  omega_d: Array  # [..., S]


def whitened_factor(cov_factor: Array, cov_diag: Array) -> Array:
  """W = diag(d)^(-1/2) P.

  Args:
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S], positive.

  Returns:
    W, [..., S, R].
  """
  return cov_factor * jax.lax.rsqrt(cov_diag)[..., None]


def capacitance_cholesky(cov_factor: Array, cov_diag: Array, *,
                         capacitance_jitter: float | None = None) -> Array:
  """Lower Cholesky factor of C = I_R + P^T D^-1 P.

  Args:
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].
    capacitance_jitter: None (or 0): the plain factorisation. A number eps:
      the jitter remedy of the module docstring, and where it added jitter
      delta the factor of the shrunk factor's capacitance.

  Returns:
    L with L L^T = C, [..., R, R] (C of P / sqrt(1 + delta) with jitter).
  """
  w = whitened_factor(cov_factor, cov_diag)  # (..., S, R)
  rank = cov_factor.shape[-1]
  if capacitance_jitter:
    return _jittered_gram(w, rank, capacitance_jitter)[2].astype(w.dtype)
  capacitance = jnp.eye(rank, dtype=w.dtype) + jnp.einsum(
      '...sr,...sq->...rq', w, w)  # (..., R, R)
  return jnp.linalg.cholesky(capacitance)


def capacitance_jitter_added(cov_factor: Array, cov_diag: Array,
                             capacitance_jitter: float) -> Array:
  """The jitter delta the remedy adds to C (0 where C factorises as it is).

  For monitoring and tests: the density used is N(mu, P P^T / (1 + delta) + D).

  Args:
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].
    capacitance_jitter: eps > 0.

  Returns:
    delta, [...].
  """
  w = whitened_factor(cov_factor, cov_diag)  # (..., S, R)
  shrink = _jittered_gram(w, cov_factor.shape[-1], capacitance_jitter)[3]
  return jnp.square(1.0 / shrink) - 1.0


def best_capacitance_dtype(dtype: jnp.dtype) -> jnp.dtype:
  """float64 where JAX allows it (jax_enable_x64), else `dtype` (float32)."""
  return jnp.promote_types(dtype, jax.dtypes.canonicalize_dtype(jnp.float64))


def jittered_capacitance_cholesky(capacitance: Array,
                                  jitter: float) -> tuple[Array, Array]:
  """Cholesky of a capacitance C = I + W^T W, with jitter where it fails.

  Tries C, then C + delta_k I with delta_k = jitter * 10^k * mean(diag C),
  k < CAPACITANCE_JITTER_TRIES, and keeps the first that factorises. All
  tries are computed (R^3 each, small beside the O(S R^2) Gram) and one is
  selected with jnp.where-style indexing: no data-dependent control flow, so
  it jits and vmaps. A try fails as _factorised says (a NaN or a pivot
  below 1/2).

  Args:
    capacitance: C, [..., R, R], symmetric with C >= I in exact arithmetic.
    jitter: eps > 0, relative to the mean of diag C.

  Returns:
    (L, delta), [..., R, R] and [...]: L L^T = C + delta I; delta = 0 where
    C itself factorises (L is then the plain factor; bit for bit on CPU).
    Where no try succeeds, the last one (non-finite).
  """
  rank = capacitance.shape[-1]
  scale = jnp.mean(jnp.diagonal(capacitance, axis1=-2, axis2=-1), -1)  # (...)
  ladder = jnp.asarray([0.0] + [jitter * 10.0**k for k in range(CAPACITANCE_JITTER_TRIES)],
                       capacitance.dtype)  # (T,)
  deltas = scale[..., None] * ladder  # (..., T)
  eye = jnp.eye(rank, dtype=capacitance.dtype)
  chols = jnp.linalg.cholesky(capacitance[..., None, :, :]
                              + deltas[..., None, None] * eye)  # (..., T, R, R)
  ok = _factorised(chols)  # (..., T)
  first = jnp.where(jnp.any(ok, -1), jnp.argmax(ok, -1), len(ladder) - 1)  # (...)
  chol = jnp.take_along_axis(chols, first[..., None, None, None], -3)[..., 0, :, :]
  delta = jnp.take_along_axis(deltas, first[..., None], -1)[..., 0]
  return chol, delta


def _factorised(chol: Array) -> Array:
  """Whether a jnp.linalg.cholesky factor of a capacitance C >= I succeeded.

  A failure is a NaN (jnp.linalg.cholesky does not raise) or a pivot below
  1/2: every exact pivot of C >= I is >= 1, so a smaller one is rounding
  error, not the matrix.

  Args:
    chol: [..., R, R].

  Returns:
    [...], bool.
  """
  pivots = jnp.diagonal(chol, axis1=-2, axis2=-1)  # (..., R)
  return jnp.all(jnp.isfinite(chol), (-2, -1)) & jnp.all(pivots >= 0.5, -1)


class CapacitanceCheck(NamedTuple):
  """How the likelihood's own capacitance factorisation went, per example.

  All fields are numpy arrays of the batch shape [...], except dtype.
  """

  finite: np.ndarray  # C = I + P^T D^-1 P is finite in float64
  overflow: np.ndarray  # finite, but beyond the factorisation's dtype (no jitter mends it)
  condition: np.ndarray  # float64 condition number of C; NaN where not finite
  plain_failed: np.ndarray  # factorising C as it is failed
  jitter_added: np.ndarray  # delta added to diag C (0: none, or the remedy is off)
  failed: np.ndarray  # the factor is unusable: without jitter plain_failed,
  # with it every try failed (jitter_added is then the last try's)
  dtype: np.dtype  # of the factorisation


def capacitance_check(cov_factor: Array, cov_diag: Array, *,
                      capacitance_jitter: float | None = None) -> CapacitanceCheck:
  """Which examples' capacitance fails to factorise, as the likelihood does it.

  For diagnosing a run, not jitted: the condition numbers are numpy float64
  estimates; the factorisation is the likelihood's own, in its own dtype
  (capacitance_cholesky without jitter, jittered_capacitance_cholesky in
  best_capacitance_dtype with it).

  Args:
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].
    capacitance_jitter: as in capacitance_cholesky.
  """
  p64 = np.asarray(cov_factor, np.float64)
  w64 = p64 / np.sqrt(np.asarray(cov_diag, np.float64))[..., None]  # (..., S, R)
  c64 = np.eye(p64.shape[-1]) + np.einsum('...sr,...sq->...rq', w64, w64)  # (..., R, R)
  finite = np.all(np.isfinite(c64), axis=(-2, -1))  # (...)
  condition = np.full(finite.shape, np.nan)
  condition[finite] = np.linalg.cond(c64[finite])
  if not capacitance_jitter:
    # Without the remedy a finite factor is used as it is.
    chol = capacitance_cholesky(jnp.asarray(cov_factor), jnp.asarray(cov_diag))
    failed = ~np.all(np.isfinite(np.asarray(chol)), axis=(-2, -1))
    return CapacitanceCheck(finite, _overflow(c64, chol.dtype), condition, failed,
                            np.zeros(finite.shape), failed, np.dtype(chol.dtype))
  w = whitened_factor(jnp.asarray(cov_factor), jnp.asarray(cov_diag))  # (..., S, R)
  # The capacitance as _jittered_gram builds it.
  wide = w.astype(best_capacitance_dtype(w.dtype))
  capacitance = jnp.eye(w.shape[-1], dtype=wide.dtype) + _matmul(
      '...sr,...sq->...rq', wide, wide)  # (..., R, R)
  chol, delta = jittered_capacitance_cholesky(capacitance, capacitance_jitter)
  delta = np.asarray(delta, np.float64)
  return CapacitanceCheck(finite, _overflow(c64, wide.dtype), condition, ~(delta == 0),
                          delta, ~np.asarray(_factorised(chol)), np.dtype(wide.dtype))


def _overflow(capacitance: np.ndarray, dtype: jnp.dtype) -> np.ndarray:
  """Where a finite float64 C [..., R, R] exceeds `dtype`'s range: [...]."""
  return np.max(np.abs(capacitance), axis=(-2, -1)) > np.finfo(dtype).max


def _jittered_gram(z: Array, rank: int, jitter: float):
  """Gram of Z = [W | rest] and the capacitance factor, with the jitter remedy.

  The Gram and the factorisation run in best_capacitance_dtype, and gram and
  chol are returned in it, so that R-dimensional solves can stay in it (a
  float32 solve with a condition-1e8 C would undo the float64 factor). Where
  jitter delta was added, everything is returned for the shrunk factor
  P / sqrt(1 + delta) (module docstring), whose capacitance factor is
  L / sqrt(1 + delta); where not, the inputs are multiplied by exactly 1.

  Args:
    z: [..., S, K], its first `rank` columns W = D^-1/2 P.
    rank: R.
    jitter: eps > 0.

  Returns:
    (z, gram, chol, shrink): [..., S, K] and shrink = (1 + delta)^(-1/2)
    [...] in z's dtype; gram [..., K, K] and chol [..., R, R] in the
    factorisation's.
  """
  wide = best_capacitance_dtype(z.dtype)
  z_wide = z.astype(wide)
  gram = _matmul('...sr,...sq->...rq', z_wide, z_wide)  # (..., K, K)
  capacitance = jnp.eye(rank, dtype=wide) + gram[..., :rank, :rank]
  chol, delta = jittered_capacitance_cholesky(capacitance, jitter)
  shrink = jnp.where(delta > 0, 1.0 / jnp.sqrt(1.0 + delta), 1.0)  # (...)
  columns = jnp.where(jnp.arange(z.shape[-1]) < rank, shrink[..., None], 1.0)  # (..., K)
  z = z * columns[..., None, :].astype(z.dtype)
  gram = gram * columns[..., :, None] * columns[..., None, :]
  chol = chol * shrink[..., None, None]
  return z, gram, chol, shrink.astype(z.dtype)


def _log_det_from_cholesky(chol: Array, cov_diag: Array) -> Array:
  """log det(P P^T + D) = sum log d + 2 sum log diag(L); determinant lemma."""
  log_diag_chol = jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1))  # (..., R)
  return jnp.sum(jnp.log(cov_diag), -1) + 2.0 * jnp.sum(log_diag_chol, -1)


def lowrank_log_det(cov_factor: Array, cov_diag: Array, *,
                    capacitance_jitter: float | None = None) -> Array:
  """log det(P P^T + diag(d)).

  Args:
    cov_factor: [..., S, R].
    cov_diag: [..., S].
    capacitance_jitter: as in capacitance_cholesky.

  Returns:
    [...].
  """
  chol = capacitance_cholesky(cov_factor, cov_diag,
                              capacitance_jitter=capacitance_jitter)
  return _log_det_from_cholesky(chol, cov_diag)


def _ridge_coefficients(w: Array, u: Array, chol: Array) -> Array:
  """a* = C^-1 W^T u, the minimiser of |u - W a|^2 + |a|^2.

  Shapes: w [..., S, R], u [..., S], chol [..., R, R] -> [..., R].
  """
  b = jnp.einsum('...sr,...s->...r', w, u)  # (..., R)
  solve = lambda c, v: jax.scipy.linalg.cho_solve((c, True), v)
  # Broadcast batch dims of chol and b against each other before vmapping.
  batch = jnp.broadcast_shapes(chol.shape[:-2], b.shape[:-1])
  chol = jnp.broadcast_to(chol, batch + chol.shape[-2:])
  b = jnp.broadcast_to(b, batch + b.shape[-1:])
  flat_chol = chol.reshape((-1,) + chol.shape[-2:])
  flat_b = b.reshape((-1, b.shape[-1]))
  a = jax.vmap(solve)(flat_chol, flat_b)  # (N, R)
  return a.reshape(batch + b.shape[-1:])


def lowrank_mahalanobis(residual: Array, cov_factor: Array,
                        cov_diag: Array) -> Array:
  """r^T (P P^T + D)^-1 r through the Woodbury identity, in ridge form.

  Args:
    residual: r = x - mu, [..., S].
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].

  Returns:
    [...], non-negative by construction.
  """
  chol = capacitance_cholesky(cov_factor, cov_diag)
  return _mahalanobis_from_cholesky(residual, cov_factor, cov_diag, chol)


def _mahalanobis_from_cholesky(residual, cov_factor, cov_diag, chol):
  w = whitened_factor(cov_factor, cov_diag)  # (..., S, R)
  u = residual * jax.lax.rsqrt(cov_diag)  # (..., S)
  a = _ridge_coefficients(w, u, chol)  # (..., R)
  y = u - jnp.einsum('...sr,...r->...s', w, a)  # (..., S)
  return jnp.sum(jnp.square(y), -1) + jnp.sum(jnp.square(a), -1)


def _solve_capacitance(chol: Array, rhs: Array) -> Array:
  """C^-1 rhs from the lower Cholesky factor; chol [..., R, R], rhs [..., R, K]."""
  lower = jax.lax.linalg.triangular_solve(chol, rhs, left_side=True, lower=True)
  return jax.lax.linalg.triangular_solve(chol, lower, left_side=True, lower=True,
                                         transpose_a=True)


def _matmul(spec: str, *operands: Array) -> Array:
  # Full float32 products also on accelerators (no TF32/bf16 passes): the
  # accuracy targets of the likelihood are float32 ones.
  return jnp.einsum(spec, *operands, precision=jax.lax.Precision.HIGHEST)


def _log_prob_entropy_forward(x, loc, cov_factor, cov_diag, jitter):
  """Shared forward; all inputs broadcast to one batch shape [...]."""
  size, rank = cov_factor.shape[-2:]
  inv_sqrt_d = jax.lax.rsqrt(cov_diag)  # (..., S)
  # One buffer Z = [W | u]: its Gram gives W^T W and W^T u in one product,
  # and the ridge residual and the P-gradient are single products with it.
  z = jnp.concatenate([cov_factor * inv_sqrt_d[..., None],
                       ((x - loc) * inv_sqrt_d)[..., None]], -1)  # (..., S, R+1)
  if jitter:
    # Where C needed jitter, z, gram and chol are those of the shrunk P.
    z, gram, chol, shrink = _jittered_gram(z, rank, jitter)
  else:
    gram = _matmul('...sr,...sq->...rq', z, z)  # (..., R+1, R+1)
    capacitance = jnp.eye(rank, dtype=z.dtype) + gram[..., :rank, :rank]
    chol = jnp.linalg.cholesky(capacitance)  # (..., R, R)
    shrink = None
  # Casts are no-ops without jitter; with it the solve ran in the wide dtype.
  a = _solve_capacitance(chol, gram[..., :rank, rank:])[..., 0].astype(z.dtype)  # (..., R)
  log_det = _log_det_from_cholesky(chol, cov_diag).astype(z.dtype)
  # Ridge form y = u - W a, and one step of iterative refinement of a with
  # its residual W^T u - C a = W^T y - a taken from Z, not from the rounded
  # C (module docstring); the backward pass reuses the refined a and y.
  y = _ridge_residual(z, a)  # (..., S)
  w_t_y = _matmul('...sr,...s->...r', z, y)[..., :rank]  # (..., R)
  step = _solve_capacitance(chol, (w_t_y - a)[..., None].astype(chol.dtype))[..., 0]
  a = a + step.astype(z.dtype)
  y = _ridge_residual(z, a)
  chol = chol.astype(z.dtype)
  maha = jnp.sum(jnp.square(y), -1) + jnp.sum(jnp.square(a), -1)
  log_prob = -0.5 * (size * _LOG_2PI + log_det + maha)
  entropy = 0.5 * (size * (1.0 + _LOG_2PI) + log_det)
  return (log_prob, entropy), (z, inv_sqrt_d, y, a, chol, shrink)


def _ridge_residual(z: Array, a: Array) -> Array:
  """y = u - W a for Z = [W | u] [..., S, R+1] and a [..., R]: one product."""
  coeffs = jnp.concatenate([-a, jnp.ones_like(a[..., :1])], -1)  # (..., R+1)
  return _matmul('...sr,...r->...s', z, coeffs)  # (..., S)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _log_prob_entropy(x, loc, cov_factor, cov_diag, jitter):
  return _log_prob_entropy_forward(x, loc, cov_factor, cov_diag, jitter)[0]


def _log_prob_entropy_backward(jitter, residuals, cotangents):
  """Closed-form gradients through the R x R capacitance, O(S R^2).

  With alpha = Sigma^-1 (x - mu) = D^-1/2 y, P^T alpha = a and
  Sigma^-1 P = D^-1/2 W C^-1 (Woodbury):
    d log N / d mu = alpha,  d log N / d P = alpha a^T - Sigma^-1 P,
    d log N / d d = (alpha^2 - diag Sigma^-1) / 2,
    d H / d P = Sigma^-1 P,  d H / d d = diag(Sigma^-1) / 2.
  With capacitance jitter the residuals are those of P' = shrink * P, and
  d / dP = shrink * d / dP' (shrink held constant).
  """
  del jitter  # Already in the residuals.
  z, inv_sqrt_d, y, a, chol, shrink = residuals
  g_lp, g_h = cotangents  # (...), (...)
  rank = a.shape[-1]
  eye = jnp.broadcast_to(jnp.eye(rank, dtype=z.dtype), chol.shape)
  cap_inv = _solve_capacitance(chol, eye)  # (..., R, R)
  g_det = (g_h - g_lp)[..., None, None]  # weight of Sigma^-1 P
  g_lp_ = g_lp[..., None, None]
  # g_lp alpha a^T + g_det Sigma^-1 P = D^-1/2 [W | y] [[g_det C^-1], [g_lp a^T]]
  # and [W | y] = Z [[I, -a], [0, 1]], so one product with Z gives it all.
  top = g_det * cap_inv - g_lp_ * a[..., :, None] * a[..., None, :]  # (..., R, R)
  mix = jnp.concatenate([top, g_lp_ * a[..., None, :]], -2)  # (..., R+1, R)
  d_factor = _matmul('...sr,...rq->...sq', z, mix) * inv_sqrt_d[..., None]
  if shrink is not None:
    d_factor = d_factor * shrink[..., None, None]
  alpha = y * inv_sqrt_d  # (..., S)
  w = z[..., :rank]
  # diag(Sigma^-1) = (1 - rowsum(W C^-1 * W)) / d; XLA drops this when no
  # gradient w.r.t. d is asked for (SOS-VAE's fixed D).
  hat = jnp.sum(_matmul('...sr,...rq->...sq', w, cap_inv) * w, -1)  # (..., S)
  prec_diag = jnp.square(inv_sqrt_d) * (1.0 - hat)
  d_diag = 0.5 * (g_lp[..., None] * jnp.square(alpha) + (g_h - g_lp)[..., None] * prec_diag)
  d_loc = g_lp[..., None] * alpha
  return -d_loc, d_loc, d_factor, d_diag


_log_prob_entropy.defvjp(_log_prob_entropy_forward, _log_prob_entropy_backward)


def lowrank_log_prob_and_entropy(x: Array, loc: Array, cov_factor: Array,
                                 cov_diag: Array, *,
                                 capacitance_jitter: float | None = None
                                 ) -> tuple[Array, Array]:
  """log N(x; mu, P P^T + diag(d)) and the entropy, from ONE factorisation.

  Summed over the S event dimensions, with hand-written gradients (a
  jax.custom_vjp) w.r.t. all four arguments: one O(S R^2) product forward
  (the Gram of [W | u]) and one backward (Z times an (R+1) x R matrix),
  where autodiff of the plain form does three, and no S x S array. The
  train step calls this once for both terms of the objective. Float32 at
  least (bf16 inputs are promoted).

  Args:
    x: [..., S].
    loc: mu, [..., S].
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S], positive.
    capacitance_jitter: None (or 0): exact. A number eps: the jitter remedy
      of the module docstring where the capacitance does not factorise.

  Returns:
    (log_prob, entropy), each [...] (the broadcast batch shape).
  """
  dtype = compute_dtype(x, loc, cov_factor, cov_diag)
  batch = jnp.broadcast_shapes(x.shape[:-1], loc.shape[:-1], cov_factor.shape[:-2],
                               cov_diag.shape[:-1])
  size, rank = cov_factor.shape[-2:]
  vector = lambda v: jnp.broadcast_to(v.astype(dtype), batch + (size,))
  factor = jnp.broadcast_to(cov_factor.astype(dtype), batch + (size, rank))
  if capacitance_jitter:
    # The whole kernel in float64 where allowed: the backward's C^-1 and
    # W C^-1 cancel to ~1e-9 of their parts, so a float64 factor alone
    # would still give float32 garbage gradients.
    wide = best_capacitance_dtype(dtype)
    out = _log_prob_entropy(vector(x).astype(wide), vector(loc).astype(wide),
                            factor.astype(wide), vector(cov_diag).astype(wide),
                            capacitance_jitter)
    return tuple(o.astype(dtype) for o in out)
  return _log_prob_entropy(vector(x), vector(loc), factor, vector(cov_diag), None)


def lowrank_log_prob(x: Array, loc: Array, cov_factor: Array,
                     cov_diag: Array, *,
                     capacitance_jitter: float | None = None) -> Array:
  """log N(x; mu, P P^T + diag(d)), summed over the S event dimensions.

  Args:
    x: [..., S].
    loc: mu, [..., S].
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S].
    capacitance_jitter: as in lowrank_log_prob_and_entropy.

  Returns:
    [...].
  """
  return lowrank_log_prob_and_entropy(
      x, loc, cov_factor, cov_diag, capacitance_jitter=capacitance_jitter)[0]


def lowrank_log_prob_autodiff(x: Array, loc: Array, cov_factor: Array,
                              cov_diag: Array) -> Array:
  """lowrank_log_prob by plain jax autodiff: the reference of the custom VJP.

  Same shapes as lowrank_log_prob. Also the faster form where one mu, P, d
  score many rows x [N, S]: the capacitance is factorised once and P is
  never broadcast to [N, S, R] (lowrank_log_prob's fused buffer is per row;
  fitting 2000 Fashion-MNIST images at rank 25 ran about 25x slower there).
  """
  size = loc.shape[-1]
  chol = capacitance_cholesky(cov_factor, cov_diag)
  log_det = _log_det_from_cholesky(chol, cov_diag)
  maha = _mahalanobis_from_cholesky(x - loc, cov_factor, cov_diag, chol)
  return -0.5 * (size * _LOG_2PI + log_det + maha)


def lowrank_entropy(cov_factor: Array, cov_diag: Array, *,
                    capacitance_jitter: float | None = None) -> Array:
  """Differential entropy 0.5 (S (1 + log 2 pi) + log det Sigma), in nats.

  Args:
    cov_factor: [..., S, R].
    cov_diag: [..., S].
    capacitance_jitter: as in lowrank_log_prob_and_entropy.

  Returns:
    [...].
  """
  # x = mu: the shared kernel with a zero residual, for its gradients.
  zeros = jnp.zeros_like(cov_diag)
  return lowrank_log_prob_and_entropy(zeros, zeros, cov_factor, cov_diag,
                                      capacitance_jitter=capacitance_jitter)[1]


def lowrank_sample_from_noise(loc: Array, cov_factor: Array, cov_diag: Array,
                              noise: LowRankNoise) -> Array:
  """x = mu + P omega_p + sqrt(d) omega_d (sosvae_tmlr2022.txt eq. 4).

  Args:
    loc: [..., S].
    cov_factor: [..., S, R].
    cov_diag: [..., S].
    noise: omega_p [..., R], omega_d [..., S]; leading dims broadcast.

  Returns:
    [..., S].
  """
  structured = jnp.einsum('...sr,...r->...s', cov_factor, noise.omega_p)
  return loc + structured + jnp.sqrt(cov_diag) * noise.omega_d


class LowRankMultivariateNormal(distrax.Distribution):
  """N(loc, cov_factor cov_factor^T + diag(cov_diag)) over a flat event [S].

  Args:
    loc: mu, [..., S].
    cov_factor: P, [..., S, R].
    cov_diag: d, [..., S], positive.
    capacitance_jitter: None (exact) or eps > 0: where the capacitance does
      not factorise, log_prob, entropy and log_det_covariance are those of
      the factor shrunk by the jitter (module docstring); moments and
      samples are always those of cov_factor.
    mean_gradient: 'full' (exact) or 'diagonal': log_prob's gradient w.r.t.
      loc is that of the diagonal normal N(loc, diag(cov_diag)), the other
      parameters' that of the full density at a held loc (module
      docstring). Values are unchanged.

  Batch dims of the three parameters broadcast against each other.
  """

  equiv_tfp_cls = None

  def __init__(self, loc: Array, cov_factor: Array, cov_diag: Array, *,
               capacitance_jitter: float | None = None,
               mean_gradient: str = 'full'):
    super().__init__()
    if mean_gradient not in MEAN_GRADIENTS:
      raise ValueError(f'mean_gradient={mean_gradient!r}: must be one of {MEAN_GRADIENTS}.')
    self._capacitance_jitter = capacitance_jitter
    self._mean_gradient = mean_gradient
    self._check_parameters(loc, cov_factor, cov_diag)
    dtype = compute_dtype(loc, cov_factor, cov_diag)
    batch = jnp.broadcast_shapes(loc.shape[:-1], cov_factor.shape[:-2],
                                 cov_diag.shape[:-1])
    size, rank = cov_factor.shape[-2:]
    self._loc = jnp.broadcast_to(loc.astype(dtype), batch + (size,))
    self._cov_factor = jnp.broadcast_to(cov_factor.astype(dtype),
                                        batch + (size, rank))
    self._cov_diag = jnp.broadcast_to(cov_diag.astype(dtype), batch + (size,))
    self._batch_shape = batch

  @staticmethod
  def _check_parameters(loc, cov_factor, cov_diag) -> None:
    if loc.ndim < 1 or cov_factor.ndim < 2 or cov_diag.ndim < 1:
      raise ValueError(
          'LowRankMultivariateNormal needs loc [..., S], cov_factor '
          f'[..., S, R] and cov_diag [..., S]; got loc {loc.shape}, '
          f'cov_factor {cov_factor.shape}, cov_diag {cov_diag.shape}.')
    size = loc.shape[-1]
    if cov_factor.shape[-2] != size or cov_diag.shape[-1] != size:
      raise ValueError(
          f'Event sizes disagree: loc {loc.shape} has S={size}, cov_factor '
          f'{cov_factor.shape} has S={cov_factor.shape[-2]}, cov_diag '
          f'{cov_diag.shape} has S={cov_diag.shape[-1]}; all three must '
          'share the last (event) dimension S.')
    if cov_factor.shape[-1] < 1:
      raise ValueError(f'cov_factor {cov_factor.shape} has rank R=0; R >= 1.')
    try:
      jnp.broadcast_shapes(loc.shape[:-1], cov_factor.shape[:-2],
                           cov_diag.shape[:-1])
    except ValueError as e:
      raise ValueError(
          f'Batch shapes do not broadcast: loc {loc.shape[:-1]}, cov_factor '
          f'{cov_factor.shape[:-2]}, cov_diag {cov_diag.shape[:-1]}.') from e

  # Parameters.
  @property
  def loc(self) -> Array:
    return self._loc

  @property
  def cov_factor(self) -> Array:
    return self._cov_factor

  @property
  def cov_diag(self) -> Array:
    return self._cov_diag

  @property
  def event_shape(self) -> tuple[int, ...]:
    return (self._loc.shape[-1],)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self._batch_shape

  @property
  def rank(self) -> int:
    return self._cov_factor.shape[-1]

  # Densities.
  @property
  def capacitance_jitter(self) -> float | None:
    return self._capacitance_jitter

  @property
  def mean_gradient(self) -> str:
    return self._mean_gradient

  def _loc_for_density(self) -> Array:
    """loc, held constant where the mean's gradient is the diagonal one's."""
    if self._mean_gradient == 'diagonal':
      return jax.lax.stop_gradient(self._loc)
    return self._loc

  def _diagonal_mean_gradient(self, value: Array) -> Array:
    """Zero-valued; its gradient w.r.t. loc is that of log N(value; loc, D)."""
    if self._mean_gradient != 'diagonal':
      return jnp.zeros((), self._loc.dtype)
    term = -0.5 * jnp.sum(jnp.square(value - self._loc)
                          / jax.lax.stop_gradient(self._cov_diag), -1)
    return term - jax.lax.stop_gradient(term)

  def log_prob(self, value: Array) -> Array:
    return lowrank_log_prob(value, self._loc_for_density(), self._cov_factor,
                            self._cov_diag, capacitance_jitter=self._capacitance_jitter
                            ) + self._diagonal_mean_gradient(value)

  def entropy(self) -> Array:
    return lowrank_entropy(self._cov_factor, self._cov_diag,
                           capacitance_jitter=self._capacitance_jitter)

  def log_prob_and_entropy(self, value: Array) -> tuple[Array, Array]:
    """(log_prob(value), entropy()) from one capacitance factorisation."""
    log_prob, entropy = lowrank_log_prob_and_entropy(
        value, self._loc_for_density(), self._cov_factor, self._cov_diag,
        capacitance_jitter=self._capacitance_jitter)
    return log_prob + self._diagonal_mean_gradient(value), entropy

  def log_det_covariance(self) -> Array:
    return lowrank_log_det(self._cov_factor, self._cov_diag,
                           capacitance_jitter=self._capacitance_jitter)

  # Moments.
  def mean(self) -> Array:
    return self._loc

  def mode(self) -> Array:
    return self._loc

  def variance(self) -> Array:
    """Diagonal of the covariance, O(S R): sum_r P_sr^2 + d_s."""
    return jnp.sum(jnp.square(self._cov_factor), -1) + self._cov_diag

  def stddev(self) -> Array:
    return jnp.sqrt(self.variance())

  def covariance(self) -> Array:
    """Dense S x S covariance: for small S only (tests, pictures)."""
    p = self._cov_factor
    dense = jnp.einsum('...sr,...tr->...st', p, p)
    return dense + jnp.vectorize(jnp.diag, signature='(s)->(s,s)')(
        self._cov_diag)

  # Sampling.
  def sample_noise(self, seed: Array, sample_shape=()) -> LowRankNoise:
    """Draws (omega_p, omega_d) of shape sample_shape + batch + [R] / [S]."""
    if isinstance(sample_shape, int):
      sample_shape = (sample_shape,)
    sample_shape = tuple(sample_shape)
    key_p, key_d = jax.random.split(seed)
    shape = sample_shape + self._batch_shape
    dtype = self._loc.dtype
    omega_p = jax.random.normal(key_p, shape + (self.rank,), dtype)
    omega_d = jax.random.normal(key_d, shape + self.event_shape, dtype)
    return LowRankNoise(omega_p, omega_d)

  def sample_from_noise(self, noise: LowRankNoise) -> Array:
    return lowrank_sample_from_noise(self._loc, self._cov_factor,
                                     self._cov_diag, noise)

  def sample_with_noise(self, *, seed: Array,
                        sample_shape=()) -> tuple[Array, LowRankNoise]:
    """A sample and the noise that made it, for interpolation tools."""
    noise = self.sample_noise(seed, sample_shape)
    return self.sample_from_noise(noise), noise

  def _sample_n(self, key: Array, n: int) -> Array:
    return self.sample_from_noise(self.sample_noise(key, (n,)))

  def __getitem__(self, index) -> LowRankMultivariateNormal:
    index = index if isinstance(index, tuple) else (index,)
    return LowRankMultivariateNormal(self._loc[index],
                                     self._cov_factor[index],
                                     self._cov_diag[index],
                                     capacitance_jitter=self._capacitance_jitter,
                                     mean_gradient=self._mean_gradient)
