"""Data parallelism: the train step on 4 CPU devices equals the step on 1.

The device count is fixed when JAX starts, so the multi-device run happens in
a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=4 (as in
big_vision `utils_test.py`); it saves its results with np.savez and the tests
compare them here.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NUM_DEVICES = 4
_NUM_STEPS = 3  # the smoke config pretrains for 2 steps: step 3 trains P too
_LEARNING_RATE = 1e-3  # Adam's rate in the smoke config

# Runs in a fresh interpreter with 4 host devices; writes everything to argv[1].
_SCRIPT = textwrap.dedent("""
    import sys

    import jax
    import numpy as np

    from experiments.configs import default
    from sosvae_jax import sharding
    from sosvae_jax import train

    assert jax.device_count() == 4, jax.devices()
    config = default.get_config('smoke')
    config.batch_size = 8
    setup = train.setup(config)
    initial = setup.state
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (config.batch_size,) + tuple(config.data.image_shape),
                            dtype=np.uint8) for _ in range(NUM_STEPS)]

    def run(num_devices):
      mesh = sharding.make_mesh(num_devices)
      traces = []

      def counted_step(state, batch):
        traces.append(1)  # runs only while tracing
        return setup.step(state, batch)

      step_fn = jax.jit(
          counted_step,
          in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
          out_shardings=sharding.replicated(mesh))
      state = jax.device_put(initial, sharding.replicated(mesh))
      losses, batch_devices = [], []
      for b in batches:
        batch = sharding.global_batch(b, mesh)
        batch_devices.append(len(batch.sharding.device_set))
        state, metrics = step_fn(state, batch)
        losses.append(np.asarray(metrics['loss']))
      params = np.concatenate([np.ravel(np.asarray(x))
                               for x in jax.tree.leaves(state.params)])
      mults = np.asarray([state.multipliers[k] for k in sorted(state.multipliers)])
      return {f'losses_{num_devices}': np.asarray(losses),
              f'multipliers_{num_devices}': mults,
              f'params_{num_devices}': params,
              f'step_{num_devices}': np.asarray(state.step),
              f'batch_devices_{num_devices}': np.asarray(batch_devices),
              f'traces_{num_devices}': np.asarray(len(traces))}

    results = {**run(4), **run(1)}
    try:
      sharding.check_batch_size(6, sharding.make_mesh(4))
      results['indivisible_raised'] = np.asarray(False)
    except ValueError as e:
      results['indivisible_raised'] = np.asarray('divisible' in str(e))
    sharding.check_batch_size(8, sharding.make_mesh(4))  # must not raise
    results['learning_rate'] = np.asarray(config.optimizer.learning_rate)
    np.savez(sys.argv[1], **results)
""").replace('NUM_STEPS', str(_NUM_STEPS))


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  """Runs the 1- and 4-device training in one 4-device subprocess."""
  path = tmp_path_factory.mktemp('sharding') / 'results.npz'
  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      f' --xla_force_host_platform_device_count={_NUM_DEVICES}')
  env['JAX_PLATFORMS'] = 'cpu'
  env['PYTHONPATH'] = _REPO + os.pathsep + env.get('PYTHONPATH', '')
  proc = subprocess.run([sys.executable, '-c', _SCRIPT, str(path)], cwd=_REPO,
                        env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(path) as data:
    return dict(data)


@pytest.mark.slow
def test_batch_is_sharded_over_all_devices(results):
  np.testing.assert_array_equal(results['batch_devices_4'], [_NUM_DEVICES] * _NUM_STEPS)
  np.testing.assert_array_equal(results['batch_devices_1'], [1] * _NUM_STEPS)


@pytest.mark.slow
def test_four_devices_match_one_device(results):
  assert int(results['step_4']) == int(results['step_1']) == _NUM_STEPS
  assert float(results['learning_rate']) == _LEARNING_RATE
  assert np.all(np.isfinite(results['losses_4']))
  # float32 tolerance: the only difference is the order of the batch-mean
  # reduction (an all-reduce over 4 partial sums instead of one sum).
  np.testing.assert_allclose(results['losses_4'], results['losses_1'], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(results['multipliers_4'], results['multipliers_1'],
                             rtol=1e-5, atol=1e-6)
  # Parameters: float32 tolerance for all but a handful of elements. With
  # D = 1e-5 the loss is ~1e5 nats and the gradients span 1e-7 .. 1e6; a few
  # gradients of ~1e-7 are sums of large cancelling terms, so the reduction
  # order changes them by up to ~15% (measured), and Adam, which divides by
  # |g|, turns that into an absolute difference of up to ~1% of its step
  # (lr = 1e-3). So: at most 1 element in 10^4 outside rtol 1e-5 / atol 1e-6,
  # and every element within 1% of the lr per step.
  p4, p1 = results['params_4'], results['params_1']
  loose = ~np.isclose(p4, p1, rtol=1e-5, atol=1e-6)
  assert loose.sum() <= 1e-4 * p1.size, (loose.sum(), p1.size)
  np.testing.assert_allclose(p4, p1, rtol=0, atol=0.01 * _LEARNING_RATE * _NUM_STEPS)


@pytest.mark.slow
def test_sharded_step_traces_once(results):
  # One trace per jitted step function over all _NUM_STEPS steps.
  assert int(results['traces_4']) == 1
  assert int(results['traces_1']) == 1


@pytest.mark.slow
def test_check_batch_size_raises_for_indivisible_batch(results):
  assert bool(results['indivisible_raised'])

