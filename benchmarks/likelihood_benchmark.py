"""Times log_prob + gradient of the low-rank normal against its alternatives.

  python benchmarks/likelihood_benchmark.py                    # full grid (GPU)
  python benchmarks/likelihood_benchmark.py --quick            # ~1-2 min on CPU

For each event size S and rank R, four log-likelihoods of a batch of B images
are timed, each as jit(value_and_grad(sum of log_prob)) w.r.t. its
parameters, compiled and warmed up, then called --repeats times with
block_until_ready, the methods interleaved round by round (so a burst of
load on a shared machine hits all of them alike); the table gives median
times and the median of the within-round ratios:

  lowrank     sosvae_jax LowRankMultivariateNormal, Sigma = P P^T + diag(d),
              gradient w.r.t. (loc, P, d).
  diag        distrax.MultivariateNormalDiag(loc, sqrt(d)), gradient w.r.t.
              (loc, d): the pixel-wise baseline, no P.
  scale_lr    distrax.MultivariateNormalDiagPlusLowRank(loc, sqrt(d), P, P):
              low rank on the *scale*, Sigma = A A^T with A = diag(sqrt d) +
              P P^T. A different distribution from `lowrank`; it is given the
              same arrays only so that its cost can be compared. Gradient
              w.r.t. (loc, P, d).
  dense       distrax.MultivariateNormalFullCovariance(loc, P P^T + diag(d)):
              the same distribution as `lowrank` through an S x S Cholesky,
              only for S <= --dense_max_size. Gradient w.r.t. (loc, P, d).

Prints a table of times and ratios, the slope of log time against log S of
every method per rank (numpy polyfit), and writes everything to --out (JSON).
--quick is the reduced CPU grid: S in {784, 3072, 12288}, R in {5, 25}, B = 4,
20 repeats, dense only at S = 784 (flags given explicitly still win).
Memory: the compiled function's memory_analysis() (argument, output and temp
bytes) where the backend gives it; on GPUs also the device's
peak_bytes_in_use from memory_stats() after each case (a running maximum over
the process: cases run from small to large).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable

from absl import app
from absl import flags
import distrax
import jax
import jax.numpy as jnp
import numpy as np

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from sosvae_jax.distributions.lowrank import LowRankMultivariateNormal

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['784', '3072', '12288', '49152'],
                  'Event sizes S (28*28, 3*32*32, 3*64*64, 3*128*128).')
flags.DEFINE_list('ranks', ['5', '25', '100'], 'Ranks R of the factor P.')
flags.DEFINE_integer('batch_size', 8, 'Images per call (B).')
flags.DEFINE_integer('repeats', 10, 'Timed calls per case; the median is reported.')
flags.DEFINE_integer('dense_max_size', 3072,
                     'Largest S for the dense S x S Cholesky baseline.')
flags.DEFINE_list('methods', ['lowrank', 'diag', 'scale_lr', 'dense'],
                  'Which likelihoods to time.')
flags.DEFINE_integer('seed', 0, 'Seed of the random parameters.')
flags.DEFINE_bool('quick', False, 'Reduced grid for a CPU: --sizes=784,3072,12288 '
                  '--ranks=5,25 --batch_size=4 --repeats=20 --dense_max_size=784.')
flags.DEFINE_string('out', None, 'JSON output; default '
                    'benchmarks/results/likelihood_<platform>.json.')

# Targets of the project (see benchmarks/README.md).
TARGET_SPEEDUP_SIZE, TARGET_SPEEDUP_RANK, TARGET_SPEEDUP = 3 * 64 * 64, 25, 2.0
TARGET_MAX_SLOPE = 1.1


# ----------------------------------------------------------------------------
# The four log-likelihoods: (x, params) -> sum of log_prob over the batch.
# ----------------------------------------------------------------------------
def _lowrank(x, loc, factor, diag):
  return jnp.sum(LowRankMultivariateNormal(loc, factor, diag).log_prob(x))


def _diag(x, loc, diag):
  return jnp.sum(distrax.MultivariateNormalDiag(loc, jnp.sqrt(diag)).log_prob(x))


def _scale_lowrank(x, loc, factor, diag):
  # Scale diag(sqrt d) + P P^T: a different distribution, comparable cost.
  dist = distrax.MultivariateNormalDiagPlusLowRank(loc, jnp.sqrt(diag), factor, factor)
  return jnp.sum(dist.log_prob(x))


def _dense(x, loc, factor, diag):
  cov = jnp.einsum('bsr,btr->bst', factor, factor)  # (B, S, S)
  cov += jax.vmap(jnp.diag)(diag)
  return jnp.sum(distrax.MultivariateNormalFullCovariance(loc, cov).log_prob(x))


METHODS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    'lowrank': (_lowrank, ('loc', 'factor', 'diag')),
    'diag': (_diag, ('loc', 'diag')),
    'scale_lr': (_scale_lowrank, ('loc', 'factor', 'diag')),
    'dense': (_dense, ('loc', 'factor', 'diag')),
}


def make_inputs(batch: int, size: int, rank: int, seed: int) -> dict[str, jax.Array]:
  """Decoder-like parameters and an x drawn from N(loc, P P^T + diag(d))."""
  rng = np.random.default_rng(seed)
  loc = rng.uniform(0, 1, (batch, size)).astype(np.float32)  # (B, S)
  factor = (0.3 / np.sqrt(rank) * rng.standard_normal((batch, size, rank))).astype(np.float32)
  diag = rng.uniform(0.01, 0.1, (batch, size)).astype(np.float32)  # (B, S)
  omega_p = rng.standard_normal((batch, rank)).astype(np.float32)
  x = loc + np.einsum('bsr,br->bs', factor, omega_p) + np.sqrt(diag) * rng.standard_normal(
      (batch, size)).astype(np.float32)
  return {k: jnp.asarray(v) for k, v in
          dict(x=x, loc=loc, factor=factor, diag=diag).items()}


# ----------------------------------------------------------------------------
# Measuring.
# ----------------------------------------------------------------------------
def _memory_analysis(compiled) -> dict[str, int] | str:
  try:
    analysis = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except  # backend-specific
    return f'unavailable ({type(e).__name__})'
  if analysis is None:
    return 'unavailable'
  fields = ('argument_size_in_bytes', 'output_size_in_bytes', 'temp_size_in_bytes',
            'generated_code_size_in_bytes')
  return {f: int(getattr(analysis, f)) for f in fields if hasattr(analysis, f)}


def _device_peak_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


def compile_case(method: str, inputs: dict[str, jax.Array]) -> tuple[Callable, dict]:
  """jit(value_and_grad) of one likelihood, compiled and warmed up."""
  fn, names = METHODS[method]
  loss = lambda *params, x: fn(x, *params)
  step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(names)))))
  args = tuple(inputs[n] for n in names)
  t0 = time.perf_counter()
  compiled = step.lower(*args, x=inputs['x']).compile()
  compile_s = time.perf_counter() - t0
  value, _ = jax.block_until_ready(compiled(*args, x=inputs['x']))  # warm-up
  call = lambda: jax.block_until_ready(compiled(*args, x=inputs['x']))
  return call, {'compile_s': compile_s, 'log_prob_sum': float(value),
                'memory_analysis': _memory_analysis(compiled),
                'device_peak_bytes_so_far': _device_peak_bytes()}


def time_cases(calls: dict[str, Callable], repeats: int) -> dict[str, list[float]]:
  """Seconds per call, the methods interleaved in rounds.

  On a shared machine a burst of load then slows every method of a round
  alike, so ratios taken within a round are fairer than ratios of medians.
  """
  times = {m: [] for m in calls}
  for _ in range(repeats):
    for method, call in calls.items():
      t0 = time.perf_counter()
      call()
      times[method].append(time.perf_counter() - t0)
  return times


def measure_row(size: int, rank: int, methods: list[str], repeats: int) -> dict:
  """All methods at one (S, R): times, paired ratios, memory, a value check."""
  inputs = make_inputs(FLAGS.batch_size, size, rank, FLAGS.seed)
  row, calls = {'size': size, 'rank': rank}, {}
  for method in methods:
    if method == 'dense' and size > FLAGS.dense_max_size:
      continue
    calls[method], row[method] = compile_case(method, inputs)
  for method, times in time_cases(calls, repeats).items():
    row[method].update(median_s=statistics.median(times), min_s=min(times), times_s=times)
    print(f'  S={size:6d} R={rank:3d} {method:9s} {_ms(row[method]):>10s} ms '
          f'(compile {row[method]["compile_s"]:.1f} s)', flush=True)
  paired = {'lowrank_over_diag': ('lowrank', 'diag'),
            'scale_lr_over_lowrank': ('scale_lr', 'lowrank'),
            'dense_over_lowrank': ('dense', 'lowrank')}
  row['paired_ratios'] = {
      name: statistics.median(np.divide(row[a]['times_s'], row[b]['times_s']).tolist())
      for name, (a, b) in paired.items() if a in row and b in row}
  if 'dense' in row and 'lowrank' in row:  # the same distribution: same value
    a, b = row['lowrank']['log_prob_sum'], row['dense']['log_prob_sum']
    row['lowrank_vs_dense_rel_diff'] = abs(a - b) / max(abs(b), 1e-30)
  return row


def fitted_slopes(results: list[dict], ranks: list[int], stat: str = 'median_s',
                  method: str = 'lowrank') -> dict[int, float | None]:
  """Slope of log(time) against log(S) of `method`, per rank (time = stat)."""
  slopes = {}
  for rank in ranks:
    points = [(r['size'], r[method][stat]) for r in results
              if r['rank'] == rank and method in r]
    if len({s for s, _ in points}) < 2:
      slopes[rank] = None
      continue
    sizes, times = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    slopes[rank] = float(np.polyfit(sizes, times, 1)[0])
  return slopes


# ----------------------------------------------------------------------------
# Reporting.
# ----------------------------------------------------------------------------
def _ms(case: dict | None) -> str:
  return f'{1e3 * case["median_s"]:.3f}' if case else '-'


def _ratio(row: dict, name: str) -> str:
  value = row['paired_ratios'].get(name)
  return '-' if value is None else f'{value:.2f}'


def _temp_mb(case: dict | None) -> str:
  mem = case and case['memory_analysis']
  return f'{mem["temp_size_in_bytes"] / 2**20:.1f}' if isinstance(mem, dict) and \
      'temp_size_in_bytes' in mem else '-'


def format_table(results: list[dict]) -> str:
  """Markdown table: median ms per call and the three ratios.

  Ratios are medians over rounds of the within-round ratio (time_cases).
  """
  lines = ['| S | R | lowrank ms | diag ms | scale_lr ms | dense ms | lowrank/diag '
           '| scale_lr/lowrank | dense/lowrank | lowrank temp MB | dense temp MB |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in results:
    g = r.get
    lines.append(
        f'| {r["size"]} | {r["rank"]} | {_ms(g("lowrank"))} | {_ms(g("diag"))} | '
        f'{_ms(g("scale_lr"))} | {_ms(g("dense"))} | {_ratio(r, "lowrank_over_diag")} | '
        f'{_ratio(r, "scale_lr_over_lowrank")} | {_ratio(r, "dense_over_lowrank")} | '
        f'{_temp_mb(g("lowrank"))} | {_temp_mb(g("dense"))} |')
  return '\n'.join(lines)


def target_verdicts(results: list[dict], slopes: dict[int, float | None]) -> list[str]:
  """The project's two targets, checked on this run's numbers."""
  lines = []
  case = next((r for r in results if r['size'] == TARGET_SPEEDUP_SIZE and
               r['rank'] == TARGET_SPEEDUP_RANK and 'lowrank' in r and 'scale_lr' in r), None)
  if case is None:
    lines.append(f'target 1 (scale_lr/lowrank >= {TARGET_SPEEDUP} at S={TARGET_SPEEDUP_SIZE}, '
                 f'R={TARGET_SPEEDUP_RANK}): not measured in this run')
  else:
    speedup = case['paired_ratios']['scale_lr_over_lowrank']
    lines.append(f'target 1 (scale_lr/lowrank >= {TARGET_SPEEDUP} at S={TARGET_SPEEDUP_SIZE}, '
                 f'R={TARGET_SPEEDUP_RANK}): {speedup:.2f} -> '
                 f'{"met" if speedup >= TARGET_SPEEDUP else "NOT met"}')
  for rank, slope in slopes.items():
    verdict = ('not measured (fewer than 2 sizes)' if slope is None else
               f'{slope:.3f} -> {"met" if slope <= TARGET_MAX_SLOPE else "NOT met"}')
    lines.append(f'target 2 (slope of log time vs log S <= {TARGET_MAX_SLOPE}), R={rank}: '
                 f'{verdict}')
  return lines


def device_description() -> dict[str, str | int]:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'jax_version': jax.__version__,
          'host': platform.platform(), 'cpu_count': os.cpu_count() or 0}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if FLAGS.quick:  # the CPU grid, unless a flag was given explicitly
    for name, value in dict(sizes=['784', '3072', '12288'], ranks=['5', '25'], batch_size=4,
                            repeats=20, dense_max_size=784).items():
      if FLAGS[name].using_default_value:
        FLAGS[name].value = value
  sizes = sorted(int(s) for s in FLAGS.sizes)
  ranks = sorted(int(r) for r in FLAGS.ranks)
  unknown = set(FLAGS.methods) - set(METHODS)
  if unknown:
    raise app.UsageError(f'Unknown --methods {sorted(unknown)}; choose from {list(METHODS)}.')
  device = device_description()
  print(f'device: {device["platform"]} / {device["device_kind"]} '
        f'({device["device_count"]} device(s)), jax {device["jax_version"]}')
  print(f'batch {FLAGS.batch_size}, repeats {FLAGS.repeats}, sizes {sizes}, ranks {ranks}, '
        f'dense only for S <= {FLAGS.dense_max_size}')

  print('memory: temp bytes from the compiled function\'s memory_analysis() (table, JSON)'
        + ('; device peak_bytes_in_use after each case in the JSON'
           if _device_peak_bytes() is not None else
           '; device memory_stats() unavailable on this platform'))

  results = [measure_row(size, rank, FLAGS.methods, FLAGS.repeats)
             for size in sizes for rank in ranks if rank < size]

  slopes = fitted_slopes(results, ranks)
  slopes_min = fitted_slopes(results, ranks, 'min_s')  # less hit by others' load
  all_slopes = {m: fitted_slopes(results, ranks, method=m) for m in FLAGS.methods}
  table = format_table(results)
  verdicts = target_verdicts(results, slopes)
  print()
  print('median time of one jitted log_prob + gradient call over the batch; ratios are '
        'medians of within-round ratios:')
  print(table)
  print()
  for rank, slope in slopes.items():
    fmt = lambda v: '-' if v is None else f'{v:.3f}'
    print(f'lowrank: slope of log time vs log S at R={rank}: {fmt(slope)} '
          f'(from the fastest call of each case: {fmt(slopes_min[rank])})')
  for method, per_rank in all_slopes.items():
    shown = ', '.join(f'R={k}: {"-" if v is None else f"{v:.3f}"}' for k, v in per_rank.items())
    print(f'slope of log time vs log S, {method}: {shown}')
  for line in verdicts:
    print(line)
  for r in results:
    if 'lowrank_vs_dense_rel_diff' in r:
      print(f'check S={r["size"]} R={r["rank"]}: |lowrank - dense| / |dense| log_prob = '
            f'{r["lowrank_vs_dense_rel_diff"]:.2e}')

  out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                  f'likelihood_{device["platform"]}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump({'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(),
               'device': device,
               'flags': {'sizes': sizes, 'ranks': ranks, 'batch_size': FLAGS.batch_size,
                         'repeats': FLAGS.repeats, 'dense_max_size': FLAGS.dense_max_size,
                         'methods': list(FLAGS.methods), 'seed': FLAGS.seed,
                         'quick': FLAGS.quick},
               'results': results,
               'lowrank_slopes': {str(k): v for k, v in slopes.items()},
               'lowrank_slopes_from_min': {str(k): v for k, v in slopes_min.items()},
               'slopes': {m: {str(k): v for k, v in d.items()}
                          for m, d in all_slopes.items()},
               'targets': verdicts, 'table': table}, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
