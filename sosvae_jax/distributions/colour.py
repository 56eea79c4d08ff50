"""BT.601 colour transforms and the chroma block pooling of structured decoders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# ITU-R BT.601 luma weights, full range (JFIF): Y = KR R + KG G + KB B,
# Cb = 0.5 + (B - Y) / (2 (1 - KB)), Cr = 0.5 + (R - Y) / (2 (1 - KR)).
_KR, _KB = 0.299, 0.114
_KG = 1.0 - _KR - _KB
_RGB_TO_YCBCR = np.array([
    [_KR, _KG, _KB],
    [-_KR / (2 * (1 - _KB)), -_KG / (2 * (1 - _KB)), 0.5],
    [0.5, -_KG / (2 * (1 - _KR)), -_KB / (2 * (1 - _KR))],
])
# Per-pixel log |det d(YCbCr)/d(RGB)|, the colour change of variables.
YCBCR_LOG_ABS_DET = float(np.linalg.slogdet(_RGB_TO_YCBCR)[1])


def rgb_to_ycbcr(x: Array) -> Array:
  """BT.601 full range, [..., 3] RGB in [0, 1] -> [..., 3] YCbCr in [0, 1]."""
  r, g, b = x[..., 0], x[..., 1], x[..., 2]
  y = _KR * r + _KG * g + _KB * b
  cb = 0.5 + (b - y) / (2.0 * (1.0 - _KB))
  cr = 0.5 + (r - y) / (2.0 * (1.0 - _KR))
  return jnp.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(x: Array) -> Array:
  """Exact inverse of `rgb_to_ycbcr`: [..., 3] YCbCr -> [..., 3] RGB."""
  y, cb, cr = x[..., 0], x[..., 1], x[..., 2]
  r = y + 2.0 * (1.0 - _KR) * (cr - 0.5)
  b = y + 2.0 * (1.0 - _KB) * (cb - 0.5)
  g = (y - _KR * r - _KB * b) / _KG
  return jnp.stack([r, g, b], axis=-1)


def avg_pool(x: Array, factor: int) -> Array:
  """Mean over factor x factor blocks, [..., H, W, C] -> [..., H/f, W/f, C]."""
  h, w, c = x.shape[-3:]
  if factor < 1 or h % factor or w % factor:
    raise ValueError(
        f'avg_pool factor {factor} must be >= 1 and divide (H, W) = '
        f'({h}, {w}).')
  blocks = x.reshape(x.shape[:-3] + (h // factor, factor, w // factor,
                                     factor, c))
  return jnp.mean(blocks, axis=(-4, -2))


def ycbcr_targets(rgb: Array, factor: int) -> tuple[Array, Array]:
  """Split an RGB target into full-resolution Y and pooled (Cb, Cr).

  dorta2018_vae_structured_residuals.txt section 4.1: the chroma channels
  are modelled at a resolution lowered by `factor` (64 -> 16 in the paper).

  Args:
    rgb: [..., H, W, 3] in [0, 1].

  Returns:
    luma [..., H, W] and chroma [..., H/f, W/f, 2].
  """
  ycc = rgb_to_ycbcr(rgb)
  return ycc[..., 0], avg_pool(ycc[..., 1:], factor)


def upsample_nearest(x: Array, factor: int) -> Array:
  """Each pixel repeated factor x factor times, [..., h, w, C] -> [..., hf, wf, C]."""
  return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


def ycbcr_to_rgb_matrix() -> np.ndarray:
  """The [3, 3] inverse colour matrix: rgb = M^-1 (ycbcr - (0, 1/2, 1/2))."""
  return np.linalg.inv(_RGB_TO_YCBCR)
