"""The command line, as a user types it, and every config file."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / 'experiments' / 'configs').glob('*.py')
                 if p.stem not in ('__init__', 'common'))
MOCK_MAIN = """
import sys
import tensorflow_datasets as tfds
from absl import app
from experiments import main
with tfds.testing.mock_data(num_examples=32):
  app.run(main.main, argv=[sys.argv[0]] + sys.argv[1:])
"""


@pytest.mark.parametrize('name', CONFIGS)
@pytest.mark.parametrize('arg', [None, 'smoke'])
def test_configs_load(name, arg):
  config = importlib.import_module(f'experiments.configs.{name}').get_config(arg)
  assert config.likelihood.name and config.num_steps > 0
  if arg == 'smoke':
    assert config.num_steps <= 10


def _main(tmp_path, *flags):
  cmd = [sys.executable, '-c', MOCK_MAIN,
         '--config=experiments/configs/default.py:smoke', f'--workdir={tmp_path}',
         '--config.data.source=tfds', *flags]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.slow
def test_cli_trains_with_overrides_and_resumes(tmp_path):
  result = _main(tmp_path, '--config.likelihood.rank=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / 'config.json').read_text())['likelihood']['rank'] == 2
  assert 'step 6/6' in result.stderr and 'steps/s' in result.stderr and 'left' in result.stderr
  again = _main(tmp_path, '--config.likelihood.rank=2')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from checkpoint at step 6' in again.stderr


@pytest.mark.slow
def test_cli_rejects_unknown_config_field(tmp_path):
  result = _main(tmp_path, '--config.likelihood.rnak=2')
  assert result.returncode != 0
  assert 'rnak' in result.stderr


@pytest.mark.slow
def test_cli_bad_input_exits_with_one_clear_message(tmp_path):
  result = _main(tmp_path, '--config.likelihood.rank=0', '--config.optimizer.learning_rate=-1')
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'config.likelihood.rank=0' in result.stderr
  assert 'config.optimizer.learning_rate=-1' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()  # stopped before training


@pytest.mark.slow
def test_cli_rejects_a_misspelt_config_argument(tmp_path):
  cmd = [sys.executable, '-m', 'experiments.main',
         '--config=experiments/configs/default.py:smok', f'--workdir={tmp_path}']
  result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode != 0
  assert "'smok'" in result.stderr and 'valid: smoke' in result.stderr
  assert not (tmp_path / 'checkpoints').exists()


def _evaluate(tmp_path, *flags):
  cmd = [sys.executable, '-m', 'experiments.main', '--mode=evaluate',
         f'--workdir={tmp_path}', *flags]
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


@pytest.mark.slow
def test_cli_evaluation_settings_come_from_config_evaluation(tmp_path):
  result = _evaluate(tmp_path, '--config=experiments/configs/default.py:smoke',
                     '--config.evaluation.num_samples=1', '--config.evaluation.iwae_k=-2')
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'num_samples=1' in result.stderr and 'iwae_k=-2' in result.stderr
  assert 'Traceback' not in result.stderr
  unknown = _evaluate(tmp_path, '--config=experiments/configs/default.py:smoke',
                      '--config.evaluation.iwae=3')
  assert unknown.returncode != 0 and 'iwae' in unknown.stderr
  # Without --config the run's own config.json is read: none here.
  missing = _evaluate(tmp_path)
  assert missing.returncode == 2 and 'config.json not found' in missing.stderr


def _check(tmp_path, *flags):
  """--mode=check in a subprocess, with jax free to probe its backends."""
  cmd = [sys.executable, '-c', MOCK_MAIN, '--mode=check',
         '--config=experiments/configs/default.py:smoke', f'--workdir={tmp_path / "run"}',
         '--config.data.source=tfds', *flags]
  env = {k: v for k, v in os.environ.items() if k != 'JAX_PLATFORMS'}
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_check_mode_reports_without_training_or_writing(tmp_path):
  result = _check(tmp_path, '--config.likelihood.rank=3')
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert 'rank: 3' in out  # the resolved config, overrides applied
  assert 'devices: 1 x cpu' in out
  assert "dataset: source=tfds, tfds fashion_mnist" in out
  assert "train split 'train': 32 images" in out and "eval split 'test': 32 images" in out
  count = int(next(l for l in out.splitlines() if l.startswith('parameters:'))
              .split(':')[1].replace(',', ''))
  assert count > 1000
  assert 'fresh run' in out and out.rstrip().endswith('checks: passed')
  assert not (tmp_path / 'run').exists()
  # Quiet: no backend probing notes, no library INFO chatter.
  both = result.stdout + result.stderr
  assert 'Unable to initialize backend' not in both and 'dataset_info.json' not in both
  assert not [l for l in result.stderr.splitlines()
              if l.startswith('I') and ('orbax' in l or 'checkpoint_manager' in l)]


@pytest.mark.slow
def test_check_mode_exits_2_with_the_checkers_message(tmp_path):
  result = _check(tmp_path, '--config.likelihood.rank=0')
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'config.likelihood.rank=0' in result.stderr and 'Traceback' not in result.stderr
  assert 'checks: FAILED' in result.stdout
  assert not (tmp_path / 'run').exists()


def test_dry_run_names_a_workdir_that_cannot_be_created(tmp_path):
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import dry_run  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  path = str(tmp_path / ('x' * 300))  # too long a name for any filesystem
  result = dry_run.dry_run(config, path)
  assert any('cannot be created' in p and '--workdir' in p for p in result.problems)
  assert result.text.rstrip().endswith('checks: FAILED')
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_dry_run_parameter_count_matches_an_initialised_model():
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  from sosvae_jax import dry_run, train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  config = default.get_config('smoke')
  params = train.setup(config).state.params
  assert dry_run.parameter_count(config) == sum(x.size for x in jax.tree_util.tree_leaves(params))
