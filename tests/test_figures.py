"""Paper figures rendered from a trained smoke run's checkpoint."""

import json

import distrax
import jax
import jax.numpy as jnp

import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from experiments.configs import default
from sosvae_jax import checkpoints
from sosvae_jax.distributions import LowRankMultivariateNormal
from sosvae_jax import figures
from sosvae_jax import observation
from sosvae_jax import plotting
from sosvae_jax import train

NUM_EXAMPLES = 64
# Figure 2's three colour bars under the grid, each after a 2-pixel gap.
FIGURE2_BARS_HEIGHT = 4 * (plotting.colorbar('x', 0.0, 1.0).shape[0] + 2)
FIGURE5_BAR_HEIGHT = plotting.colorbar('x', 0.0, 1.0).shape[0] + 2
NUM_SAMPLES = 5
PPCA_EXAMPLES = 40


def _grid_shape(path, image_shape, below: int = 0) -> tuple[int, int]:
  """(rows, columns) of a labelled `plotting.grid`, read off its size.

  below: the height of what is stacked under the grid (colour bars, which
  may be wider than the grid: the grid's width is then where its last
  non-white cell ends, plus the padding).
  """
  image = np.asarray(Image.open(path))
  height, width = image.shape[:2]
  if below:
    height -= below
    inked = np.flatnonzero((image[:height] < 255).any(axis=(0, 2)))
    width = inked[-1] + 1 + figures.PAD
  cell_h = image_shape[0] * figures.ZOOM + figures.PAD
  cell_w = image_shape[1] * figures.ZOOM + figures.PAD
  inner_h = height - figures.PAD
  inner_w = width - figures.LABEL_WIDTH - figures.PAD
  assert inner_h % cell_h == 0 and inner_w % cell_w == 0, (height, width)
  return inner_h // cell_h, inner_w // cell_w


def _smoke_config(name='lowrank_gaussian'):
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  if name != config.likelihood.name:
    # Another head: only its name and the variance it starts from.
    config.likelihood = ml_collections.ConfigDict(
        {'name': name, 'init_variance': config.likelihood.init_variance})
  return config


@pytest.fixture(scope='module')
def rendered(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('run')
  config = _smoke_config()
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    train.train_and_evaluate(config, str(workdir))
    written = figures.render_figures(str(workdir), num_samples=NUM_SAMPLES,
                                     ppca_examples=PPCA_EXAMPLES)
    data = figures.training_images(config, PPCA_EXAMPLES)
  return config, workdir, written, data


@pytest.mark.slow
def test_writes_every_figure_with_its_grid(rendered):
  config, workdir, written, _ = rendered
  shape = tuple(config.data.image_shape)
  rank = config.likelihood.rank
  assert set(written) == {'figure2', 'figure4', 'figure5', 'figure6', 'figure7',
                          'figure7_json'}
  for path in written.values():
    assert path.startswith(str(workdir / 'paper_figures'))
  expected = {
      'figure2': (6, NUM_SAMPLES),
      'figure4': (7, 7),
      'figure5': (2 * min(5, rank), len(observation.FIGURE5_SCALES)),
      'figure6': (4, len(figures.FIGURE6_EDITS) + 1),
      'figure7': (1 + len(figures.FIGURE7_GROUPS) * 3, 8),  # 3 rows a group
  }
  for name, grid_shape in expected.items():
    below = {'figure2': FIGURE2_BARS_HEIGHT, 'figure5': FIGURE5_BAR_HEIGHT}.get(name, 0)
    assert _grid_shape(written[name], shape, below) == grid_shape, name


@pytest.mark.slow
def test_figure7_log_likelihood_matches_ppca(rendered):
  config, _, written, data = rendered
  with open(written['figure7_json']) as f:
    stats = json.load(f)
  rank = config.likelihood.rank
  assert data.shape == (PPCA_EXAMPLES, int(np.prod(config.data.image_shape)))
  mu, factor, sigma2 = observation.ppca_max_likelihood(data, rank)
  expected = float(observation.ppca_log_likelihood(data, mu, factor, sigma2))
  assert stats['rank'] == rank and stats['num_examples'] == PPCA_EXAMPLES
  assert stats['checkpoint_step'] == config.num_steps
  np.testing.assert_allclose(stats['ppca_log_likelihood'], expected, rtol=1e-5)
  # Section 4.5: the same model learned by gradient reaches the closed form.
  assert stats['trained_log_likelihood'] <= expected + 0.05
  np.testing.assert_allclose(stats['trained_log_likelihood'], expected, rtol=1e-3)
  np.testing.assert_allclose(stats['sigma2'], float(sigma2), rtol=1e-5)


def test_figure6_keeps_the_edits():
  """The conditional mean equals the edit on every edited pixel."""
  shape = (8, 8, 1)
  rng = np.random.default_rng(0)
  loc = rng.uniform(size=64).astype(np.float32)
  factor = rng.normal(size=(64, 3)).astype(np.float32) * 0.1
  edits = figures.rectangle_edits(shape)
  means = observation.sequential_conditional_means(
      loc, factor, np.full(64, 1e-3, np.float32), edits)
  for (mask, value), mean in zip(edits, np.asarray(means)):
    assert mask.any()
    np.testing.assert_allclose(mean[mask], value[mask], atol=1e-5)


def _save_initial_run(workdir, config, drop_fields=()) -> None:
  """config.json and a step-0 checkpoint, as a run leaves them (no training).

  drop_fields: TrainState fields left out, as by an older version of train.
  """
  state = train.setup(config).state
  manager = checkpoints.checkpoint_manager(str(workdir), config)
  if drop_fields:
    state = {k: v for k, v in vars(state).items() if k not in drop_fields}
  manager.save(0, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  manager.close()
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def test_figure2_maps_share_one_scale_with_colour_bars():
  """Column 1 has twice column 0's standard deviation: its variance is drawn
  brighter (a per-image scale would draw both at full brightness)."""
  image_shape = (4, 4, 1)
  size = 16
  dist = distrax.MultivariateNormalDiag(
      jnp.full((2, size), 0.5), jnp.asarray([[0.1] * size, [0.2] * size]))
  image = figures.figure2(dist, jax.random.PRNGKey(0), image_shape)
  cell_h = image_shape[0] * figures.ZOOM
  grid_h = figures.PAD + 6 * (cell_h + figures.PAD)
  assert image.shape[0] == grid_h + FIGURE2_BARS_HEIGHT

  def cell(row, col):
    top = figures.PAD + row * (cell_h + figures.PAD)
    left = figures.LABEL_WIDTH + figures.PAD + col * (image_shape[1] * figures.ZOOM + figures.PAD)
    return image[top:top + cell_h, left:left + image_shape[1] * figures.ZOOM].astype(int)

  variance_row = figures.FIGURE2_LABELS.index('variance')
  dim, bright = cell(variance_row, 0), cell(variance_row, 1)
  assert (dim == dim[0, 0]).all()  # a flat map
  assert dim.sum() < bright.sum()
  expected = plotting.grid([plotting.heat(np.full((1,) + image_shape, 0.01), scale=0.04)],
                           zoom=figures.ZOOM, pad=figures.PAD)
  np.testing.assert_array_equal(dim[0, 0], expected[figures.PAD, figures.PAD])


@pytest.mark.slow
def test_pixelwise_likelihood_gives_figure2_only(tmp_path):
  """Also: a checkpoint of an older TrainState is read, and left in place."""
  config = _smoke_config(name='diagonal_gaussian')
  _save_initial_run(tmp_path, config, drop_fields=('nonfinite_total',))
  written = figures.render_figures(str(tmp_path), str(tmp_path / 'out'),
                                   num_samples=3)
  assert set(written) == {'figure2'}
  assert _grid_shape(written['figure2'], tuple(config.data.image_shape),
                     FIGURE2_BARS_HEIGHT) == (6, 3)
  assert (tmp_path / 'checkpoints' / '0').is_dir()
  assert not (tmp_path / 'corrupt_checkpoints').exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  (tmp_path / 'config.json').write_text(_smoke_config().to_json_best_effort())
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    checkpoints.restore_run(str(tmp_path))


def _cell(image, image_shape, row, col):
  cell_h, cell_w = image_shape[0] * figures.ZOOM, image_shape[1] * figures.ZOOM
  top = figures.PAD + row * (cell_h + figures.PAD)
  left = figures.LABEL_WIDTH + figures.PAD + col * (cell_w + figures.PAD)
  return image[top:top + cell_h, left:left + cell_w].astype(int)


def test_figure2_draws_a_small_negative_covariance_on_its_own_scale():
  """The centre pixel's row: +1 to pixel 0, -0.01 to pixel 2. On one shared
  scale the negative part would be a black cell; on its own it is bright."""
  image_shape = (3, 3, 1)
  centre = observation.central_pixel_index(image_shape)
  factor = np.zeros((1, 9, 2), np.float32)
  factor[0, centre] = [1.0, 0.1]
  factor[0, 0, 0], factor[0, 2, 1] = 1.0, -0.1
  dist = LowRankMultivariateNormal(jnp.full((1, 9), 0.5), jnp.asarray(factor),
                                   jnp.full((1, 9), 1e-3))
  image = figures.figure2(dist, jax.random.PRNGKey(0), image_shape)
  neg = _cell(image, image_shape, figures.FIGURE2_LABELS.index('-cov centre'), 0)
  zoom = figures.ZOOM
  brightest = plotting.grid([plotting.heat(np.ones((1, 1, 1, 1)), scale=1.0)],
                            zoom=figures.ZOOM, pad=figures.PAD)[figures.PAD, figures.PAD]
  np.testing.assert_array_equal(neg[0, 2 * zoom], brightest)  # pixel 2: row 0, column 2
  pos = _cell(image, image_shape, figures.FIGURE2_LABELS.index('+cov centre'), 0)
  np.testing.assert_array_equal(pos[0, 0], brightest)  # pixel 0


def test_figure5_change_rows_show_each_component_against_scale_zero():
  image_shape = (2, 2, 1)
  factor = np.zeros((1, 4, 2), np.float32)
  factor[0, 0, 0], factor[0, 3, 1] = 0.2, 0.05  # pc 1 moves pixel 0, pc 2 pixel 3
  dist = LowRankMultivariateNormal(jnp.full((4,), 0.5), jnp.asarray(factor[0]),
                                   jnp.full((4,), 1e-6))
  # mode 'set': column alpha is alpha standard deviations along the component.
  image = figures.figure5(dist, jax.random.PRNGKey(0), image_shape, num_components=2,
                          mode='set')
  middle = int(np.argmin(np.abs(observation.FIGURE5_SCALES)))
  white = plotting.grid([plotting.signed(np.zeros((1, 1, 1, 1)), scale=1.0)],
                        zoom=figures.ZOOM, pad=figures.PAD)[figures.PAD, figures.PAD]
  zoom = figures.ZOOM
  for row, moved in ((1, (0, 0)), (3, (1, 1))):  # the change rows of pc 1, pc 2
    at_zero = _cell(image, image_shape, row, middle)
    assert (at_zero == white).all()
    at_five = _cell(image, image_shape, row, len(observation.FIGURE5_SCALES) - 1)
    y, x = moved[0] * zoom, moved[1] * zoom
    assert not (at_five[y, x] == white).all()
    still = (1 - moved[0]) * zoom, moved[1] * zoom
    assert (at_five[still] == white).all()
