"""A workdir's checkpoints against the config of a new launch."""

import pytest

from experiments.configs import default
from sosvae_jax import checkpoints
from sosvae_jax.config_checks import ConfigError


def _smoke(**overrides):
  """The ':smoke' config with dotted-path overrides, e.g. likelihood__rank=2."""
  config = default.get_config('smoke')
  config.unlock()
  for path, value in overrides.items():
    *parents, leaf = path.split('__')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def _workdir_with_checkpoints(tmp_path, config):
  (tmp_path / 'checkpoints' / '6').mkdir(parents=True)
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  return str(tmp_path)


def _error(config, workdir) -> str:
  with pytest.raises(ConfigError) as info:
    checkpoints.check_workdir(config, workdir)
  return str(info.value)


def _assert_mentions(message: str, *parts: str):
  for part in parts:
    assert part in message, f'{part!r} not in:\n{message}'


def test_workdir_with_checkpoints_of_another_model(tmp_path):
  workdir = _workdir_with_checkpoints(tmp_path, _smoke())
  config = _smoke(likelihood__rank=2, model__channels=(8, 8))
  config.constraints.entropy.enabled = False
  _assert_mentions(_error(config, workdir), f'--workdir={workdir!r}', 'steps 6..6',
                   'config.likelihood.rank was 3, now 2',
                   'config.model.channels was (8, 16), now (8, 8)',
                   'config.constraints.entropy.enabled was True, now False',
                   'new --workdir', f'delete {workdir}/checkpoints')


def test_workdir_resumes_after_changes_that_keep_the_structure(tmp_path):
  workdir = _workdir_with_checkpoints(tmp_path, _smoke())
  config = _smoke(constraints__entropy__target=-3300.0, likelihood__fixed_diag=1e-6,
                  likelihood__init_variance=0.1, num_steps=100,
                  optimizer__learning_rate=3e-4)
  checkpoints.check_workdir(config, workdir)
  # A learned diagonal adds a head, though.
  _assert_mentions(_error(_smoke(likelihood__fixed_diag=None), workdir),
                   'config.likelihood.fixed_diag was 1e-05, now None', 'diag_head')


def test_workdir_without_config_json_is_not_compared(tmp_path):
  (tmp_path / 'checkpoints' / '3').mkdir(parents=True)
  checkpoints.check_workdir(_smoke(likelihood__rank=2), str(tmp_path))
