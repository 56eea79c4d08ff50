"""Feature extraction in fixed-size chunks, and the feature statistics of FID."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from sosvae_jax.evaluation.frechet import FeatureStatistics

FeatureFn = Callable[[np.ndarray], np.ndarray]


def features_in_chunks(fn: FeatureFn, images: np.ndarray,
                       chunk_size: int) -> list[np.ndarray]:
  """fn applied to chunks of `chunk_size` images, the last padded by repetition.

  Every call sees the same batch size, so a jitted `fn` compiles once.

  Args:
    fn: images [chunk_size, H, W, C] -> features [chunk_size, F].
    images: [N, H, W, C].
    chunk_size: >= 1.

  Returns:
    list of [n_i, F] arrays, sum n_i = N.
  """
  if chunk_size < 1:
    raise ValueError(f'chunk_size={chunk_size} must be >= 1')
  out = []
  for start in range(0, len(images), chunk_size):
    chunk = images[start:start + chunk_size]
    n = len(chunk)
    if n < chunk_size:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], chunk_size - n, 0)])
    out.append(np.asarray(fn(chunk))[:n])
  return out


def statistics_in_chunks(fn: FeatureFn, images: np.ndarray | Iterable[np.ndarray],
                         chunk_size: int) -> tuple[np.ndarray, np.ndarray]:
  """float64 (mu [F], cov [F, F]) of fn's features, streamed over chunks.

  Args:
    fn: images -> features, as in `features_in_chunks`.
    images: [N, H, W, C], or an iterable of such arrays (e.g. generated
      chunk by chunk, so that N = 50,000 samples never sit in memory).
    chunk_size: images per call of fn.
  """
  stats = FeatureStatistics()
  parts = [images] if isinstance(images, np.ndarray) else images
  for part in parts:
    for features in features_in_chunks(fn, np.asarray(part), chunk_size):
      stats.update(features)
  return stats.statistics()
