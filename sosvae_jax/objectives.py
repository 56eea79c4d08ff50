"""ELBO terms as pure functions of arrays; every term summed over its event.

The train step, the eval step and the evaluation command all take their
terms from `elbo_terms` and `log_importance_weight` applied to one VAE
forward pass (the VAE draws z ~ q(z|x) itself, so that the
reparameterisation is written once, in models/vae.py).
"""

from __future__ import annotations

from typing import Any

import distrax
import jax
import jax.numpy as jnp

from sosvae_jax.distributions import diagonal_log_prob

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


def to_event(dist: distrax.Distribution, x: Array) -> Array:
  """Images x [B, H, W, C] reshaped to (B,) + the distribution's event shape."""
  return x.reshape(x.shape[:1] + tuple(dist.event_shape))


def entropy_or_none(dist: distrax.Distribution) -> Array | None:
  """dist.entropy(), or None for distributions without a closed form."""
  try:
    return dist.entropy()
  except NotImplementedError:
    return None


def elbo_terms(out: Any, x: Array) -> dict[str, Array]:
  """Per-image terms of the single-sample ELBO.

  Args:
    out: the VAE's output for x (models.VAEOutput: observation p(x|z) with
      batch [B], posterior_mean and posterior_log_var [B, L], z [B, L]).
    x: [B, H, W, C] in [0, 1], the images the VAE was applied to.

  Returns:
    {'log_likelihood', 'kl', 'elbo', 'squared_error' (mean over pixels),
    and 'entropy' of p(x|z) where it has a closed form}, each [B], in nats.
  """
  dist = out.observation
  log_lik, entropy = log_prob_and_entropy(dist, to_event(dist, x))  # (B,)
  kl = gaussian_kl(out.posterior_mean, out.posterior_log_var)  # (B,)
  error = jnp.square(dist.mean().reshape(x.shape) - x)  # (B, H, W, C)
  terms = {'log_likelihood': log_lik, 'kl': kl, 'elbo': log_lik - kl,
           'squared_error': jnp.mean(error.reshape(x.shape[0], -1), -1)}
  if entropy is not None:
    terms['entropy'] = entropy
  return terms


def log_prob_and_entropy(dist: distrax.Distribution,
                         value: Array) -> tuple[Array, Array | None]:
  """(log_prob(value), entropy or None), sharing work where the
  distribution can (the low-rank normal factorises its capacitance once).

  Sharing also keeps a train step to one batched Cholesky: two independent
  ones may run concurrently on XLA's CPU thread pool, and jaxlib's LAPACK
  Cholesky kernel can then deadlock waiting for pool threads.
  """
  shared = getattr(dist, 'log_prob_and_entropy', None)
  if shared is not None:
    return shared(value)
  return dist.log_prob(value), entropy_or_none(dist)


def log_importance_weight(out: Any, x: Array) -> Array:
  """log p(x|z) + log p(z) - log q(z|x) for the VAE's draw z, [B].

  The IWAE bound (Burda et al. 2016) is the log-mean-exp of K such weights.
  """
  dist = out.observation
  log_px = dist.log_prob(to_event(dist, x))  # (B,)
  log_pz = diagonal_log_prob(out.z, 0.0, 0.0)
  log_qz = diagonal_log_prob(out.z, out.posterior_mean,
                                    out.posterior_log_var)
  return log_px + log_pz - log_qz
