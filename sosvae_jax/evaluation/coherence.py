"""Spatial coherence of samples from p(x|z), as numbers instead of pictures.

SOS-VAE claims its low-rank p(x|z) gives spatially coherent samples where a
pixel-wise Gaussian gives independent noise (sosvae_tmlr2022.txt Figure 2,
rows 2-3, judged by eye). Both statistics here look at the residual
r = sample - mean of p(x|z), which a pixel-wise Gaussian makes white noise:

* lag-1 autocorrelation: sum r(i) r(i + 1) / sqrt(sum r(i)^2 sum r(i + 1)^2)
  over all horizontally (and, separately, vertically) neighbouring pixel
  pairs of every image and channel, pooled over the batch, then the mean of
  the two directions. Not centred: r has expectation zero under the model,
  and a per-image offset is a perfectly coherent residual (correlation 1)
  that centring would remove. White noise gives ~0 (standard error about
  1 / sqrt(number of pairs)); a field smoothed by a Gaussian of width
  sigma pixels gives ~exp(-1 / (4 sigma^2)).
* high-frequency fraction: the share of sum |FFT_2d(r)|^2 (per image and
  channel, pooled) at radial frequency sqrt(fy^2 + fx^2) > 1/4 cycle per
  pixel, half the Nyquist frequency 1/2. White noise has flat expected
  power, so its expected fraction is the share of FFT bins above the cut,
  `high_frequency_mask(H, W).mean()`: 1 - pi/16 ~ 0.80 for large images
  (the disc of radius 1/4 inside the unit square of frequencies), 0.75 only
  for a square (max-norm) cut. A per-image offset puts all power in the
  DC bin and gives 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def high_frequency_mask(height: int, width: int) -> np.ndarray:
  """FFT bins above half Nyquist, radially: sqrt(fy^2 + fx^2) > 1/4 cycle/pixel.

  Args:
    height: H.
    width: W.

  Returns:
    [H, W] bool, in the layout of np.fft.fft2 (fftfreq order).
  """
  fy = np.fft.fftfreq(height)[:, None]  # (H, 1), cycles per pixel
  fx = np.fft.fftfreq(width)[None, :]  # (1, W)
  return fy ** 2 + fx ** 2 > 0.25 ** 2


def lag_one_autocorrelation(residual: Array, axis: int) -> Array:
  """Pooled, uncentred correlation of neighbours along one spatial axis.

  Args:
    residual: [N, H, W, C].
    axis: 1 (vertical neighbours) or 2 (horizontal neighbours).

  Returns:
    [] in [-1, 1].
  """
  length = residual.shape[axis]
  a = jax.lax.slice_in_dim(residual, 0, length - 1, axis=axis)
  b = jax.lax.slice_in_dim(residual, 1, length, axis=axis)
  denom = jnp.sqrt(jnp.sum(jnp.square(a)) * jnp.sum(jnp.square(b)))
  return jnp.sum(a * b) / jnp.maximum(denom, jnp.finfo(residual.dtype).tiny)


def high_frequency_fraction(residual: Array) -> Array:
  """Share of the residual's spectral energy above half Nyquist (radial cut).

  Args:
    residual: [N, H, W, C].

  Returns:
    [] in [0, 1].
  """
  _, height, width, _ = residual.shape
  power = jnp.square(jnp.abs(jnp.fft.fft2(residual, axes=(1, 2))))  # (N, H, W, C)
  power = jnp.sum(power, axis=(0, 3))  # (H, W)
  high = jnp.sum(jnp.where(high_frequency_mask(height, width), power, 0.0))
  return high / jnp.maximum(jnp.sum(power), jnp.finfo(power.dtype).tiny)


def residual_coherence(samples: Array, means: Array) -> dict[str, Array]:
  """Coherence statistics of r = samples - means (see the module docstring).

  Args:
    samples: [N, H, W, C], draws x ~ p(x|z).
    means: [N, H, W, C], the means of the same p(x|z).

  Returns:
    dict of scalars: 'autocorrelation' (mean of the two below),
    'autocorrelation_horizontal', 'autocorrelation_vertical',
    'high_frequency_fraction', and 'white_noise_high_frequency_fraction',
    the expectation of the previous entry for white noise at this H, W.
  """
  if samples.shape != means.shape or samples.ndim != 4:
    raise ValueError(
        f"expected samples and means [N, H, W, C] of one shape, got "
        f"{samples.shape} and {means.shape}")
  residual = jnp.asarray(samples) - jnp.asarray(means)  # (N, H, W, C)
  horizontal = lag_one_autocorrelation(residual, axis=2)
  vertical = lag_one_autocorrelation(residual, axis=1)
  height, width = residual.shape[1:3]
  return {
      "autocorrelation": 0.5 * (horizontal + vertical),
      "autocorrelation_horizontal": horizontal,
      "autocorrelation_vertical": vertical,
      "high_frequency_fraction": high_frequency_fraction(residual),
      "white_noise_high_frequency_fraction": jnp.asarray(
          high_frequency_mask(height, width).mean(), residual.dtype),
  }
