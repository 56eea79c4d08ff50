"""Multi-process data parallelism: two CPU processes joined by jax.distributed.

tests/test_sharding.py compares 1 and 4 devices of one process for the
SOS-VAE; here the same comparison covers a likelihood with running statistics
(the optimal-sigma average over the global batch). Then two
processes (one CPU device each, gloo collectives, coordinator on localhost)
are started with `distributed.initialize_from_flags`, the function that
experiments/main.py calls for --coordinator_address / --num_processes /
--process_id. They check that:

* a train step fed with each process's half of the batch gives the same loss,
  multipliers and parameters as one process stepping on the whole batch;
* each process reads its own shard of the data (input_pipeline with
  process_index / process_count);
* a checkpoint is written by both processes (orbax, OCDBT), restored into a
  fresh mesh-replicated state, and the step after it repeats the
  uninterrupted run exactly.

The full `train_and_evaluate` loop is not run here: on these shared 2-core
machines one two-process smoke run of it takes minutes (compiles of the
evaluation and figure functions in both processes).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from experiments.configs import default
from sosvae_jax import distributed
from sosvae_jax import input_pipeline
from sosvae_jax import sharding
import train_fixtures

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUM_PROCESSES = 2
_NUM_STEPS = 3  # the smoke config pretrains for 2 steps: step 3 trains P too
_LEARNING_RATE = 1e-3  # Adam's rate in the smoke config
_SOURCE_SIZE = 64  # images in the in-memory training source

# Run by every process: argv = process_id, port, output folder.
_SCRIPT = textwrap.dedent("""
    import os
    import sys

    import jax

    from sosvae_jax import distributed

    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    assert distributed.initialize_from_flags(f'localhost:{port}', NUM_PROCESSES, pid,
                                             initialization_timeout=120)
    import numpy as np
    from jax.experimental import multihost_utils
    from experiments.configs import default
    from sosvae_jax import checkpoints
    from sosvae_jax import input_pipeline
    from sosvae_jax import sharding
    from sosvae_jax import train

    assert jax.process_count() == NUM_PROCESSES and jax.process_index() == pid
    assert jax.local_device_count() == 1 and jax.device_count() == NUM_PROCESSES

    config = default.get_config('smoke')
    run = train.setup(config)
    mesh = sharding.make_mesh()
    # The step as train_and_evaluate builds it: replicated state, sharded
    # batch, state donated.
    step_fn = jax.jit(
        run.step, in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
        out_shardings=sharding.replicated(mesh), donate_argnums=0)
    initial = jax.device_get(run.state)
    fresh_state = lambda: jax.device_put(initial, sharding.replicated(mesh))

    # Each process reads its own shard of a 64-image source.
    source = np.random.default_rng(0).integers(
        0, 256, (SOURCE_SIZE,) + tuple(config.data.image_shape), dtype=np.uint8)
    local = config.batch_size // NUM_PROCESSES
    batches = input_pipeline.train_batches(source, local, seed=0, num_threads=1,
                                           process_index=pid, process_count=NUM_PROCESSES)
    manager = checkpoints.checkpoint_manager(os.path.join(out, 'run'), config)
    state, losses, local_batches, global_batches = fresh_state(), [], [], []
    for step in range(1, NUM_STEPS + 1):
      rows = next(batches)
      local_batches.append(rows)
      # Every process's rows, in process order: the global batch.
      global_batches.append(np.concatenate(list(multihost_utils.process_allgather(rows))))
      state, metrics = step_fn(state, sharding.global_batch(rows, mesh))
      losses.append(float(metrics['loss']))
      if step == NUM_STEPS - 1:
        assert checkpoints.save_checkpoint(manager, state, step)
        manager.wait_until_finished()

    local_value = lambda x: np.asarray(x.addressable_data(0))
    flat = lambda tree: np.concatenate([np.ravel(local_value(x)) for x in jax.tree.leaves(tree)])

    # Resume: a fresh state on the mesh, the checkpoint of step NUM_STEPS - 1
    # restored into it, and the last step repeated on the same rows.
    resumed = checkpoints.restore_latest(manager, fresh_state(), os.path.join(out, 'run'))
    resumed_step = int(local_value(resumed.step))
    resumed, metrics = step_fn(resumed, sharding.global_batch(local_batches[-1], mesh))
    manager.close()
    np.savez(os.path.join(out, f'process_{pid}.npz'), losses=np.asarray(losses),
             params=flat(state.params),
             multipliers=np.asarray([local_value(state.multipliers[k])
                                     for k in sorted(state.multipliers)]),
             resumed_from=resumed_step, resumed_loss=float(metrics['loss']),
             resumed_params=flat(resumed.params), local_batches=np.stack(local_batches),
             global_batches=np.stack(global_batches))
    print(f'process {pid} done', flush=True)
""").replace('NUM_PROCESSES', str(_NUM_PROCESSES)).replace('NUM_STEPS', str(_NUM_STEPS)).replace(
    'SOURCE_SIZE', str(_SOURCE_SIZE))


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _expected_global_batches(batch_size: int, image_shape) -> np.ndarray:
  """Each process's rows from input_pipeline, concatenated in process order."""
  source = np.random.default_rng(0).integers(
      0, 256, (_SOURCE_SIZE,) + tuple(image_shape), dtype=np.uint8)
  local = batch_size // _NUM_PROCESSES
  shards = []
  for pid in range(_NUM_PROCESSES):
    it = input_pipeline.train_batches(source, local, seed=0, num_threads=1,
                                      process_index=pid, process_count=_NUM_PROCESSES)
    shards.append(np.stack([next(it) for _ in range(_NUM_STEPS)]))
  return np.concatenate(shards, axis=1)  # (steps, B, H, W, C)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  """Runs _SCRIPT in two processes and, meanwhile, the 1-process reference."""
  out = tmp_path_factory.mktemp('multiprocess')
  env = dict(os.environ)
  env['JAX_PLATFORMS'] = 'cpu'
  env['XLA_FLAGS'] = ' '.join(f for f in env.get('XLA_FLAGS', '').split()
                              if 'force_host_platform_device_count' not in f)
  env['PYTHONPATH'] = _REPO + os.pathsep + env.get('PYTHONPATH', '')
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, '-c', _SCRIPT, str(pid), port, str(out)],
                            cwd=_REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
           for pid in range(_NUM_PROCESSES)]
  logs = []
  try:
    smoke = default.get_config('smoke')
    expected_batches = _expected_global_batches(smoke.batch_size, smoke.data.image_shape)
    reference = _reference_single_process(expected_batches)
    for proc in procs:
      logs.append(proc.communicate(timeout=600)[0])
  finally:
    for proc in procs:  # a hung peer must not outlive the test
      if proc.poll() is None:
        proc.kill()
  for pid, (proc, log) in enumerate(zip(procs, logs)):
    assert proc.returncode == 0, f'process {pid}:\n{log[-4000:]}'
  outputs = []
  for pid in range(_NUM_PROCESSES):
    with np.load(out / f'process_{pid}.npz') as data:
      outputs.append(dict(data))
  return {'dir': out, 'outputs': outputs, 'expected_batches': expected_batches,
          'reference': reference}


def _reference_single_process(global_batches: np.ndarray):
  """The same steps in one process on one device, on the global batches."""
  smoke = default.get_config('smoke')
  config, state, step = train_fixtures.smoke_step(
      smoke, pretrain_steps=smoke.pretrain_steps,
      variance_lr_scale=smoke.optimizer.variance_lr_scale)
  losses = []
  for batch in global_batches:
    state, metrics = step(state, batch)
    losses.append(float(metrics['loss']))
  params = np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(state.params)])
  mults = np.asarray([state.multipliers[k] for k in sorted(state.multipliers)])
  return np.asarray(losses), params, mults


@pytest.mark.slow
def test_each_process_reads_its_own_shard(results):
  outputs = results['outputs']
  batch_size = default.get_config('smoke').batch_size
  local = batch_size // _NUM_PROCESSES
  for pid, got in enumerate(outputs):
    assert got['local_batches'].shape[:2] == (_NUM_STEPS, local)
    # The global batch is the processes' rows in process order.
    np.testing.assert_array_equal(
        got['global_batches'][:, pid * local:(pid + 1) * local], got['local_batches'])
  np.testing.assert_array_equal(outputs[0]['global_batches'], outputs[1]['global_batches'])
  np.testing.assert_array_equal(outputs[0]['global_batches'], results['expected_batches'])
  # Different shards: no image of process 0 is read by process 1 (the
  # source images are distinct random arrays).
  flat = lambda b: {x.tobytes() for x in b.reshape((-1,) + b.shape[2:])}
  assert not flat(outputs[0]['local_batches']) & flat(outputs[1]['local_batches'])


@pytest.mark.slow
def test_two_processes_match_one_process(results):
  losses, params, mults = results['reference']
  for got in results['outputs']:
    assert np.all(np.isfinite(got['losses']))
    # float32: only the order of the batch-mean reduction differs (an
    # all-reduce of two partial sums over gloo instead of one sum).
    np.testing.assert_allclose(got['losses'], losses, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got['multipliers'], mults, rtol=1e-5, atol=1e-6)
    # As in test_sharding.py: a few tiny cancelling gradients change by up
    # to ~15% with the reduction order and Adam divides by |g|, so at most
    # 1 element in 10^4 outside float32 tolerance, all within 1% of the
    # Adam step.
    loose = ~np.isclose(got['params'], params, rtol=1e-5, atol=1e-6)
    assert loose.sum() <= 1e-4 * params.size, (loose.sum(), params.size)
    np.testing.assert_allclose(got['params'], params, rtol=0,
                               atol=0.01 * _LEARNING_RATE * _NUM_STEPS)


@pytest.mark.slow
def test_processes_hold_identical_replicas(results):
  outputs = results['outputs']
  # Replicated parameters must be bitwise equal on every process.
  np.testing.assert_array_equal(outputs[0]['params'], outputs[1]['params'])
  np.testing.assert_array_equal(outputs[0]['losses'], outputs[1]['losses'])


@pytest.mark.slow
def test_checkpoint_written_by_both_processes(results):
  step_dir = results['dir'] / 'run' / 'checkpoints' / str(_NUM_STEPS - 1)
  assert (step_dir / 'commit_success.txt').exists() or \
      (step_dir / 'default' / 'commit_success.txt').exists(), list(step_dir.iterdir())
  # OCDBT: every process wrote its own part of the checkpoint.
  written = {p.name for p in (step_dir / 'default').iterdir()}
  assert {f'ocdbt.process_{i}' for i in range(_NUM_PROCESSES)} <= written, written


@pytest.mark.slow
def test_resumed_step_repeats_the_uninterrupted_step(results):
  for got in results['outputs']:
    assert int(got['resumed_from']) == _NUM_STEPS - 1
    # Same processes, same rows, same restored state: CPU runs are
    # deterministic, so the repeated step is bitwise the original one.
    np.testing.assert_array_equal(got['resumed_loss'], got['losses'][-1])
    np.testing.assert_array_equal(got['resumed_params'], got['params'])


# ----------------------------------------------------------------------------
# Running statistics over the global batch: 1 vs 4 devices of one process.
# ----------------------------------------------------------------------------
# tests/test_sharding.py checks losses, parameters and multipliers of the
# SOS-VAE; here the likelihood keeps running statistics in model_state
# ('likelihood_stats': the optimal-sigma running average, computed from the
# whole global batch inside the sharded step).
_STATS_LIKELIHOOD = 'gaussian_optimal_sigma'
_STATS_SCRIPT = textwrap.dedent("""
    import sys

    import jax
    import ml_collections
    import numpy as np

    from experiments.configs import default
    from sosvae_jax import sharding
    from sosvae_jax import train

    assert jax.device_count() == 4, jax.devices()
    config = default.get_config('smoke')
    config.likelihood = ml_collections.ConfigDict({'name': sys.argv[2]})
    config.constraints.entropy.enabled = False
    run = train.setup(config)
    initial = jax.device_get(run.state)
    assert initial.model_state, 'no running statistics: pick another likelihood'
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8) for _ in range(3)]
    results = {}
    for n in (4, 1):
      mesh = sharding.make_mesh(n)
      step = jax.jit(run.step, in_shardings=(
              sharding.replicated(mesh), sharding.data_sharding(mesh)),
          out_shardings=sharding.replicated(mesh), donate_argnums=0)
      state = jax.device_put(initial, sharding.replicated(mesh))
      losses = []
      for b in batches:
        state, metrics = step(state, sharding.global_batch(b, mesh))
        losses.append(float(metrics['loss']))
      flat = lambda t: np.concatenate([np.ravel(np.asarray(x, np.float64))
                                       for x in jax.tree.leaves(t)])
      results[f'losses_{n}'] = np.asarray(losses)
      results[f'stats_{n}'] = flat(state.model_state)
      results['stats_initial'] = flat(initial.model_state)
      results[f'params_{n}'] = flat(state.params)
    np.savez(sys.argv[1], **results)
""")


@pytest.fixture(scope='module')
def stats_results(tmp_path_factory):
  path = tmp_path_factory.mktemp('stats') / 'results.npz'
  env = dict(os.environ)
  env['XLA_FLAGS'] = env.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4'
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = _REPO + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', _STATS_SCRIPT, str(path), _STATS_LIKELIHOOD],
                        cwd=_REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(path) as data:
    return dict(data)


@pytest.mark.slow
def test_running_statistics_do_not_depend_on_device_count(stats_results):
  r = stats_results
  assert np.all(np.isfinite(r['losses_4']))
  np.testing.assert_allclose(r['losses_4'], r['losses_1'], rtol=1e-5, atol=1e-6)
  # The statistics moved (three training steps) and agree to float32
  # rounding: each is a mean over the global batch, reduced in another order.
  assert np.any(r['stats_1'] != r['stats_initial'])
  np.testing.assert_allclose(r['stats_4'], r['stats_1'], rtol=1e-5, atol=1e-7)
  # Parameters as in test_sharding: Adam divides by |g|, so a gradient that
  # is a sum of large cancelling terms (reduced in another order) may move
  # its parameter differently by up to a few percent of the rate (measured
  # with this seed: one element of 410585, 1.3% of 3 steps). All but 1 in
  # 10^4 agree to float32 tolerance; none by more than Adam's step bound.
  p4, p1 = r['params_4'], r['params_1']
  loose = ~np.isclose(p4, p1, rtol=1e-5, atol=1e-6)
  assert loose.sum() <= 1e-4 * p1.size, (loose.sum(), p1.size)
  np.testing.assert_allclose(p4, p1, rtol=0, atol=0.1 * _LEARNING_RATE * 3)


# ----------------------------------------------------------------------------
# Flag checks (no processes started).
# ----------------------------------------------------------------------------
def test_no_flags_means_single_process():
  assert distributed.initialize_from_flags(None, None, None) is False


@pytest.mark.parametrize('flags, message', [
    (('localhost:1234', 2, None), '--process_id missing'),
    ((None, 2, 0), '--coordinator_address missing'),
    (('localhost', 2, 0), 'is not HOST:PORT'),
    (('localhost:99999', 2, 0), 'is not HOST:PORT'),
    (('localhost:1234', 0, 0), '--num_processes=0 must be >= 1'),
    (('localhost:1234', 2, 2), '--process_id=2 must be in [0, 1]'),
    (('localhost:1234', 2, -1), '--process_id=-1 must be in [0, 1]'),
    (('auto', 2, None), 'drop --num_processes'),
])
def test_bad_flags_raise_clear_errors(flags, message):
  with pytest.raises(distributed.DistributedSetupError) as info:
    distributed.check_flags(*flags)
  assert message in str(info.value)


def test_initialize_after_jax_started_says_so():
  # This pytest process has used JAX already (other tests, the mesh below).
  sharding.make_mesh()
  with pytest.raises(distributed.DistributedSetupError, match='already used'):
    distributed.initialize_from_flags(f'localhost:{_free_port()}', 1, 0,
                                      initialization_timeout=5)
