"""Flax modules: encoders, decoder trunks, likelihood heads and the VAE."""

from sosvae_jax.models.heads import DiagonalHead
from sosvae_jax.models.heads import FactorHead
from sosvae_jax.models.heads import MeanHead
from sosvae_jax.models.heads import PENALTY_COLLECTION
from sosvae_jax.models.heads import STATS_COLLECTION
from sosvae_jax.models.heads import SWITCH_STEP
from sosvae_jax.models.likelihoods import get_likelihood
from sosvae_jax.models.likelihoods import Likelihood
from sosvae_jax.models.likelihoods import likelihood_section
from sosvae_jax.models.likelihoods import LIKELIHOODS
from sosvae_jax.models.likelihoods import register_likelihood
from sosvae_jax.models.likelihoods import variance_parameter_mask
from sosvae_jax.models.networks import ConvDecoderTrunk
from sosvae_jax.models.networks import ConvEncoder
from sosvae_jax.models.vae import build_model
from sosvae_jax.models.vae import VAE
from sosvae_jax.models.vae import VAEOutput
