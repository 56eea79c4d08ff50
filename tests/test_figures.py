"""Paper figures rendered from a trained smoke run's checkpoint."""

import json

import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from experiments.configs import default
from sosvae_jax import figures
from sosvae_jax import lagrangian
from sosvae_jax import observation
from sosvae_jax import train
from sosvae_jax.models import build_model

NUM_EXAMPLES = 64
NUM_SAMPLES = 5
PPCA_EXAMPLES = 40


def _grid_shape(path, image_shape) -> tuple[int, int]:
  """(rows, columns) of a labelled `plotting.grid`, read off its size."""
  height, width = np.asarray(Image.open(path)).shape[:2]
  cell_h = image_shape[0] * figures.ZOOM + figures.PAD
  cell_w = image_shape[1] * figures.ZOOM + figures.PAD
  inner_h = height - figures.PAD
  inner_w = width - figures.LABEL_WIDTH - figures.PAD
  assert inner_h % cell_h == 0 and inner_w % cell_w == 0, (height, width)
  return inner_h // cell_h, inner_w // cell_w


def _smoke_config(**likelihood):
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  config.likelihood.update(likelihood)
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
      'figure5': (min(5, rank), len(observation.FIGURE5_SCALES)),
      'figure6': (4, len(figures.FIGURE6_EDITS) + 1),
      'figure7': (1 + len(figures.FIGURE7_GROUPS) * 3, 8),  # 3 rows a group
  }
  for name, grid_shape in expected.items():
    assert _grid_shape(written[name], shape) == grid_shape, name


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
  model = build_model(config)
  mtx = lagrangian.multiplier_optimizer(lagrangian.multiplier_learning_rates(
      config.constraints, config.multiplier_learning_rate))
  state = train.create_train_state(
      config, model, train.make_optimizer(config), mtx,
      lagrangian.constraints_from_config(config.constraints))
  manager = train.checkpoint_manager(str(workdir), config)
  if drop_fields:
    state = {k: v for k, v in vars(state).items() if k not in drop_fields}
  manager.save(0, args=ocp.args.StandardSave(state), force=True)
  manager.wait_until_finished()
  manager.close()
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))


def test_pixelwise_likelihood_gives_figure2_only(tmp_path):
  """Also: a checkpoint of an older TrainState is read, and left in place."""
  config = _smoke_config(name='diagonal_gaussian')
  _save_initial_run(tmp_path, config, drop_fields=('nonfinite_total',))
  written = figures.render_figures(str(tmp_path), str(tmp_path / 'out'),
                                   num_samples=3)
  assert set(written) == {'figure2'}
  assert _grid_shape(written['figure2'], tuple(config.data.image_shape)) == (6, 3)
  assert (tmp_path / 'checkpoints' / '0').is_dir()
  assert not (tmp_path / 'corrupt_checkpoints').exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
  (tmp_path / 'config.json').write_text(_smoke_config().to_json_best_effort())
  with pytest.raises(FileNotFoundError, match='No checkpoint'):
    figures.restore_run(str(tmp_path))
