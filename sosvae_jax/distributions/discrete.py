"""Image decoders for 8-bit data: Bernoulli, categorical, bitwise, logistic mixture, Student-t."""

from fractions import Fraction
import math

import distrax
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax.distributions.numerics import bits_per_dim
from sosvae_jax.distributions.numerics import softclip

Array = jax.Array
ArrayLike = jax.Array | np.ndarray | float
PRNGKey = jax.Array

NUM_LEVELS = 256  # 8-bit intensities k in 0..255, observed as x = k / 255.
NUM_BITS = 8
EVENT_NDIM = 3  # the event is the whole image [H, W, C].
# Soft floor on the logistic log-scale, in [0, 1] intensity units. A bin is
# 1/255 wide, so at log-scale -8 its half-width is ~5.8 scales and one bin can
# hold >99% of the mass (PixelCNN++'s hard clip at -7 on [-1, 1] is -7.7 here).
MIN_LOG_SCALE = -8.0
# Student-t normaliser: log G(a + 1/2) - log G(a) - log(a) / 2 from the large-a
# series of DLMF 5.11.8, whose k-th term is (2^(1 - 2k) - 2) B_2k /
# (2k (2k - 1) a^(2k - 1)) (B_2k: Bernoulli numbers B_2 .. B_12), taken at
# a + STUDENT_T_SHIFT >= 10 where the first omitted term is below 1.3e-15.
STUDENT_T_SHIFT = 10
_BERNOULLI_EVEN = (Fraction(1, 6), Fraction(-1, 30), Fraction(1, 42), Fraction(-1, 30),
                   Fraction(5, 66), Fraction(-691, 2730))
_HALF_STEP_SERIES = tuple(float((Fraction(2) ** (1 - 2 * k) - 2) * b / (2 * k * (2 * k - 1)))
                          for k, b in enumerate(_BERNOULLI_EVEN, start=1))


# ---------------------------------------------------------------------------
# Conversions between images, levels and bits.
# ---------------------------------------------------------------------------


def image_to_levels(x: ArrayLike) -> Array:
  """Integer intensity levels of an 8-bit image.

  Args:
    x: [..., H, W, C] floats k / 255 in [0, 1], or integers (e.g. uint8) k.

  Returns:
    [..., H, W, C] int32 levels k in 0..255.
  """
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer):
    return jnp.clip(x.astype(jnp.int32), 0, NUM_LEVELS - 1)
  # Round rather than floor: k / 255 * 255 can land just below k in float32.
  levels = jnp.round(x * (NUM_LEVELS - 1)).astype(jnp.int32)
  return jnp.clip(levels, 0, NUM_LEVELS - 1)


def levels_to_image(levels: Array) -> Array:
  """[..., H, W, C] integer levels -> [..., H, W, C] float32 k / 255."""
  return levels.astype(jnp.float32) / (NUM_LEVELS - 1)


def image_to_intensity(x: ArrayLike) -> Array:
  """[..., H, W, C] floats in [0, 1] or uint8 -> float intensities in [0, 1]."""
  x = jnp.asarray(x)
  if jnp.issubdtype(x.dtype, jnp.integer):
    return levels_to_image(x)
  return x


def quantize_image(x: Array) -> Array:
  """[..., H, W, C] real values -> nearest k / 255 in [0, 1] (for display)."""
  return levels_to_image(image_to_levels(jnp.clip(x, 0.0, 1.0)))


def levels_to_bits(levels: Array) -> Array:
  """[...] int levels -> [..., 8] bits in {0, 1}, most significant first."""
  shifts = jnp.arange(NUM_BITS - 1, -1, -1, dtype=jnp.int32)  # (8,) 7..0
  return (levels[..., None] >> shifts) & 1


def bits_to_levels(bits: Array) -> Array:
  """[..., 8] bits, most significant first -> [...] int32 levels."""
  weights = 2 ** jnp.arange(NUM_BITS - 1, -1, -1, dtype=jnp.int32)  # (8,)
  return jnp.sum(bits.astype(jnp.int32) * weights, axis=-1)


def density_bits_per_dim(log_density_nats: ArrayLike, num_dims: int) -> Array:
  """Bits per dimension of a continuous density on data k / 255, as a mass.

  One convention with the discrete decoders: level k owns the bin of width
  1/255 centred on k / 255 (discretized_logistic_log_prob's bins), and a
  density flat within each bin gives it mass p(k / 255) / 255. So
  bpd = -log2 p / S + log2(255); a density uniform over the 256 bins (256/255
  wide) reports exactly 8 bits. Meaningless when the density is not flat
  within a bin (variances below the bin width): compare such runs in nats.

  Args:
    log_density_nats: [B] (or any shape) log p(x) in nats, summed over the event.
    num_dims: number of dimensions of the event, e.g. H * W * C.

  Returns:
    [B] bits per dimension of the implied mass over 8-bit levels.
  """
  return bits_per_dim(log_density_nats, num_dims) + math.log2(NUM_LEVELS - 1)


def _sum_event(per_subpixel: Array) -> Array:
  """[..., H, W, C] -> [...].

  Sums, never means: averaging silently reweights the KL term
  (rybkin2021_sigma_vae_calibrated_decoders.txt section 3.1, "Loss
  implementation details").
  """
  return jnp.sum(per_subpixel, axis=(-3, -2, -1))


# ---------------------------------------------------------------------------
# Per-subpixel log-probabilities (pure functions; classes sum over the event).
# ---------------------------------------------------------------------------


def bernoulli_intensity_log_prob(logits: Array, x: Array) -> Array:
  """Continuous-intensity Bernoulli cross-entropy, per subpixel.

  log p = x log sigmoid(l) + (1 - x) log sigmoid(-l), with x in [0, 1] used
  as a soft label. For non-binary x this is not a normalised density (as in
  the "Bernoulli VAE" row of rybkin2021_sigma_vae_calibrated_decoders.txt
  Table 2, after Gregor et al. 2015).

  Args:
    logits: [..., H, W, C].
    x: [..., H, W, C] intensities in [0, 1].

  Returns:
    [..., H, W, C] log-probabilities (not summed).
  """
  return x * jax.nn.log_sigmoid(logits) + (1.0 - x) * jax.nn.log_sigmoid(-logits)


def categorical_log_prob(logits: Array, levels: Array) -> Array:
  """256-way categorical log-probability, per subpixel.

  rybkin2021_sigma_vae_calibrated_decoders.txt section 3.2: a soft-max over
  the 256 intensities, i.e. the per-subpixel cross-entropy.

  Args:
    logits: [..., H, W, C, 256].
    levels: [..., H, W, C] int levels in 0..255.

  Returns:
    [..., H, W, C] log-probabilities (not summed).
  """
  shape = jnp.broadcast_shapes(levels.shape, logits.shape[:-1])
  logits = jnp.broadcast_to(logits, shape + logits.shape[-1:])
  levels = jnp.broadcast_to(levels, shape)
  picked = jnp.take_along_axis(logits, levels[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def bitwise_log_prob(logits: Array, levels: Array) -> Array:
  """Bitwise-categorical log-probability, per subpixel.

  Each level is written as 8 bits, most significant first, each an
  independent Bernoulli with its own logit; this is normalised over the 256
  levels (rybkin2021_sigma_vae_calibrated_decoders.txt appendix D).

  Args:
    logits: [..., H, W, C, 8], logits[..., 0] for the bit of weight 128.
    levels: [..., H, W, C] int levels in 0..255.

  Returns:
    [..., H, W, C] log-probabilities (not summed).
  """
  bits = levels_to_bits(levels).astype(logits.dtype)  # (..., H, W, C, 8)
  per_bit = bits * jax.nn.log_sigmoid(logits) + (1.0 - bits) * jax.nn.log_sigmoid(-logits)
  return jnp.sum(per_bit, axis=-1)


def _log_sigmoid_difference(upper: Array, lower: Array, width: Array) -> Array:
  """log(sigmoid(upper) - sigmoid(lower)) without cancellation.

  Uses sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))),
  whose logs are stable in both tails. `width` = upper - lower > 0 is passed
  separately because subtracting two large standardised edges loses it.
  """
  return (jax.nn.log_sigmoid(upper) + jax.nn.log_sigmoid(-lower)
          + jnp.log(-jnp.expm1(-width)))


def discretized_logistic_log_prob(means: Array, log_scales: Array, levels: Array) -> Array:
  """Discretized logistic log-mass of each level, per component.

  Bins of width 1/255 centred on k / 255, the first bin open to -inf and the
  last to +inf (PixelCNN++ after Salimans et al. 2017, rescaled to [0, 1];
  rybkin2021_sigma_vae_calibrated_decoders.txt appendix D).

  Args:
    means: [..., K] logistic locations in intensity units.
    log_scales: [..., K] log-scales, already clipped.
    levels: [...] int levels in 0..255, broadcast against the K axis.

  Returns:
    [..., K] log-masses.
  """
  levels = levels[..., None]  # (..., 1)
  k = levels.astype(means.dtype)
  inv_scale = jnp.exp(-log_scales)
  # Edges as (k +- 1/2) / 255, so that bin k's upper edge and bin k+1's lower
  # edge are the same float and the masses telescope to one even when a
  # scale at the floor magnifies rounding errors 3000-fold.
  upper = ((k + 0.5) / (NUM_LEVELS - 1) - means) * inv_scale  # (..., K)
  lower = ((k - 0.5) / (NUM_LEVELS - 1) - means) * inv_scale
  interior = _log_sigmoid_difference(upper, lower, inv_scale / (NUM_LEVELS - 1))
  first = jax.nn.log_sigmoid(upper)  # log CDF(upper edge of bin 0)
  last = jax.nn.log_sigmoid(-lower)  # log survival(lower edge of bin 255)
  return jnp.where(levels == 0, first, jnp.where(levels == NUM_LEVELS - 1, last, interior))


def logistic_mixture_log_prob(
    logit_weights: Array,
    means: Array,
    log_scales: Array,
    levels: Array,
    *,
    min_log_scale: float = MIN_LOG_SCALE,
    ) -> Array:
  """Mixture of K discretized logistics, per subpixel, no channel coupling.

  The PixelCNN++ channel-autoregressive mean coefficients are removed so the
  latent must carry colour (rybkin2021_sigma_vae_calibrated_decoders.txt
  appendix D): subpixels are independent given the parameters.

  Args:
    logit_weights: [..., H, W, C, K] unnormalised mixture log-weights.
    means: [..., H, W, C, K] component locations in [0, 1] units.
    log_scales: [..., H, W, C, K] raw log-scales, soft-clipped from below.
    levels: [..., H, W, C] int levels in 0..255.
    min_log_scale: soft floor of the log-scales.

  Returns:
    [..., H, W, C] log-probabilities (not summed).
  """
  log_scales = softclip(log_scales, min_log_scale)
  component = discretized_logistic_log_prob(means, log_scales, levels)  # (..., K)
  return jax.nn.logsumexp(jax.nn.log_softmax(logit_weights, axis=-1) + component, axis=-1)


def student_t_log_prob(loc: Array, log_scale: Array, df: Array, x: Array) -> Array:
  """Student-t log-density, per subpixel (Takahashi et al. 2018; sigma-VAE Table 2).

  Args:
    loc: [..., H, W, C].
    log_scale: [..., H, W, C].
    df: degrees of freedom > 0, broadcastable to loc.
    x: [..., H, W, C] intensities in [0, 1].

  Returns:
    [..., H, W, C] log-densities (not summed).
  """
  z = (x - loc) * jnp.exp(-log_scale)
  half_df_plus = 0.5 * (df + 1.0)
  normaliser = student_t_log_normaliser(jnp.asarray(df, z.dtype)) - log_scale
  return normaliser - half_df_plus * jnp.log1p(jnp.square(z) / df)


def student_t_log_normaliser(df: Array) -> Array:
  """log G((df + 1) / 2) - log G(df / 2) - log(pi df) / 2: the unit-scale
  Student-t log-density at its centre, accurate to rounding in float32 and
  float64 for every df > 0.

  The two log-gammas grow like df log df, so their difference cancels (float32
  lost 7.6e-4 nats at df = 1e4); log G(1/2) - betaln(df / 2, 1/2), the way
  around that, is off by up to 5e-7 in float64 (jax's betaln for df / 2 >= 10:
  5e-8 at df = 30). Here nothing large is subtracted: with
  a = df / 2 and n = STUDENT_T_SHIFT, log G(a + 1/2) - log G(a)
  = sum_{k<n} -log1p(1 / (2 (a + k))) + [log G(a + n + 1/2) - log G(a + n)],
  the bracket is log(a + n) / 2 + series(a + n) (DLMF 5.11.8), and
  log(a + n) / 2 - log(2 pi a) / 2 = log1p(n / a) / 2 - log(2 pi) / 2.

  Args:
    df: degrees of freedom > 0, any shape.

  Returns:
    df's shape.
  """
  a = 0.5 * df
  shifted = a + STUDENT_T_SHIFT
  inverse_square = 1.0 / jnp.square(shifted)
  series = jnp.zeros_like(a)
  for coefficient in reversed(_HALF_STEP_SERIES):  # Horner in 1 / (a + n)^2
    series = series * inverse_square + coefficient
  series = series / shifted
  steps = sum(jnp.log1p(0.5 / (a + k)) for k in range(STUDENT_T_SHIFT))
  return (0.5 * jnp.log1p(STUDENT_T_SHIFT / a) - steps + series
          - 0.5 * math.log(2.0 * math.pi))


# ---------------------------------------------------------------------------
# Shape checks.
# ---------------------------------------------------------------------------


def _check_min_ndim(name: str, shape: tuple[int, ...], min_ndim: int, layout: str) -> None:
  if len(shape) < min_ndim:
    raise ValueError(f'`{name}` must have shape {layout}, got {shape}.')


def _check_value_shape(name: str, value: Array, event_shape: tuple[int, ...]) -> None:
  if tuple(value.shape[-EVENT_NDIM:]) != tuple(event_shape):
    raise ValueError(
        f'{name}.log_prob: value of shape {value.shape} does not end in the event '
        f'shape {tuple(event_shape)}.')


# ---------------------------------------------------------------------------
# Distributions: thin shells over the functions above.
# ---------------------------------------------------------------------------


class BernoulliImage(distrax.Distribution):
  """Independent Bernoulli per subpixel with continuous intensities as labels.

  log_prob treats x in [0, 1] as a soft label and sums over [H, W, C]. It is
  not normalised for non-binary x: this is the baseline "Bernoulli VAE" of
  rybkin2021_sigma_vae_calibrated_decoders.txt Table 2, which performs poorly
  for that reason. Samples are binary images in {0, 1} whose mean is mean().
  """

  def __init__(self, logits: Array):
    """logits: [..., H, W, C]."""
    super().__init__()
    self._logits = jnp.asarray(logits)
    self._check_parameters()

  def _check_parameters(self) -> None:
    _check_min_ndim('logits', self._logits.shape, EVENT_NDIM, '[..., H, W, C]')

  @property
  def logits(self) -> Array:
    return self._logits

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._logits.shape[-EVENT_NDIM:])

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self._logits.shape[:-EVENT_NDIM])

  def log_prob(self, value: ArrayLike) -> Array:
    """[..., H, W, C] intensities in [0, 1] (or uint8) -> [...] summed log p."""
    x = image_to_intensity(value)
    _check_value_shape(self.name, x, self.event_shape)
    return _sum_event(bernoulli_intensity_log_prob(self._logits, x))

  def mean(self) -> Array:
    """[..., H, W, C] sigmoid(logits)."""
    return jax.nn.sigmoid(self._logits)

  def _sample_n(self, key: PRNGKey, n: int) -> Array:
    """[n, ..., H, W, C] binary float32 images."""
    draws = jax.random.bernoulli(key, self.mean(), shape=(n,) + self._logits.shape)
    return draws.astype(jnp.float32)


class _LevelLogitsImage(distrax.Distribution):
  """Shared shell of decoders with logits [..., H, W, C, K] per subpixel.

  Subclasses set `_num_logits`, `_unit` (for the error message) and
  `_level_log_prob(logits, levels)`, the per-subpixel log p of 8-bit levels.
  """

  _num_logits: int
  _unit: str

  def __init__(self, logits: Array):
    super().__init__()
    self._logits = jnp.asarray(logits)
    self._check_parameters()

  def _check_parameters(self) -> None:
    shape = self._logits.shape
    _check_min_ndim('logits', shape, EVENT_NDIM + 1, f'[..., H, W, C, {self._num_logits}]')
    if shape[-1] != self._num_logits:
      raise ValueError(
          f'`logits` must end in {self._num_logits} {self._unit}, got shape {shape}.')

  @staticmethod
  def _level_log_prob(logits: Array, levels: Array) -> Array:
    raise NotImplementedError

  @property
  def logits(self) -> Array:
    return self._logits

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._logits.shape[-EVENT_NDIM - 1:-1])

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self._logits.shape[:-EVENT_NDIM - 1])

  def subpixel_log_prob(self, value: ArrayLike) -> Array:
    """[..., H, W, C] image -> [..., H, W, C] log p of each subpixel."""
    levels = image_to_levels(value)
    _check_value_shape(self.name, levels, self.event_shape)
    return self._level_log_prob(self._logits, levels)

  def log_prob(self, value: ArrayLike) -> Array:
    """[..., H, W, C] k / 255 floats (or uint8) -> [...] summed log p."""
    return _sum_event(self.subpixel_log_prob(value))


class CategoricalImage(_LevelLogitsImage):
  """Independent 256-way categorical per subpixel (sigma-VAE section 3.2).

  logits: [..., H, W, C, 256].
  """

  _num_logits = NUM_LEVELS
  _unit = 'levels'
  _level_log_prob = staticmethod(categorical_log_prob)

  def mean(self) -> Array:
    """[..., H, W, C] expected intensity sum_k p(k) k / 255."""
    intensities = jnp.arange(NUM_LEVELS, dtype=self._logits.dtype) / (NUM_LEVELS - 1)
    return jax.nn.softmax(self._logits, axis=-1) @ intensities

  def _sample_n(self, key: PRNGKey, n: int) -> Array:
    """[n, ..., H, W, C] images on the k / 255 grid."""
    shape = (n,) + self._logits.shape[:-1]
    levels = jax.random.categorical(key, self._logits, axis=-1, shape=shape)
    return levels_to_image(levels)


class BitwiseCategoricalImage(_LevelLogitsImage):
  """Each 8-bit level as 8 independent Bernoulli bits, most significant first.

  logits [..., H, W, C, 8]: logits[..., 0] is the bit of weight 128 and
  logits[..., 7] the bit of weight 1
  (rybkin2021_sigma_vae_calibrated_decoders.txt appendix D): 8 numbers per
  subpixel instead of the categorical's 256.
  """

  _num_logits = NUM_BITS
  _unit = 'bits'
  _level_log_prob = staticmethod(bitwise_log_prob)

  def mean(self) -> Array:
    """[..., H, W, C] E[k] / 255 = sum_b sigmoid(l_b) 2^(7-b) / 255."""
    weights = 2.0 ** jnp.arange(NUM_BITS - 1, -1, -1, dtype=self._logits.dtype)  # (8,)
    return jax.nn.sigmoid(self._logits) @ weights / (NUM_LEVELS - 1)

  def _sample_n(self, key: PRNGKey, n: int) -> Array:
    """[n, ..., H, W, C] images on the k / 255 grid."""
    probs = jax.nn.sigmoid(self._logits)
    bits = jax.random.bernoulli(key, probs, shape=(n,) + self._logits.shape)
    return levels_to_image(bits_to_levels(bits))


class DiscretizedLogisticMixture(distrax.Distribution):
  """K-component discretized logistic mixture per subpixel, subpixels independent.

  Parameters are per subpixel, [..., H, W, C, K], including the mixture
  weights; there is no PixelCNN++ channel autoregression, so colour must come
  from the latent (rybkin2021_sigma_vae_calibrated_decoders.txt appendix D).
  log_scales are soft-clipped from below at `min_log_scale` (section 3.1).
  """

  def __init__(
      self,
      logit_weights: Array,
      means: Array,
      log_scales: Array,
      *,
      min_log_scale: float = MIN_LOG_SCALE,
      ):
    """All three: [..., H, W, C, K]; means and scales in [0, 1] intensity units."""
    super().__init__()
    self._logit_weights = jnp.asarray(logit_weights)
    self._means = jnp.asarray(means)
    self._log_scales = jnp.asarray(log_scales)
    self._min_log_scale = float(min_log_scale)
    self._check_parameters()

  def _check_parameters(self) -> None:
    shapes = {'logit_weights': self._logit_weights.shape, 'means': self._means.shape,
              'log_scales': self._log_scales.shape}
    for name, shape in shapes.items():
      _check_min_ndim(name, shape, EVENT_NDIM + 1, '[..., H, W, C, K]')
    if len(set(shapes.values())) != 1:
      raise ValueError(
          f'Mixture parameters must share one shape [..., H, W, C, K], got {shapes}.')

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._means.shape[-EVENT_NDIM - 1:-1])

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self._means.shape[:-EVENT_NDIM - 1])

  @property
  def log_scales(self) -> Array:
    """[..., H, W, C, K] log-scales after the soft clip."""
    return softclip(self._log_scales, self._min_log_scale)

  def subpixel_log_prob(self, value: ArrayLike) -> Array:
    """[..., H, W, C] image -> [..., H, W, C] log p of each subpixel."""
    levels = image_to_levels(value)
    _check_value_shape(self.name, levels, self.event_shape)
    return logistic_mixture_log_prob(
        self._logit_weights, self._means, self._log_scales, levels,
        min_log_scale=self._min_log_scale)

  def log_prob(self, value: ArrayLike) -> Array:
    """[..., H, W, C] k / 255 floats (or uint8) -> [...] summed log p."""
    return _sum_event(self.subpixel_log_prob(value))

  def mean(self) -> Array:
    """[..., H, W, C] exact E[k] / 255 of the discretized mixture.

    E[k] = sum_{j=1..255} P(k >= j) = sum_j sigmoid((mu - (j - 1/2)/255) / s),
    accumulated in a loop so that no [..., 256] array is built.
    """
    inv_scale = jnp.exp(-self.log_scales)  # (..., K)

    def add_survival(j, total):
      edge = (j - 0.5) / (NUM_LEVELS - 1)
      return total + jax.nn.sigmoid((self._means - edge) * inv_scale)

    expected_level = jax.lax.fori_loop(1, NUM_LEVELS, add_survival, jnp.zeros_like(self._means))
    weights = jax.nn.softmax(self._logit_weights, axis=-1)
    return jnp.sum(weights * expected_level, axis=-1) / (NUM_LEVELS - 1)

  def _sample_n(self, key: PRNGKey, n: int) -> Array:
    """[n, ..., H, W, C] images on the k / 255 grid.

    Draws a component, then a continuous logistic value, then rounds it into
    its bin; the open edge bins are the clip to 0 and 255.
    """
    component_key, logistic_key = jax.random.split(key)
    shape = (n,) + self._means.shape[:-1]
    component = jax.random.categorical(component_key, self._logit_weights, axis=-1, shape=shape)

    def pick(params: Array) -> Array:
      params = jnp.broadcast_to(params, (n,) + params.shape)
      return jnp.take_along_axis(params, component[..., None], axis=-1)[..., 0]

    standard = jax.random.logistic(logistic_key, shape, dtype=self._means.dtype)
    continuous = pick(self._means) + jnp.exp(pick(self.log_scales)) * standard
    levels = jnp.clip(jnp.round(continuous * (NUM_LEVELS - 1)), 0, NUM_LEVELS - 1)
    return levels_to_image(levels.astype(jnp.int32))


class StudentTImage(distrax.Distribution):
  """Independent Student-t per subpixel (the "Student-t VAE" of sigma-VAE Table 2).

  A continuous density on the intensities x in [0, 1], not a discretized
  one; samples are real values (use quantize_image to display them).
  """

  def __init__(self, loc: Array, log_scale: Array, df: ArrayLike):
    """loc, log_scale: [..., H, W, C]; df: positive scalar or broadcastable array."""
    super().__init__()
    self._loc = jnp.asarray(loc)
    self._log_scale = jnp.asarray(log_scale)
    self._df = jnp.asarray(df, dtype=self._loc.dtype)
    self._check_parameters()

  def _check_parameters(self) -> None:
    _check_min_ndim('loc', self._loc.shape, EVENT_NDIM, '[..., H, W, C]')
    if self._log_scale.shape != self._loc.shape:
      raise ValueError(
          f'`log_scale` shape {self._log_scale.shape} must equal '
          f'`loc` shape {self._loc.shape}.')
    try:
      broadcast = jnp.broadcast_shapes(self._df.shape, self._loc.shape)
    except ValueError:
      broadcast = None
    if broadcast != self._loc.shape:
      raise ValueError(
          f'`df` shape {self._df.shape} must broadcast to `loc` shape {self._loc.shape}.')
    # Values can only be checked outside jit; inside, df is a tracer.
    if not isinstance(self._df, jax.core.Tracer) and bool(jnp.any(self._df <= 0)):
      raise ValueError('`df` must be positive.')

  @property
  def event_shape(self) -> tuple[int, ...]:
    return tuple(self._loc.shape[-EVENT_NDIM:])

  @property
  def batch_shape(self) -> tuple[int, ...]:
    return tuple(self._loc.shape[:-EVENT_NDIM])

  def log_prob(self, value: ArrayLike) -> Array:
    """[..., H, W, C] intensities in [0, 1] (or uint8) -> [...] summed log p."""
    x = image_to_intensity(value)
    _check_value_shape(self.name, x, self.event_shape)
    return _sum_event(student_t_log_prob(self._loc, self._log_scale, self._df, x))

  def mean(self) -> Array:
    """[..., H, W, C] loc where df > 1; NaN where the mean does not exist."""
    return jnp.where(self._df > 1.0, self._loc, jnp.nan)

  def _sample_n(self, key: PRNGKey, n: int) -> Array:
    """[n, ..., H, W, C] real-valued samples."""
    shape = (n,) + self._loc.shape
    standard = jax.random.t(key, self._df, shape=shape, dtype=self._loc.dtype)
    return self._loc + jnp.exp(self._log_scale) * standard
