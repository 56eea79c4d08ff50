"""Compile time of a run's initialisation: XLA:CPU's default level against
train_state.INIT_COMPILER_OPTIONS (its lowest), side by side.

For each config, the same lowered `create_train_state` is compiled both
ways in alternating rounds (caches cleared before each compile), then both
programs run from one key: the table gives the median compile times, their
ratio, and how far the initial parameters of the two differ (the share of
entries that differ and the largest difference in units in the last place).

  .venv/bin/python benchmarks/init_compile_benchmark.py [--rounds=3]
"""

import functools
import importlib
import time

from absl import app
from absl import flags
import jax
import numpy as np

from sosvae_jax import train_state

_CONFIGS = flags.DEFINE_list(
    'configs', ['default', 'default:smoke', 'beta_vae', 'table1.fmnist_structured'],
    'Modules of experiments.configs (name or name:arg).')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Compiles of each kind per config.')


def _config(spec: str):
  name, _, arg = spec.partition(':')
  return importlib.import_module(f'experiments.configs.{name}').get_config(arg or None)


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
  """Largest distance in float32 units in the last place."""
  ia = a.astype(np.float32).view(np.int32).astype(np.int64)
  ib = b.astype(np.float32).view(np.int32).astype(np.int64)
  # Map the sign-magnitude bit patterns onto one ordered integer line.
  ia = np.where(ia < 0, -(ia & 0x7FFFFFFF), ia)
  ib = np.where(ib < 0, -(ib & 0x7FFFFFFF), ib)
  return int(np.max(np.abs(ia - ib), initial=0))


def main(argv):
  del argv
  print(f'devices: {jax.devices()}')
  print('| config | default compile (s) | lowest level (s) | ratio | entries that differ '
        '| max ulps |')
  print('|---|---|---|---|---|---|')
  for spec in _CONFIGS.value:
    config = _config(spec)
    parts = train_state.build_parts(config)
    root = jax.random.key(config.seed)
    lowered = jax.jit(functools.partial(train_state.create_train_state, config,
                                        parts)).lower(root)
    times = {'default': [], 'lowest': []}
    programs = {}
    for _ in range(_ROUNDS.value):
      for kind, options in (('default', None),
                            ('lowest', train_state.INIT_COMPILER_OPTIONS)):
        jax.clear_caches()
        start = time.perf_counter()
        programs[kind] = lowered.compile(compiler_options=options)
        times[kind].append(time.perf_counter() - start)
    a, b = (jax.tree.leaves(jax.device_get(programs[k](root).params))
            for k in ('default', 'lowest'))
    differ = sum(int(np.sum(x != y)) for x, y in zip(a, b)) / sum(x.size for x in a)
    ulps = max(_ulps(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    t_default, t_lowest = (float(np.median(times[k])) for k in ('default', 'lowest'))
    print(f'| {spec} | {t_default:.2f} | {t_lowest:.2f} | {t_default / t_lowest:.1f}x '
          f'| {differ:.2%} | {ulps} |', flush=True)


if __name__ == '__main__':
  app.run(main)
