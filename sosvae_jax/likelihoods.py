"""Registry of observation likelihoods: config name -> head returning p(x|z).

Each likelihood is a flax module mapping decoder features [B, H, W, F] to a
distrax distribution over the flattened image [B, S] (S = H * W * C, row-major
over H, W, C). Add a likelihood by writing such a module and registering it
in LIKELIHOODS; the train loop, metrics and pictures need no change.
"""

from __future__ import annotations

from typing import Any, Callable

import distrax
import flax.linen as nn
import jax

from sosvae_jax.distributions import diagonal_normal
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax.models.heads import DiagonalHead
from sosvae_jax.models.heads import FactorHead
from sosvae_jax.models.heads import MeanHead

Array = jax.Array


def _maybe_detach(features: Array, detach: bool) -> Array:
  """Variance heads read the trunk features without training them.

  With a tiny fixed diagonal, any residual inside span(P) is almost free, so
  a shared trunk is pulled towards serving P and the mean decays (the mean
  head gets no gradient along span(P) to resist). Detaching keeps encoder
  and trunk trained by the mean and the KL only; P becomes a learnt readout
  of those features.
  """
  return jax.lax.stop_gradient(features) if detach else features


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
  def __call__(self, features: Array) -> distrax.Distribution:
    mean = MeanHead(self.channels, self.head_init_stddev, name='mean')(features)
    var_features = _maybe_detach(features, self.detach_variance_features)
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
  def __call__(self, features: Array) -> distrax.Distribution:
    mean = MeanHead(self.channels, self.head_init_stddev, name='mean')(features)
    var_features = _maybe_detach(features, self.detach_variance_features)
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


LIKELIHOODS: dict[str, Callable[[Any, int], nn.Module]] = {
    'diagonal_gaussian': _diagonal,
    'lowrank_gaussian': _lowrank,
}


def get_likelihood(cfg, channels: int) -> nn.Module:
  """Builds the head module named by cfg.name (config.likelihood)."""
  if cfg.name not in LIKELIHOODS:
    raise ValueError(
        f'config.likelihood.name={cfg.name!r} is not a known likelihood; '
        f'choose one of {sorted(LIKELIHOODS)}.')
  return LIKELIHOODS[cfg.name](cfg, channels)
