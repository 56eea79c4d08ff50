"""Sweep speed: one compiled step for all points (vmapped or looped) vs one after
another vs one process per point.

  python benchmarks/sweep_benchmark.py                  # 8 beta-VAE points, minutes on CPU
  python benchmarks/sweep_benchmark.py --points=2 --steps=3 --smoke   # seconds, for tests

The points: `--points` KL weights (beta, geometric from 0.001 to 0.3) of
experiments/configs/sigma_vae/beta_vae.py (the sigma-VAE appendix network on
Fashion-MNIST, batch 128), one seed, `--steps` steps each, one evaluation
and one checkpoint at the end (on `--eval_examples` test images). All three
ways train the same points to the same workdir contents, each in fresh
processes, timed by wall clock from launch to exit as a user sees it:

* vmap: `python -m experiments.sweep --mode=vmap`, one process, one compiled
  step for all points, vectorised over them (sosvae_jax/sweep_vmap.py);
* loop: `--mode=loop`, the same engine with the one-point step compiled once
  and applied to each point in turn;
* sequential: `python -m experiments.sweep --mode=sequential`, one process,
  the points one after another (each run compiles its own step);
* processes: one `python -m experiments.main` per point, one after another
  (what `--mode=print` prints, or a job array on one machine).

The modes run in rounds (`--rounds`, each round one of each mode, the order
rotating), so that a burst of load from other processes slows all alike;
times are medians. Prints one line per mode with its time and its speed-up
over one process per point, and writes them to --out (JSON) when given.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags

from experiments import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'experiments/configs/sigma_vae/beta_vae.py'
MODES = ('vmap', 'loop', 'sequential', 'processes')

flags.DEFINE_integer('points', 8, 'Beta-VAE points (KL weights) of the sweep.', lower_bound=1)
flags.DEFINE_integer('steps', 50, 'Training steps of every point.', lower_bound=1)
flags.DEFINE_integer('eval_examples', 512, 'Test images of the one evaluation.', lower_bound=1)
flags.DEFINE_integer('rounds', 1, 'Rounds, each timing every mode once.', lower_bound=1)
flags.DEFINE_bool('smoke', False, 'The :smoke network (tests).')
cli.DEFINE_path('out', '', 'Write the results here (JSON).')
FLAGS = flags.FLAGS


def betas(num: int) -> list[float]:
  """`num` KL weights, geometric from 1e-3 to 0.3 (rounded to 3 digits)."""
  if num == 1:
    return [0.01]
  return [float(f'{1e-3 * 300 ** (i / (num - 1)):.3g}') for i in range(num)]


def config_args(args) -> list[str]:
  """The base config and the overrides that every mode shares."""
  steps = args.steps
  return [f'--config={CONFIG}' + (':smoke' if args.smoke else ''),
          f'--config.num_steps={steps}', f'--config.log_every_steps={steps}',
          f'--config.eval_every_steps={steps}', f'--config.checkpoint_every_steps={steps}',
          f'--config.eval_examples={args.eval_examples}']


def commands(mode: str, workdir: str, args) -> list[list[str]]:
  """The command lines of one mode (several for `processes`)."""
  python = sys.executable
  if mode != 'processes':
    grid = '--grid=kl_weight=' + ','.join(repr(b) for b in betas(args.points))
    return [[python, '-m', 'experiments.sweep', *config_args(args), grid,
             f'--workdir={workdir}', f'--mode={mode}']]
  return [[python, '-m', 'experiments.main', *config_args(args),
           f'--config.kl_weight={b!r}', f'--workdir={os.path.join(workdir, f"kl_weight={b!r}")}']
          for b in betas(args.points)]


def time_mode(mode: str, args) -> float:
  """Seconds from the first launch to the last exit of one mode, fresh workdir."""
  workdir = tempfile.mkdtemp(prefix=f'sweep_benchmark_{mode}_')
  try:
    t0 = time.perf_counter()
    for cmd in commands(mode, workdir, args):
      result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
      if result.returncode != 0:
        raise RuntimeError(f'{mode}: {" ".join(cmd)} failed:\n{result.stderr[-3000:]}')
    return time.perf_counter() - t0
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def run(args) -> dict:
  """Times every mode in rounds, prints the table, writes --out; the results."""
  times = {m: [] for m in MODES}
  for r in range(args.rounds):
    for mode in MODES[r % len(MODES):] + MODES[:r % len(MODES)]:
      times[mode].append(time_mode(mode, args))
      print(f'round {r}: {mode} {times[mode][-1]:.1f} s', flush=True)
  median = {m: statistics.median(t) for m, t in times.items()}
  print(f'\n{args.points} beta-VAE points x {args.steps} steps '
        f'({"smoke" if args.smoke else "sigma-VAE appendix"} network, batch '
        f'{8 if args.smoke else 128}), {platform.node()}, {os.cpu_count()} CPUs:')
  speedup = {m: median['processes'] / median[m] for m in MODES}
  for m in MODES:
    print(f'  {m:<11} {median[m]:8.1f} s   {speedup[m]:5.2f}x faster than one process per point')
  result = {'points': args.points, 'steps': args.steps, 'smoke': args.smoke,
            'seconds': times, 'median_seconds': median, 'speedup_over_processes': speedup}
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)
  return result


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  run(FLAGS)


if __name__ == '__main__':
  app.run(main)
