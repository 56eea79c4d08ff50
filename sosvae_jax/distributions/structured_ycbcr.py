"""RGB images as structured-precision luma times low-resolution diagonal chroma."""

from __future__ import annotations

import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.distributions import colour
from sosvae_jax.distributions.gaussian import diagonal_log_prob
from sosvae_jax.distributions.structured import StructuredPrecisionNormal

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def ycbcr_log_prob(rgb: Array, luma: StructuredPrecisionNormal,
                   chroma_loc: Array, chroma_log_scale: Array, *,
                   factor: int, space: str = 'ycbcr') -> Array:
  """Structured Y times diagonal low-resolution Cb, Cr; eqs. 8-12, section 4.1.

  The density is over the target t(x) = (Y [H, W], pool_f(Cb), pool_f(Cr))
  of the RGB image x, with Y ~ `luma` (structured) and the pooled chroma
  independent Gaussians N(chroma_loc, exp(chroma_log_scale)^2).

  space='ycbcr' (default): the log density of t(x) in YCbCr space, as the
    paper's bound is evaluated.
  space='rgb': the log density of x itself in RGB space, i.e. plus
    H W log|det M| for the per-pixel colour matrix M. Only defined for
    factor == 1: with pooling, t is many-to-one and has no RGB density.

  Args:
    rgb: [..., H, W, 3] in [0, 1].
    luma: distribution over [H, W] with batch shape broadcasting with [...].
    chroma_loc, chroma_log_scale: [..., H/f, W/f, 2] for (Cb, Cr).

  Returns:
    [...] log densities.
  """
  if space not in ('ycbcr', 'rgb'):
    raise ValueError(f"space must be 'ycbcr' or 'rgb', got {space!r}.")
  if space == 'rgb' and factor != 1:
    raise ValueError(
        f"space='rgb' needs factor=1: pooled chroma (factor={factor}) is not "
        'an invertible map of RGB, so it has no RGB density.')
  y, chroma = colour.ycbcr_targets(rgb, factor)
  chroma_log_prob = diagonal_log_prob(chroma, chroma_loc, 2.0 * chroma_log_scale,
                                      axis=(-3, -2, -1))  # (...,)
  log_p = luma.log_prob(y) + chroma_log_prob
  if space == 'rgb':
    log_p = log_p + y.shape[-2] * y.shape[-1] * colour.YCBCR_LOG_ABS_DET
  return log_p


class StructuredYCbCrNormal(distrax.Distribution):
  """Gaussian over RGB images [H, W, 3]: structured Y, low-resolution Cb, Cr.

  dorta2018_vae_structured_residuals.txt section 4.1 (eqs. 8-12): the image
  is converted to YCbCr (BT.601, `rgb_to_ycbcr`); Y [H, W] follows the
  structured-precision Gaussian `luma`; the chroma channels, averaged over
  f x f blocks (f = `factor`, 64 -> 16 in the paper), follow independent
  Gaussians N(chroma_loc, exp(chroma_log_scale)^2) at [H/f, W/f, 2].

  To make this a density of the RGB image itself (so that its log_prob is
  comparable with the other likelihoods and includes the colour Jacobian),
  the chroma detail inside each block, c - upsample(pool(c)), which the
  paper's bound ignores, gets an isotropic Gaussian of fixed scale
  `detail_scale` on the f^2 - 1 dimensional within-block subspace. With
  the orthonormal block basis (block mean direction 1/f, plus its
  complement), log p of one block's chroma values v is
    log N(mean(v); mu, s^2) - log f
    + (f^2 - 1) (-log(2 pi)/2 - log tau) - |v - mean(v)|^2 / (2 tau^2),
  and log p(rgb) = log p(ycbcr) + H W log|det M| for the per-pixel colour
  matrix M. For factor 1 the detail term vanishes and this is exactly the
  paper's model read in RGB space. `paper_log_prob` gives the paper's
  bound term (Y and pooled chroma densities in YCbCr space).

  Mean and samples are RGB: Y from `luma`, chroma upsampled by
  repetition (plus detail noise for samples), then `ycbcr_to_rgb`.
  """

  def __init__(self, luma: StructuredPrecisionNormal, chroma_loc: Array,
               chroma_log_scale: Array, *, factor: int,
               detail_scale: float = 0.01):
    super().__init__()
    h, w = luma.event_shape
    if not isinstance(factor, (int, np.integer)) or factor < 1:
      raise ValueError(f'factor must be a positive int, got {factor!r}.')
    if h % factor or w % factor:
      raise ValueError(
          f'factor={factor} must divide the image size (H, W) = ({h}, {w}); '
          'choose a chroma downsampling factor that divides both.')
    if not detail_scale > 0:
      raise ValueError(
          f'detail_scale must be > 0 (the scale of the within-block chroma '
          f'detail), got {detail_scale!r}.')
    chroma_loc = jnp.asarray(chroma_loc, luma.loc.dtype)
    chroma_log_scale = jnp.asarray(chroma_log_scale, luma.loc.dtype)
    want = (h // factor, w // factor, 2)
    for name, t in (('chroma_loc', chroma_loc),
                    ('chroma_log_scale', chroma_log_scale)):
      if t.ndim < 3 or tuple(t.shape[-3:]) != want:
        raise ValueError(
            f'{name} must be [..., H/f, W/f, 2] = [..., {want[0]}, {want[1]}, '
            f'2] for (H, W) = ({h}, {w}) and factor {factor}, got shape '
            f'{tuple(t.shape)}.')
    batch = jnp.broadcast_shapes(luma.batch_shape, chroma_loc.shape[:-3],
                                 chroma_log_scale.shape[:-3])
    self._luma = luma
    self._chroma_loc = jnp.broadcast_to(chroma_loc, batch + want)
    self._chroma_log_scale = jnp.broadcast_to(chroma_log_scale, batch + want)
    self._factor = int(factor)
    self._detail_scale = float(detail_scale)
    self._batch = tuple(batch)

  @property
  def luma(self) -> StructuredPrecisionNormal:
    return self._luma

  @property
  def chroma_loc(self) -> Array:
    return self._chroma_loc

  @property
  def chroma_log_scale(self) -> Array:
    return self._chroma_log_scale

  @property
  def factor(self) -> int:
    return self._factor

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._luma.event_shape) + (3,)

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return self._batch

  def _num_blocks(self) -> int:
    h, w = self._luma.event_shape
    return (h // self._factor) * (w // self._factor)

  def _detail_log_prob(self, chroma: Array) -> Array:
    """Within-block chroma detail term, [..., H, W, 2] -> [...]."""
    f = self._factor
    if f == 1:
      return jnp.zeros(chroma.shape[:-3], chroma.dtype)
    detail = chroma - colour.upsample_nearest(colour.avg_pool(chroma, f), f)
    log_tau = math.log(self._detail_scale)
    dims = 2 * self._num_blocks() * (f * f - 1)
    return (dims * (-0.5 * _LOG_2PI - log_tau)
            - 0.5 * jnp.sum(jnp.square(detail), axis=(-3, -2, -1))
            / self._detail_scale ** 2
            - 2 * self._num_blocks() * math.log(f))

  def paper_log_prob(self, value: Array) -> Array:
    """The bound term of eq. 9: log p(Y) + log p(pooled Cb, Cr), YCbCr space."""
    return ycbcr_log_prob(value, self._luma, self._chroma_loc,
                          self._chroma_log_scale, factor=self._factor)

  def log_prob(self, value: Array) -> Array:
    """RGB density, [..., *batch, H, W, 3] -> [..., *batch] (see class doc)."""
    ycc = colour.rgb_to_ycbcr(value)
    h, w = self._luma.event_shape
    return (self.paper_log_prob(value) + self._detail_log_prob(ycc[..., 1:])
            + h * w * colour.YCBCR_LOG_ABS_DET)

  def entropy(self) -> Array:
    """H(Y) + H(chroma at full resolution) - H W log|det M|, [*batch]."""
    f = self._factor
    h, w = self._luma.event_shape
    chroma = jnp.sum(0.5 * (1.0 + _LOG_2PI) + self._chroma_log_scale,
                     axis=(-3, -2, -1))
    chroma = chroma + 2 * self._num_blocks() * (
        math.log(f) + (f * f - 1) * (0.5 * (1.0 + _LOG_2PI)
                                     + math.log(self._detail_scale)))
    return (jnp.broadcast_to(self._luma.entropy(), self._batch) + chroma
            - h * w * colour.YCBCR_LOG_ABS_DET)

  def _ycbcr_image(self, y: Array, chroma_low: Array) -> Array:
    chroma = colour.upsample_nearest(chroma_low, self._factor)
    y = jnp.broadcast_to(y, chroma.shape[:-1])
    return jnp.concatenate([y[..., None], chroma], axis=-1)

  def _sample_n(self, key: Array, n: int) -> Array:
    """[n, *batch, H, W, 3] RGB samples.

    Y by the exact sparse solve of the luma distribution; pooled chroma
    N(loc, s^2); detail tau * (e - block mean of e) for e ~ N(0, I), which
    has covariance tau^2 (I - 1 1^T / f^2) inside each block.
    """
    k_y, k_c, k_d = jax.random.split(key, 3)
    y = self._luma.sample(seed=k_y, sample_shape=(n,))
    y = jnp.broadcast_to(y, (n,) + self._batch + tuple(self._luma.event_shape))
    eps = jax.random.normal(k_c, (n,) + self._chroma_loc.shape,
                            self._chroma_loc.dtype)
    low = self._chroma_loc + jnp.exp(self._chroma_log_scale) * eps
    ycc = self._ycbcr_image(y, low)
    if self._factor > 1:
      e = jax.random.normal(k_d, ycc.shape[:-1] + (2,), ycc.dtype)
      e = e - colour.upsample_nearest(colour.avg_pool(e, self._factor), self._factor)
      ycc = ycc.at[..., 1:].add(self._detail_scale * e)
    return colour.ycbcr_to_rgb(ycc)

  def mean(self) -> Array:
    """RGB of (mu_Y, upsampled chroma means), [*batch, H, W, 3]."""
    return colour.ycbcr_to_rgb(self._ycbcr_image(self._luma.mean(),
                                          self._chroma_loc))

  def mode(self) -> Array:
    return self.mean()

  def ycbcr_variance(self) -> Array:
    """Marginal variances in YCbCr, [*batch, H, W, 3]; Y part O(S^2) memory."""
    f = self._factor
    chroma = (jnp.exp(2.0 * self._chroma_log_scale)
              + self._detail_scale ** 2 * (1.0 - 1.0 / (f * f)))
    y = jnp.broadcast_to(self._luma.variance(),
                         self._batch + tuple(self._luma.event_shape))
    return self._ycbcr_image(y, chroma)

  def variance(self) -> Array:
    """Marginal RGB variances [*batch, H, W, 3]: Y, Cb, Cr are independent
    at each pixel, so Var(rgb_c) = sum_k (M^{-1})_{ck}^2 Var(ycbcr_k)."""
    inv_sq = jnp.asarray(np.square(colour.ycbcr_to_rgb_matrix()),
                         self._chroma_loc.dtype)
    return jnp.einsum('...k,ck->...c', self.ycbcr_variance(), inv_sq)

  def stddev(self) -> Array:
    return jnp.sqrt(self.variance())
