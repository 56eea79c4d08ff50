"""Tests of the 8-bit image decoders against float64 numpy/scipy references, through jax.jit."""

import math

import hypothesis
import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import scipy.special
import scipy.stats

from sosvae_jax.distributions import discrete
from sosvae_jax.distributions import numerics

EVENT = (3, 2, 2)  # [H, W, C]
EVENT_SIZE = 12
BATCH_SHAPES = [(), (2,), (2, 3)]
NUM_COMPONENTS = 3
ALL_LEVELS = np.arange(256)

_log_prob = jax.jit(lambda dist, x: dist.log_prob(x))
_mean = jax.jit(lambda dist: dist.mean())
# All 256 constant images at once: [256, ..., H, W, C] per-subpixel log p.
_all_levels_log_prob = jax.jit(jax.vmap(lambda x, dist: dist.subpixel_log_prob(x), in_axes=(0, None)))


def _key(seed: int) -> jax.Array:
  # rbg keys compile several times faster than threefry on CPU.
  return jax.random.key(seed, impl='rbg')


def _f32(x: np.ndarray) -> np.ndarray:
  return np.asarray(x, dtype=np.float32)


# ---------------------------------------------------------------------------
# Parameters and independent float64 references, one per distribution.
# ---------------------------------------------------------------------------


def _bernoulli_params(rng, batch):
  return {'logits': _f32(rng.normal(0.0, 3.0, batch + EVENT))}


def _categorical_params(rng, batch):
  return {'logits': _f32(rng.normal(0.0, 3.0, batch + EVENT + (256,)))}


def _bitwise_params(rng, batch):
  return {'logits': _f32(rng.normal(0.0, 3.0, batch + EVENT + (8,)))}


def _mixture_params(rng, batch):
  shape = batch + EVENT + (NUM_COMPONENTS,)
  return {'logit_weights': _f32(rng.normal(0.0, 2.0, shape)),
          'means': _f32(rng.uniform(-0.1, 1.1, shape)),
          'log_scales': _f32(rng.uniform(-7.0, -1.0, shape))}


def _student_t_params(rng, batch):
  return {'loc': _f32(rng.uniform(0.0, 1.0, batch + EVENT)),
          'log_scale': _f32(rng.uniform(-3.0, 0.0, batch + EVENT)),
          'df': _f32(rng.uniform(1.5, 10.0, EVENT))}  # broadcast over the batch


def _reference_bernoulli(params, levels):
  logits, x = np.float64(params['logits']), levels / 255.0
  return x * np.log(scipy.special.expit(logits)) + (1 - x) * np.log(scipy.special.expit(-logits))


def _reference_categorical(params, levels):
  log_probs = scipy.special.log_softmax(np.float64(params['logits']), axis=-1)
  shape = np.broadcast_shapes(np.shape(levels), log_probs.shape[:-1])
  log_probs = np.broadcast_to(log_probs, shape + (256,))
  return np.take_along_axis(log_probs, np.broadcast_to(levels, shape)[..., None], axis=-1)[..., 0]


def _reference_bitwise(params, levels):
  logits = np.float64(params['logits'])
  # numpy's unpackbits is most significant bit first.
  bits = np.unpackbits(np.asarray(levels, np.uint8)[..., None], axis=-1).astype(np.float64)
  per_bit = bits * np.log(scipy.special.expit(logits)) + (1 - bits) * np.log(scipy.special.expit(-logits))
  return per_bit.sum(-1)


def _logistic_cdf_difference(upper, lower):
  """CDF(upper) - CDF(lower) in float64, taken in the tail that keeps precision."""
  right = scipy.special.expit(-lower) - scipy.special.expit(-upper)
  left = scipy.special.expit(upper) - scipy.special.expit(lower)
  return np.where(lower > 0, right, left)


def _reference_mixture(params, levels):
  mu = np.float64(params['means'])
  minimum = discrete.MIN_LOG_SCALE
  scale = np.exp(minimum + np.logaddexp(0.0, np.float64(params['log_scales']) - minimum))
  k = np.asarray(levels, np.float64)[..., None]
  upper_edge = np.where(k == 255, np.inf, (k + 0.5) / 255.0)
  lower_edge = np.where(k == 0, -np.inf, (k - 0.5) / 255.0)
  with np.errstate(divide='ignore'):
    log_mass = np.log(_logistic_cdf_difference((upper_edge - mu) / scale, (lower_edge - mu) / scale))
  log_weights = scipy.special.log_softmax(np.float64(params['logit_weights']), axis=-1)
  return scipy.special.logsumexp(log_weights + log_mass, axis=-1)


def _reference_student_t(params, levels):
  return scipy.stats.t.logpdf(levels / 255.0, np.float64(params['df']), np.float64(params['loc']),
                              np.exp(np.float64(params['log_scale'])))


CASES = {
    'bernoulli': (discrete.BernoulliImage, _bernoulli_params, _reference_bernoulli),
    'categorical': (discrete.CategoricalImage, _categorical_params, _reference_categorical),
    'bitwise': (discrete.BitwiseCategoricalImage, _bitwise_params, _reference_bitwise),
    'mixture': (discrete.DiscretizedLogisticMixture, _mixture_params, _reference_mixture),
    'student_t': (discrete.StudentTImage, _student_t_params, _reference_student_t),
    }
DISCRETE = ['categorical', 'bitwise', 'mixture']


def _make(name, batch, seed=0):
  cls, make_params, _ = CASES[name]
  params = make_params(np.random.default_rng(seed), batch)
  return cls(**params), params


# ---------------------------------------------------------------------------
# log_prob against the references.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize('batch', BATCH_SHAPES, ids=str)
@pytest.mark.parametrize('name', list(CASES))
def test_log_prob_matches_float64_reference(name, batch):
  dist, params = _make(name, batch)
  levels = np.random.default_rng(1).integers(0, 256, batch + EVENT)
  levels[..., 0, 0, :] = [0, 255]  # always exercise both open edge bins
  assert dist.batch_shape == batch and dist.event_shape == EVENT

  actual = np.asarray(_log_prob(dist, _f32(levels / 255.0)))
  expected = CASES[name][2](params, levels).sum(axis=(-3, -2, -1))  # sums, never means
  assert actual.shape == batch
  np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-4)


@pytest.mark.parametrize('name', ['bernoulli', 'categorical', 'mixture'])
def test_uint8_and_float_images_agree(name):
  dist, _ = _make(name, (2,))
  levels = np.random.default_rng(2).integers(0, 256, (2,) + EVENT).astype(np.uint8)
  np.testing.assert_allclose(_log_prob(dist, levels), _log_prob(dist, _f32(levels / 255.0)),
                             rtol=1e-6)


def test_log_prob_broadcasts_leading_sample_axis():
  dist, params = _make('mixture', (2,))
  levels = np.random.default_rng(3).integers(0, 256, (4, 2) + EVENT)
  actual = _log_prob(dist, _f32(levels / 255.0))
  expected = _reference_mixture(params, levels).sum(axis=(-3, -2, -1))
  np.testing.assert_allclose(actual, expected, rtol=2e-5, atol=1e-4)


# ---------------------------------------------------------------------------
# Normalisation and means of the discrete distributions.
# ---------------------------------------------------------------------------


def _all_constant_images() -> np.ndarray:
  return _f32(np.broadcast_to((ALL_LEVELS / 255.0)[:, None, None, None], (256,) + EVENT))


@pytest.mark.parametrize('name', DISCRETE)
def test_probabilities_sum_to_one_per_subpixel(name):
  dist, _ = _make(name, (2,))
  log_p = np.asarray(_all_levels_log_prob(_all_constant_images(), dist), np.float64)
  assert log_p.shape == (256, 2) + EVENT
  np.testing.assert_allclose(np.exp(log_p).sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize('name', DISCRETE)
def test_mean_is_expected_intensity(name):
  dist, params = _make(name, (2,))
  levels = np.broadcast_to(ALL_LEVELS.reshape(256, 1, 1, 1, 1), (256, 2) + EVENT)
  probs = np.exp(CASES[name][2](params, levels))  # (256, 2, H, W, C)
  expected = np.tensordot(ALL_LEVELS / 255.0, probs, axes=(0, 0))
  np.testing.assert_allclose(_mean(dist), expected, atol=1e-5)


_mixture_parameter = hnp.arrays(np.float32, EVENT + (NUM_COMPONENTS,),
                                elements=st.floats(-40.0, 6.0, width=32))


@hypothesis.settings(max_examples=50, deadline=None, derandomize=True)
@hypothesis.given(logit_weights=_mixture_parameter, means=_mixture_parameter,
                  log_scales=_mixture_parameter)
def test_mixture_normalised_under_any_conditioning(logit_weights, means, log_scales):
  # Means far outside [0, 1] and scales at the soft floor put whole
  # components in one tail bin: the log-space bins must still telescope.
  dist = discrete.DiscretizedLogisticMixture(logit_weights, means / 10.0, log_scales)
  log_p = np.asarray(_all_levels_log_prob(_all_constant_images(), dist), np.float64)
  assert np.all(np.isfinite(log_p)) and np.all(log_p <= 1e-6)
  np.testing.assert_allclose(np.exp(log_p).sum(axis=0), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------
# Extreme parameters stay finite, with finite gradients.
# ---------------------------------------------------------------------------


def _finite_value_and_grad(fn, params):
  value, grads = jax.jit(jax.value_and_grad(fn))(params)
  assert np.all(np.isfinite(value))
  for grad in jax.tree_util.tree_leaves(grads):
    assert np.all(np.isfinite(grad))
  return float(value)


@pytest.mark.parametrize('cls,last', [(discrete.BernoulliImage, ()),
                                      (discrete.CategoricalImage, (256,)),
                                      (discrete.BitwiseCategoricalImage, (8,))])
def test_large_logits_stay_finite(cls, last):
  signs = np.where(np.random.default_rng(4).random(EVENT + last) < 0.5, -1.0, 1.0)
  logits = _f32(1e4 * signs)
  x = _f32(np.random.default_rng(5).integers(0, 256, EVENT) / 255.0)
  value = _finite_value_and_grad(lambda logits: cls(logits).log_prob(x), logits)
  assert value < 0.0


def test_peaked_logistic_matches_reference_and_asymptote():
  # Bin 100 centred, a bin edge, and the far tails, all at the soft floor.
  means = _f32([[100 / 255, 100.5 / 255, 0.45, 0.25], [4.0, -3.0, 0.0, 1.0],
                [0.1, 0.9, 0.05, 0.95]])
  levels = np.array([[100, 100, 140, 40], [0, 255, 0, 255], [0, 255, 3, 250]])
  params = {'logit_weights': np.zeros((3, 4, 1, 1), np.float32),
            'means': means.reshape(3, 4, 1, 1), 'log_scales': np.full((3, 4, 1, 1), -50.0, np.float32)}
  images = _f32(levels.reshape(3, 4, 1) / 255.0)

  fn = lambda p: discrete.DiscretizedLogisticMixture(**p).subpixel_log_prob(images)
  actual = np.asarray(jax.jit(fn)(params))[..., 0]
  _finite_value_and_grad(lambda p: jnp.sum(fn(p)), params)
  # A bin holds >99% of the mass at the floor; half of it on a bin edge.
  assert -0.01 < actual[0, 0] < 0.0
  np.testing.assert_allclose(actual[0, 1], math.log(0.5), rtol=1e-4)
  # float64 CDF differences hold while standardised edges stay below ~700.
  in_range = np.ones_like(actual, bool)
  in_range[1, :2] = False
  expected = _reference_mixture(params, levels.reshape(3, 4, 1))[..., 0]
  np.testing.assert_allclose(actual[in_range], expected[in_range], rtol=1e-4)
  # Beyond float64: log CDF ~ standardised edge in the far tail.
  scale = math.exp(discrete.MIN_LOG_SCALE + math.log1p(math.exp(-50.0 - discrete.MIN_LOG_SCALE)))
  np.testing.assert_allclose(actual[1, 0], (0.5 / 255 - 4.0) / scale, rtol=1e-5)
  np.testing.assert_allclose(actual[1, 1], -(1.0 + 3.0 - 0.5 / 255) / scale, rtol=1e-5)


def test_student_t_extreme_outlier_is_finite():
  loc, log_scale = np.zeros(EVENT, np.float32), np.full(EVENT, -20.0, np.float32)
  x = _f32(np.ones(EVENT))
  fn = lambda p: discrete.StudentTImage(p['loc'], p['log_scale'], p['df']).log_prob(x)
  _finite_value_and_grad(fn, {'loc': loc, 'log_scale': log_scale, 'df': np.float32(0.5)})


# ---------------------------------------------------------------------------
# Sampling.
# ---------------------------------------------------------------------------

_sample = jax.jit(lambda dist, key: dist.sample(seed=key, sample_shape=(4000,)))


@pytest.mark.parametrize('name', list(CASES))
def test_sample_statistics_match_mean(name):
  dist, params = _make(name, (2,))
  if name == 'mixture':  # means near and past the edges, so the open bins matter
    params['means'] = _f32(np.random.default_rng(6).uniform(-0.1, 1.1, params['means'].shape))
    params['log_scales'] = _f32(np.full(params['means'].shape, -2.5))
    dist = discrete.DiscretizedLogisticMixture(**params)
  if name == 'student_t':  # a finite variance keeps the sample mean tight
    dist = discrete.StudentTImage(params['loc'], params['log_scale'] - 1.0, 6.0)
  samples = np.asarray(_sample(dist, _key(7)))
  assert samples.shape == (4000, 2) + EVENT

  if name == 'bernoulli':
    assert set(np.unique(samples)) <= {0.0, 1.0}
  elif name != 'student_t':
    levels = samples * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
    assert samples.min() >= 0.0 and samples.max() <= 1.0
  # Standard error <= 0.5 / sqrt(4000) ~ 0.008 per subpixel.
  np.testing.assert_allclose(samples.mean(axis=0), _mean(dist), atol=0.04)


# ---------------------------------------------------------------------------
# bits_per_dim and shape checks.
# ---------------------------------------------------------------------------


def test_bits_per_dim_known_values():
  np.testing.assert_allclose(numerics.bits_per_dim(-EVENT_SIZE * 3.0 * math.log(2.0), EVENT_SIZE),
                             3.0, rtol=1e-6)
  # Uniform over 256 levels is exactly 8 bits per subpixel, however it is built.
  image = _f32(np.random.default_rng(8).integers(0, 256, (2,) + EVENT) / 255.0)
  for dist in [discrete.CategoricalImage(jnp.zeros((2,) + EVENT + (256,))),
               discrete.BitwiseCategoricalImage(jnp.zeros((2,) + EVENT + (8,)))]:
    np.testing.assert_allclose(numerics.bits_per_dim(_log_prob(dist, image), EVENT_SIZE),
                               [8.0, 8.0], rtol=1e-6)


def test_density_bits_per_dim_uses_the_discrete_bins():
  # A density uniform over the 256 bins of width 1/255 (256/255 wide in all)
  # is the uniform mass over 256 levels: exactly 8 bits.
  log_density = EVENT_SIZE * math.log(255.0 / 256.0)
  np.testing.assert_allclose(discrete.density_bits_per_dim(log_density, EVENT_SIZE), 8.0,
                             rtol=1e-6)
  # Flat within each bin at mass / width: the same bits as the mass itself.
  rng = np.random.default_rng(9)
  masses = rng.dirichlet(np.ones(256), size=EVENT_SIZE)  # (S, 256) float64
  levels = rng.integers(0, 256, EVENT_SIZE)
  mass = masses[np.arange(EVENT_SIZE), levels]
  expected = -np.sum(np.log2(mass)) / EVENT_SIZE
  np.testing.assert_allclose(
      discrete.density_bits_per_dim(np.sum(np.log(mass * 255.0)), EVENT_SIZE), expected,
      rtol=1e-6)


@pytest.mark.parametrize('df', [0.7, 3.0, 30.0, 1e3, 1e4, 1e5])
def test_student_t_float32_matches_scipy_at_large_df(df):
  rng = np.random.default_rng(10)
  loc = rng.uniform(0.0, 1.0, (64,) + EVENT)
  log_scale = rng.uniform(-4.0, -1.0, (64,) + EVENT)
  # Within a few scales of loc, where log-densities are of size ~1-10 and
  # float32 rounds them to ~1e-6; far tails are large numbers of any df.
  x = loc + np.exp(log_scale) * rng.normal(0.0, 2.0, loc.shape)
  fn = jax.jit(discrete.student_t_log_prob)
  got = np.asarray(fn(_f32(loc), _f32(log_scale), jnp.float32(df), _f32(x)), np.float64)
  # The float32 inputs, exactly, so that only the arithmetic is compared.
  f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
  want = scipy.stats.t.logpdf(f32(x), np.float32(df), loc=f32(loc),
                              scale=np.exp(f32(log_scale)))
  error = got - want
  # Per pixel: float32 rounding only; summed over an image the mean error must
  # not build up (the cancelling log-gamma difference gave -7.6e-4 nats per
  # pixel at df = 1e4, all of one sign).
  assert np.max(np.abs(error)) < 5e-6
  assert abs(np.mean(error)) < 1e-6


MP_DIGITS = 50


def _mp_student_t_log_prob(loc, log_scale, df, x):
  """The Student-t log-density from its definition, at mpmath's precision
  (MP_DIGITS digits where the callers set it)."""
  loc, log_scale, df, x = (v if isinstance(v, mpmath.mpf) else mpmath.mpf(float(v))
                           for v in (loc, log_scale, df, x))
  z = (x - loc) * mpmath.exp(-log_scale)
  return (mpmath.loggamma((df + 1) / 2) - mpmath.loggamma(df / 2)
          - mpmath.log(mpmath.pi * df) / 2 - log_scale
          - (df + 1) / 2 * mpmath.log1p(z * z / df))


def _student_t_points(num):
  """(loc, log_scale, x) float64 [num]: x within a few scales of loc."""
  rng = np.random.default_rng(11)
  loc, log_scale = rng.uniform(0.0, 1.0, num), rng.uniform(-4.0, -1.0, num)
  return loc, log_scale, loc + np.exp(log_scale) * rng.normal(0.0, 2.0, num)


@pytest.mark.parametrize('df,rtol', [(1.0, 1e-12), (3.0, 1e-12), (10.0, 1e-12), (30.0, 1e-12),
                                     (100.0, 1e-12), (1e3, 1e-12), (1e4, 1e-10), (1e5, 1e-10)])
def test_student_t_float64_matches_arbitrary_precision(df, rtol):
  loc, log_scale, x = _student_t_points(48)
  with jax.enable_x64(True):
    got = np.asarray(jax.jit(discrete.student_t_log_prob)(loc, log_scale, np.float64(df), x))
  with mpmath.workdps(MP_DIGITS):
    want = np.array([float(_mp_student_t_log_prob(*a, df, b)) for a, b in
                     zip(zip(loc, log_scale), x)])
  # Relative to |log p| floored at 1 nat: a log-density crossing 0 has no
  # relative error to speak of.
  assert np.max(np.abs(got - want) / np.maximum(np.abs(want), 1.0)) < rtol


def test_student_t_normaliser_float32_no_worse_than_betaln():
  # The form used before: log G(1/2) - log B(df/2, 1/2) - log(pi df) / 2,
  # which kept float32 accurate at large df but not float64.
  def betaln_form(df):
    half = jnp.asarray(0.5, df.dtype)
    return (jax.scipy.special.gammaln(half) - jax.scipy.special.betaln(0.5 * df, half)
            - 0.5 * jnp.log(df * jnp.pi))
  df = np.logspace(-1.0, 5.0, 240).astype(np.float32)
  with mpmath.workdps(MP_DIGITS):
    want = np.array([float(_mp_student_t_log_prob(0.0, 0.0, d, 0.0)) for d in df])
  new = np.asarray(jax.jit(discrete.student_t_log_normaliser)(df), np.float64) - want
  old = np.asarray(jax.jit(betaln_form)(df), np.float64) - want
  assert np.max(np.abs(new)) <= np.max(np.abs(old))
  assert abs(np.mean(new)) <= abs(np.mean(old))
  with jax.enable_x64(True):
    new64 = np.asarray(jax.jit(discrete.student_t_log_normaliser)(df.astype(np.float64)))
  np.testing.assert_allclose(new64, want, rtol=1e-14)


@pytest.mark.parametrize('df', [0.3, 3.0, 30.0, 1e3, 1e5])
def test_student_t_gradients_match_arbitrary_precision(df):
  loc, log_scale, x = _student_t_points(4)
  with jax.enable_x64(True):
    grad = jax.jit(jax.vmap(jax.grad(discrete.student_t_log_prob, argnums=(2, 3)),
                            in_axes=(0, 0, None, 0)))
    d_df, d_x = (np.asarray(g) for g in grad(loc, log_scale, np.float64(df), x))
  for i in range(len(x)):
    with mpmath.workdps(MP_DIGITS):
      want_df = mpmath.diff(lambda d: _mp_student_t_log_prob(loc[i], log_scale[i], d, x[i]), df)
      want_x = mpmath.diff(lambda v: _mp_student_t_log_prob(loc[i], log_scale[i], df, v), x[i])
    np.testing.assert_allclose(d_df[i], float(want_df), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(d_x[i], float(want_x), rtol=1e-12)


def test_bit_order_is_most_significant_first():
  # Only the first bit is certain (on): every sample is at least 128.
  logits = np.full(EVENT + (8,), -30.0, np.float32)
  logits[..., 0] = 30.0
  dist = discrete.BitwiseCategoricalImage(logits)
  np.testing.assert_allclose(_mean(dist), 128.0 / 255.0, rtol=1e-6)
  np.testing.assert_allclose(dist.subpixel_log_prob(np.full(EVENT, 128, np.uint8)), 0.0, atol=1e-6)


@pytest.mark.parametrize('build,message', [
    (lambda: discrete.BernoulliImage(np.zeros((3, 2))), r'\(3, 2\)'),
    (lambda: discrete.CategoricalImage(np.zeros(EVENT + (255,))), r'\(3, 2, 2, 255\)'),
    (lambda: discrete.BitwiseCategoricalImage(np.zeros(EVENT + (7,))), r'\(3, 2, 2, 7\)'),
    (lambda: discrete.DiscretizedLogisticMixture(np.zeros(EVENT + (3,)), np.zeros(EVENT + (2,)),
                                                 np.zeros(EVENT + (3,))), r'\(3, 2, 2, 2\)'),
    (lambda: discrete.StudentTImage(np.zeros(EVENT), np.zeros((1,) + EVENT), 3.0), r'\(1, 3, 2, 2\)'),
    (lambda: discrete.StudentTImage(np.zeros(EVENT), np.zeros(EVENT), np.ones((5,))), r'\(5,\)'),
    (lambda: discrete.StudentTImage(np.zeros(EVENT), np.zeros(EVENT), -1.0), 'positive'),
    (lambda: discrete.CategoricalImage(np.zeros(EVENT + (256,))).log_prob(np.zeros((3, 2, 3))),
     r'\(3, 2, 3\)'),
    ])
def test_bad_shapes_raise_value_error(build, message):
  with pytest.raises(ValueError, match=message):
    build()
