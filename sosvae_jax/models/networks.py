"""Convolutional encoder q(z|x) and decoder trunk shared by every likelihood."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


class ConvEncoder(nn.Module):
  """Gaussian posterior q(z|x) = N(mean, diag(exp(log_var))).

  Each entry of `channels` is a stride-2 3x3 conv (halving the image), so
  the image side must be divisible by 2 ** len(channels).
  """

  channels: Sequence[int]
  latent_dim: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """x [B, H, W, C] -> mean [B, L], log_var [B, L]."""
    h = x.astype(self.dtype)
    for i, c in enumerate(self.channels):
      h = nn.Conv(c, (3, 3), strides=(2, 2), dtype=self.dtype, name=f'conv{i}')(h)
      h = nn.gelu(h)
    h = h.reshape((h.shape[0], -1))  # (B, H' W' C')
    h = nn.gelu(nn.Dense(max(256, 2 * self.latent_dim), dtype=self.dtype, name='hidden')(h))
    stats = nn.Dense(2 * self.latent_dim, dtype=self.dtype, name='posterior')(h)
    mean, log_var = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    return mean, log_var


class ConvDecoderTrunk(nn.Module):
  """z [B, L] -> features [B, H, W, F] at full image resolution.

  Mirrors ConvEncoder: a dense layer to the smallest feature map, then one
  2x upsampling (resize + 3x3 conv) per entry of `channels`, in reverse.
  """

  channels: Sequence[int]
  image_shape: tuple[int, int, int]
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, z: Array) -> Array:
    height, width, _ = self.image_shape
    factor = 2 ** len(self.channels)
    h0, w0 = height // factor, width // factor
    c0 = self.channels[-1]
    h = nn.gelu(nn.Dense(max(256, z.shape[-1]), dtype=self.dtype, name='hidden')(z))
    h = nn.gelu(nn.Dense(h0 * w0 * c0, dtype=self.dtype, name='project')(h))
    h = h.reshape((z.shape[0], h0, w0, c0))
    for i, c in enumerate(reversed(self.channels)):
      # Nearest-neighbour resize then conv: stride-2 transposed 3x3 convs
      # leave a checkerboard that the covariance factor reproduces in samples.
      b, hh, ww, cc = h.shape
      h = jax.image.resize(h, (b, 2 * hh, 2 * ww, cc), 'nearest')
      h = nn.gelu(nn.Conv(c, (3, 3), dtype=self.dtype, name=f'upconv{i}')(h))
    return h  # (B, H, W, F)
