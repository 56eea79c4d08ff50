"""Frechet distance between Gaussians (the FID formula) and feature statistics.

The SOS-VAE paper compares models by FID (sosvae_tmlr2022.txt Table 1, 50,000 samples,
Inception features as in Seitzer 2020):
d^2 = |mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1 C2)^{1/2}) (Dowson and Landau 1982).
Everything here is float64 numpy: the trace of the square root loses several
digits in float32 once features have thousands of dimensions.
"""

from __future__ import annotations

import numpy as np


def _clip_eigenvalues(eigvals: np.ndarray) -> np.ndarray:
  """Eigenvalues below the rounding level of the largest set to 0.

  eigh returns the zero eigenvalues of a singular PSD matrix as +-1e-16 times
  its scale; their square roots (1e-8) would bias the trace far more than
  rounding does.
  """
  cut = eigvals.size * np.finfo(np.float64).eps * max(float(np.max(eigvals)), 0.0)
  return np.where(eigvals > cut, eigvals, 0.0)


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric PSD matrix, rounding-level eigenvalues at 0.

  Args:
    cov: [F, F].

  Returns:
    [F, F].
  """
  eigvals, eigvecs = np.linalg.eigh(0.5 * (cov + cov.T))
  return (eigvecs * np.sqrt(_clip_eigenvalues(eigvals))) @ eigvecs.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
  """tr((C1 C2)^{1/2}) via the symmetric form tr((C1^{1/2} C2 C1^{1/2})^{1/2}).

  C1 C2 is similar to the PSD matrix C1^{1/2} C2 C1^{1/2} (conjugate by
  C1^{1/2} when C1 is invertible, by continuity otherwise), so both have the
  same non-negative eigenvalues; eigh of the symmetric form cannot return the
  complex parts that scipy.linalg.sqrtm(C1 @ C2) gives for near-singular C1.

  Args:
    cov1: [F, F], symmetric PSD.
    cov2: [F, F], symmetric PSD.

  Returns:
    A non-negative float.
  """
  root1 = _psd_sqrt(np.asarray(cov1, np.float64))
  middle = root1 @ np.asarray(cov2, np.float64) @ root1  # (F, F)
  eigvals = np.linalg.eigvalsh(0.5 * (middle + middle.T))
  return float(np.sum(np.sqrt(_clip_eigenvalues(eigvals))))


def frechet_distance(
    mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray
) -> float:
  """Squared Frechet (2-Wasserstein) distance between N(mu1, C1) and N(mu2, C2).

  Args:
    mu1: [F].
    cov1: [F, F].
    mu2: [F].
    cov2: [F, F].

  Returns:
    |mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}), a float >= 0 up to
    rounding (the quantity reported as FID).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
  if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != 2 * mu1.shape:
    raise ValueError(
        f"expected mu [F] and cov [F, F] for both; got mu1 {mu1.shape}, "
        f"cov1 {cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(cov1) + np.trace(cov2)
               - 2.0 * trace_sqrt_product(cov1, cov2))


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance (ddof=1, as np.cov and the FID code) of features.

  Args:
    features: [N, F], N >= 2.

  Returns:
    (mu [F], cov [F, F]), float64.
  """
  features = np.asarray(features, np.float64)
  mu = features.mean(0)
  centred = features - mu  # (N, F)
  return mu, centred.T @ centred / (features.shape[0] - 1)


class FeatureStatistics:
  """Running float64 mean and covariance of features seen in chunks.

  Keeps the count, the mean and the centred sum of outer products
  M2 = sum (f - mean)(f - mean)^T, merging each chunk with the pairwise update
  of Chan, Golub and LeVeque (1979): raw sums sum f f^T - N mean mean^T would
  cancel catastrophically when the features have a large common offset.

  Usage: `stats = FeatureStatistics(); for chunk in ...: stats.update(chunk)`,
  then `mu, cov = stats.statistics()`.
  """

  def __init__(self) -> None:
    self.count = 0
    self._mean: np.ndarray | None = None
    self._m2: np.ndarray | None = None

  def update(self, features: np.ndarray) -> None:
    """Adds a chunk of features [n, F]."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] == 0:
      raise ValueError(f"expected features [n, F] with n >= 1, got {features.shape}")
    n = features.shape[0]
    mean_b = features.mean(0)
    centred = features - mean_b
    m2_b = centred.T @ centred  # (F, F)
    if self._mean is None:
      self.count, self._mean, self._m2 = n, mean_b, m2_b
      return
    if features.shape[1] != self._mean.shape[0]:
      raise ValueError(
          f"chunk has {features.shape[1]} features, earlier chunks {self._mean.shape[0]}")
    total = self.count + n
    delta = mean_b - self._mean
    self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.count * n / total)
    self._mean = self._mean + delta * (n / total)
    self.count = total

  def statistics(self) -> tuple[np.ndarray, np.ndarray]:
    """(mu [F], cov [F, F]) of everything seen, equal to `feature_statistics`."""
    if self.count < 2:
      raise ValueError(f"need at least 2 feature vectors, have {self.count}")
    return self._mean.copy(), self._m2 / (self.count - 1)
