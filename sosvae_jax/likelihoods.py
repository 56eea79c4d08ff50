"""Registry of observation likelihoods: config name -> head returning p(x|z).

A likelihood head is a flax module

  head(features, target=None, *, train=False, step=None) -> distrax.Distribution

* `features` [B, H, W, F]: the decoder trunk's output at image resolution.
* `target` [B, H, W, C] in [0, 1]: the image, when known (training,
  evaluation, reconstructions); None when decoding prior samples. Heads whose
  parameters are a closed-form function of the data (the optimal sigma of
  rybkin2021_sigma_vae_calibrated_decoders.txt) read it.
* `train`: True only inside the train step; `step`: the int32 train step
  (None outside training), for schedules.

The distribution's event shape may be any shape with H*W*C elements: [S]
(row-major over H, W, C) for the Gaussian ones, [H, W, C] for the discrete
ones, [H, W] for a grayscale structured one. The loop reshapes x to the event
shape for log_prob and reshapes mean() and samples back to images.

Beyond parameters, a head may keep
* running statistics in the flax collection 'likelihood_stats', updated only
  when `train` is True (they live in TrainState.model_state, are
  checkpointed and are used when decoding);
* extra loss terms, sown as `self.sow('penalties', name, scalar)` with the
  scalar already averaged over the batch and weighted: the loop adds them to
  the loss and logs each as `penalty_<name>`.

Add a likelihood by writing such a module and registering a `Likelihood` in
LIKELIHOODS; the train loop, metrics, pictures and evaluation need no change.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import distrax
import flax.linen as nn
import jax

from sosvae_jax.distributions import diagonal_normal
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.models.heads import DiagonalHead
from sosvae_jax.models.heads import FactorHead
from sosvae_jax.models.heads import MeanHead
from sosvae_jax.models.heads import variance_features

Array = jax.Array


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
  """

  channels: int
  rank: int
  fixed_diag: float | None = 1e-5
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
    factor = FactorHead(self.channels, self.rank, self.head_init_stddev,
                        name='factor')(var_features)
    if self.fixed_diag is None:
      diag = DiagonalHead(self.channels, self.min_variance, self.init_variance,
                          self.head_init_stddev, name='diag')(var_features)
    else:
      diag = jax.numpy.full(mean.shape, self.fixed_diag, mean.dtype)
    return LowRankMultivariateNormal(mean, factor, diag)


def _gaussian_head_kwargs(cfg, channels: int) -> dict[str, Any]:
  """Fields every Gaussian head shares, with their defaults."""
  return dict(channels=channels, min_variance=cfg.get('min_variance', 1e-5),
              init_variance=cfg.get('init_variance', 0.05),
              head_init_stddev=cfg.get('head_init_stddev', 1e-5),
              detach_variance_features=cfg.get('detach_variance_features', False))


def _diagonal(cfg, channels: int) -> nn.Module:
  return DiagonalGaussianLikelihood(**_gaussian_head_kwargs(cfg, channels))


def _lowrank(cfg, channels: int) -> nn.Module:
  return LowRankGaussianLikelihood(rank=cfg.rank, fixed_diag=cfg.get('fixed_diag', 1e-5),
                                   **_gaussian_head_kwargs(cfg, channels))


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """A registry entry.

  Attributes:
    build: (config.likelihood, image channels) -> head module.
    discrete: log_prob is a probability mass over 8-bit levels (bits per
      dimension are -log_prob / (S ln 2)); otherwise a density on [0, 1].
    config_problems: optional (config) -> list of messages in the config
      checker's format, for fields only this likelihood reads.
  """

  build: Callable[[Any, int], nn.Module]
  discrete: bool = False
  config_problems: Callable[[Any], list[str]] | None = None


LIKELIHOODS: dict[str, Likelihood] = {
    'diagonal_gaussian': Likelihood(_diagonal),
    'lowrank_gaussian': Likelihood(_lowrank),
}

# -- issue 4: calibrated and discrete decoders --
# Gaussian variance modes of rybkin2021_sigma_vae_calibrated_decoders.txt and
# lin2019_balancing_elbo_learned_variance.txt, and the discrete decoders of
# the former's Table 2. Heads: models/calibrated_heads.py, discrete_heads.py.
from sosvae_jax.models import calibrated_heads  # pylint: disable=wrong-import-position
from sosvae_jax.models import discrete_heads  # pylint: disable=wrong-import-position


def _head_common(cfg) -> dict[str, Any]:
  """Kernel init of the sigma-VAE heads: None = flax's default (LeCun)."""
  return dict(head_init_stddev=cfg.get('head_init_stddev', None))


def _min_log_sigma(cfg) -> float | None:
  return cfg.get('min_log_sigma', calibrated_heads.DEFAULT_MIN_LOG_SIGMA)


def _fixed_sigma(cfg, channels: int) -> nn.Module:
  return calibrated_heads.GaussianFixedSigma(channels, sigma=cfg.get('sigma', 1.0),
                                             **_head_common(cfg))


def _shared_sigma(cfg, channels: int) -> nn.Module:
  return calibrated_heads.GaussianSharedSigma(
      channels, init_variance=cfg.get('init_variance', 1.0),
      min_log_sigma=_min_log_sigma(cfg), **_head_common(cfg))


def _pixel_sigma(cfg, channels: int) -> nn.Module:
  return calibrated_heads.GaussianPixelSigma(
      channels, init_variance=cfg.get('init_variance', 1.0),
      min_log_sigma=_min_log_sigma(cfg),
      detach_variance_features=cfg.get('detach_variance_features', False),
      **_head_common(cfg))


def _optimal_sigma(cfg, channels: int) -> nn.Module:
  return calibrated_heads.GaussianOptimalSigma(
      channels, axes=cfg.get('optimal_sigma_axes', 'shared'),
      stop_gradient=cfg.get('optimal_sigma_stop_gradient', True),
      running_average_decay=cfg.get('running_average_decay', 0.99),
      init_variance=cfg.get('init_variance', 1.0),
      min_log_sigma=_min_log_sigma(cfg), **_head_common(cfg))


def _two_stage(cfg, channels: int) -> nn.Module:
  return calibrated_heads.GaussianTwoStage(
      channels, switch_step=cfg.get('switch_step', 1000),
      dataset_variance=cfg.get('dataset_variance', None),
      running_average_decay=cfg.get('running_average_decay', 0.99),
      init_variance=cfg.get('init_variance', 1.0),
      detach_variance_features=cfg.get('detach_variance_features', False),
      **_head_common(cfg))


def _bernoulli(cfg, channels: int) -> nn.Module:
  return discrete_heads.BernoulliHead(channels, **_head_common(cfg))


def _categorical(cfg, channels: int) -> nn.Module:
  return discrete_heads.CategoricalHead(channels, **_head_common(cfg))


def _bitwise(cfg, channels: int) -> nn.Module:
  return discrete_heads.BitwiseCategoricalHead(channels, **_head_common(cfg))


def _logistic_mixture(cfg, channels: int) -> nn.Module:
  return discrete_heads.LogisticMixtureHead(
      channels, num_mixtures=cfg.get('num_mixtures', 10), **_head_common(cfg))


def _student_t(cfg, channels: int) -> nn.Module:
  return discrete_heads.StudentTHead(
      channels, df=cfg.get('student_t_df', None), init_df=cfg.get('init_df', 3.0),
      init_variance=cfg.get('init_variance', 1.0), min_log_sigma=_min_log_sigma(cfg),
      **_head_common(cfg))


def _calibrated_problems(config) -> list[str]:
  """Checks of the fields the sigma-VAE / Lin et al. heads read."""
  cfg, problems = config.likelihood, []

  def bad(field, value, why, fix):
    problems.append(f'config.likelihood.{field}={value!r}: {why}; {fix}.')

  def positive(field, value, why, allow_none=False):
    if value is None and allow_none:
      return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
      bad(field, value, f'must be > 0 ({why})', f'set --config.likelihood.{field} '
          'to a positive number' + (' or None' if allow_none else ''))

  name = cfg.name
  if name == 'gaussian_fixed_sigma':
    positive('sigma', cfg.get('sigma', 1.0), 'the fixed standard deviation of p(x|z)')
  if name in ('gaussian_shared_sigma', 'gaussian_pixel_sigma', 'gaussian_optimal_sigma',
              'gaussian_two_stage', 'student_t'):
    positive('init_variance', cfg.get('init_variance', 1.0),
             'the starting variance (and the running average before the first step)')
  if name in ('gaussian_shared_sigma', 'gaussian_pixel_sigma', 'gaussian_optimal_sigma',
              'student_t'):
    low = cfg.get('min_log_sigma', calibrated_heads.DEFAULT_MIN_LOG_SIGMA)
    if low is not None and not isinstance(low, (int, float)):
      bad('min_log_sigma', low, 'the soft floor of log sigma must be a number or None '
          '(no clip)', 'pass e.g. --config.likelihood.min_log_sigma=-6')
  if name == 'gaussian_optimal_sigma':
    axes = cfg.get('optimal_sigma_axes', 'shared')
    choices = tuple(calibrated_heads.OPTIMAL_VARIANCE_AXES)
    if axes not in choices:
      bad('optimal_sigma_axes', axes, f'unknown, the choices are {choices}',
          '--config.likelihood.optimal_sigma_axes=shared or another of them')
  if name in ('gaussian_optimal_sigma', 'gaussian_two_stage'):
    decay = cfg.get('running_average_decay', 0.99)
    if not isinstance(decay, (int, float)) or not 0 <= decay < 1:
      bad('running_average_decay', decay, 'the running-average decay must be in [0, 1) '
          '(1 would never move from the start)', 'pass e.g. 0.99')
  if name == 'gaussian_two_stage':
    switch = cfg.get('switch_step', 1000)
    if not isinstance(switch, int) or isinstance(switch, bool) or switch < 0:
      bad('switch_step', switch, 'the step at which stage two starts must be an '
          'integer >= 0', 'pass e.g. --config.likelihood.switch_step=3750')
    positive('dataset_variance', cfg.get('dataset_variance', None),
             'the stage-two floor is half of it; None = the stage-one running average',
             allow_none=True)
  if name == 'logistic_mixture':
    k = cfg.get('num_mixtures', 10)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      bad('num_mixtures', k, 'the number of logistic components must be an integer >= 1',
          'pass e.g. --config.likelihood.num_mixtures=10')
  if name == 'student_t':
    positive('student_t_df', cfg.get('student_t_df', None),
             'the degrees of freedom; None = learned', allow_none=True)
    init_df = cfg.get('init_df', 3.0)
    if cfg.get('student_t_df', None) is None and (
        not isinstance(init_df, (int, float)) or init_df <= 1):
      bad('init_df', init_df, 'the learned df is 1 + softplus(raw) > 1, so its start '
          'must be > 1', 'pass e.g. --config.likelihood.init_df=3')
  return problems


LIKELIHOODS.update({
    'gaussian_fixed_sigma': Likelihood(_fixed_sigma, config_problems=_calibrated_problems),
    'gaussian_shared_sigma': Likelihood(_shared_sigma, config_problems=_calibrated_problems),
    'gaussian_pixel_sigma': Likelihood(_pixel_sigma, config_problems=_calibrated_problems),
    'gaussian_optimal_sigma': Likelihood(_optimal_sigma,
                                         config_problems=_calibrated_problems),
    'gaussian_two_stage': Likelihood(_two_stage, config_problems=_calibrated_problems),
    'bernoulli': Likelihood(_bernoulli),
    'categorical': Likelihood(_categorical, discrete=True),
    'bitwise_categorical': Likelihood(_bitwise, discrete=True),
    'logistic_mixture': Likelihood(_logistic_mixture, discrete=True,
                                   config_problems=_calibrated_problems),
    'student_t': Likelihood(_student_t, config_problems=_calibrated_problems),
})

# -- issue 5: structured precision (Dorta) --
from sosvae_jax.models import structured_heads  # pylint: disable=g-import-not-at-top,g-bad-import-order
# C = 1: structured Y over [H, W]; C = 3: YCbCr (structured Y, low-res Cb, Cr).
LIKELIHOODS['structured_gaussian'] = Likelihood(
    structured_heads.build, config_problems=structured_heads.config_problems)


def get_likelihood(cfg, channels: int) -> nn.Module:
  """Builds the head module named by cfg.name (config.likelihood)."""
  if cfg.name not in LIKELIHOODS:
    raise ValueError(
        f'config.likelihood.name={cfg.name!r} is not a known likelihood; '
        f'choose one of {sorted(LIKELIHOODS)}.')
  return LIKELIHOODS[cfg.name].build(cfg, channels)
