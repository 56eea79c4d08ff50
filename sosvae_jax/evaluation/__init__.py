"""Evaluation: IWAE bound, rate decomposition, FID (Inception and classifier), coherence, GMM sampler.

The maths is re-exported here. The heavier pieces stay submodules, imported
where needed: `evaluation.evaluate` (evaluate_run, the --mode=evaluate
command), `evaluation.settings` (its settings, config.evaluation),
`evaluation.results` (its files), `evaluation.report` (Table-1-style
comparison), `evaluation.inception` (Inception-v3 FID network),
`evaluation.classifier` (classifier FID network), `evaluation.labels`.
"""

from sosvae_jax.evaluation.coherence import high_frequency_fraction
from sosvae_jax.evaluation.coherence import high_frequency_mask
from sosvae_jax.evaluation.coherence import lag_one_autocorrelation
from sosvae_jax.evaluation.coherence import residual_coherence
from sosvae_jax.evaluation.estimators import chunked_iwae
from sosvae_jax.evaluation.estimators import iwae_bound
from sosvae_jax.evaluation.estimators import mutual_information_and_marginal_kl
from sosvae_jax.evaluation.features import features_in_chunks
from sosvae_jax.evaluation.features import statistics_in_chunks
from sosvae_jax.evaluation.frechet import FeatureStatistics
from sosvae_jax.evaluation.frechet import feature_statistics
from sosvae_jax.evaluation.frechet import frechet_distance
from sosvae_jax.evaluation.frechet import trace_sqrt_product
from sosvae_jax.evaluation.gmm import fit_gaussian_mixture
from sosvae_jax.evaluation.gmm import GaussianMixture

__all__ = (
    "FeatureStatistics",
    "GaussianMixture",
    "chunked_iwae",
    "feature_statistics",
    "features_in_chunks",
    "fit_gaussian_mixture",
    "frechet_distance",
    "high_frequency_fraction",
    "high_frequency_mask",
    "iwae_bound",
    "lag_one_autocorrelation",
    "mutual_information_and_marginal_kl",
    "residual_coherence",
    "statistics_in_chunks",
    "trace_sqrt_product",
)
