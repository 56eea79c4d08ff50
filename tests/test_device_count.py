"""A run trained on 4 devices resumes on 1 and on 2 and ends where the 4-device run ends.

Every leg is `experiments.main` in a subprocess on forced CPU devices
(XLA_FLAGS=--xla_force_host_platform_device_count=N) with tfds mock data. The
first leg trains 3 steps on 4 devices and checkpoints; the same command with
`--config.num_steps=6` then resumes it on fewer devices. Orbax restores the
replicated state onto whatever devices the resuming process has.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import train_fixtures

from experiments.configs import default
from sosvae_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 6  # the smoke config: checkpoints at 3 and 6, batch 8
LEARNING_RATE = default.get_config('smoke').optimizer.learning_rate


def _train(workdir: pathlib.Path, devices: int, num_steps: int) -> str:
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={devices}').strip()
  proc = subprocess.run(
      [sys.executable, '-c', train_fixtures.MOCK_MAIN,
       '--config=experiments/configs/default.py:smoke',
       '--config.data.source=tfds', f'--config.num_steps={num_steps}',
       f'--workdir={workdir}'], cwd=ROOT, env=env, capture_output=True, text=True,
      timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stderr


def _params(workdir: pathlib.Path) -> np.ndarray:
  run = checkpoints.restore_run(str(workdir))
  assert run.step == NUM_STEPS
  return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(run.params)])


@pytest.mark.slow
def test_run_of_four_devices_resumes_on_one_and_on_two(tmp_path):
  _train(tmp_path / 'four', 4, NUM_STEPS)
  reference = _params(tmp_path / 'four')
  for devices in (1, 2):
    workdir = tmp_path / f'four_then_{devices}'
    _train(workdir, 4, NUM_STEPS // 2)
    err = _train(workdir, devices, NUM_STEPS)
    assert f'Resumed from checkpoint at step {NUM_STEPS // 2}' in err
    resumed = _params(workdir)
    # float32 rounding, as between 1 and 4 devices in tests/test_sharding.py:
    # only the order of the batch-mean reduction differs, and Adam turns the
    # few gradients made of cancelling terms into differences of at most ~1%
    # of its step.
    loose = ~np.isclose(resumed, reference, rtol=1e-5, atol=1e-6)
    assert loose.sum() <= 1e-4 * reference.size, (devices, loose.sum(), reference.size)
    np.testing.assert_allclose(resumed, reference, rtol=0,
                               atol=0.01 * LEARNING_RATE * NUM_STEPS)
