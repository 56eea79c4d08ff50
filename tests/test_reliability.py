"""A crash loses nothing and numbers stay finite: the train loop's failure cases."""

import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds
import train_fixtures

from experiments.configs import default
from sosvae_jax import checkpoints
from sosvae_jax import preemption
from sosvae_jax import train
from sosvae_jax import train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  config = default.get_config('smoke')
  config.data.source = 'tfds'
  for key, value in overrides.items():
    target = config
    *parents, leaf = key.split('.')
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def _run(config, workdir):
  with tfds.testing.mock_data(num_examples=64):
    return train.train_and_evaluate(config, str(workdir))


def _restore(workdir, step, like):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  manager.close()
  return state


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ---------------------------------------------------------------- non-finite
@pytest.mark.slow
def test_nonfinite_step_leaves_state_unchanged_and_is_counted():
  config = _config(**{'optimizer.learning_rate': 1e38})  # step 1 -> huge params
  _, state, step = train_fixtures.smoke_step(config)
  batch = train_fixtures.random_batch(0)
  after_one, _ = step(state, batch)
  assert int(after_one.nonfinite_in_a_row) == 0
  after_two, metrics = step(after_one, batch)
  assert not np.isfinite(float(metrics['loss']))
  assert int(after_two.step) == 2  # the data order still advances
  assert int(after_two.nonfinite_in_a_row) == 1 and int(after_two.nonfinite_total) == 1
  _assert_same((after_two.params, after_two.opt_state, after_two.multipliers),
               (after_one.params, after_one.opt_state, after_one.multipliers))
  assert bool(train_state.all_finite(after_two))


@pytest.mark.slow
def test_run_stops_after_consecutive_nonfinite_steps(tmp_path):
  config = _config(**{'optimizer.learning_rate': 1e38, 'max_nonfinite_steps': 3,
                      'num_steps': 12, 'checkpoint_every_steps': 2, 'eval_every_steps': 100,
                      'pretrain_steps': 0})
  with pytest.raises(train.NonFiniteError, match=r'Stopping at step \d+: 3 consecutive .*'
                     r'last good checkpoint is step \d+'):
    _run(config, tmp_path)
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps
  _, like, _ = train_fixtures.smoke_step(config)
  for s in steps:  # no checkpoint holds a non-finite value
    assert bool(train_state.all_finite(_restore(str(tmp_path), s, like)))


@pytest.mark.slow
def test_save_refuses_nonfinite_state(tmp_path):
  config = _config()
  _, state, _ = train_fixtures.smoke_step(config)
  bad = state.replace(multipliers={k: jnp.float32(np.nan) for k in state.multipliers})
  manager = checkpoints.checkpoint_manager(str(tmp_path), config)
  assert not checkpoints.save_checkpoint(manager, bad, 1)
  assert checkpoints.save_checkpoint(manager, state, 2)
  manager.wait_until_finished()
  assert manager.all_steps() == [2]
  manager.close()


# ---------------------------------------------------------------- corrupt checkpoint
@pytest.mark.slow
def test_corrupt_latest_checkpoint_is_skipped(tmp_path, caplog):
  straight = _run(_config(), tmp_path / 'a')
  _run(_config(), tmp_path / 'b')  # checkpoints 3 and 6
  data = tmp_path / 'b' / 'checkpoints' / '6'
  for path in data.rglob('*'):
    if path.is_file() and path.stat().st_size > 0 and 'd' in path.parts[-2:-1]:
      path.write_bytes(path.read_bytes()[:7])  # truncated mid-write
  with caplog.at_level(logging.WARNING):
    resumed = _run(_config(), tmp_path / 'b')
  assert 'Checkpoint at step 6 is unreadable' in caplog.text
  assert os.listdir(tmp_path / 'b' / 'corrupt_checkpoints')
  _assert_same(straight.params, resumed.params)


# ---------------------------------------------------------------- signals
def _start(workdir, *flags):
  cmd = [sys.executable, '-c', train_fixtures.MOCK_MAIN,
         '--config=experiments/configs/default.py:smoke',
         f'--workdir={workdir}', '--config.data.source=tfds', *flags]
  return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})


def _wait_for(predicate, proc, timeout=300):
  start = time.time()
  while not predicate():
    if proc.poll() is not None:
      raise AssertionError('run ended early:\n' + proc.stderr.read()[-3000:])
    if time.time() - start > timeout:
      raise AssertionError('timed out')
    time.sleep(0.05)


def _checkpoints(workdir):
  path = pathlib.Path(workdir) / 'checkpoints'
  return sorted(int(p.name) for p in path.iterdir() if p.name.isdigit()) if path.exists() else []


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_before_exit(tmp_path):
  proc = _start(tmp_path, '--config.num_steps=100000', '--config.checkpoint_every_steps=100000',
                '--config.log_every_steps=10', '--config.eval_every_steps=100000')
  _wait_for(lambda: (tmp_path / 'metrics.jsonl').exists(), proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 4, err[-3000:]  # stopped early, resumable
  assert 'Stopped by SIGTERM: checkpoint written at step' in err
  steps = _checkpoints(tmp_path)
  assert len(steps) == 1 and 0 < steps[0] < 100000


@pytest.mark.slow
def test_checkpoint_of_another_model_is_refused_not_quarantined(tmp_path):
  """Structure mismatch is not corruption: stop with a message, move nothing."""
  from sosvae_jax import config_checks
  _run(_config(**{'likelihood.rank': 3}), tmp_path)
  other, state, _ = train_fixtures.smoke_step(_config(**{'likelihood.rank': 2}))
  manager = checkpoints.checkpoint_manager(str(tmp_path), other)
  with pytest.raises(config_checks.ConfigError, match=r'step 6 .*different model.*'
                     r'parameters differ at .*factor_head'):
    checkpoints.restore_latest(manager, state, str(tmp_path))
  manager.close()
  assert _checkpoints(tmp_path) == [3, 6]
  assert not (tmp_path / 'corrupt_checkpoints').exists()


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_exits_4(tmp_path):
  proc = _start(tmp_path, '--config.num_steps=100000', '--config.checkpoint_every_steps=100000',
                '--config.log_every_steps=10', '--config.eval_every_steps=100000')
  _wait_for(lambda: (tmp_path / 'metrics.jsonl').exists(), proc)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 4, err[-3000:]
  assert 'Stopped by SIGINT (Ctrl-C): checkpoint written at step' in err
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err
  steps = _checkpoints(tmp_path)
  assert len(steps) == 1 and 0 < steps[0] < 100000


def test_second_ctrl_c_exits_at_once():
  # The handler alone: a real run finishes its checkpoint too fast for a
  # second signal to land reliably in between.
  script = textwrap.dedent("""
      import os, signal, time
      from sosvae_jax import preemption
      with preemption.PreemptionWatch(None) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert stop.reached(1), 'the first Ctrl-C must only ask to stop'
        print('first handled', flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
      print('not reached')
  """)
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                        text=True, timeout=120, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == preemption.FORCED_EXIT == 130, proc.stderr[-3000:]
  assert proc.stdout.split() == ['first', 'handled']
  assert 'SIGINT (Ctrl-C) again: exiting at once' in proc.stderr


@pytest.mark.slow
def test_ctrl_c_during_a_compile_in_the_setup_waits_for_it():
  """A KeyboardInterrupt inside a JAX trace or compile makes the interpreter's
  exit crash (a segfault, not exit code 130): the set-up's watch lets the
  compile finish and end_setup raises the KeyboardInterrupt afterwards."""
  script = textwrap.dedent("""
      import os, signal, sys, threading
      import jax, jax.numpy as jnp
      from sosvae_jax import preemption
      def f(x):
        for i in range(100):
          x = jnp.sin(x @ x.T) + i
        return x
      with preemption.PreemptionWatch(None) as watch:
        threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
        jax.jit(f)(jnp.ones((8, 8))).block_until_ready()
        print('compiled', flush=True)
        try:
          watch.end_setup()
        except KeyboardInterrupt:
          print('interrupted', flush=True)
          sys.exit(130)
  """)
  proc = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert proc.stdout.split() == ['compiled', 'interrupted']


# Run by each of two processes joined by jax.distributed: argv = process id,
# port, output folder. A cross-process collective every step (as in a train
# step) and orbax's multi-host save: a process that stops alone leaves the
# other hanging.
_TWO_PROCESS_LOOP = textwrap.dedent("""
    import os, sys, time
    from sosvae_jax import distributed
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    assert distributed.initialize_from_flags(f'localhost:{port}', 2, pid,
                                             initialization_timeout=120)
    import numpy as np
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils
    from sosvae_jax import preemption
    manager = ocp.CheckpointManager(os.path.join(out, 'checkpoints'))
    with preemption.PreemptionWatch(manager) as stop:
      for step in range(1, 100000):
        assert multihost_utils.process_allgather(np.int32(step)).sum() == 2 * step
        if step == 10:
          open(os.path.join(out, f'ready_{pid}'), 'w').close()
        if stop.reached(step):
          manager.save(step, args=ocp.args.StandardSave({'step': np.int32(step)}),
                       force=True)
          manager.wait_until_finished()
          break
        time.sleep(0.01)
    manager.close()
    print(f'stopped at {step}: {stop.reason()}', flush=True)
""")


def _two_process_setting() -> tuple[str, dict[str, str]]:
  """A free localhost port for jax.distributed and the environment of two
  one-device CPU processes."""
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(('localhost', 0))
    port = str(s.getsockname()[1])
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(ROOT)}
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'force_host_platform_device_count' not in f)
  return port, env


def _kill_hung(procs) -> None:
  """A hung process must not outlive its test."""
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.communicate()


@pytest.mark.slow
@pytest.mark.parametrize('interrupted', [(1,), (0, 1)], ids=['one process', 'all'])
def test_ctrl_c_in_a_multiprocess_run_stops_all_at_one_step(tmp_path, interrupted):
  """Ctrl-C in one process of two (or in all, as a terminal sends it) is passed
  to JAX's preemption notifier: both save the same step and exit cleanly."""
  port, env = _two_process_setting()
  procs = [subprocess.Popen([sys.executable, '-c', _TWO_PROCESS_LOOP, str(pid), port,
                             str(tmp_path)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for pid in range(2)]
  try:
    deadline = time.time() + 180
    while not all((tmp_path / f'ready_{pid}').exists() for pid in range(2)):
      assert time.time() < deadline and all(p.poll() is None for p in procs)
      time.sleep(0.2)
    for pid in interrupted:
      procs[pid].send_signal(signal.SIGINT)
    logs = [p.communicate(timeout=120)[0] for p in procs]
  finally:
    _kill_hung(procs)
  for pid, (proc, log) in enumerate(zip(procs, logs)):
    assert proc.returncode == 0, f'process {pid}:\n{log[-3000:]}'
    assert 'KeyboardInterrupt' not in log
  steps = [int(log.rsplit('stopped at ', 1)[1].split(':')[0]) for log in logs]
  assert steps[0] == steps[1] >= 10
  assert 'Stopped by SIGINT (Ctrl-C)' in logs[1]
  assert sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir()
                if p.name.isdigit()) == [steps[0]]


# experiments.main on mock data, with a real SIGINT to itself the first time
# the set-up calls argv[1] ('-': never), before the train loop starts.
_MAIN_INTERRUPTED_IN_SETUP = textwrap.dedent("""
    import importlib, os, signal, sys
    import tensorflow_datasets as tfds
    from absl import app
    from experiments import main
    target = sys.argv[1]
    if target != '-':
      module_name, name = target.rsplit('.', 1)
      module = importlib.import_module(module_name)
      original = getattr(module, name)
      def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)
      setattr(module, name, interrupted)
    with tfds.testing.mock_data(num_examples=64):
      app.run(main.main, argv=[sys.argv[0]] + sys.argv[2:])
""")
# The set-up's start, its first trace (the initial state) and, after the
# checkpoint manager and the data iterator exist, its last step.
SETUP_POINTS = ('sosvae_jax.train.setup', 'sosvae_jax.train_state.create_train_state',
                'sosvae_jax.input_pipeline.first_images')


def _main_interrupted_in_setup(target, workdir, *flags):
  return [sys.executable, '-c', _MAIN_INTERRUPTED_IN_SETUP, target,
          '--config=experiments/configs/default.py:smoke', f'--workdir={workdir}',
          '--config.data.source=tfds', '--config.num_steps=40', *flags]


@pytest.mark.slow
@pytest.mark.parametrize('target', SETUP_POINTS)
def test_ctrl_c_before_the_loop_ends_at_once_with_130(tmp_path, target):
  proc = subprocess.run(_main_interrupted_in_setup(target, tmp_path), cwd=ROOT,
                        capture_output=True, text=True, timeout=300,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert ('Interrupted (Ctrl-C) outside the train loop: nothing to save; rerun the same '
          'command to start or resume.') in proc.stderr
  assert 'Traceback' not in proc.stderr and 'Training lowrank_gaussian' not in proc.stderr
  assert _checkpoints(tmp_path) == []


@pytest.mark.slow
def test_ctrl_c_before_the_loop_of_a_multiprocess_run_stops_all_at_one_step(tmp_path):
  """Ctrl-C in one of two processes during the set-up: ending it alone would
  leave both hanging (the other in its first collective, this one in
  jax.distributed's shutdown); instead both save step 1 and exit 4."""
  port, env = _two_process_setting()
  procs = [subprocess.Popen(
      _main_interrupted_in_setup(SETUP_POINTS[-1] if pid == 1 else '-', tmp_path,
                                 f'--coordinator_address=localhost:{port}',
                                 '--num_processes=2', f'--process_id={pid}'),
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for pid in range(2)]
  try:
    logs = [p.communicate(timeout=400)[0] for p in procs]
  finally:
    _kill_hung(procs)
  for pid, (proc, log) in enumerate(zip(procs, logs)):
    assert proc.returncode == 4, f'process {pid}:\n{log[-3000:]}'
    assert 'Traceback' not in log and 'KeyboardInterrupt' not in log
  assert 'Reached the pre-emption sync point: checkpoint written at step 1' in logs[0]
  assert 'Stopped by SIGINT (Ctrl-C): checkpoint written at step 1' in logs[1]
  assert _checkpoints(tmp_path) == [1]


@pytest.mark.slow
def test_diverging_run_ends_with_the_nonfinite_message(tmp_path):
  """A huge learning rate: NaN images at an evaluation must not crash the
  snapshots before the run stops with its own message and exit code 3."""
  proc = _start(tmp_path, '--config.optimizer.learning_rate=1e6',
                '--config.max_nonfinite_steps=2', '--config.num_steps=30')
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 3, err[-3000:]
  assert 'consecutive steps had a non-finite' in err and 'Traceback' not in err


# ------------------------------------------------ low-rank capacitance failure
def _capacitance64(p, d):
  w = p.astype(np.float64) / np.sqrt(d.astype(np.float64))[..., None]
  return np.eye(p.shape[-1]) + np.einsum('bsr,bsq->brq', w, w)


def test_failed_capacitance_factorisation_is_named():
  # Parallel factor columns far above a tiny diagonal: I + P^T D^-1 P is
  # exactly singular once rounded to float32, and jnp's Cholesky returns NaN
  # silently (no error): the diagnosis must say so, with the condition.
  column = np.random.default_rng(0).normal(size=(2, 784, 1)).astype(np.float32)
  p, d = np.repeat(column, 3, axis=-1), np.full((2, 784), 1e-5, np.float32)
  assert np.isnan(np.asarray(jnp.linalg.cholesky(jnp.asarray(_capacitance64(p, d),
                                                             jnp.float32)))).any()
  message = train.capacitance_diagnosis(p, d, capacitance_jitter=None)
  condition = np.linalg.cond(_capacitance64(p, d)).max()
  assert f'condition numbers up to {condition:.2g}' in message
  assert 'float32 Cholesky returned NaN for 2 of 2 images' in message
  assert 'config.likelihood.fixed_diag' in message


def test_sound_capacitance_is_not_blamed():
  p = np.random.default_rng(1).normal(size=(2, 784, 3)).astype(np.float32) * 1e-2
  assert train.capacitance_diagnosis(p, np.full((2, 784), 1e-5, np.float32),
                                    capacitance_jitter=None) == ''
  p[0, 5, 1] = np.nan
  for jitter in (None, 1e-6):  # no jitter mends a non-finite P
    assert 'non-finite for 1 of 2 images' in train.capacitance_diagnosis(
        p, np.full((2, 784), 1e-5, np.float32), capacitance_jitter=jitter)


def test_nonfinite_message_carries_the_diagnosis(tmp_path):
  manager = ocp.CheckpointManager(str(tmp_path / 'checkpoints'))
  with pytest.raises(train.NonFiniteError, match='Cause found on the last batch: the '
                     'capacitance failed. Lower'):
    train._check_nonfinite(3, 10, 3, manager, lambda: 'the capacitance failed')

  def broken():
    raise RuntimeError('no model')
  with pytest.raises(train.NonFiniteError) as info:  # a failing diagnosis hides nothing
    train._check_nonfinite(3, 10, 3, manager, broken)
  assert 'Cause found' not in str(info.value)
  manager.close()


@pytest.mark.slow
@pytest.mark.parametrize('module', ['experiments.main', 'experiments.sweep',
                                    'experiments.figures', 'experiments.report'])
def test_ctrl_c_while_a_command_starts_ends_it_with_130_and_one_line(tmp_path, module):
  flags = {'experiments.main': ['--config=experiments/configs/default.py:smoke'],
           'experiments.sweep': ['--config=experiments/configs/default.py:smoke',
                                 '--grid=seed=0,1'],
           'experiments.figures': [],
           'experiments.report': ['--workdirs=a,b', f'--out={tmp_path / "report"}']}[module]
  # Moments inside the imports, which take seconds (jax, distrax, tfp).
  for delay in (0.2, 0.5, 0.9):
    proc = subprocess.Popen([sys.executable, '-m', module, f'--workdir={tmp_path / "run"}',
                             *flags], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (delay, err[-3000:])
    assert 'Interrupted (Ctrl-C) while the command was starting' in err, (delay, err)
    assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, (delay, err)
    assert not (tmp_path / 'run').exists()
