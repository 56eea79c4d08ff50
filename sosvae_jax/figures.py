"""The SOS-VAE paper's figures (sosvae_tmlr2022.txt Figures 2, 4-7) from a run.

`render_figures(workdir)` restores the latest checkpoint of a training run,
decodes prior samples z ~ N(0, I) and writes one PNG per figure. Each figure
is a small function returning a uint8 image, built from `observation` (the
exact low-rank tools) and `plotting` (grids and colour maps):

  figure2: mean, sample, sample - mean, variance, +/- covariance to the centre
  figure4: slerp of omega_p between four random corners (section 4.2)
  figure5: leading principal components of P scaled from -5 to 5 (eq. 5)
  figure6: sequential conditional editing (eqs. 6-7)
  figure7: closed-form probabilistic PCA vs PCA samples (section 4.5)

Figures 4-7 need the low-rank likelihood; for other likelihoods they are
skipped with a message.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Sequence

from absl import logging
import distrax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sosvae_jax import checkpoints
from sosvae_jax import direct_lowrank_fit
from sosvae_jax import input_pipeline
from sosvae_jax import observation
from sosvae_jax import plotting
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.distributions import LowRankMultivariateNormal

Array = jax.Array
ImageShape = tuple[int, int, int]

# Layout shared by every figure (tests read the grid shape back from these).
ZOOM = 2
PAD = 2
LABEL_WIDTH = 70
FIGURE2_LABELS = ('mean', 'sample', 'sample-mean', 'variance', '+cov centre',
                  '-cov centre')
FIGURE6_LABELS = ('edited', 'mask', 'cond. mean', 'change')
# Figure 6 edits as fractions of the image: (top, left, bottom, right, value).
FIGURE6_EDITS = ((0.25, 0.35, 0.40, 0.65, 1.0),
                 (0.60, 0.35, 0.75, 0.65, 0.0),
                 (0.10, 0.10, 0.25, 0.30, 1.0))
FIGURE7_GROUPS = ('PPCA', 'mu + P w', 'PCA')
LOWRANK_ONLY = ('figure4', 'figure5', 'figure6', 'figure7')


def decode(run: checkpoints.RestoredRun, z: Array) -> distrax.Distribution:
  """p(x|z) over [B, S] for latents z [B, L].

  The low-rank normal is decoded under jit and rebuilt from its arrays. Other
  distrax distributions are pytrees too, but not clean ones: returning
  distrax.MultivariateNormalDiag from jit leaks a tracer held by its scale
  operator (distrax 0.1, measured), so they are decoded eagerly.
  """
  apply = lambda variables, z: run.model.apply(variables, z, method='decode')

  def lowrank_parts(variables, z):
    dist = apply(variables, z)
    return (dist.loc, dist.cov_factor, dist.cov_diag) if is_lowrank(dist) else None

  parts = jax.jit(lowrank_parts)(run.variables, z)
  return LowRankMultivariateNormal(*parts) if parts else apply(run.variables, z)


def is_lowrank(dist: distrax.Distribution) -> bool:
  return isinstance(dist, LowRankMultivariateNormal)


# --------------------------------------------------------------- helpers ----


def _images(flat: Array, image_shape: ImageShape) -> np.ndarray:
  """[..., S] -> [N, H, W, C] float64 on the host."""
  return np.asarray(flat, np.float64).reshape((-1,) + tuple(image_shape))


def _grid(rows: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
  return plotting.grid(rows, labels, zoom=ZOOM, pad=PAD, label_width=LABEL_WIDTH)


# -------------------------------------------------------------- figure 2 ----


def _figure2_arrays(dist: distrax.Distribution, key: Array,
                    centre: int) -> tuple[Array, ...]:
  """Mean, sample, variance and +/- covariance to pixel `centre`, [N, S] each."""
  mean, variance = dist.mean(), dist.variance()
  if is_lowrank(dist):
    pos, neg = observation.covariance_row_parts(dist.cov_factor, dist.cov_diag,
                                                centre)
  else:  # Pixel-wise: no covariance off the diagonal.
    pos = neg = jnp.zeros_like(mean)
  return mean, dist.sample(seed=key), variance, pos, neg


def figure2(dist: distrax.Distribution, key: Array,
            image_shape: ImageShape) -> np.ndarray:
  """Figure 2: rows mean, sample, difference, variance, +/- covariance.

  Rows 5-6 are the positive and negative parts of the covariance row of the
  central pixel (its own variance dropped). Each map kind (difference,
  variance, + covariance, - covariance) has one colour scale over all
  columns, given by a colour bar under the grid; the negative part gets its
  own scale because it is usually far smaller than the positive one, and on
  the positive part's scale it would not show. A pixel-wise likelihood has
  no covariance: those rows are black.

  Args:
    dist: p(x|z) with batch [N] over [S].
    key: PRNG key of the sample.
    image_shape: (H, W, C), S = H * W * C.

  Returns:
    uint8 image: the [6 rows, N columns] grid, then four colour bars
    (difference, variance, + covariance, - covariance).
  """
  centre = observation.central_pixel_index(image_shape)
  # Only the low-rank normal crosses jit cleanly (see `decode`).
  arrays = (jax.jit(_figure2_arrays, static_argnums=2) if is_lowrank(dist)
            else _figure2_arrays)
  mean, sample, variance, pos, neg = (
      _images(x, image_shape) for x in arrays(dist, key, centre))
  # One colour scale per map kind over all columns, labelled by a colour bar,
  # so that sizes compare across samples (a per-image scale would hide them).
  diff_scale = plotting.signed_scale(sample - mean)
  var_scale = plotting.heat_scale(variance)
  pos_scale, neg_scale = plotting.heat_scale(pos), plotting.heat_scale(neg)
  rows = [plotting.to_rgb(mean), plotting.to_rgb(sample),
          plotting.signed(sample - mean, scale=diff_scale),
          plotting.heat(variance, scale=var_scale),
          plotting.heat(pos, scale=pos_scale), plotting.heat(neg, scale=neg_scale)]
  bars = [plotting.colorbar('sample - mean', -diff_scale, diff_scale, kind='signed'),
          plotting.colorbar('variance', 0.0, var_scale),
          plotting.colorbar('+ covariance', 0.0, pos_scale),
          plotting.colorbar('- covariance', 0.0, neg_scale)]
  return plotting.stack([_grid(rows, FIGURE2_LABELS)] + bars)


# -------------------------------------------------------------- figure 4 ----


@functools.partial(jax.jit, static_argnums=2)
def _slerp_samples(dist: LowRankMultivariateNormal, key: Array,
                   steps: int) -> Array:
  """[steps, steps, S] samples of the slerped omega_p grid."""
  corner_key, diag_key = jax.random.split(key)
  corners = jax.random.normal(corner_key, (4, dist.rank), dist.loc.dtype)
  omega_d = jax.random.normal(diag_key, dist.loc.shape, dist.loc.dtype)
  omega_p = observation.slerp_noise_grid(corners, steps)  # (steps, steps, R)
  return observation.samples_from_omega_p(dist.loc, dist.cov_factor,
                                          dist.cov_diag, omega_p, omega_d)


def figure4(dist: LowRankMultivariateNormal, key: Array,
            image_shape: ImageShape, *, steps: int = 7) -> np.ndarray:
  """Figure 4: samples for omega_p slerped between four random corners.

  omega_d is held fixed (section 4.2); the corners are omega_p ~ N(0, I_R).

  Args:
    dist: one p(x|z): loc [S], cov_factor [S, R], cov_diag [S].
    key: PRNG key of the corners and of omega_d.
    steps: points per side.

  Returns:
    uint8 [steps, steps] grid; row i is at u = i / (steps - 1) from the top
    to the bottom corners, column j at v = j / (steps - 1) from left to right.
  """
  samples = _slerp_samples(dist, key, steps)
  rows = [plotting.to_rgb(_images(row, image_shape)) for row in samples]
  return _grid(rows, [f'u={i / (steps - 1):.2f}' for i in range(steps)])


# -------------------------------------------------------------- figure 5 ----


@functools.partial(jax.jit, static_argnums=(2, 3))
def _component_samples(dist: LowRankMultivariateNormal, key: Array,
                       num_components: int, mode: str) -> Array:
  """[K, M, S] samples of eq. 5 for a fixed noise, M = len(FIGURE5_SCALES)."""
  return observation.scaled_component_grid(
      dist.loc, dist.cov_factor, dist.cov_diag, dist.sample_noise(key),
      observation.FIGURE5_SCALES, num_components=num_components, mode=mode)


def figure5(dist: LowRankMultivariateNormal, key: Array,
            image_shape: ImageShape, *, num_components: int = 5,
            mode: str = 'scale') -> np.ndarray:
  """Figure 5: component k (row) scaled by FIGURE5_SCALES (columns), eq. 5.

  Fixed noise; mode and the other components' scale (0, as in the authors'
  code) as in `observation.scaled_component_samples`. Under each row of
  samples, their difference from the row's sample at scale 0 (blue
  negative, red positive, one colour scale for all rows, labelled by the
  colour bar): on small images a component's change is easier to see, and
  to compare between components, as a map than in the samples themselves.

  Args:
    dist: one p(x|z): loc [S], cov_factor [S, R], cov_diag [S].
    key: PRNG key of the fixed noise.
    num_components: K leading components (at most R).

  Returns:
    uint8 image: the [2K, 21] grid (samples, difference, per component),
    then the difference's colour bar.
  """
  num_components = min(num_components, dist.rank)
  samples = _component_samples(dist, key, num_components, mode)  # (K, M, S)
  images = [_images(row, image_shape) for row in samples]
  middle = int(np.argmin(np.abs(observation.FIGURE5_SCALES)))  # scale 0
  changes = [row - row[middle:middle + 1] for row in images]
  scale = max(plotting.signed_scale(np.stack(changes)), 1e-12)
  rows, labels = [], []
  for k, (row, change) in enumerate(zip(images, changes)):
    rows += [plotting.to_rgb(row), plotting.signed(change, scale=scale)]
    labels += [f'pc {k + 1}', f'pc {k + 1} change']
  bar = plotting.colorbar('change from scale 0', -scale, scale, kind='signed')
  return plotting.stack([_grid(rows, labels), bar])


# -------------------------------------------------------------- figure 6 ----


def rectangle_edits(image_shape: ImageShape,
                    specs: Sequence[tuple[float, ...]] = FIGURE6_EDITS
                    ) -> list[tuple[np.ndarray, np.ndarray]]:
  """Edits (mask [S] bool, values [S]) setting rectangles to constant values.

  specs: (top, left, bottom, right, value), the corners as fractions of the
  height and width; each rectangle covers all channels and >= 1 pixel.
  """
  height, width, _ = image_shape
  edits = []
  for top, left, bottom, right, value in specs:
    mask = np.zeros(image_shape, bool)
    t, l = int(top * height), int(left * width)
    mask[t:max(int(bottom * height), t + 1), l:max(int(right * width), l + 1)] = True
    edits.append((mask.reshape(-1), np.full(mask.size, value, np.float32)))
  return edits


def figure6(dist: LowRankMultivariateNormal, image_shape: ImageShape,
            edits: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
  """Figure 6: edits applied one after another to the decoded mean.

  Column 0 is the mean; column i the state after edit i. Rows: the previous
  image with edit i pasted in, the mask (earlier edits grey, edit i white),
  the conditional mean given all edits so far (eq. 7), and its change from
  the previous image (blue darker, red brighter).

  Args:
    dist: one p(x|z): loc [S], cov_factor [S, R], cov_diag [S].
    edits: n pairs (mask [S] bool, values [S]).

  Returns:
    uint8 [4, n + 1] grid.
  """
  means = jax.jit(observation.sequential_conditional_means)(
      dist.loc, dist.cov_factor, dist.cov_diag, list(edits))  # (n, S)
  states = np.concatenate([np.asarray(dist.loc)[None], np.asarray(means)])
  masks = np.stack([np.zeros_like(edits[0][0])] + [m for m, _ in edits])
  before = np.cumsum(masks, 0)[:-1] > 0  # (n, S): edited before edit i
  before = np.concatenate([before[:1], before])  # (n + 1, S)
  pasted = states.copy()
  for i, (mask, value) in enumerate(edits, start=1):
    pasted[i] = np.where(mask, value, states[i - 1])
  shown_mask = np.where(masks, 1.0, 0.5 * before)
  change = states - np.concatenate([states[:1], states[:-1]])
  rows = [plotting.to_rgb(_images(pasted, image_shape)),
          plotting.to_rgb(_images(shown_mask, image_shape)),
          plotting.to_rgb(_images(states, image_shape)),
          plotting.signed(_images(change, image_shape))]
  return _grid(rows, FIGURE6_LABELS)


# -------------------------------------------------------------- figure 7 ----


def training_images(config: ml_collections.ConfigDict, num: int) -> np.ndarray:
  """The first `num` training images of config.data, [N, S] float32 in [0, 1]."""
  images = input_pipeline.load_images(config.data, 'train', num)  # (N, H, W, C) uint8
  return images.reshape(images.shape[0], -1).astype(np.float32) / 255.0


@functools.partial(jax.jit, static_argnums=(2, 3))
def _ppca_and_pca(data: Array, key: Array, rank: int,
                  num: int) -> tuple[Array, Array, tuple[Array, Array, Array]]:
  """PPCA fit of data [N, S]: (average log-likelihood, sigma2, samples [num,
  S] of PPCA, of its structured part mu + P omega_p, and of PCA)."""
  mu, factor, sigma2 = observation.ppca_max_likelihood(data, rank)
  log_lik = observation.ppca_log_likelihood(data, mu, factor, sigma2)
  ppca_key, pca_key = jax.random.split(key)
  ppca = LowRankMultivariateNormal(mu, factor, jnp.full_like(mu, sigma2))
  ppca_samples, noise = ppca.sample_with_noise(seed=ppca_key, sample_shape=num)
  structured = mu + noise.omega_p @ factor.T  # (num, S): omega_d = 0
  pca_samples = observation.pca_samples(pca_key, observation.pca_fit(data, rank),
                                        num)
  return log_lik, sigma2, (ppca_samples, structured, pca_samples)


def figure7(data: np.ndarray, rank: int, key: Array, image_shape: ImageShape,
            *, num_rows: int = 3, num_cols: int = 8, fit_steps: int = 2000
            ) -> tuple[np.ndarray, dict[str, float]]:
  """Figure 7: the model without deep learning vs linear PCA (section 4.5).

  The low-rank normal of rank R with a shared diagonal, fitted to the data in
  closed form (maximum-likelihood PPCA, Tipping and Bishop 1999): what the
  paper's backpropagation-trained observation model converges to. Rows: data,
  then `num_rows` rows each of PPCA samples mu + P omega_p + sigma omega_d,
  of their structured part mu + P omega_p alone (what the paper's model with
  a tiny fixed diagonal draws), and of PCA samples.

  Args:
    data: [N, S] in [0, 1].
    rank: R, as config.likelihood.rank.
    key: PRNG key of the samples.

  Returns:
    (uint8 [1 + 3 num_rows, num_cols] grid, {'ppca_log_likelihood': average
    log-density of the fitted data in nats, 'sigma2', 'rank', 'num_examples'}).
  """
  num = num_rows * num_cols
  log_lik, sigma2, groups = _ppca_and_pca(jnp.asarray(data), key, rank, num)
  rows = [plotting.to_rgb(_images(data[:num_cols], image_shape))]
  labels = ['data']
  for name, samples in zip(FIGURE7_GROUPS, groups):
    images = plotting.to_rgb(_images(samples, image_shape))
    rows += list(images.reshape((num_rows, num_cols) + images.shape[1:]))
    labels += [name] + [''] * (num_rows - 1)
  stats = {'ppca_log_likelihood': float(log_lik), 'sigma2': float(sigma2),
           'rank': int(rank), 'num_examples': int(data.shape[0])}
  if fit_steps:
    # The same model learned by gradient, as the paper trains it.
    fit = direct_lowrank_fit.fit_lowrank_observation_model(jnp.asarray(data), rank,
                                                           steps=fit_steps)
    stats['trained_log_likelihood'] = float(observation.ppca_log_likelihood(
        jnp.asarray(data), fit['loc'], fit['cov_factor'], fit['cov_diag'][0]))
    stats['trained_sigma2'] = float(fit['cov_diag'][0])
    stats['fit_steps'] = int(fit_steps)
  return _grid(rows, labels), stats


# ------------------------------------------------------------------- all ----


def render_figures(workdir: str, out_dir: str | None = None, *, seed: int = 0,
                   num_samples: int = 8, example: int = 0,
                   ppca_examples: int = 2000,
                   figure5_mode: str = 'scale') -> dict[str, str]:
  """Writes figure2.png ... figure7.png (and figure7.json) for a run.

  Figures 4-6 use decoded prior sample number `example` (a column of
  Figure 2). Returns {name: path} of the
  files written; figures 4-7 are skipped, with a warning, unless the run's
  likelihood is low-rank.
  """
  out_dir = out_dir or os.path.join(workdir, 'paper_figures')
  os.makedirs(out_dir, exist_ok=True)
  run = checkpoints.restore_run(workdir)
  image_shape = tuple(run.config.data.image_shape)
  keys = jax.random.split(jax.random.PRNGKey(seed), 5)
  z = jax.random.normal(keys[0], (num_samples, run.config.model.latent_dim))
  dist = decode(run, z)
  written = {}

  def save(name: str, image: np.ndarray) -> None:
    written[name] = os.path.join(out_dir, f'{name}.png')
    plotting.save_png(image, written[name])

  save('figure2', figure2(dist, keys[1], image_shape))
  if not is_lowrank(dist):
    logging.warning('Skipping %s: they need the low-rank likelihood; this run '
                    "has config.likelihood.name=%r.", ', '.join(LOWRANK_ONLY),
                    run.config.likelihood.name)
    return written
  if not 0 <= example < num_samples:
    raise ValueError(f'example={example} must be in [0, {num_samples}).')
  first = LowRankMultivariateNormal(dist.loc[example],
                                    dist.cov_factor[example],
                                    dist.cov_diag[example])
  save('figure4', figure4(first, keys[2], image_shape))
  save('figure5', figure5(first, keys[3], image_shape, mode=figure5_mode))
  save('figure6', figure6(first, image_shape, rectangle_edits(image_shape)))
  data = training_images(run.config, ppca_examples)
  image, stats = figure7(data, run.config.likelihood.rank, keys[4], image_shape)
  save('figure7', image)
  written['figure7_json'] = os.path.join(out_dir, 'figure7.json')
  workdir_lib.write_atomic(written['figure7_json'], json.dumps(
      {**stats, 'checkpoint_step': run.step}, indent=2))
  logging.info('Step %d; PPCA (rank %d, %d images) average log-likelihood %.1f '
               'nats.', run.step, stats['rank'], stats['num_examples'],
               stats['ppca_log_likelihood'])
  return written
