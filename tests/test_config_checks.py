"""check_config: one ConfigError naming field, value and fix for each problem."""

import math
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest

from experiments.configs import beta_vae
from experiments.configs import default
from sosvae_jax import config_checks
from sosvae_jax.config_checks import ConfigError

REAL_IDX = '/usr/share/datasets/fashion-mnist'
needs_idx = pytest.mark.skipif(not os.path.exists(REAL_IDX),
                               reason='Debian dataset-fashion-mnist not installed')


_FAKE_IDX_DIR = None  # Set by _fake_idx_dir: tests need no real data.


@pytest.fixture(autouse=True, scope='module')
def _fake_idx_dir(tmp_path_factory):
  """Empty IDX files: the checker only looks whether they exist."""
  global _FAKE_IDX_DIR
  _FAKE_IDX_DIR = tmp_path_factory.mktemp('idx')
  for name in ('train-images-idx3-ubyte', 't10k-images-idx3-ubyte'):
    (_FAKE_IDX_DIR / name).touch()


def _smoke(experiment=default, **overrides):
  """The ':smoke' config with dotted-path overrides, e.g. likelihood__rank=0."""
  config = experiment.get_config('smoke')
  config.unlock()
  config.data.idx_dir = str(_FAKE_IDX_DIR)
  for path, value in overrides.items():
    *parents, leaf = path.split('__')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _error(config, **kwargs) -> str:
  kwargs.setdefault('num_devices', 1)
  with pytest.raises(ConfigError) as info:
    config_checks.check_config(config, **kwargs)
  return str(info.value)


def _assert_mentions(message: str, *parts: str):
  for part in parts:
    assert part in message, f'{part!r} not in:\n{message}'


# ----------------------------------------------------------------------------
# Valid configs.
# ----------------------------------------------------------------------------
@needs_idx
@pytest.mark.parametrize('experiment', [default, beta_vae], ids=['default', 'beta_vae'])
@pytest.mark.parametrize('arg', [None, 'smoke'])
def test_shipped_configs_pass(experiment, arg, tmp_path):
  config_checks.check_config(experiment.get_config(arg))


def test_problems_are_collected_into_one_error():
  message = _error(_smoke(likelihood__rank=0, batch_size=-8, num_steps=0))
  assert 'The config has 3 problem(s)' in message
  assert len([l for l in message.splitlines() if l.startswith('  - config.')]) == 3


# ----------------------------------------------------------------------------
# Names.
# ----------------------------------------------------------------------------
def test_unknown_likelihood():
  _assert_mentions(_error(_smoke(likelihood__name='lowrank')),
                   "config.likelihood.name='lowrank'", 'lowrank_gaussian',
                   'diagonal_gaussian')


def test_unknown_model():
  _assert_mentions(_error(_smoke(model__name='resnet')),
                   "config.model.name='resnet'", "('conv',)")


def test_unknown_source():
  _assert_mentions(_error(_smoke(data__source='hdf5')),
                   "config.data.source='hdf5'", "'idx', 'tfds', 'folder'")


def test_unknown_tfds_dataset():
  _assert_mentions(_error(_smoke(data__source='tfds', data__name='imagenet')),
                   "config.data.name='imagenet'", 'celeb_a')


def test_unknown_sampler():
  _assert_mentions(_error(_smoke(sampler='flow')),
                   "config.sampler='flow'", "('prior', 'gmm')")
  config_checks.check_config(_smoke(sampler='gmm'), num_devices=1)


def test_unknown_constraint_kind():
  _assert_mentions(_error(_smoke(constraints__kl__kind='ge')),
                   "config.constraints.kl.kind='ge'", "('eq', 'le')")


def test_unknown_constraint_name():
  config = _smoke()
  config.constraints.mse = dict(enabled=True, target=0.1, kind='le', damping=1.0)
  _assert_mentions(_error(config), 'config.constraints.mse', "('kl', 'entropy')")


# ----------------------------------------------------------------------------
# Shapes.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize('rank', [0, -2, 784, 1000])
def test_rank_out_of_range(rank):
  _assert_mentions(_error(_smoke(likelihood__rank=rank)),
                   f'config.likelihood.rank={rank}', 'S = H*W*C = 28*28*1 = 784',
                   'between 1 and 783')


def test_a_field_the_likelihood_lacks_is_reported_with_its_fields():
  _assert_mentions(_error(_smoke(beta_vae, likelihood__rank=0)),
                   'config.likelihood.rank=0', "'diagonal_gaussian' has no such field",
                   "'min_variance', 'init_variance'")


def test_image_size_the_strides_cannot_produce():
  message = _error(_smoke(model__channels=(4, 8, 16)))
  _assert_mentions(message, 'config.model.channels=(4, 8, 16)',
                   'config.data.image_shape=(28, 28, 1)', 'divisible by 2**3 = 8',
                   'use 2 channel entries', '24 or 32')


def test_malformed_image_shape():
  _assert_mentions(_error(_smoke(data__image_shape=(28, 28))),
                   'config.data.image_shape=(28, 28)', 'three positive integers')


# ----------------------------------------------------------------------------
# Numbers.
# ----------------------------------------------------------------------------
def test_batch_not_divisible_by_devices():
  message = _error(_smoke(batch_size=10), num_devices=4)
  _assert_mentions(message, 'config.batch_size=10', '4 devices', 'multiple of 4', 'e.g. 8')
  config_checks.check_config(_smoke(batch_size=12), num_devices=4)


@pytest.mark.parametrize('field, value', [
    ('batch_size', 0),
    ('optimizer__learning_rate', 0.0),
    ('multiplier_learning_rate', -1.0),
    ('constraints__kl__multiplier_lr', 0.0),
    ('constraints__entropy__damping', -1.0),
    ('num_steps', 0),
    ('eval_examples', 0),
    ('num_figure_images', -1),
    ('pretrain_steps', -1),
    ('optimizer__variance_lr_scale', -0.1),
    ('optimizer__grad_clip_norm', -1.0),
    ('likelihood__fixed_diag', 0.0),
    ('eval_every_steps', 0),
])
def test_out_of_range_numbers(field, value):
  message = _error(_smoke(**{field: value}))
  _assert_mentions(message, f'config.{field.replace("__", ".")}={value!r}', 'must be >')


def test_zero_is_allowed_where_it_means_off():
  config_checks.check_config(
      _smoke(pretrain_steps=0, optimizer__variance_lr_scale=0.0,
             constraints__kl__damping=0.0, constraints__kl__multiplier_lr=None),
      num_devices=1)


def test_settings_of_disabled_constraints_are_not_checked():
  config_checks.check_config(
      _smoke(beta_vae, constraints__entropy__multiplier_lr=-1.0,
             constraints__entropy__kind='ge', constraints__entropy__target=-1e9),
      num_devices=1)


# ----------------------------------------------------------------------------
# The entropy ceiling.
# ----------------------------------------------------------------------------
def test_entropy_ceiling_below_the_fixed_diagonal():
  floor = 0.5 * 784 * (math.log(2 * math.pi * math.e) + math.log(1e-5))  # -3400.62
  message = _error(_smoke(constraints__entropy__target=-3500.0))
  _assert_mentions(message, 'config.constraints.entropy.target=-3500.0', 'infeasible',
                   f'{floor:.1f} nats', 'config.likelihood.fixed_diag = 1e-05',
                   'at least -3400.6')
  config_checks.check_config(_smoke(constraints__entropy__target=-3400.6), num_devices=1)


def test_entropy_ceiling_below_the_learned_diagonal_floor():
  floor = 0.5 * 784 * (math.log(2 * math.pi * math.e) + math.log(1e-3))  # -1595.4
  message = _error(_smoke(likelihood__fixed_diag=None, likelihood__min_variance=1e-3))
  _assert_mentions(message, 'config.constraints.entropy.target=-3330.0',
                   f'{floor:.1f} nats', 'config.likelihood.min_variance = 0.001',
                   'learned diagonal')


# ----------------------------------------------------------------------------
# Data on disk.
# ----------------------------------------------------------------------------
def test_missing_idx_files(tmp_path):
  message = _error(_smoke(data__idx_dir=str(tmp_path)))
  _assert_mentions(message, f'config.data.idx_dir={str(tmp_path)!r}',
                   'train-images-idx3-ubyte[.gz]', 't10k-images-idx3-ubyte[.gz]',
                   'sudo apt-get install dataset-fashion-mnist', '--config.data.idx_dir')


def test_idx_files_plain_or_gz(tmp_path):
  (tmp_path / 'train-images-idx3-ubyte').touch()
  (tmp_path / 't10k-images-idx3-ubyte.gz').touch()
  config_checks.check_config(_smoke(data__idx_dir=str(tmp_path)), num_devices=1)
  (tmp_path / 't10k-images-idx3-ubyte.gz').unlink()
  message = _error(_smoke(data__idx_dir=str(tmp_path)))
  _assert_mentions(message, f'file(s) {tmp_path}/t10k-images-idx3-ubyte[.gz] not found')


def test_unprepared_tfds_dataset(tmp_path):
  config = _smoke(data__source='tfds', data__name='cifar10',
                  data__image_shape=(32, 32, 3), data__tfds_data_dir=str(tmp_path))
  _assert_mentions(_error(config), "config.data.name='cifar10' (source tfds)",
                   'tfds build cifar10 --file_format=array_record')


def test_missing_or_empty_image_folder(tmp_path):
  missing = str(tmp_path / 'nope')
  _assert_mentions(_error(_smoke(data__source='folder', data__folder_dir=missing)),
                   f'config.data.folder_dir={missing!r}', 'does not exist')
  message = _error(_smoke(data__source='folder', data__folder_dir=str(tmp_path)))
  _assert_mentions(message, 'holds no image files')
  assert message.count('holds no image files') == 1  # Not once per split.
  _assert_mentions(_error(_smoke(data__source='folder')), 'config.data.folder_dir')


# ----------------------------------------------------------------------------
# Runs that would train, but not what was asked.
# ----------------------------------------------------------------------------
def test_pretraining_the_whole_run_is_an_error_for_variance_heads():
  message = _error(_smoke(num_steps=300, pretrain_steps=500))
  _assert_mentions(message, 'config.pretrain_steps=500', 'num_steps=300',
                   'diag_head', 'factor_head', 'never train', 'e.g. 60')


def test_pretraining_equal_to_num_steps_is_an_error():
  _assert_mentions(_error(_smoke(num_steps=6, pretrain_steps=6)), 'config.pretrain_steps=6')


def test_pretraining_is_fine_without_variance_heads():
  config = _smoke(num_steps=6, pretrain_steps=10, constraints__entropy__enabled=False)
  config.likelihood = ml_collections.ConfigDict({'name': 'bernoulli'})
  config_checks.check_config(config, num_devices=1)


def test_negative_kl_target_is_an_error():
  _assert_mentions(_error(_smoke(constraints__kl__target=-5.0)),
                   'config.constraints.kl.target=-5.0', 'never negative', '>= 0')


def test_negative_kl_target_of_a_disabled_constraint_is_ignored():
  config_checks.check_config(
      _smoke(constraints__kl__target=-5.0, constraints__kl__enabled=False), num_devices=1)


@pytest.mark.parametrize('field,value', [('checkpoints_to_keep', 0),
                                         ('max_nonfinite_steps', 0),
                                         ('kl_weight', -1.0),
                                         ('num_steps', 0),
                                         ('eval_every_steps', 0),
                                         ('checkpoint_every_steps', -1)])
def test_counts_and_weights_must_be_positive(field, value):
  _assert_mentions(_error(_smoke(**{field: value})), f'config.{field}={value!r}')


def test_batch_smaller_than_the_device_count_is_an_error():
  _assert_mentions(_error(_smoke(batch_size=2), num_devices=4),
                   'config.batch_size=2', 'multiple of 4')


# ----------------------------------------------------------------------------
# Values that would fail deep inside a run, or change it silently.
# ----------------------------------------------------------------------------
@pytest.mark.parametrize('value', ['foo', 'int32'])
def test_model_dtype_must_be_floating(value):
  _assert_mentions(_error(_smoke(model__dtype=value)), f'config.model.dtype={value!r}',
                   'floating-point', '--config.model.dtype=float32')


def test_float64_model_needs_64_bit_mode():
  _assert_mentions(_error(_smoke(model__dtype='float64')), 'JAX_ENABLE_X64=1')
  config_checks.check_config(_smoke(model__dtype='bfloat16'), num_devices=1)


@pytest.mark.parametrize('seed', [-1, 2**32])
def test_seed_outside_the_shuffle_range(seed):
  _assert_mentions(_error(_smoke(seed=seed)), f'config.seed={seed}', f'[0, {2**32 - 1}]')


@pytest.mark.parametrize('field', ['optimizer__learning_rate', 'kl_weight',
                                   'constraints__kl__multiplier_lr'])
def test_infinite_rates_and_weights(field):
  _assert_mentions(_error(_smoke(**{field: math.inf})),
                   f'config.{field.replace("__", ".")}=inf', 'must be finite')


def test_more_figure_images_than_evaluation_images():
  _assert_mentions(_error(_smoke(num_figure_images=40, eval_examples=16)),
                   'config.num_figure_images=40', 'eval_examples=16', 'at most 16')
  config_checks.check_config(_smoke(num_figure_images=16, eval_examples=16), num_devices=1)


def test_image_folder_with_fewer_training_images_than_a_batch(tmp_path):
  for i in range(4):
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / f'{i}.png')
  config = _smoke(data__source='folder', data__folder_dir=str(tmp_path), batch_size=8)
  _assert_mentions(_error(config), f'config.data.folder_dir={str(tmp_path)!r}',
                   'holds 4 image(s)', 'config.batch_size=8', 'at most 4')
  config_checks.check_config(_smoke(data__source='folder', data__folder_dir=str(tmp_path),
                                    batch_size=4), num_devices=1)


def test_failure_in_file_blames_only_the_file_the_error_passed_through(tmp_path):
  path = tmp_path / 'study.py'
  path.write_text('def get_config():\n  return 1 / 0\n')
  namespace = {}
  exec(compile(path.read_text(), str(path), 'exec'), namespace)  # pylint: disable=exec-used
  with pytest.raises(ZeroDivisionError) as info:
    namespace['get_config']()
  assert config_checks.failure_in_file(info.value, str(path)) == (
      "line 2 ('return 1 / 0') with ZeroDivisionError: division by zero")
  assert config_checks.failure_in_file(info.value, str(tmp_path / 'other.py')) is None
  with pytest.raises(ZeroDivisionError) as elsewhere:
    _ = 1 / 0
  assert config_checks.failure_in_file(elsewhere.value, str(path)) is None


def test_model_problems_of_a_config_that_builds_no_model():
  """E.g. a hand-edited config.json of a run."""
  assert not config_checks.model_problems(_smoke())
  edited = _smoke().to_dict()
  edited['likelihood']['rank'] = 'three'
  _assert_mentions('\n'.join(config_checks.model_problems(ml_collections.ConfigDict(edited))),
                   "config.likelihood.rank='three'")
  del edited['likelihood']
  assert config_checks.model_problems(ml_collections.ConfigDict(edited)) == [
      'config.likelihood: the section is missing (the model is built from config.data, '
      'config.model, config.likelihood)']


def test_evaluation_settings_a_run_would_use_are_checked_at_its_launch():
  from sosvae_jax.evaluation import settings  # pylint: disable=g-import-not-at-top
  assert not settings.section_problems(_smoke())
  # The run's own sampler fields stand in for the section's unset ones.
  assert settings.section_problems(_smoke(sampler='gmm', gmm_components=0)) == [
      'config.gmm_components=0 must be >= 1.']
  assert settings.section_problems(_smoke(evaluation__iwae_k=-1)) == [
      'config.evaluation.iwae_k=-1 must be >= 0 (0: all / skip).']
  _assert_mentions('\n'.join(settings.section_problems(
      _smoke(sampler='gmm', evaluation__gmm_examples=2))),
                   'gmm_components=10 is more than gmm_examples=2')
  with pytest.raises(ConfigError, match='config.evaluation.num_samples=1'):
    settings.check_section(_smoke(evaluation__num_samples=1))
  _assert_mentions('\n'.join(settings.section_problems(_smoke(evaluation__mi_examples=1))),
                   'config.evaluation.mi_examples=1: the MI estimate is bounded by')
  assert not settings.section_problems(_smoke(evaluation__mi_examples=2))
