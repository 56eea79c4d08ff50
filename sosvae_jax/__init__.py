"""sosvae_jax: VAEs whose subject is the observation distribution p(x|z)."""

from sosvae_jax import distributions
from sosvae_jax import lagrangian
from sosvae_jax import objectives
from sosvae_jax import observation

__version__ = "0.1.0"
