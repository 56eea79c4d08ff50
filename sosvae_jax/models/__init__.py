"""Flax modules: encoders, decoder trunks, likelihood heads and the VAE."""

from sosvae_jax.models.heads import DiagonalHead
from sosvae_jax.models.heads import FactorHead
from sosvae_jax.models.heads import MeanHead
from sosvae_jax.models.heads import VARIANCE_HEADS
from sosvae_jax.models.networks import ConvDecoderTrunk
from sosvae_jax.models.networks import ConvEncoder
from sosvae_jax.models.vae import build_model
from sosvae_jax.models.vae import VAE
from sosvae_jax.models.vae import VAEOutput
