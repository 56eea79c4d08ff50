"""Image grids and paper-style figure panels, written as PNG with PIL."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

# Anchor colours of a perceptually ordered dark-to-bright map (for variances).
_HEAT = np.array([[0, 0, 4], [81, 18, 124], [183, 55, 121], [252, 137, 97],
                  [252, 253, 191]], np.float64) / 255.0
# Blue - white - red for signed maps (sample minus mean, covariance rows).
_SIGNED = np.array([[33, 102, 172], [247, 247, 247], [178, 24, 43]],
                   np.float64) / 255.0


def _colormap(values: np.ndarray, anchors: np.ndarray) -> np.ndarray:
  """values in [0, 1] [...] -> RGB [..., 3] by piecewise-linear anchors."""
  v = np.clip(values, 0.0, 1.0) * (len(anchors) - 1)
  low = np.minimum(np.floor(v).astype(int), len(anchors) - 2)
  frac = (v - low)[..., None]
  return anchors[low] * (1 - frac) + anchors[low + 1] * frac


def to_rgb(images: np.ndarray) -> np.ndarray:
  """[N, H, W, C] in [0, 1] with C in {1, 3} -> [N, H, W, 3] clipped."""
  images = np.clip(np.asarray(images, np.float64), 0.0, 1.0)
  return np.repeat(images, 3, -1) if images.shape[-1] == 1 else images


def heat(images: np.ndarray, per_image: bool = True) -> np.ndarray:
  """Non-negative maps [N, H, W, C] -> RGB heat maps, scaled per image.

  Colour channels are averaged first: a variance map is one number a pixel.
  """
  x = np.asarray(images, np.float64).mean(-1)
  axes = (1, 2) if per_image else None
  top = np.max(x, axis=axes, keepdims=per_image)
  return _colormap(x / np.maximum(top, 1e-12), _HEAT)


def signed(images: np.ndarray, per_image: bool = True) -> np.ndarray:
  """Signed maps [N, H, W, C] -> blue (negative) / white / red (positive)."""
  x = np.asarray(images, np.float64).mean(-1)
  axes = (1, 2) if per_image else None
  top = np.max(np.abs(x), axis=axes, keepdims=per_image)
  return _colormap(0.5 + 0.5 * x / np.maximum(top, 1e-12), _SIGNED)


def grid(rows: Sequence[np.ndarray], labels: Sequence[str] | None = None, *,
         zoom: int = 2, pad: int = 2, label_width: int = 70) -> np.ndarray:
  """Stacks rows of RGB images [N, H, W, 3] in [0, 1] into one uint8 image.

  Args:
    rows: each [N, H, W, 3]; all rows share N, H and W.
    labels: optional text drawn left of each row.
    zoom: nearest-neighbour upscaling so small images stay legible.
  """
  n, h, w, _ = rows[0].shape
  for r in rows:
    if r.shape != (n, h, w, 3):
      raise ValueError(f'grid rows must all be {(n, h, w, 3)}; got {r.shape}.')
  h, w = h * zoom, w * zoom
  left = label_width if labels else 0
  canvas = np.ones((len(rows) * (h + pad) + pad, left + n * (w + pad) + pad, 3))
  for i, row in enumerate(rows):
    big = np.repeat(np.repeat(row, zoom, 1), zoom, 2)
    for j in range(n):
      top, lft = pad + i * (h + pad), left + pad + j * (w + pad)
      canvas[top:top + h, lft:lft + w] = big[j]
  out = (canvas * 255).round().astype(np.uint8)
  if labels:
    pil = Image.fromarray(out)
    draw = ImageDraw.Draw(pil)
    for i, text in enumerate(labels):
      draw.text((3, pad + i * (h + pad) + h // 2 - 5), text, fill=(0, 0, 0))
    out = np.asarray(pil)
  return out


def observation_panel(mean: np.ndarray, sample: np.ndarray,
                      variance: np.ndarray) -> np.ndarray:
  """sosvae_tmlr2022.txt Figure 2 rows 1-4: mean, sample, difference, variance.

  Args:
    mean, sample, variance: [N, H, W, C] (images in [0, 1]).
  """
  return grid([to_rgb(mean), to_rgb(sample), signed(sample - mean), heat(variance)],
              ['mean', 'sample', 'sample-mean', 'variance'])


def save_png(image: np.ndarray, path: str) -> None:
  Image.fromarray(image).save(path)


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] -> PNG file contents (for IPython.display.Image)."""
  import io  # pylint: disable=g-import-not-at-top
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()
