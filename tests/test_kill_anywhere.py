"""SIGKILL at random moments loses nothing: training (from imports to the last
checkpoint, checkpoint writes included), `--mode=evaluate` and a loop-mode
sweep, each killed again and again and then run to the end, equal the
uninterrupted run, and every file they leave is whole or absent."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image
import pytest
import train_fixtures

from sosvae_jax import checkpoints
from sosvae_jax import metric_writers

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

# What a run writes that may differ between two runs of one command.
_CLOCK_KEYS = {'steps_per_sec', 'seconds', 'time', 'workdir'}
TRAIN = ['--config=experiments/configs/default.py:smoke', '--config.data.source=tfds',
         '--config.num_steps=1200', '--config.checkpoint_every_steps=100',
         '--config.log_every_steps=10', '--config.eval_every_steps=400']
EVALUATE = ['--mode=evaluate', '--config.evaluation.classifier.num_steps=5']


def _env():
  return {**os.environ, 'JAX_PLATFORMS': 'cpu'}


def _main(workdir, *flags):
  return [sys.executable, '-c', train_fixtures.MOCK_MAIN, f'--workdir={workdir}', *flags]


def _finish(cmd):
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=_env(),
                        timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stderr


def _last_train_step(workdir) -> int:
  try:
    steps = [r['step'] for r in metric_writers.read_metrics(str(workdir), 'train')]
  except (OSError, ValueError):
    return -1
  return max(steps, default=-1)


def _writing_a_checkpoint(workdir, since: float) -> bool:
  """Whether a checkpoint folder is being written (a temporary one newer
  than `since`: a kill leaves its temporary folder until that step is saved
  again)."""
  folder = pathlib.Path(workdir) / 'checkpoints'
  try:
    return any('tmp' in e.name and e.stat().st_mtime >= since for e in os.scandir(folder))
  except OSError:
    return False


def _kill_when(cmd, ready, *, delay=0.0, timeout=600) -> bool:
  """Starts cmd, SIGKILLs it `delay` s after `ready()` holds; False if it
  ended first (then nothing was killed)."""
  # The log goes to a file: a pipe nobody reads while waiting would fill
  # and stall the run.
  log = tempfile.TemporaryFile('w+')
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log, text=True,
                          env=_env())
  start = time.time()
  try:
    while not ready(time.time() - start):
      if proc.poll() is not None:
        log.seek(0)
        assert proc.returncode == 0, log.read()[-3000:]
        return False
      assert time.time() - start < timeout, 'the moment never came'
      time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
      return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return True
  finally:
    proc.kill()
    log.close()


def _assert_files_whole(folder):
  """Every JSON and PNG file under folder reads whole."""
  for path in pathlib.Path(folder).rglob('*'):
    if not path.is_file() or 'checkpoints' in path.parts:
      continue
    if path.suffix == '.json':
      json.loads(path.read_text())
    elif path.suffix == '.png':
      with Image.open(path) as image:
        image.load()


def _records(workdir):
  return [{k: v for k, v in r.items() if k not in _CLOCK_KEYS}
          for r in metric_writers.read_metrics(str(workdir))]


def _assert_same_run(workdir, reference):
  a, b = checkpoints.restore_run(str(workdir)), checkpoints.restore_run(str(reference))
  assert a.step == b.step
  np.testing.assert_array_equal(train_fixtures.flat(a.params), train_fixtures.flat(b.params))
  assert _records(workdir) == _records(reference)


def test_training_killed_at_twenty_random_moments_equals_the_uninterrupted_run(tmp_path):
  reference, killed = tmp_path / 'reference', tmp_path / 'killed'
  start = time.time()
  _finish(_main(reference, *TRAIN))
  launch_seconds = time.time() - start
  rng = np.random.default_rng(0)
  # Twenty moments: four anywhere in a launch's first seconds (imports, set-up,
  # compile), six while a checkpoint is being written, ten at random steps
  # (each a little after that step's log line), in a random order.
  kinds = rng.permutation(['start'] * 4 + ['checkpoint'] * 6 + ['step'] * 10)
  targets = iter(np.sort(rng.integers(10, 1150, size=10)))
  kills = []
  for kind in kinds:
    if kind == 'start':
      at = float(rng.uniform(0, min(launch_seconds, 12.0)))
      ready, delay = (lambda t, at=at: t >= at), 0.0
    elif kind == 'checkpoint':
      since = time.time()
      ready, delay = (lambda t, since=since: _writing_a_checkpoint(killed, since)), 0.0
    else:
      step = int(next(targets))
      ready = lambda t, step=step: _last_train_step(killed) >= step
      delay = float(rng.uniform(0, 0.05))
    assert _kill_when(_main(killed, *TRAIN), ready, delay=delay), (
        f'the run ended before kill {len(kills) + 1} ({kind})')
    kills.append((kind, _last_train_step(killed)))
    _assert_files_whole(killed)
  assert len(kills) == 20
  # The kills spread over the run, not all before its first step.
  assert max(step for _, step in kills) >= 600, kills
  err = _finish(_main(killed, *TRAIN))
  assert 'Resumed from checkpoint at step' in err
  _assert_files_whole(killed)
  assert not any('tmp' in p.name for p in (killed / 'checkpoints').iterdir())
  _assert_same_run(killed, reference)


def test_evaluation_killed_at_random_moments_equals_the_uninterrupted_one(tmp_path):
  run, reference = tmp_path / 'run', tmp_path / 'reference'
  flags = [*TRAIN, '--config.num_steps=6']
  _finish(_main(run, *flags))
  evaluate = [*flags, '--mode=evaluate', '--config.evaluation.classifier.num_steps=5',
              f'--config.evaluation.classifier_cache_dir={tmp_path / "classifiers"}']
  # The reference: a copy of the run, evaluated once (this trains the cached
  # classifier the later evaluations share).
  shutil.copytree(run, reference)
  start = time.time()
  _finish(_main(reference, *evaluate))
  seconds = time.time() - start
  landed = 0
  for at in np.sort(np.random.default_rng(2).uniform(0.5, seconds, size=4)):
    landed += _kill_when(_main(run, *evaluate), lambda t, at=at: t >= at)
    _assert_files_whole(run)
  assert landed >= 2, 'the evaluation ended before most kills'
  _finish(_main(run, *evaluate))
  _assert_files_whole(run)
  results = [json.loads((w / 'eval' / 'results.json').read_text()) for w in (run, reference)]
  assert results[0]['metrics'] == results[1]['metrics']
  assert results[0]['step'] == results[1]['step'] == 6


SWEEP = ['-m', 'experiments.sweep', '--config=experiments/configs/default.py:smoke',
         '--mode=loop', '--grid=seed=0,1', '--config.num_steps=240',
         '--config.checkpoint_every_steps=40', '--config.log_every_steps=20',
         '--config.eval_every_steps=240']


def test_loop_mode_sweep_killed_at_random_moments_equals_the_uninterrupted_sweep(tmp_path):
  reference, killed = tmp_path / 'reference', tmp_path / 'killed'
  _finish([sys.executable, *SWEEP, f'--workdir={reference}'])
  progress = lambda: sum(max(_last_train_step(p), 0) for p in killed.glob('seed=*'))
  rng = np.random.default_rng(1)
  # One moment in the first seconds (imports, set-up), three at random
  # progress of the two points together (steps summed over both).
  moments = [lambda t, at=rng.uniform(0.2, 4.0): t >= at]
  moments += [lambda t, at=at: progress() >= at
              for at in np.sort(rng.integers(20, 2 * 180, size=3))]
  for ready in moments:
    assert _kill_when([sys.executable, *SWEEP, f'--workdir={killed}'], ready,
                      delay=float(rng.uniform(0, 0.05))), 'the sweep ended before the kill'
    _assert_files_whole(killed)
  _finish([sys.executable, *SWEEP, f'--workdir={killed}'])
  _assert_files_whole(killed)
  names = sorted(p.name for p in reference.iterdir() if (p / 'config.json').exists())
  assert len(names) == 2 and names == sorted(
      p.name for p in killed.iterdir() if (p / 'config.json').exists())
  for name in names:
    _assert_same_run(killed / name, reference / name)
