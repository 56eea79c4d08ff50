"""sosvae_jax: VAEs whose subject is the observation distribution p(x|z)."""

__version__ = "0.1.0"
