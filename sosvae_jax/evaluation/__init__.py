"""Evaluation: IWAE bound, rate decomposition, Frechet distance, sample coherence."""

from sosvae_jax.evaluation.coherence import high_frequency_fraction
from sosvae_jax.evaluation.coherence import high_frequency_mask
from sosvae_jax.evaluation.coherence import lag_one_autocorrelation
from sosvae_jax.evaluation.coherence import residual_coherence
from sosvae_jax.evaluation.estimators import chunked_iwae
from sosvae_jax.evaluation.estimators import iwae_bound
from sosvae_jax.evaluation.estimators import mutual_information_and_marginal_kl
from sosvae_jax.evaluation.frechet import FeatureStatistics
from sosvae_jax.evaluation.frechet import feature_statistics
from sosvae_jax.evaluation.frechet import frechet_distance
from sosvae_jax.evaluation.frechet import trace_sqrt_product

__all__ = (
    "FeatureStatistics",
    "chunked_iwae",
    "feature_statistics",
    "frechet_distance",
    "high_frequency_fraction",
    "high_frequency_mask",
    "iwae_bound",
    "lag_one_autocorrelation",
    "mutual_information_and_marginal_kl",
    "residual_coherence",
    "trace_sqrt_product",
)
