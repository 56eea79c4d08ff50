"""Numerical helpers shared by the observation distributions."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def softclip(x: Array, minimum: float) -> Array:
  """Smooth lower bound: minimum + softplus(x - minimum).

  rybkin2021_sigma_vae_calibrated_decoders.txt section 3.1 clips log sigma
  from below this way so that gradients never vanish at the floor, where a
  hard clip would zero them.
  """
  return minimum + jax.nn.softplus(x - minimum)


def compute_dtype(*arrays: Array) -> jnp.dtype:
  """The arrays' common dtype, at least float32.

  Cholesky factors, triangular solves and log-determinants are not safe in
  bfloat16 or float16.
  """
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def bits_per_dim(log_prob_nats: Array | float, num_dims: int) -> Array:
  """Bits per dimension of a summed log-likelihood.

  Args:
    log_prob_nats: [B] (or any shape) log p(x) in nats, summed over the event.
    num_dims: number of dimensions of the event, e.g. H * W * C.

  Returns:
    [B] -log p(x) / (num_dims * ln 2).
  """
  return -jnp.asarray(log_prob_nats) / (num_dims * math.log(2.0))
