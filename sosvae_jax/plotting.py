"""Image grids and paper-style figure panels, written as PNG with PIL."""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from sosvae_jax import workdir as workdir_lib

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


def heat(images: np.ndarray, per_image: bool = True,
         scale: float | None = None) -> np.ndarray:
  """Non-negative maps [N, H, W, C] -> RGB heat maps.

  Colour channels are averaged first: a variance map is one number a pixel.
  Scaled per image, over all images (per_image=False), or to a given
  `scale` (the value drawn brightest), which a colour bar can then label.
  """
  x = np.asarray(images, np.float64).mean(-1)
  if scale is None:
    axes = (1, 2) if per_image else None
    scale = np.max(x, axis=axes, keepdims=per_image)
  return _colormap(x / np.maximum(scale, 1e-12), _HEAT)


def signed(images: np.ndarray, per_image: bool = True,
           scale: float | None = None) -> np.ndarray:
  """Signed maps [N, H, W, C] -> blue (negative) / white / red (positive).

  `scale`: the magnitude drawn at full colour; default the largest one per
  image (or over all images with per_image=False).
  """
  x = np.asarray(images, np.float64).mean(-1)
  if scale is None:
    axes = (1, 2) if per_image else None
    scale = np.max(np.abs(x), axis=axes, keepdims=per_image)
  return _colormap(0.5 + 0.5 * x / np.maximum(scale, 1e-12), _SIGNED)


def signed_scale(images: np.ndarray) -> float:
  """The largest |value| of channel-averaged signed maps: one shared scale."""
  return float(np.max(np.abs(np.asarray(images, np.float64).mean(-1))))


def heat_scale(images: np.ndarray) -> float:
  """The largest value of channel-averaged non-negative maps."""
  return float(np.max(np.asarray(images, np.float64).mean(-1)))


def colorbar(label: str, low: float, high: float, *, kind: str = 'heat',
             width: int = 200, height: int = 10) -> np.ndarray:
  """A labelled horizontal colour bar, uint8 [h, w, 3]: `label  low [bar] high`.

  kind: 'heat' (dark to bright, for `heat`) or 'signed' (blue-white-red, for
  `signed` with scale=high and low=-high).
  """
  anchors = {'heat': _HEAT, 'signed': _SIGNED}[kind]
  ramp = _colormap(np.linspace(0.0, 1.0, width)[None, :].repeat(height, 0), anchors)
  text_low, text_high = f'{low:.3g}', f'{high:.3g}'
  probe = ImageDraw.Draw(Image.new('RGB', (1, 1)))
  size = lambda t: int(probe.textlength(t)) + 6
  left = size(label) + size(text_low)
  canvas = Image.new('RGB', (left + width + size(text_high), height + 6), (255, 255, 255))
  canvas.paste(Image.fromarray((ramp * 255).round().astype(np.uint8)), (left, 3))
  draw = ImageDraw.Draw(canvas)
  y = 3 + height // 2 - 6
  draw.text((2, y), label, fill=(0, 0, 0))
  draw.text((size(label), y), text_low, fill=(0, 0, 0))
  draw.text((left + width + 3, y), text_high, fill=(0, 0, 0))
  return np.asarray(canvas)


def stack(images: Sequence[np.ndarray], pad: int = 2) -> np.ndarray:
  """uint8 images [h_i, w_i, 3] one under another, left-aligned on white."""
  width = max(i.shape[1] for i in images)
  height = sum(i.shape[0] for i in images) + pad * (len(images) - 1)
  out = np.full((height, width, 3), 255, np.uint8)
  top = 0
  for image in images:
    out[top:top + image.shape[0], :image.shape[1]] = image
    top += image.shape[0] + pad
  return out


def wrap(images: np.ndarray, columns: int) -> list[np.ndarray]:
  """[N, H, W, 3] -> rows of at most `columns` images (the last padded white),
  so that a long strip becomes a grid readable at page width."""
  n = len(images)
  rows = -(-n // columns)
  padded = np.ones((rows * columns,) + images.shape[1:], images.dtype)
  padded[:n] = images
  return [padded[r * columns:(r + 1) * columns] for r in range(rows)]


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

  The difference and variance rows share one scale across the panel, given
  by colour bars under it, so that their sizes can be read and compared.

  Args:
    mean, sample, variance: [N, H, W, C] (images in [0, 1]).
  """
  diff_scale = signed_scale(sample - mean)
  var_scale = heat_scale(variance)
  panel = grid([to_rgb(mean), to_rgb(sample), signed(sample - mean, scale=diff_scale),
                heat(variance, scale=var_scale)],
               ['mean', 'sample', 'sample-mean', 'variance'])
  return stack([panel, colorbar('sample-mean', -diff_scale, diff_scale, kind='signed'),
                colorbar('variance', 0.0, var_scale)])


def save_png(image: np.ndarray, path: str) -> None:
  """uint8 [H, W, 3] -> the PNG file `path`, written whole or not at all."""
  workdir_lib.write_atomic(path, png_bytes(image))


def png_bytes(image: np.ndarray) -> bytes:
  """uint8 [H, W, 3] -> PNG file contents (for save_png and IPython.display.Image)."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='PNG')
  return buffer.getvalue()
