"""Observation distributions: pure maths, no flax and no config."""

from sosvae_jax.distributions.gaussian import diagonal_normal
from sosvae_jax.distributions.gaussian import softclip
from sosvae_jax.distributions.lowrank import capacitance_cholesky
from sosvae_jax.distributions.lowrank import LowRankMultivariateNormal
from sosvae_jax.distributions.lowrank import LowRankNoise
from sosvae_jax.distributions.lowrank import lowrank_entropy
from sosvae_jax.distributions.lowrank import lowrank_log_det
from sosvae_jax.distributions.lowrank import lowrank_log_prob
from sosvae_jax.distributions.lowrank import lowrank_mahalanobis
from sosvae_jax.distributions.lowrank import lowrank_sample_from_noise
from sosvae_jax.distributions.discrete import BernoulliImage
from sosvae_jax.distributions.discrete import bits_per_dim
from sosvae_jax.distributions.discrete import BitwiseCategoricalImage
from sosvae_jax.distributions.discrete import CategoricalImage
from sosvae_jax.distributions.discrete import DiscretizedLogisticMixture
from sosvae_jax.distributions.discrete import StudentTImage
from sosvae_jax.distributions.structured import basis_off_diag
from sosvae_jax.distributions.structured import rgb_to_ycbcr
from sosvae_jax.distributions.structured import StructuredPrecisionNormal
from sosvae_jax.distributions.structured import StructuredYCbCrNormal
from sosvae_jax.distributions.structured import ycbcr_log_prob
from sosvae_jax.distributions.structured import ycbcr_to_rgb
