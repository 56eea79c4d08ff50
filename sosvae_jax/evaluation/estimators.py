"""Likelihood and information estimators: IWAE bound, mutual information, marginal KL.

The IWAE bound (Burda et al. 2016, cited in lin2019_balancing_elbo_learned_variance.txt
section 4) is log (1/K) sum_k p(x, z_k) / q(z_k|x), z_k ~ q(z|x): a lower bound on
log p(x) that tightens as K grows and is exact for every K when q is the posterior.

The rate decomposition (rybkin2021_sigma_vae_calibrated_decoders.txt section 5.2
eq. 6, after Alemi et al. 2017): E_x KL(q(z|x) || p(z)) = I_e(x; z) + KL(m(z) || p(z)),
with the aggregate posterior m(z) = (1/N) sum_n q(z|x_n).
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from sosvae_jax.distributions import diagonal_log_prob

Array = jax.Array
LogWeightFn = Callable[[Array, Array, int], Array]


def iwae_bound(log_p_x_given_z: Array, log_p_z: Array, log_q_z: Array) -> Array:
  """IWAE bound log (1/K) sum_k exp(log p(x|z_k) + log p(z_k) - log q(z_k|x)).

  Args:
    log_p_x_given_z: [K, B], log p(x_b | z_kb).
    log_p_z: [K, B], log p(z_kb) under the prior.
    log_q_z: [K, B], log q(z_kb | x_b), the proposal the z_kb were drawn from.

  Returns:
    [B], in nats; K = 1 gives the single-sample ELBO.
  """
  log_w = log_p_x_given_z + log_p_z - log_q_z  # (K, B)
  num_samples = log_w.shape[0]
  return jax.nn.logsumexp(log_w, axis=0) - math.log(num_samples)


def chunked_iwae(
    log_weight_fn: LogWeightFn,
    x: Array,
    key: Array,
    num_samples: int,
    chunk_size: int,
) -> Array:
  """IWAE bound with K = num_samples, drawing the samples chunk by chunk.

  Memory is that of one chunk: a running logsumexp of the log weights is kept
  instead of all K of them. Chunk i draws its samples with
  `jax.random.fold_in(key, i)`; the last chunk holds the remainder.

  Args:
    log_weight_fn: (x, key, n) -> [n, B] log weights
      log p(x|z) + log p(z) - log q(z|x) for n samples z ~ q(z|x); jit it
      outside (at most two distinct n are used).
    x: [B, ...], passed through to `log_weight_fn`.
    key: PRNG key.
    num_samples: K >= 1.
    chunk_size: samples per chunk, >= 1.

  Returns:
    [B], equal to `iwae_bound` over the concatenated chunks.
  """
  if num_samples < 1 or chunk_size < 1:
    raise ValueError(
        f"num_samples ({num_samples}) and chunk_size ({chunk_size}) must be >= 1")
  running = None  # (B,) log sum_k w_k so far
  for i, start in enumerate(range(0, num_samples, chunk_size)):
    n = min(chunk_size, num_samples - start)
    log_w = log_weight_fn(x, jax.random.fold_in(key, i), n)  # (n, B)
    chunk_lse = jax.nn.logsumexp(log_w, axis=0)  # (B,)
    running = chunk_lse if running is None else jnp.logaddexp(running, chunk_lse)
  return running - math.log(num_samples)


def _log_aggregate_posterior(
    z: Array, post_mean: Array, post_log_var: Array) -> Array:
  """log m(z) = log (1/N) sum_n q(z | x_n) at one point.

  Args:
    z: [L].
    post_mean: [N, L].
    post_log_var: [N, L].

  Returns:
    [] (a scalar).
  """
  log_q = diagonal_log_prob(z, post_mean, post_log_var)  # (N,)
  return jax.nn.logsumexp(log_q) - math.log(post_mean.shape[0])


def mutual_information_and_marginal_kl(
    post_mean: Array,
    post_log_var: Array,
    key: Array,
    num_samples: int,
    *,
    chunk_size: int = 256,
) -> tuple[Array, Array]:
  """Monte Carlo I_e(x; z) and KL(m(z) || N(0, I)) for diagonal Gaussian posteriors.

  rybkin2021_sigma_vae_calibrated_decoders.txt section 5.2 eq. 6, with p_d(x)
  the empirical distribution of the N inputs (so m(z) is an exact mixture)
  and num_samples draws z ~ q(z|x_n) for every n:
    I_e = E[log q(z|x_n) - log m(z)],  KL(m || p) = E[log m(z) - log p(z)].
  The two estimates share their samples, so their sum is the Monte Carlo
  estimate E[log q(z|x_n) - log p(z)] of the average closed-form
  KL(q(z|x_n) || p(z)); and since m(z) >= q(z|x_n) / N, I_e <= log N for
  every draw, not only in expectation.

  Args:
    post_mean: [N, L], means of q(z|x_n).
    post_log_var: [N, L], log variances of q(z|x_n).
    key: PRNG key.
    num_samples: draws of z per posterior.
    chunk_size: points z whose [chunk_size, N, L] differences are formed at
      once (lax.map batches), bounding memory for large N.

  Returns:
    (mutual_information, marginal_kl), scalars in nats.
  """
  n, latent = post_mean.shape
  eps = jax.random.normal(key, (num_samples, n, latent), post_mean.dtype)
  z = post_mean + jnp.exp(0.5 * post_log_var) * eps  # (S, N, L)
  log_q = diagonal_log_prob(z, post_mean, post_log_var)  # (S, N)
  log_p = diagonal_log_prob(z, 0.0, jnp.zeros_like(z))  # (S, N)
  log_m = jax.lax.map(
      lambda zi: _log_aggregate_posterior(zi, post_mean, post_log_var),
      z.reshape(-1, latent), batch_size=chunk_size).reshape(num_samples, n)
  return jnp.mean(log_q - log_m), jnp.mean(log_m - log_p)
