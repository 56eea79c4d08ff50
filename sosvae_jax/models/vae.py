"""The VAE: encoder, decoder trunk and a likelihood head from the registry."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sosvae_jax.models.likelihoods import get_likelihood
from sosvae_jax.models.networks import ConvDecoderTrunk
from sosvae_jax.models.networks import ConvEncoder

Array = jax.Array


class VAEOutput(NamedTuple):
  observation: distrax.Distribution  # p(x|z) over [B, S]
  posterior_mean: Array  # [B, L]
  posterior_log_var: Array  # [B, L]
  z: Array  # [B, L]


def reads_latent(head: nn.Module) -> bool:
  """Whether the head's __call__ declares a keyword `z` (the latent)."""
  return 'z' in inspect.signature(type(head).__call__).parameters


class VAE(nn.Module):
  """q(z|x) -> z (reparameterised, rng stream 'sample') -> p(x|z)."""

  encoder: nn.Module
  trunk: nn.Module
  likelihood: nn.Module

  def encode(self, x: Array) -> tuple[Array, Array]:
    return self.encoder(x)

  def decode(self, z: Array, target: Array | None = None, *, train: bool = False,
             step: Array | None = None) -> distrax.Distribution:
    """p(x|z); `target` (the image, when known) is passed to the head.

    z itself goes only to heads that declare a keyword `z` (models/likelihoods.py).
    """
    latent = {'z': z} if reads_latent(self.likelihood) else {}
    return self.likelihood(self.trunk(z), target, train=train, step=step, **latent)

  def __call__(self, x: Array, *, train: bool = False,
               step: Array | None = None) -> VAEOutput:
    """x [B, H, W, C] in [0, 1]."""
    mean, log_var = self.encode(x)
    eps = jax.random.normal(self.make_rng('sample'), mean.shape, mean.dtype)
    z = mean + jnp.exp(0.5 * log_var) * eps
    return VAEOutput(self.decode(z, x, train=train, step=step), mean, log_var, z)


def build_model(config) -> VAE:
  """The VAE described by config.model, config.likelihood and config.data."""
  image_shape = tuple(config.data.image_shape)
  dtype = jnp.dtype(config.model.get('dtype', 'float32'))
  encoder = ConvEncoder(tuple(config.model.channels), config.model.latent_dim,
                        dtype=dtype)
  trunk = ConvDecoderTrunk(tuple(config.model.channels), image_shape, dtype=dtype)
  head = get_likelihood(config.likelihood, image_shape[-1])
  return VAE(encoder=encoder, trunk=trunk, likelihood=head)
