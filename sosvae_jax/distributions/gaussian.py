"""Pixel-wise independent Gaussian observation distributions."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp

Array = jax.Array


def softclip(x: Array, minimum: float) -> Array:
  """Smooth lower bound: minimum + softplus(x - minimum).

  rybkin2021_sigma_vae_calibrated_decoders.txt section 4 clips log sigma
  from below this way (minimum -6) so gradients never vanish at the floor.
  """
  return minimum + jax.nn.softplus(x - minimum)


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
  dtype = jnp.promote_types(jnp.result_type(loc, variance), jnp.float32)
  return distrax.MultivariateNormalDiag(
      loc=loc.astype(dtype), scale_diag=jnp.sqrt(variance.astype(dtype)))
