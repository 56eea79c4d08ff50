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


def test_cli_trains_with_overrides_and_resumes(tmp_path):
  result = _main(tmp_path, '--config.likelihood.rank=2')
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((tmp_path / 'config.json').read_text())['likelihood']['rank'] == 2
  assert 'step 6/6' in result.stderr and 'steps/s' in result.stderr and 'left' in result.stderr
  again = _main(tmp_path, '--config.likelihood.rank=2')
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from checkpoint at step 6' in again.stderr


def test_cli_rejects_unknown_config_field(tmp_path):
  result = _main(tmp_path, '--config.likelihood.rnak=2')
  assert result.returncode != 0
  assert 'rnak' in result.stderr


def test_cli_bad_input_exits_with_one_clear_message(tmp_path):
  result = _main(tmp_path, '--config.likelihood.rank=0', '--config.optimizer.learning_rate=-1')
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'config.likelihood.rank=0' in result.stderr
  assert 'config.optimizer.learning_rate=-1' in result.stderr
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'checkpoints').exists()  # stopped before training
