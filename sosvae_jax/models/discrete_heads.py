"""Discrete and heavy-tailed likelihood heads (sigma-VAE Table 2's other rows).

Each head maps decoder features [B, H, W, F] to one of the distributions of
sosvae_jax/distributions/discrete.py, whose event is the image [H, W, C]
(rybkin2021_sigma_vae_calibrated_decoders.txt section 3.2 and appendix D).
The discrete ones (categorical, bitwise, logistic mixture) give probability
masses of the 8-bit levels, so -log_prob / (H W C ln 2) is bits per
dimension; Bernoulli and Student-t give densities on [0, 1].
"""

from __future__ import annotations

import math
from typing import ClassVar

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.distributions.discrete import BernoulliImage
from sosvae_jax.distributions.discrete import BitwiseCategoricalImage
from sosvae_jax.distributions.discrete import CategoricalImage
from sosvae_jax.distributions.discrete import DiscretizedLogisticMixture
from sosvae_jax.distributions.discrete import MIN_LOG_SCALE
from sosvae_jax.distributions.discrete import NUM_BITS
from sosvae_jax.distributions.discrete import NUM_LEVELS
from sosvae_jax.distributions.discrete import StudentTImage
from sosvae_jax.distributions.numerics import softclip
from sosvae_jax.models.calibrated_heads import DEFAULT_MIN_LOG_SIGMA
from sosvae_jax.models.calibrated_heads import head_conv

Array = jax.Array


def _per_subpixel(out: Array, channels: int, k: int) -> Array:
  """[B, H, W, C*K] -> [B, H, W, C, K] (channel-major, as the conv emits)."""
  b, h, w, _ = out.shape
  return out.reshape((b, h, w, channels, k))


class BernoulliHead(nn.Module):
  """Intensities x in [0, 1] as soft labels of a Bernoulli per subpixel.

  The "Bernoulli VAE" row of rybkin2021_sigma_vae_calibrated_decoders.txt
  Table 2 (after Gregor et al. 2015): not a normalised density for
  non-binary x, kept as the paper's poor baseline.
  """

  channels: int
  head_init_stddev: float | None = None

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step
    return BernoulliImage(head_conv(features, self.channels, 'logits', self.head_init_stddev))


class _LogitsPerSubpixelHead(nn.Module):
  """One conv emitting `num_logits` logits per subpixel for `distribution`."""

  channels: int
  head_init_stddev: float | None = None
  num_logits: ClassVar[int]
  distribution: ClassVar[type]

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step
    out = head_conv(features, self.channels * self.num_logits, 'logits',
                    self.head_init_stddev)
    return self.distribution(_per_subpixel(out, self.channels, self.num_logits))


class CategoricalHead(_LogitsPerSubpixelHead):
  """A 256-way soft-max per subpixel (sigma-VAE section 3.2): 256 logits each."""

  num_logits: ClassVar[int] = NUM_LEVELS
  distribution: ClassVar[type] = CategoricalImage


class BitwiseCategoricalHead(_LogitsPerSubpixelHead):
  """8 Bernoulli logits per subpixel, one per bit (sigma-VAE appendix D)."""

  num_logits: ClassVar[int] = NUM_BITS
  distribution: ClassVar[type] = BitwiseCategoricalImage


class LogisticMixtureHead(nn.Module):
  """K discretized logistics per subpixel, no channel autoregression.

  rybkin2021_sigma_vae_calibrated_decoders.txt appendix D (after Salimans et
  al. 2017, without the mean-adjusting coefficients). One conv emits, per
  subpixel, K mixture logits, K means and K log-scales. The means start
  spread evenly over (0, 1) and the scales at `init_scale` so that the
  components do not start identical.
  """

  channels: int
  num_mixtures: int = 10
  init_scale: float = 0.1
  min_log_scale: float = MIN_LOG_SCALE
  head_init_stddev: float | None = None

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step
    k = self.num_mixtures
    # Bias layout per channel: [K weights | K means | K log-scales].
    centres = (np.arange(k) + 0.5) / k
    per_channel = np.concatenate([np.zeros(k), centres,
                                  np.full(k, math.log(self.init_scale))])
    bias = np.tile(per_channel, self.channels)
    out = head_conv(features, self.channels * 3 * k, 'mixture', self.head_init_stddev, bias)
    out = _per_subpixel(out, self.channels, 3 * k)  # (B, H, W, C, 3K)
    logit_weights, means, log_scales = jnp.split(out, 3, axis=-1)
    return DiscretizedLogisticMixture(logit_weights, means, log_scales,
                                      min_log_scale=self.min_log_scale)


class StudentTHead(nn.Module):
  """Student-t per subpixel (Takahashi et al. 2018; sigma-VAE Table 2).

  Location and log-scale come from conv heads (`loc`, `scale_head`); the
  log-scale is soft-clipped below at `min_log_sigma` like the Gaussian's
  log sigma. The degrees of freedom are `student_t_df` when given, otherwise one
  learned scalar df = 1 + softplus(raw) (> 1, so that the mean exists for
  the MSE metric and the pictures), starting at `init_df`.
  """

  channels: int
  student_t_df: float | None = None
  init_df: float = 3.0
  init_variance: float = 1.0
  min_log_sigma: float | None = DEFAULT_MIN_LOG_SIGMA
  head_init_stddev: float | None = None

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step
    loc = head_conv(features, self.channels, 'loc', self.head_init_stddev, 0.5)
    log_scale = head_conv(features, self.channels, 'scale_head', self.head_init_stddev,
                          0.5 * math.log(self.init_variance))
    if self.min_log_sigma is not None:
      log_scale = softclip(log_scale, self.min_log_sigma)
    if self.student_t_df is None:
      raw = self.param('raw_df', nn.initializers.constant(
          math.log(math.expm1(self.init_df - 1.0))), ())
      df = 1.0 + jax.nn.softplus(raw)
    else:
      df = jnp.asarray(self.student_t_df, jnp.float32)
    return StudentTImage(loc, log_scale, df)
