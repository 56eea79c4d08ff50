"""Likelihood heads: decoder features -> parameters of p(x|z).

Head module names are part of the checkpoint layout and of the mean-head
pretraining mask: `mean_head`, `diag_head` and `factor_head` (the variance
heads) are frozen for the first steps (sosvae_tmlr2022.txt section 3.3).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Names of the parameter subtrees that hold variance heads.
VARIANCE_HEADS = ('diag_head', 'factor_head',
                  # calibrated_heads.py / discrete_heads.py (issue 4)
                  'sigma_head', 'variance_head', 'scale_head',
                  # structured_heads.py (issue 5)
                  'precision_diag_head', 'precision_offdiag_head')


def variance_features(features: Array, detach: bool) -> Array:
  """What variance heads read: the trunk features, detached if asked.

  With a tiny fixed diagonal, any residual inside span(P) is almost free, so
  a shared trunk is pulled towards serving P and the mean decays (the mean
  head gets no gradient along span(P) to resist). Detaching keeps encoder
  and trunk trained by the mean and the KL only; the variance heads become
  learnt readouts of those features (config.likelihood.detach_variance_features).
  """
  return jax.lax.stop_gradient(features) if detach else features


def small_normal_init(stddev: float):
  """N(0, stddev^2) weights: the reference code starts heads near zero."""
  return nn.initializers.normal(stddev=stddev)


class MeanHead(nn.Module):
  """features [B, H, W, F] -> mean [B, S] (row-major flattening of H, W, C)."""

  channels: int
  init_stddev: float = 1e-5
  bias: float = 0.5  # mid-grey start for images in [0, 1]

  @nn.compact
  def __call__(self, features: Array) -> Array:
    mean = nn.Conv(self.channels, (3, 3), padding='SAME', name='mean_head',
                   kernel_init=small_normal_init(self.init_stddev),
                   bias_init=nn.initializers.constant(self.bias))(features)
    return mean.astype(jnp.float32).reshape((features.shape[0], -1))


class DiagonalHead(nn.Module):
  """features -> positive variances [B, S]: min_variance + softplus(raw)."""

  channels: int
  min_variance: float = 1e-5
  init_variance: float = 0.05
  init_stddev: float = 1e-5

  @nn.compact
  def __call__(self, features: Array) -> Array:
    # Bias so that softplus(bias) = init_variance - min_variance at start.
    start = max(self.init_variance - self.min_variance, 1e-8)
    bias = math.log(math.expm1(start))
    raw = nn.Conv(self.channels, (3, 3), padding='SAME', name='diag_head',
                  kernel_init=small_normal_init(self.init_stddev),
                  bias_init=nn.initializers.constant(bias))(features)
    raw = raw.astype(jnp.float32).reshape((features.shape[0], -1))
    return self.min_variance + jax.nn.softplus(raw)


class FactorHead(nn.Module):
  """features -> covariance factor P [B, S, R]; weights ~ N(0, 1e-5^2)."""

  channels: int
  rank: int
  init_stddev: float = 1e-5

  @nn.compact
  def __call__(self, features: Array) -> Array:
    out = nn.Conv(self.channels * self.rank, (3, 3), padding='SAME',
                  name='factor_head',
                  kernel_init=small_normal_init(self.init_stddev),
                  bias_init=nn.initializers.zeros)(features)
    b, h, w, _ = out.shape
    # (B, H, W, C*R) -> (B, H*W*C, R): pixel-major, channel, then rank.
    return out.astype(jnp.float32).reshape((b, h * w * self.channels, self.rank))
