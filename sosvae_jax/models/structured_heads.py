"""Likelihood heads for Dorta's structured-precision Gaussian (grey and YCbCr).

dorta2018_vae_structured_residuals.txt: the decoder trunk feeds a mean head
and a covariance branch predicting the sparse Cholesky factor L of the
precision (section 4, Fig. 2); colour images are modelled in YCbCr with a
structured Y and diagonal low-resolution Cb, Cr (section 4.1). Training
adds the variance minimiser of eq. 14 on a step schedule and, optionally,
the Gamma prior of eq. 13 on the precision diagonal (section 4.2); both are
sown into PENALTY_COLLECTION, already weighted and batch-averaged.

Parameter subtrees named `precision_diag_head` and `precision_offdiag_head`
(the latter holds the optional learnable basis too) are variance heads (the
registry entry 'structured_gaussian' names them): `config.pretrain_steps`
freezes them, which is the reference code's two-phase option (mean first,
then covariance), and `config.optimizer.variance_lr_scale` slows them.
"""

from __future__ import annotations

import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sosvae_jax.distributions import colour
from sosvae_jax.distributions import softclip
from sosvae_jax.distributions import structured
from sosvae_jax.distributions import structured_ycbcr
from sosvae_jax.models.heads import DiagonalHead
from sosvae_jax.models.heads import MeanHead
from sosvae_jax.models.heads import PENALTY_COLLECTION
from sosvae_jax.models.heads import small_normal_init
from sosvae_jax.models.heads import STATS_COLLECTION
from sosvae_jax.models.heads import SWITCH_STEP
from sosvae_jax.models.heads import variance_features

Array = jax.Array


def variance_minimiser_weight(step: Array | None, switch_step: Array,
                              start: float, end: float) -> Array:
  """alpha(step) of eq. 14: `start` before `switch_step`, `end` from then on.

  dorta2018_vae_structured_residuals.txt section 5.1 uses 5e3 for the first
  10 epochs and 10 afterwards. Without a step (outside training) the later
  value is returned.
  """
  if step is None:
    return jnp.asarray(end, jnp.float32)
  return jnp.where(step < switch_step, start, end).astype(jnp.float32)


def gamma_log_density(value: Array, concentration: float,
                      rate: float) -> Array:
  """log Gamma(value; a, b) = a log b - lgamma(a) + (a - 1) log value - b value.

  Shape-rate parameterisation (mean a / b), elementwise; eq. 13 of
  dorta2018_vae_structured_residuals.txt places it on diag(Lambda).
  """
  a, b = concentration, rate
  return (a * math.log(b) - math.lgamma(a) + (a - 1.0) * jnp.log(value)
          - b * value)


def _batch_sum_mean(x: Array) -> Array:
  """Sum over every axis but the first, then mean over the batch."""
  return jnp.mean(jnp.sum(x.reshape((x.shape[0], -1)), axis=-1))


class PrecisionOffDiagHead(nn.Module):
  """features [B, H, W, F] -> off-diagonals of L, [B, H, W, M].

  Without a basis (num_basis = 0) a conv predicts the M = n_f^2 // 2
  entries directly. With one, it predicts n_b weights W(z) per pixel and
  the shared learnable basis B [n_b, M] maps them to L = s(B W(z)) (eq. 15,
  `structured.basis_off_diag`).
  """

  kernel_size: int
  num_basis: int = 0
  init_stddev: float = 1e-5

  @nn.compact
  def __call__(self, features: Array) -> Array:
    m = structured.num_off_diag(self.kernel_size)
    outputs = self.num_basis or m
    raw = nn.Conv(outputs, (3, 3), padding='SAME', name='conv',
                  kernel_init=small_normal_init(self.init_stddev),
                  bias_init=nn.initializers.zeros)(features)
    raw = raw.astype(jnp.float32)
    if not self.num_basis:
      return raw  # (B, H, W, M)
    basis = self.param('basis', nn.initializers.normal(
        1.0 / math.sqrt(self.num_basis)), (self.num_basis, m), jnp.float32)
    return structured.basis_off_diag(basis, raw)  # (B, H, W, M)


class StructuredPrecisionHead(nn.Module):
  """features -> (log_diag [B, H, W], off_diag [B, H, W, M]) of L.

  log_diag starts at -log(init_variance) / 2 (the precision of a pixel of
  variance init_variance) and is bounded above softly by max_log_diag, so
  that flat 8-bit regions cannot push a precision to overflow.
  """

  kernel_size: int = 3
  num_basis: int = 0
  init_variance: float = 0.05
  max_log_diag: float = 6.0
  init_stddev: float = 1e-5

  @nn.compact
  def __call__(self, features: Array) -> tuple[Array, Array]:
    raw = nn.Conv(1, (3, 3), padding='SAME', name='precision_diag_head',
                  kernel_init=small_normal_init(self.init_stddev),
                  bias_init=nn.initializers.constant(
                      -0.5 * math.log(self.init_variance)))(features)
    raw = raw[..., 0].astype(jnp.float32)  # (B, H, W)
    log_diag = -softclip(-raw, -self.max_log_diag)  # smooth min(raw, max)
    off_diag = PrecisionOffDiagHead(self.kernel_size, self.num_basis,
                                    self.init_stddev,
                                    name='precision_offdiag_head')(features)
    return log_diag, off_diag


class _PenaltiesMixin:
  """The eq. 13 / eq. 14 penalties and the alpha schedule's switch step.

  alpha is variance_minimiser_start before variance_minimiser_switch_step,
  variance_minimiser_end from then on.
  """

  def _switch_step(self) -> Array:
    # A statistic, so that the loop may lower it on a plateau.
    return self.variable(STATS_COLLECTION, SWITCH_STEP, lambda: jnp.asarray(
        self.variance_minimiser_switch_step, jnp.int32)).value

  def _sow_penalties(self, squared_residual: Array, precision_diag: Array,
                     train: bool, step: Array | None) -> None:
    """squared_residual [B, ...] of the mean; precision_diag [B, H, W]."""
    switch_step = self._switch_step()
    if not train:
      return
    alpha = variance_minimiser_weight(step, switch_step,
                                      self.variance_minimiser_start,
                                      self.variance_minimiser_end)
    if squared_residual is not None and (self.variance_minimiser_start
                                         or self.variance_minimiser_end):
      self.sow(PENALTY_COLLECTION, 'variance_minimiser',
               alpha * _batch_sum_mean(squared_residual))
    if self.gamma_prior_weight:
      log_prior = gamma_log_density(precision_diag, self.gamma_concentration,
                                    self.gamma_rate)
      self.sow(PENALTY_COLLECTION, 'gamma_prior',
               -self.gamma_prior_weight * _batch_sum_mean(log_prior))


class StructuredGaussianLikelihood(_PenaltiesMixin, nn.Module):
  """Grayscale p(x|z) = N(mu, (L L^T)^{-1}) over [H, W] (event shape (H, W)).

  dorta2018_vae_structured_residuals.txt sections 4 and 4.2-4.3. The
  variance minimiser alpha(step) * |x - mu|^2 (eq. 14) and the optional
  Gamma(a, b) prior on diag(L L^T) (eq. 13, weight gamma_prior_weight, 0 = off)
  are sown as penalties 'variance_minimiser' and 'gamma_prior' while
  training with a known target.
  """

  channels: int = 1
  kernel_size: int = 3
  dilation: int = 1
  num_basis: int = 0
  init_variance: float = 0.05
  max_log_diag: float = 6.0
  head_init_stddev: float = 1e-5
  detach_variance_features: bool = False
  variance_minimiser_start: float = 5e3
  variance_minimiser_end: float = 10.0
  variance_minimiser_switch_step: int = 0
  gamma_prior_weight: float = 0.0
  gamma_concentration: float = 1.0
  gamma_rate: float = 1.0

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None
               ) -> distrax.Distribution:
    if self.channels != 1:
      raise ValueError(
          f'StructuredGaussianLikelihood models grayscale images (C=1), got '
          f'C={self.channels}; use StructuredYCbCrLikelihood for RGB.')
    b, h, w, _ = features.shape
    mean = MeanHead(1, self.head_init_stddev, name='mean')(features)
    mean = mean.reshape((b, h, w))
    var_features = variance_features(features, self.detach_variance_features)
    log_diag, off_diag = StructuredPrecisionHead(
        self.kernel_size, self.num_basis, self.init_variance,
        self.max_log_diag, self.head_init_stddev, name='precision')(
            var_features)
    residual = None
    if target is not None:
      residual = jnp.square(target.reshape((b, h, w)) - mean)
    self._sow_penalties(residual, self._precision_diag(log_diag, off_diag),
                        train, step)
    return structured.StructuredPrecisionNormal(
        mean, log_diag, off_diag, kernel_size=self.kernel_size,
        dilation=self.dilation)

  def _precision_diag(self, log_diag: Array, off_diag: Array) -> Array:
    return structured.precision_diagonal(log_diag, off_diag,
                                         kernel_size=self.kernel_size,
                                         dilation=self.dilation)


class StructuredYCbCrLikelihood(_PenaltiesMixin, nn.Module):
  """RGB p(x|z): structured Y plus diagonal Cb, Cr at H/f x W/f (event (H, W, 3)).

  dorta2018_vae_structured_residuals.txt section 4.1, eqs. 8-12 (f = 4 maps
  64 -> 16 as in section 5). The chroma heads read the trunk features
  average-pooled by f. The distribution is `structured_ycbcr.StructuredYCbCrNormal`:
  a density of the RGB image including the colour Jacobian, whose mean and
  samples are RGB. The variance minimiser acts on the modelled targets (Y
  and pooled Cb, Cr residuals); the Gamma prior on diag(L L^T) of Y.
  """

  channels: int = 3
  kernel_size: int = 3
  dilation: int = 1
  num_basis: int = 0
  chroma_factor: int = 4
  chroma_detail_scale: float = 0.01
  min_variance: float = 1e-5
  init_variance: float = 0.05
  max_log_diag: float = 6.0
  head_init_stddev: float = 1e-5
  detach_variance_features: bool = False
  variance_minimiser_start: float = 5e3
  variance_minimiser_end: float = 10.0
  variance_minimiser_switch_step: int = 0
  gamma_prior_weight: float = 0.0
  gamma_concentration: float = 1.0
  gamma_rate: float = 1.0

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None
               ) -> distrax.Distribution:
    if self.channels != 3:
      raise ValueError(
          f'StructuredYCbCrLikelihood models RGB images (C=3), got '
          f'C={self.channels}; use StructuredGaussianLikelihood for C=1.')
    b, h, w, _ = features.shape
    f = self.chroma_factor
    luma_mean = MeanHead(1, self.head_init_stddev, name='mean')(features)
    luma_mean = luma_mean.reshape((b, h, w))
    var_features = variance_features(features, self.detach_variance_features)
    log_diag, off_diag = StructuredPrecisionHead(
        self.kernel_size, self.num_basis, self.init_variance,
        self.max_log_diag, self.head_init_stddev, name='precision')(
            var_features)
    pooled = colour.avg_pool(features, f)  # (B, H/f, W/f, F)
    chroma_loc = MeanHead(2, self.head_init_stddev, name='chroma_mean')(
        pooled).reshape((b, h // f, w // f, 2))
    pooled_var = variance_features(pooled, self.detach_variance_features)
    chroma_var = DiagonalHead(2, self.min_variance, self.init_variance,
                              self.head_init_stddev, name='chroma_diag')(
                                  pooled_var).reshape((b, h // f, w // f, 2))
    luma = structured.StructuredPrecisionNormal(
        luma_mean, log_diag, off_diag, kernel_size=self.kernel_size,
        dilation=self.dilation)
    residual = None
    if target is not None:
      y, chroma = colour.ycbcr_targets(target, f)
      residual = jnp.concatenate(
          [jnp.square(y - luma_mean).reshape((b, -1)),
           jnp.square(chroma - chroma_loc).reshape((b, -1))], axis=-1)
    self._sow_penalties(
        residual, structured.precision_diagonal(
            log_diag, off_diag, kernel_size=self.kernel_size,
            dilation=self.dilation), train, step)
    return structured_ycbcr.StructuredYCbCrNormal(
        luma, chroma_loc, 0.5 * jnp.log(chroma_var), factor=f,
        detail_scale=self.chroma_detail_scale)
