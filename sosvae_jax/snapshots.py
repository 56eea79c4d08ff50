"""Image snapshots during training: prior samples and reconstructions as PNGs."""

from __future__ import annotations

import os

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sosvae_jax import input_pipeline
from sosvae_jax import metric_writers
from sosvae_jax import plotting

Array = jax.Array


def variance_or_estimate(dist: distrax.Distribution, rng: Array,
                         num_samples: int = 16) -> Array:
  """dist.variance(); a Monte Carlo estimate where there is no closed form."""
  try:
    return dist.variance()
  except NotImplementedError:
    draws = dist.sample(seed=rng, sample_shape=(num_samples,))
    return jnp.var(draws, axis=0, ddof=1)


def _mean_sample_variance(dist: distrax.Distribution, rng: Array,
                          shape) -> dict[str, Array]:
  sample_rng, variance_rng = jax.random.split(rng)
  return {'mean': dist.mean().reshape(shape),
          'sample': dist.sample(seed=sample_rng).reshape(shape),
          'variance': variance_or_estimate(dist, variance_rng).reshape(shape)}


def observation_images(variables, z: Array, rng: Array, *, model: nn.Module,
                       image_shape) -> dict[str, Array]:
  """Mean, one sample and per-pixel variance of p(x|z), as images."""
  dist = model.apply(variables, z, method='decode')
  return _mean_sample_variance(dist, rng, (z.shape[0],) + tuple(image_shape))


def reconstruction_images(variables, batch: Array, rng: Array, *,
                          model: nn.Module) -> dict[str, Array]:
  """Input, and mean, sample and variance of p(x|z) for z ~ q(z|x)."""
  x = input_pipeline.preprocess(batch)
  out = model.apply(variables, x, rngs={'sample': rng})
  return {'input': x, **_mean_sample_variance(out.observation, rng, x.shape)}


def write_snapshots(workdir: str, step: int, prior: dict[str, Array],
                    recon: dict[str, Array], writer: metric_writers.MetricWriter
                    ) -> str:
  """samples_STEP.png and reconstructions_STEP.png (and TensorBoard images).

  `prior` and `recon` are the host copies of `observation_images` and
  `reconstruction_images`. Returns the samples' path.
  """
  fig_dir = os.path.join(workdir, 'figures')
  path = os.path.join(fig_dir, f'samples_{step:07d}.png')
  os.makedirs(fig_dir, exist_ok=True)
  panel = plotting.observation_panel(prior['mean'], prior['sample'], prior['variance'])
  plotting.save_png(panel, path)
  writer.write_image(step, 'samples', panel)
  panel = plotting.grid(
      [plotting.to_rgb(recon['input']), plotting.to_rgb(recon['mean']),
       plotting.to_rgb(recon['sample']), plotting.heat(recon['variance'])],
      ['input', 'mean', 'sample', 'variance'])
  plotting.save_png(panel, os.path.join(fig_dir, f'reconstructions_{step:07d}.png'))
  writer.write_image(step, 'reconstructions', panel)
  return path
