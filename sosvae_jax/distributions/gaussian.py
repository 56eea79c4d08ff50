"""Pixel-wise independent Gaussian observation distributions."""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp

from sosvae_jax.distributions.numerics import compute_dtype
from sosvae_jax.distributions.numerics import softclip

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def diagonal_normal(loc: Array, variance: Array) -> distrax.MultivariateNormalDiag:
  """N(loc, diag(variance)) over a flat event [S]; log_prob sums over S.

  Args:
    loc: [..., S].
    variance: [..., S], positive.

  Returns:
    A distrax.MultivariateNormalDiag with batch [...] and event [S].
  """
  if loc.shape[-1:] != variance.shape[-1:]:
    raise ValueError(f'diagonal_normal: loc {loc.shape} and variance '
                     f'{variance.shape} must share the event dimension S.')
  dtype = compute_dtype(loc, variance)
  return distrax.MultivariateNormalDiag(
      loc=loc.astype(dtype), scale_diag=jnp.sqrt(variance.astype(dtype)))


def diagonal_log_prob(x: Array, loc: Array | float, log_var: Array | float, *,
                      axis: int | tuple[int, ...] = -1) -> Array:
  """log N(x; loc, diag(exp(log_var))), summed over `axis`.

  Args:
    x: [..., S] (or any event layout named by `axis`).
    loc: broadcastable to x.
    log_var: log variances, broadcastable to x.
    axis: the event axes summed over.

  Returns:
    x's shape without the `axis` dimensions (after broadcasting).
  """
  return -0.5 * jnp.sum(_LOG_2PI + log_var + jnp.square(x - loc) * jnp.exp(-log_var),
                        axis=axis)


# Axes over which the closed-form variance averages the squared residual of an
# image batch [B, H, W, C]; the result keeps those axes as size 1 so that it
# broadcasts back against the batch.
OPTIMAL_VARIANCE_AXES = {
    'shared': (0, 1, 2, 3),  # one sigma for the data set (the batch estimate)
    'per_image': (1, 2, 3),  # one sigma per image
    'per_pixel': (0,),  # one sigma per subpixel, shared over the batch
    'per_channel': (0, 1, 2),  # one sigma per colour channel
}


def optimal_variance(residual: Array, axes: str = 'shared') -> Array:
  """Closed-form maximum-likelihood Gaussian variance of a residual.

  For N(x; mu, sigma^2) with sigma shared over a set of elements, the
  log-likelihood summed over that set is maximised by sigma^2 = mean of
  (x - mu)^2 over it (rybkin2021_sigma_vae_calibrated_decoders.txt section 4,
  eq. 5; lin2019_balancing_elbo_learned_variance.txt section 3.3, eq. 10).

  Args:
    residual: [B, H, W, C] x - mu.
    axes: one of OPTIMAL_VARIANCE_AXES: 'shared', 'per_image', 'per_pixel' or
      'per_channel'.

  Returns:
    The variance with the averaged axes kept as size 1: shared [1, 1, 1, 1],
    per_image [B, 1, 1, 1], per_pixel [1, H, W, C], per_channel [1, 1, 1, C].
  """
  if axes not in OPTIMAL_VARIANCE_AXES:
    raise ValueError(f'optimal_variance: axes={axes!r} is not one of '
                     f'{tuple(OPTIMAL_VARIANCE_AXES)}.')
  if residual.ndim != 4:
    raise ValueError(f'optimal_variance: residual must be [B, H, W, C], got shape '
                     f'{residual.shape}.')
  return jnp.mean(jnp.square(residual), axis=OPTIMAL_VARIANCE_AXES[axes], keepdims=True)


def clipped_log_sigma_variance(log_sigma: Array, min_log_sigma: float | None) -> Array:
  """sigma^2 = exp(2 softclip(log_sigma, min_log_sigma)); no clip for None.

  rybkin2021_sigma_vae_calibrated_decoders.txt section 3.1 bounds log sigma
  below by lambda_min = -6, about half the distance between 8-bit levels.
  """
  if min_log_sigma is not None:
    log_sigma = softclip(log_sigma, min_log_sigma)
  return jnp.exp(2.0 * log_sigma)


def clip_variance(variance: Array, min_log_sigma: float | None) -> Array:
  """A variance passed through the soft clip of its log sigma (see above)."""
  if min_log_sigma is None:
    return variance
  # log sigma = 0.5 log variance; the tiny floor keeps log finite at 0 residual.
  return clipped_log_sigma_variance(0.5 * jnp.log(jnp.maximum(variance, 1e-30)),
                                    min_log_sigma)


def debiased_average(total: Array, count: Array, decay: float,
                     fallback: float | Array) -> Array:
  """The bias-corrected exponential moving average total / (1 - decay^count).

  `total` starts at zero and is updated as decay * total + (1 - decay) * v,
  so early on it underestimates the mean of the v's by the factor
  1 - decay^count; dividing it out gives their weighted mean from the first
  update on. `fallback` is used while count is 0.
  """
  weight = 1.0 - jnp.power(decay, count.astype(jnp.float32))
  safe = jnp.where(count > 0, weight, 1.0)
  return jnp.where(count > 0, total / safe, fallback)
