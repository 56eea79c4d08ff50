"""Times the structured-precision log_prob + gradient: shift filters vs dense.

  python benchmarks/structured_benchmark.py                 # 32x32 and 64x64
  python benchmarks/structured_benchmark.py --sizes=32 --batch_size=2

For each image side (H = W) the log-likelihood of Dorta et al.'s
structured Gaussian (dorta2018_vae_structured_residuals.txt section 4.4) of
a batch of B grayscale images is timed as jit(value_and_grad(sum of
log_prob)) w.r.t. (loc, log_diag, off_diag), three ways:

  conv            sosvae_jax StructuredPrecisionNormal.log_prob: L^T r by
                  one-hot shift filters, O(S M) time and memory.
  dense_factor    L scattered into a dense [S, S] matrix, then L^T r as a
                  dense mat-vec: O(S^2) memory and time.
  dense_precision the dense precision Lambda = L L^T built explicitly
                  (O(S^3) flops, O(S^2) memory), then r^T Lambda r.

All three add sum(log_diag) for log det L. Each function is compiled and
warmed up, then called --repeats times with block_until_ready, the methods
interleaved round by round so that load from other processes hits all of
them alike; times are medians and ratios medians of the within-round
ratios. Memory: the compiled function's memory_analysis() (temp bytes, plus
argument and output bytes), which XLA reports on CPU and GPU; on GPUs the
JSON also records memory_stats() peak_bytes_in_use (a running maximum over
the process; cases run from small to large). Results go to --out (JSON).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli  # pylint: disable=g-import-not-at-top
from sosvae_jax.distributions import structured  # pylint: disable=g-import-not-at-top

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['32', '64'], 'Image sides H = W.')
flags.DEFINE_integer('kernel_size', 3, 'Neighbourhood n_f.')
flags.DEFINE_integer('batch_size', 4, 'Images per call (B).')
flags.DEFINE_integer('repeats', 7, 'Timed calls per case; the median is reported.')
flags.DEFINE_list('methods', ['conv', 'dense_factor', 'dense_precision'],
                  'Which implementations to time.')
flags.DEFINE_integer('seed', 0, 'Seed of the random parameters.')
cli.DEFINE_path('out', None, 'JSON output; default '
                'benchmarks/results/structured_<platform>.json.')

_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------
# The three log-likelihoods: (x, loc, log_diag, off_diag) -> summed log_prob.
# ----------------------------------------------------------------------------
def _conv(x, loc, log_diag, off_diag, *, k):
  dist = structured.StructuredPrecisionNormal(loc, log_diag, off_diag,
                                              kernel_size=k)
  return jnp.sum(dist.log_prob(x))


def _dense_terms(x, loc, log_diag, off_diag, k):
  b, h, w = x.shape
  lower = structured.dense_cholesky_factor(log_diag, off_diag,
                                           kernel_size=k)  # (B, S, S)
  r = (x - loc).reshape((b, h * w))  # (B, S)
  const = -0.5 * h * w * _LOG_2PI + jnp.sum(log_diag, axis=(-2, -1))
  return lower, r, const


def _dense_factor(x, loc, log_diag, off_diag, *, k):
  lower, r, const = _dense_terms(x, loc, log_diag, off_diag, k)
  z = jnp.einsum('bqp,bq->bp', lower, r)  # L^T r
  return jnp.sum(const - 0.5 * jnp.sum(z * z, axis=-1))


def _dense_precision(x, loc, log_diag, off_diag, *, k):
  lower, r, const = _dense_terms(x, loc, log_diag, off_diag, k)
  precision = lower @ jnp.swapaxes(lower, -1, -2)  # (B, S, S)
  quad = jnp.einsum('bp,bpq,bq->b', r, precision, r)
  return jnp.sum(const - 0.5 * quad)


METHODS = {'conv': _conv, 'dense_factor': _dense_factor,
           'dense_precision': _dense_precision}


# ----------------------------------------------------------------------------
# Measurement.
# ----------------------------------------------------------------------------
def _inputs(side: int, batch: int, k: int, seed: int):
  rng = np.random.default_rng(seed)
  m = structured.num_off_diag(k)
  shape = (batch, side, side)
  return (jnp.asarray(rng.uniform(size=shape), jnp.float32),
          jnp.asarray(rng.uniform(size=shape), jnp.float32),
          jnp.asarray(0.1 * rng.normal(size=shape), jnp.float32),
          jnp.asarray(0.1 * rng.normal(size=shape + (m,)), jnp.float32))


def _memory(compiled) -> dict[str, int] | None:
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  return {name: int(getattr(stats, f'{name}_size_in_bytes', 0))
          for name in ('temp', 'argument', 'output')}


def _device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


def run_case(side: int) -> dict:
  """Every method at one image side; returns the case's JSON record."""
  k = FLAGS.kernel_size
  args = _inputs(side, FLAGS.batch_size, k, FLAGS.seed)
  fns, record = {}, {'side': side, 'pixels': side * side, 'methods': {}}
  values = {}
  for name in FLAGS.methods:
    fn = jax.jit(jax.value_and_grad(
        lambda loc, ld, od, x, f=METHODS[name]: f(x, loc, ld, od, k=k),
        argnums=(0, 1, 2)))
    x, loc, ld, od = args
    compiled = fn.lower(loc, ld, od, x).compile()
    value, _ = jax.block_until_ready(compiled(loc, ld, od, x))  # warm-up
    values[name] = float(value)
    fns[name] = lambda c=compiled: c(loc, ld, od, x)
    record['methods'][name] = {'memory': _memory(compiled),
                               'device_peak_bytes': _device_peak(),
                               'times_s': []}
  for _ in range(FLAGS.repeats):
    for name, call in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(call())
      record['methods'][name]['times_s'].append(time.perf_counter() - start)
  base = record['methods'].get('conv')
  for name, rec in record['methods'].items():
    rec['median_s'] = statistics.median(rec['times_s'])
    if base is not None:
      rec['time_over_conv'] = statistics.median(
          t / b for t, b in zip(rec['times_s'], base['times_s']))
    if 'conv' in values:
      rec['log_prob_rel_diff_to_conv'] = abs(values[name] - values['conv']) / abs(
          values['conv'])
  return record


def _fmt_bytes(n: int | None) -> str:
  if n is None:
    return 'n/a'
  return f'{n / 2 ** 20:.1f} MiB' if n >= 2 ** 20 else f'{n / 2 ** 10:.1f} KiB'


def main(argv):
  del argv
  device = jax.devices()[0]
  print(f'device: {device.platform} ({device.device_kind}), '
        f'{len(jax.devices())} device(s); batch {FLAGS.batch_size}, '
        f'kernel {FLAGS.kernel_size}, {FLAGS.repeats} repeats, float32')
  cases = []
  print(f'{"side":>5} {"S":>6} {"method":>16} {"median":>10} {"x conv":>8} '
        f'{"temp mem":>11} {"args+out":>11} {"rel diff":>9}')
  for side in (int(s) for s in FLAGS.sizes):
    record = run_case(side)
    cases.append(record)
    for name, rec in record['methods'].items():
      mem = rec['memory'] or {}
      io = (mem.get('argument', 0) + mem.get('output', 0)) if mem else None
      print(f'{side:>5} {side * side:>6} {name:>16} '
            f'{rec["median_s"] * 1e3:>8.2f}ms {rec.get("time_over_conv", float("nan")):>8.1f} '
            f'{_fmt_bytes(mem.get("temp")):>11} {_fmt_bytes(io):>11} '
            f'{rec.get("log_prob_rel_diff_to_conv", float("nan")):>9.1e}')
  out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                  'results', f'structured_{device.platform}.json')
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, 'w') as f:
    json.dump({'device': f'{device.platform} ({device.device_kind})',
               'host': platform.node(), 'jax': jax.__version__,
               'date': datetime.datetime.now().isoformat(timespec='seconds'),
               'flags': {k: FLAGS[k].value for k in ('sizes', 'kernel_size',
                                                     'batch_size', 'repeats',
                                                     'methods', 'seed')},
               'memory_source': 'compiled.memory_analysis() (temp, argument, '
                                'output bytes); device_peak_bytes from '
                                'memory_stats() where the backend has it',
               'cases': cases}, f, indent=1)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
