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
