"""Gaussian likelihood heads: decoder features -> parameters of p(x|z).

Head module names are part of the checkpoint layout and of the mean-head
pretraining mask: the variance heads named by each likelihood's registry
entry (here `diag_head` and `factor_head`) are frozen for the first steps
(sosvae_tmlr2022.txt section 3.3).
"""

from __future__ import annotations

import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sosvae_jax.distributions import diagonal_normal
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.models.networks import ConvDecoderTrunk

Array = jax.Array

# Flax collection of a head's running statistics: updated only when `train`
# is True, kept in the train state, checkpointed and used when decoding.
STATS_COLLECTION = 'likelihood_stats'
# Flax collection of extra loss terms a head sows (already weighted and
# averaged over the batch); the loop adds them to the loss.
PENALTY_COLLECTION = 'penalties'
# Name of the int32 statistic holding a head's switch step; the loop lowers
# every such statistic when the evaluation ELBO stops improving.
SWITCH_STEP = 'switch_step'


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


class FactorBasisDecoder(nn.Module):
  """z [B, L] -> P [B, S, R] = U A(z): R columns in a learned basis of image space.

  U [S, K] is one basis shared by every image; only the K x R coefficients
  A(z) depend on z (a two-layer MLP, last layer ~ N(0, init_stddev^2) as the
  other heads). The whole batch's P is one [S, K] x [K, B R] product, with
  no convolution at image resolution.
  """

  size: int
  basis: int
  rank: int
  init_stddev: float = 1e-5

  @nn.compact
  def __call__(self, z: Array) -> Array:
    h = nn.gelu(nn.Dense(max(256, z.shape[-1]), name='hidden')(z))
    coefficients = nn.Dense(self.basis * self.rank, name='coefficients',
                            kernel_init=small_normal_init(self.init_stddev),
                            bias_init=nn.initializers.zeros)(h)
    coefficients = coefficients.reshape((z.shape[0], self.basis, self.rank))
    # Unit-variance entries over K: P's columns start at the scale of A's.
    basis = self.param('basis', nn.initializers.normal(stddev=self.basis ** -0.5),
                       (self.size, self.basis))
    return jnp.einsum('sk,bkr->bsr', basis, coefficients).astype(jnp.float32)


class DiagonalGaussianLikelihood(nn.Module):
  """Pixel-wise independent N(mu, diag(sigma^2)), per-pixel learned variance.

  The beta-VAE baseline of sosvae_tmlr2022.txt section 4.1.
  """

  channels: int
  min_variance: float = 1e-5
  init_variance: float = 0.05
  head_init_stddev: float = 1e-5
  detach_variance_features: bool = False

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step  # Parameters depend on the features alone.
    mean = MeanHead(self.channels, self.head_init_stddev, name='mean')(features)
    var_features = variance_features(features, self.detach_variance_features)
    variance = DiagonalHead(self.channels, self.min_variance, self.init_variance,
                            self.head_init_stddev, name='diag')(var_features)
    return diagonal_normal(mean, variance)


class LowRankGaussianLikelihood(nn.Module):
  """SOS-VAE: N(mu, P P^T + D) over the whole image.

  sosvae_tmlr2022.txt section 3: three heads (mean, factor P of rank R,
  diagonal D); D fixed to `fixed_diag` I (the paper uses 1e-5) unless
  `fixed_diag` is None, then predicted per pixel with floor `min_variance`.

  `factor_trunk` None: P is a 3x3 conv of the (variance) trunk features. A
  tuple of channels: P comes from its own ConvDecoderTrunk on
  stop_gradient(z), then the same 3x3 conv. The shared-feature head can only
  span what a 3x3 readout of the mean's features spans and its spectrum
  collapses to one brightness direction; its own trunk lifts the
  participation ratio from ~1.1 to ~5 (docs/structure_study.md). z is
  detached so that, as with detached features, only the mean and the KL
  train the encoder.

  `factor_basis` K (instead of `factor_trunk`): P = U A(z) from a
  FactorBasisDecoder on stop_gradient(z), a learned basis U of K image-space
  directions with per-image coefficients: no convolution at image
  resolution, so the step costs little more than the beta-VAE's, but its P
  holds about half the residual energy the conv decoder's does
  (docs/structure_study.md).

  `capacitance_jitter` 0: the exact likelihood. A number eps (e.g. 1e-6):
  where the R x R capacitance Cholesky fails (P far larger than D allows,
  NaN in float32), it is retried with jitter eps * 10^k times its mean
  diagonal, in float64 when jax_enable_x64 is on (distributions/lowrank.py).

  `mean_gradient` 'full': the exact gradient. 'diagonal': the mean (so the
  trunk and the encoder) is trained by log N(x; mu, D) alone, P and D by the
  full likelihood at a held mu; log_prob's value is unchanged
  (distributions/lowrank.py). With the exact gradient the mean's error along
  span(P) is discounted, and a run whose P grows early can settle on a
  blurred mean (docs/structure_study.md).
  """

  channels: int
  rank: int
  fixed_diag: float | None = 1e-5
  min_variance: float = 1e-5
  init_variance: float = 0.05
  head_init_stddev: float = 1e-5
  detach_variance_features: bool = False
  factor_trunk: tuple[int, ...] | None = None
  factor_basis: int | None = None
  capacitance_jitter: float = 0.0
  mean_gradient: str = 'full'

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None,
               z: Array | None = None) -> distrax.Distribution:
    del target, train, step  # Parameters depend on the features (and z) alone.
    mean = MeanHead(self.channels, self.head_init_stddev, name='mean')(features)
    var_features = variance_features(features, self.detach_variance_features)
    factor = self._factor(var_features, z)
    if self.fixed_diag is None:
      diag = DiagonalHead(self.channels, self.min_variance, self.init_variance,
                          self.head_init_stddev, name='diag')(var_features)
    else:
      diag = jnp.full(mean.shape, self.fixed_diag, mean.dtype)
    return LowRankMultivariateNormal(mean, factor, diag,
                                     capacitance_jitter=self.capacitance_jitter,
                                     mean_gradient=self.mean_gradient)

  def _factor(self, var_features: Array, z: Array | None) -> Array:
    """P [B, S, R]: a 3x3 conv of the trunk features or of its own trunk on
    z, or its own basis decoder on z."""
    if self.factor_trunk is None and self.factor_basis is None:
      return FactorHead(self.channels, self.rank, self.head_init_stddev,
                        name='factor')(var_features)
    if z is None:
      raise ValueError('LowRankGaussianLikelihood with factor_trunk or factor_basis '
                       'needs the latent z (the VAE passes it as z=...).')
    z = jax.lax.stop_gradient(z)
    if self.factor_basis is not None:
      size = var_features.shape[1] * var_features.shape[2] * self.channels
      return FactorBasisDecoder(size, self.factor_basis, self.rank, self.head_init_stddev,
                                name='factor_decoder')(z)
    image_shape = (*var_features.shape[1:3], self.channels)
    features = ConvDecoderTrunk(tuple(self.factor_trunk), image_shape,
                                name='factor_decoder')(z)
    return FactorHead(self.channels, self.rank, self.head_init_stddev,
                      name='factor')(features)
