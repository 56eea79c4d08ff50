"""The vmap sweep engine: vmapped points equal their single runs, resume, shard, stop."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_fixtures

from experiments.configs import default
from experiments.configs.sigma_vae import optimal_sigma
from sosvae_jax import checkpoints
from sosvae_jax import metric_writers
from sosvae_jax import sweep
from sosvae_jax import sweep_vmap

ROOT = pathlib.Path(__file__).resolve().parents[1]
# SOS-VAE smoke (6 steps): both constraints active (KL above its target,
# entropy above its ceiling), the pretraining freeze ending inside the run at
# different steps, different seeds, learning rates and multiplier rates.
SOS_POINTS = [
    {'seed': 0, 'optimizer.learning_rate': 1e-3, 'optimizer.variance_lr_scale': 0.1,
     'pretrain_steps': 2, 'constraints.kl.target': 0.0,
     'constraints.entropy.target': -3398.0, 'constraints.kl.multiplier_lr': 10.0},
    {'seed': 1, 'optimizer.learning_rate': 2e-3, 'optimizer.variance_lr_scale': 1.0,
     'pretrain_steps': 3, 'constraints.kl.target': 0.2,
     'constraints.entropy.target': -3399.0, 'constraints.kl.multiplier_lr': 3.0},
]
# Optimal sigma-VAE smoke: running statistics (the sigma running average).
SIGMA_POINTS = [{'seed': 0, 'kl_weight': 1.0, 'optimizer.learning_rate': 1e-3},
                {'seed': 1, 'kl_weight': 0.5, 'optimizer.learning_rate': 3e-3}]
# Adam divides by the root of tiny second moments in the first steps, which
# magnifies float rounding (vmapped convolutions sum in another order):
# parameters agree to ~1e-4 after 6 steps while different points differ by
# more than 1e-2. The metrics follow: with D = 1e-5 the gradient norm is
# ~3e7 and moves by up to ~1.5e-4 relative, the entropy multiplier likewise,
# while the points' metrics differ by far more than 1e-3.
PARAM_ATOL = 2e-3
METRIC_RTOL = 1e-3


def _smoke(module, **fields):
  config = module.get_config('smoke')
  for k, v in fields.items():
    setattr(config, k, v)
  config.lock()
  return config


def _final(workdir):
  """(params, model_state, last train record, last eval record) of a run."""
  run = checkpoints.restore_run(workdir)
  records = metric_writers.read_metrics(workdir)
  train = [r for r in records if r['split'] == 'train'][-1]
  evals = [r for r in records if r['split'] == 'eval'][-1]
  return train_fixtures.flat(run.params), train_fixtures.flat(run.model_state or {}), train, evals, run.step


def _train_both_ways(root, base, overrides):
  """The same points trained by the vmap engine and one after another."""
  vmapped = sweep.make_points(base, overrides, os.path.join(root, 'vmap'))
  alone = sweep.make_points(base, overrides, os.path.join(root, 'alone'))
  out_v = sweep.run_sweep(vmapped, sweep.ENGINES['vmap'])
  out_a = sweep.run_sweep(alone, sweep.ENGINES['sequential'])
  assert {o.status for o in [*out_v.values(), *out_a.values()]} == {sweep.FINISHED}
  return vmapped, alone


def _assert_same_runs(vmapped, alone):
  finals = []
  for v, a in zip(vmapped, alone):
    pv, sv, tv, ev, step_v = _final(v.workdir)
    pa, sa, ta, ea, step_a = _final(a.workdir)
    assert step_v == step_a == v.config.num_steps
    np.testing.assert_allclose(pv, pa, atol=PARAM_ATOL)
    np.testing.assert_allclose(sv, sa, rtol=METRIC_RTOL, atol=1e-6)
    for record_v, record_a in ((tv, ta), (ev, ea)):
      keys = set(record_a) - {'steps_per_sec', 'split'}
      assert keys <= set(record_v)
      for k in keys:
        np.testing.assert_allclose(record_v[k], record_a[k], rtol=METRIC_RTOL, atol=1e-5,
                                   err_msg=k)
    # Every file a single run writes.
    for name in ('config.json', 'launches.jsonl', 'figures'):
      assert os.path.exists(os.path.join(v.workdir, name)), name
    # TensorBoard's HPARAMS tab: the point's one row, as its single run's.
    rows_v, rows_a = (train_fixtures.hparams_rows(w) for w in (v.workdir, a.workdir))
    assert list(rows_v) == ['.'] and rows_v['.']['starts'] == rows_a['.']['starts']
    assert rows_v['.']['hparams'] == metric_writers.run_hparams(v.workdir)
    assert rows_v['.']['metrics']['eval/elbo'][0] == v.config.num_steps
    finals.append((pv, ev))
  # The points really differ: the tolerance cannot hide a swapped point.
  assert np.max(np.abs(finals[0][0] - finals[1][0])) > 10 * PARAM_ATOL
  return finals


@pytest.fixture(scope='module')
def sos_runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('sos')
  return _train_both_ways(str(root), _smoke(default), SOS_POINTS)


@pytest.mark.slow
def test_vmapped_sos_vae_points_equal_their_single_runs(sos_runs):
  finals = _assert_same_runs(*sos_runs)
  # The constraints acted: the multipliers moved away from 0.
  assert all(evals['multiplier_kl'] > 0 for _, evals in finals)
  assert any(evals['multiplier_entropy'] > 0 for _, evals in finals)


@pytest.mark.slow
def test_looped_sos_vae_points_equal_their_single_runs(sos_runs, tmp_path):
  # --mode=loop: the same engine, the one-point step compiled once and
  # applied to each point in turn (the faster on XLA:CPU).
  _, alone = sos_runs
  looped = sweep.make_points(_smoke(default), SOS_POINTS, str(tmp_path / 'loop'))
  outcomes = sweep.run_sweep(looped, sweep.ENGINES['loop'])
  assert {o.status for o in outcomes.values()} == {sweep.FINISHED}
  _assert_same_runs(looped, alone)


def test_over_points_loop_equals_vmap_with_shared_arguments():
  fn = lambda w, x, b: (jnp.tanh(x @ w + b), {'norm': jnp.sum(w ** 2)})
  w = jnp.arange(24.0).reshape(3, 4, 2) / 10
  x = jnp.linspace(0, 1, 20).reshape(5, 4)
  b = jnp.array([[0.5, -1.0], [0.0, 1.0], [2.0, 3.0]])
  want = sweep_vmap.over_points(fn, 'vmap', (0, None, 0))(w, x, b)
  got = sweep_vmap.over_points(fn, 'loop', (0, None, 0))(w, x, b)
  jax.tree.map(lambda g, v: np.testing.assert_allclose(g, v, rtol=1e-6), got, want)
  assert got[0].shape == (3, 5, 2)
  with pytest.raises(ValueError, match="strategy='pmap'"):
    sweep_vmap.over_points(fn, 'pmap')


@pytest.mark.slow
def test_vmapped_optimal_sigma_points_equal_their_single_runs(tmp_path):
  vmapped, alone = _train_both_ways(str(tmp_path), _smoke(optimal_sigma), SIGMA_POINTS)
  _assert_same_runs(vmapped, alone)
  state = checkpoints.restore_run(vmapped[0].workdir).model_state
  assert jax.tree.leaves(state), 'the optimal-sigma head keeps running statistics'


@pytest.mark.slow
def test_a_vmapped_point_is_evaluable_as_a_single_run(sos_runs):
  vmapped, _ = sos_runs
  config = checkpoints.load_config(vmapped[1].workdir)
  assert config.seed == 1 and config.pretrain_steps == 3
  assert config.constraints.kl.target == pytest.approx(0.2)


def test_points_that_change_shapes_are_refused(tmp_path):
  points = sweep.make_points(_smoke(default), [{'likelihood.rank': 2}, {'likelihood.rank': 3}],
                             str(tmp_path))
  with pytest.raises(ValueError, match='likelihood.rank'):
    sweep_vmap.check_traceable(points)


def test_sweep_mesh_splits_models_then_data():
  assert sweep_vmap.mesh_shape(2, 8, 4) == (2, 2)
  assert sweep_vmap.mesh_shape(3, 8, 4) == (1, 4)
  assert sweep_vmap.mesh_shape(8, 8, 4) == (4, 1)
  assert sweep_vmap.mesh_shape(1, 6, 4) == (1, 2)


def test_exit_codes():
  # In a subprocess: the command module defines absl flags at import, which
  # would clash with other commands' flags in the test process.
  script = '''
from experiments import sweep as command
from sosvae_jax import sweep
done, stopped = sweep.Outcome(sweep.FINISHED), sweep.Outcome(sweep.UNFINISHED)
failed = sweep.Outcome(sweep.FAILED)
print([command.exit_code(False, [done, done]), command.exit_code(False, [done, stopped]),
       command.exit_code(False, [failed, stopped]), command.exit_code(True, [done])])
'''
  out = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split('\n')[-2] == '[0, 4, 1, 1]'


# ----------------------------------------------------------------------------
# Interrupted sweeps: SIGKILL, then SIGTERM (exit 4), then to the end.
# ----------------------------------------------------------------------------
LONG = {'num_steps': 240, 'checkpoint_every_steps': 80, 'eval_every_steps': 240,
        'log_every_steps': 80, 'pretrain_steps': 2}
LONG_GRID = ['--grid=seed=0,1']


def _sweep_command(workdir, *extra):
  args = [f'--config.{k}={v}' for k, v in LONG.items()]
  return [sys.executable, '-m', 'experiments.sweep',
          '--config=experiments/configs/default.py:smoke', f'--workdir={workdir}',
          '--mode=vmap', *LONG_GRID, *args, *extra]


def _wait_for(proc, pattern, timeout=600):
  """Lines of proc's output up to the first holding `pattern`."""
  seen, t0 = [], time.time()
  for line in proc.stdout:
    seen.append(line)
    if pattern in line:
      return seen
    assert time.time() - t0 < timeout, ''.join(seen[-50:])
  raise AssertionError(f'{pattern!r} never appeared:\n' + ''.join(seen[-80:]))


@pytest.mark.slow
def test_interrupted_vmapped_sweep_resumes_to_the_uninterrupted_result(tmp_path):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  workdir = tmp_path / 'interrupted'
  popen = lambda: subprocess.Popen(_sweep_command(workdir), cwd=ROOT, env=env, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  # 1. SIGKILL once both points have their first checkpoint.
  proc = popen()
  try:
    _wait_for(proc, f'step {LONG["checkpoint_every_steps"]}/')
    dirs = sorted(p for p in workdir.iterdir() if p.is_dir())
    assert len(dirs) == 2
    while not all(LONG['checkpoint_every_steps'] in checkpoints.checkpoint_steps(str(d))
                  for d in dirs):
      time.sleep(0.01)
    proc.kill()
  finally:
    proc.kill()
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not any(sweep.is_trained(str(d), LONG['num_steps']) for d in dirs)
  # 2. SIGTERM once the loop runs: a checkpoint, exit code 4.
  proc = popen()
  try:
    lines = _wait_for(proc, 'points of lowrank_gaussian together')
    assert f'(from step {LONG["checkpoint_every_steps"]})' in lines[-1]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
  finally:
    proc.kill()
  assert proc.returncode == 4, out[-3000:]
  assert not any(sweep.is_trained(str(d), LONG['num_steps']) for d in dirs)
  # 3. To the end.
  done = subprocess.run(_sweep_command(workdir), cwd=ROOT, env=env, text=True,
                        capture_output=True, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  # The uninterrupted sweep, in this process.
  base = _smoke(default, **LONG)
  overrides = sweep.grid_points(base, [g.removeprefix('--grid=') for g in LONG_GRID])
  reference = sweep.make_points(base, overrides, str(tmp_path / 'reference'))
  outcomes = sweep.run_sweep(reference, sweep.ENGINES['vmap'])
  assert {o.status for o in outcomes.values()} == {sweep.FINISHED}
  for ref in reference:
    resumed = workdir / ref.name
    p_ref, s_ref, _, e_ref, _ = _final(ref.workdir)
    p_res, s_res, _, e_res, step = _final(str(resumed))
    assert step == LONG['num_steps']
    np.testing.assert_allclose(p_res, p_ref, atol=1e-5)
    for k in e_ref:
      if k != 'split':
        np.testing.assert_allclose(e_res[k], e_ref[k], rtol=1e-5, err_msg=k)
    launches = (resumed / 'launches.jsonl').read_text().splitlines()
    assert [json.loads(l)['step'] for l in launches][:2] == [0, LONG['checkpoint_every_steps']]


# ----------------------------------------------------------------------------
# Four CPU devices, both strategies: the points train there as they train
# alone, and their checkpoints are read back on this process's one device.
# ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize('mode', ['vmap', 'loop'])
def test_sweep_on_four_devices(sos_runs, tmp_path, mode):
  _, alone = sos_runs
  sweep_file = tmp_path / 'points.py'
  sweep_file.write_text(f'def get_sweep():\n  return {SOS_POINTS!r}\n')
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=4').strip()
  workdir = tmp_path / 'sharded'
  proc = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep',
       '--config=experiments/configs/default.py:smoke', f'--workdir={workdir}',
       f'--mode={mode}', f'--sweep={sweep_file}'],
      cwd=ROOT, env=env, text=True, capture_output=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  if mode == 'vmap':
    assert "{'model': 2, 'data': 2} mesh" in proc.stderr
  for a in alone:
    sharded = str(workdir / a.name)
    assert sweep.is_trained(sharded, a.config.num_steps)
    # Written on 4 devices, read here on 1.
    assert checkpoints.restore_run(sharded).step == a.config.num_steps
    records = metric_writers.read_metrics(sharded)
    for split in ('train', 'eval'):
      got = [r for r in records if r['split'] == split]
      want = [r for r in metric_writers.read_metrics(a.workdir) if r['split'] == split]
      assert [r['step'] for r in got] == [r['step'] for r in want]
      for g, w in zip(got, want):
        for k in set(w) - {'split', 'steps_per_sec'}:
          np.testing.assert_allclose(g[k], w[k], rtol=METRIC_RTOL, atol=1e-5, err_msg=k)
