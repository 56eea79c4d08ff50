"""ELBO terms as pure functions of arrays; every term summed over its event."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def gaussian_kl(mean: Array, log_var: Array) -> Array:
  """KL(N(mean, diag(exp(log_var))) || N(0, I)), summed over the latent.

  Args:
    mean: [..., L].
    log_var: [..., L].

  Returns:
    [...], in nats.
  """
  return 0.5 * jnp.sum(jnp.exp(log_var) + jnp.square(mean) - 1.0 - log_var, -1)


def elbo(log_likelihood: Array, kl: Array) -> Array:
  """Single-sample ELBO per example: log p(x|z) - KL(q(z|x) || p(z))."""
  return log_likelihood - kl


def nats_to_bits_per_dim(nats: Array, num_dims: int) -> Array:
  """-nats / (D ln 2): a negative log-likelihood in bits per dimension."""
  return -nats / (num_dims * jnp.log(2.0))
