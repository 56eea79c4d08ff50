"""Calibrated Gaussian likelihood heads: the variance modes of sigma-VAE and Lin et al.

Every head here returns N(mu, diag(sigma^2)) over the flat image [S]
(row-major over H, W, C) and differs only in where sigma comes from
(rybkin2021_sigma_vae_calibrated_decoders.txt sections 3.1 and 4;
lin2019_balancing_elbo_learned_variance.txt sections 3.3-3.4, Algorithm 1):

* GaussianFixedSigma: a constant sigma (the plain Gaussian VAE; with
  sigma = sqrt(beta / 2) its loss is the beta-VAE's divided by beta).
* GaussianSharedSigma: one log sigma for the whole data set, learned by
  gradient descent (shared sigma-VAE).
* GaussianPixelSigma: log sigma per subpixel from a conv head on the decoder
  features (per-pixel sigma-VAE), soft-clipped below at `min_log_sigma`.
* GaussianOptimalSigma: sigma^2 in closed form, the mean squared residual of
  the training batch over the chosen axes (optimal sigma-VAE), with a running
  average kept for evaluation and decoding.
* GaussianTwoStage: Lin et al.'s Algorithm 1, closed-form global variance
  until `switch_step`, then an input-dependent variance floored by half the
  stage-one ("dataset") variance.

Running statistics live in the flax collection STATS_COLLECTION
('likelihood_stats') and change only when `train` is True and that
collection is mutable (see sosvae_jax/models/likelihoods.py).
"""

from __future__ import annotations

import math

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sosvae_jax.distributions.gaussian import clip_variance
from sosvae_jax.distributions.gaussian import clipped_log_sigma_variance
from sosvae_jax.distributions.gaussian import debiased_average
from sosvae_jax.distributions.gaussian import diagonal_normal
from sosvae_jax.distributions.gaussian import OPTIMAL_VARIANCE_AXES
from sosvae_jax.distributions.gaussian import optimal_variance
from sosvae_jax.models.heads import STATS_COLLECTION
from sosvae_jax.models.heads import SWITCH_STEP
from sosvae_jax.models.heads import variance_features

Array = jax.Array

DEFAULT_MIN_LOG_SIGMA = -6.0  # lambda_min of sigma-VAE section 3.1


def head_conv(features: Array, out_channels: int, name: str,
              init_stddev: float | None, bias: float | Array = 0.0) -> Array:
  """3x3 'SAME' conv [B, H, W, F] -> [B, H, W, out] in float32.

  init_stddev None keeps flax's default (LeCun normal) kernel; a number draws
  the kernel from N(0, init_stddev^2) (the SOS-VAE heads start near zero).
  `bias` is a scalar or a vector of length out_channels.
  """
  kernel_init = (nn.initializers.lecun_normal() if init_stddev is None
                 else nn.initializers.normal(stddev=init_stddev))
  bias_value = jnp.broadcast_to(jnp.asarray(bias, jnp.float32), (out_channels,))
  out = nn.Conv(out_channels, (3, 3), padding='SAME', name=name,
                kernel_init=kernel_init,
                bias_init=lambda *_: bias_value)(features)
  return out.astype(jnp.float32)


def _gaussian(mean: Array, variance: Array) -> distrax.Distribution:
  """N(mean, diag(variance)) over flat images; variance broadcasts to mean."""
  variance = jnp.broadcast_to(variance, mean.shape)
  b = mean.shape[0]
  return diagonal_normal(mean.reshape((b, -1)), variance.reshape((b, -1)))


def _require_target(name: str, target: Array | None, train: bool) -> None:
  if train and target is None:
    raise ValueError(f'{name}: the train step must pass the target image, since the '
                     'variance is computed from the residual of the batch.')


class RunningAverage(nn.Module):
  """A bias-corrected exponential moving average in STATS_COLLECTION.

  `__call__(value, update)` returns the average including `value` when
  `update` (a bool array) is True, else the stored one; `fallback` is returned
  before the first update. The stored variables are `total` and `count`.
  """

  shape: tuple[int, ...]
  decay: float
  fallback: float

  @nn.compact
  def __call__(self, value: Array | None, update: Array | bool) -> Array:
    total = self.variable(STATS_COLLECTION, 'total', jnp.zeros, self.shape, jnp.float32)
    count = self.variable(STATS_COLLECTION, 'count', lambda: jnp.zeros((), jnp.int32))
    if value is not None and self.is_mutable_collection(STATS_COLLECTION):
      value = jax.lax.stop_gradient(value.astype(jnp.float32))
      new_total = self.decay * total.value + (1.0 - self.decay) * value
      total.value = jnp.where(update, new_total, total.value)
      count.value = jnp.where(update, count.value + 1, count.value).astype(jnp.int32)
    return debiased_average(total.value, count.value, self.decay, self.fallback)


class GaussianFixedSigma(nn.Module):
  """N(mu, sigma^2 I) with a constant sigma: the Gaussian VAE.

  rybkin2021_sigma_vae_calibrated_decoders.txt section 3: the beta-VAE loss
  SSE + beta KL equals beta times the ELBO loss of this head with
  sigma = sqrt(beta / 2); sigma = 1 is the uncalibrated "Gaussian VAE" row
  of its Table 2.
  """

  channels: int
  sigma: float = 1.0
  head_init_stddev: float | None = None

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step  # sigma is a constant.
    mean = head_conv(features, self.channels, 'mean_head', self.head_init_stddev, 0.5)
    return _gaussian(mean, jnp.asarray(self.sigma ** 2, jnp.float32))


class SharedLogSigma(nn.Module):
  """One learned log sigma (scalar parameter `log_sigma`)."""

  init_log_sigma: float = 0.0

  @nn.compact
  def __call__(self) -> Array:
    return self.param('log_sigma', nn.initializers.constant(self.init_log_sigma), ())


class GaussianSharedSigma(nn.Module):
  """N(mu, sigma^2 I) with one log sigma learned by gradient (shared sigma-VAE).

  rybkin2021_sigma_vae_calibrated_decoders.txt section 3.1; the parameter
  lives in the variance head `sigma_head`, so it is frozen during
  config.pretrain_steps like the other variance heads. The soft clip of
  log sigma is applied as for the per-pixel head (the paper finds it
  unnecessary here; with log sigma far above the floor it changes nothing).
  """

  channels: int
  init_variance: float = 1.0
  min_log_sigma: float | None = DEFAULT_MIN_LOG_SIGMA
  head_init_stddev: float | None = None

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step
    mean = head_conv(features, self.channels, 'mean_head', self.head_init_stddev, 0.5)
    log_sigma = SharedLogSigma(0.5 * math.log(self.init_variance), name='sigma_head')()
    return _gaussian(mean, clipped_log_sigma_variance(log_sigma, self.min_log_sigma))


class GaussianPixelSigma(nn.Module):
  """N(mu, diag(sigma^2)) with log sigma per subpixel from a conv head.

  rybkin2021_sigma_vae_calibrated_decoders.txt section 3.1: log sigma is
  soft-clipped below at lambda_min (`min_log_sigma`, default -6) so that no
  pixel's variance collapses; the per-pixel sigma-VAE row of its Table 2.
  """

  channels: int
  init_variance: float = 1.0
  min_log_sigma: float | None = DEFAULT_MIN_LOG_SIGMA
  head_init_stddev: float | None = None
  detach_variance_features: bool = False

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del target, train, step
    mean = head_conv(features, self.channels, 'mean_head', self.head_init_stddev, 0.5)
    var_features = variance_features(features, self.detach_variance_features)
    log_sigma = head_conv(var_features, self.channels, 'sigma_head',
                          self.head_init_stddev, 0.5 * math.log(self.init_variance))
    return _gaussian(mean, clipped_log_sigma_variance(log_sigma, self.min_log_sigma))


def _running_shape(axes: str, image_shape: tuple[int, int, int]) -> tuple[int, ...]:
  """Shape of the running variance for each axes choice (batch axis kept as 1)."""
  h, w, c = image_shape
  return {'shared': (1, 1, 1, 1), 'per_image': (1, 1, 1, 1),
          'per_pixel': (1, h, w, c), 'per_channel': (1, 1, 1, c)}[axes]


class GaussianOptimalSigma(nn.Module):
  """N(mu, diag(sigma^2)) with sigma^2 the closed-form optimum (optimal sigma-VAE).

  rybkin2021_sigma_vae_calibrated_decoders.txt section 4 and appendix C:
  inside the train step sigma^2 is the mean squared residual of the batch
  over `optimal_sigma_axes` ('shared': one value; 'per_image': one per image; 'per_pixel':
  one per subpixel over the batch; 'per_channel': one per channel). The mean
  is taken over the global batch (under jit the arrays are globally
  sharded). The log sigma that results is soft-clipped at `min_log_sigma`.

  `optimal_sigma_stop_gradient` treats sigma^2 as a constant in the gradient. Without the
  clip this changes no gradient, whatever the axes: each sigma^2 maximises
  its own block of the batch-mean loss, so the derivative of the loss
  through it vanishes (envelope theorem); it differs only where the soft
  clip of log sigma bends the value. Stopping it saves the backward pass
  through the estimate.

  Evaluation and decoding (train=False) use a bias-corrected exponential
  running average (decay `running_average_decay`) of the training-batch
  estimates, so that log p(x|z) is a proper density of x. For 'per_image'
  the per-image variance depends on the image being scored, so evaluation
  uses one shared variance: the running average of the batch mean of the
  per-image variances (equal to the mean squared error). Before the first
  train step `init_variance` is used.
  """

  channels: int
  optimal_sigma_axes: str = 'shared'
  optimal_sigma_stop_gradient: bool = True
  running_average_decay: float = 0.99
  init_variance: float = 1.0
  min_log_sigma: float | None = DEFAULT_MIN_LOG_SIGMA
  head_init_stddev: float | None = None

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    del step
    axes = self.optimal_sigma_axes
    if axes not in OPTIMAL_VARIANCE_AXES:
      raise ValueError(f'GaussianOptimalSigma: axes={axes!r} is not one of '
                       f'{tuple(OPTIMAL_VARIANCE_AXES)}.')
    _require_target('GaussianOptimalSigma', target, train)
    mean = head_conv(features, self.channels, 'mean_head', self.head_init_stddev, 0.5)
    image_shape = tuple(features.shape[1:3]) + (self.channels,)
    running = RunningAverage(_running_shape(axes, image_shape),
                             self.running_average_decay, self.init_variance,
                             name='running_variance')
    if train:
      variance = optimal_variance(target.astype(jnp.float32) - mean, axes)
      if self.optimal_sigma_stop_gradient:
        variance = jax.lax.stop_gradient(variance)
      # Per-image variances are summarised by their batch mean (see above).
      summary = (jnp.mean(variance, axis=0, keepdims=True)
                 if axes == 'per_image' else variance)
      running(summary, True)
    else:
      variance = running(None, False)
    return _gaussian(mean, clip_variance(variance, self.min_log_sigma))


class GaussianTwoStage(nn.Module):
  """Lin et al.'s two-stage variance (lin2019_balancing_elbo_learned_variance.txt Algorithm 1).

  Stage one (train steps < switch_step): one global variance, in closed form
  from the batch (section 3.3, eq. 10: the mean squared residual), with a
  running average kept for evaluation. Stage two: the variance of each
  subpixel is v(z) + sigma_dataset^2 / 2 (section 3.4, eq. 11 and
  Algorithm 1), v = softplus of the conv head `variance_head` and
  sigma_dataset^2 the global variance learnt in stage one, frozen at the
  switch (the running average stops updating from the switch on) or, when
  `dataset_variance` is a number, that number.

  `switch_step` is the int32 variable SWITCH_STEP in STATS_COLLECTION,
  initialised from the config; the train loop lowers it to the current step
  when the evaluation ELBO stops improving (config.likelihood
  .switch_on_plateau). The stage is decided inside jit as step >=
  switch_step; evaluation and decoding use the stage of the last train step
  (variable 'in_stage_two').
  """

  channels: int
  switch_step: int = 1000
  dataset_variance: float | None = None
  running_average_decay: float = 0.99
  init_variance: float = 1.0
  head_init_stddev: float | None = None
  detach_variance_features: bool = False

  @nn.compact
  def __call__(self, features: Array, target: Array | None = None, *,
               train: bool = False, step: Array | None = None) -> distrax.Distribution:
    _require_target('GaussianTwoStage', target, train)
    if train and step is None:
      raise ValueError('GaussianTwoStage: the train step must pass `step` to choose '
                       'the stage.')
    mean = head_conv(features, self.channels, 'mean_head', self.head_init_stddev, 0.5)
    switch = self.variable(STATS_COLLECTION, SWITCH_STEP,
                           lambda: jnp.asarray(self.switch_step, jnp.int32))
    stage_flag = self.variable(STATS_COLLECTION, 'in_stage_two', lambda: jnp.zeros((), jnp.int32))
    running = RunningAverage((1, 1, 1, 1), self.running_average_decay,
                             self.init_variance, name='global_variance')
    if train:
      stage_two = jnp.asarray(step) >= switch.value
      global_variance = jax.lax.stop_gradient(
          optimal_variance(target.astype(jnp.float32) - mean, 'shared'))
      frozen = running(global_variance, jnp.logical_not(stage_two))
      if self.is_mutable_collection(STATS_COLLECTION):
        stage_flag.value = stage_two.astype(jnp.int32)
    else:
      stage_two = stage_flag.value > 0
      frozen = running(None, False)
      global_variance = frozen
    dataset_variance = (frozen if self.dataset_variance is None
                        else jnp.asarray(self.dataset_variance, jnp.float32))
    var_features = variance_features(features, self.detach_variance_features)
    start = max(self.init_variance, 1e-6)
    raw = head_conv(var_features, self.channels, 'variance_head', self.head_init_stddev,
                    math.log(math.expm1(start)))
    stage_two_variance = jax.nn.softplus(raw) + 0.5 * dataset_variance
    variance = jnp.where(stage_two, stage_two_variance,
                         jnp.broadcast_to(global_variance, mean.shape))
    return _gaussian(mean, variance)
