"""Command line: many runs from one grid or sweep file, then one table.

  python -m experiments.sweep --config=experiments/configs/sigma_vae/beta_vae.py \
      --grid=kl_weight=0.003,0.01,0.03,0.1,0.3 --grid=seed=0,1,2 \
      --workdir=runs/sweeps/beta --mode=vmap   # or loop (faster on CPU), sequential, print
  python -m experiments.sweep --config=experiments/configs/default.py \
      --sweep=experiments/sweeps/entropy_budget.py --workdir=runs/sweeps/entropy
  python -m experiments.sweep collect --workdir=runs/sweeps/beta

Every point is an ordinary run in WORKDIR/<field=value,...>; WORKDIR/sweep.json
maps index -> overrides; `--index=N` runs one point (Slurm: --index=$SLURM_ARRAY_TASK_ID);
the same command again resumes unfinished points and skips finished ones.
--mode=vmap trains each shape group's points together in one compiled step
(sosvae_jax/sweep_vmap.py). Exit status: 0 all finished, 1 a point failed,
2 a bad sweep, 4 stopped by a signal (rerun to resume), 5 a table or file
could not be written (disk full: free space, then rerun).
The logic lives in sosvae_jax/sweep.py.
"""

# First: a Ctrl-C during the imports below ends the command quietly.
from experiments import quiet_start  # pylint: disable=g-bad-import-order
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from sosvae_jax import logs
from sosvae_jax import sweep
from sosvae_jax import sweep_vmap  # pylint: disable=unused-import (registers --mode=vmap)
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.config_checks import SAMPLERS

FLAGS = flags.FLAGS
cli.DEFINE_config_file('config', 'Base config file, optionally with an argument: file.py:smoke.')
cli.DEFINE_path('workdir', None, 'Sweep folder: sweep.json, tables, one folder per point.')
flags.DEFINE_multi_string('grid', [], 'FIELD=V1,V2,...: a swept config field; several '
                          '--grid flags give their product.')
cli.DEFINE_path('sweep', None, 'Sweep file (file.py or file.py:arg) whose get_sweep() '
                'returns a list of override dicts; combined with --grid as a product.')
flags.DEFINE_enum('mode', 'sequential', ['print', *sweep.ENGINES],
                  'print: one command per point; otherwise the engine that trains.')
flags.DEFINE_integer('index', None, 'Run (or print) only the point of this index.')
flags.DEFINE_bool('evaluate', False, 'After training, run the evaluation command on '
                  'every point (POINT/eval/results.json), with its config.evaluation '
                  'settings (e.g. --config.evaluation.num_samples=1000).')
flags.DEFINE_list('samplers', None, 'With --evaluate: the latent samplers to evaluate '
                  'each point with, e.g. prior,gmm (one results_SAMPLER.json each; the '
                  'likelihood metrics are measured once). Default: the config\'s.')
flags.DEFINE_list('metrics', None, 'Metrics of the tables and the plot (default: '
                  f'those of {",".join(sweep.DEFAULT_METRICS)} present).')


def _points() -> tuple[str, dict, list[sweep.Point]]:
  """(config argument, base overrides, points) from the flags; SweepError if bad."""
  if FLAGS.config is None:
    raise app.UsageError('--config is required to run a sweep.', exitcode=cli.USER_ERROR)
  config_arg = config_flags.get_config_filename(FLAGS['config'])
  base_overrides = config_flags.get_override_values(FLAGS['config'])
  overrides = sweep.grid_points(FLAGS.config, FLAGS.grid)
  if FLAGS.sweep:
    overrides = sweep.product(sweep.load_sweep_file(FLAGS.sweep), overrides)
  return config_arg, base_overrides, sweep.make_points(FLAGS.config, overrides, FLAGS.workdir)


def _sweep_file_spec() -> str | None:
  """--sweep with its path made absolute (the manifest's record of it)."""
  if not FLAGS.sweep:
    return None
  path, sep, arg = FLAGS.sweep.partition(':')
  return os.path.abspath(path) + sep + arg


def _collect() -> bool:
  """Writes and prints the tables; True if any point failed."""
  result = sweep.collect(FLAGS.workdir, FLAGS.metrics)
  print(result['markdown'])
  logging.info('Tables: %s, %s, %s; plot %s', result['paths']['markdown'],
               result['paths']['csv'], result['paths']['json'], result['paths']['png'])
  return sweep.any_failed(result['rows'])


def main(argv):
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required.', exitcode=cli.USER_ERROR)
  logs.setup()
  quiet_start.handled()  # each point's train loop saves a checkpoint on Ctrl-C
  if argv[1:] == ['collect']:
    try:
      with cli.write_failure_ends_quietly():
        sys.exit(1 if _collect() else 0)
    except sweep.SweepError as e:
      logging.error('%s', e)
      sys.exit(2)
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]} (only "collect").',
                         exitcode=cli.USER_ERROR)
  try:
    bad = [s for s in FLAGS.samplers or () if s not in SAMPLERS]
    if bad:
      raise sweep.SweepError(f'--samplers={",".join(FLAGS.samplers)}: unknown {bad}; '
                             f'choose from {", ".join(SAMPLERS)}.')
    config_arg, base_overrides, points = _points()
    groups = sweep.group_points(points)
    sweep.check_points(points)
    if FLAGS.index is not None and not 0 <= FLAGS.index < len(points):
      raise sweep.SweepError(f'--index={FLAGS.index}: the sweep has points 0..{len(points) - 1}.')
    # Last: it creates the folder, which a bad sweep should not leave behind.
    workdir_lib.check_workdir_path(FLAGS.workdir)
  except (sweep.SweepError, workdir_lib.WorkdirError) as e:
    logging.error('%s', e)
    sys.exit(2)
  print(sweep.describe_groups(groups))
  with cli.write_failure_ends_quietly():
    sweep.write_manifest(FLAGS.workdir, sweep.manifest(config_arg, base_overrides, points,
                                                       groups, _sweep_file_spec()))
    chosen = points if FLAGS.index is None else [points[FLAGS.index]]
    if FLAGS.mode == 'print':
      for p in chosen:
        print(sweep.command(config_arg, base_overrides, p, evaluate=FLAGS.evaluate))
      return
    outcomes = sweep.run_sweep(chosen, sweep.ENGINES[FLAGS.mode], evaluate=FLAGS.evaluate,
                               samplers=FLAGS.samplers)
    for index, outcome in sorted(outcomes.items()):
      logging.info('point %d: %s %s', index, outcome.status, outcome.message)
    failed = FLAGS.index is None and _collect()
  sys.exit(exit_code(failed, list(outcomes.values())))


def exit_code(failed: bool, outcomes: list[sweep.Outcome]) -> int:
  """1 if a point failed; cli.STOPPED_EARLY if a signal stopped the sweep; else 0."""
  if failed or any(o.status in (sweep.FAILED, sweep.NONFINITE) for o in outcomes):
    return 1
  if any(o.status in (sweep.UNFINISHED, sweep.NOT_STARTED) for o in outcomes):
    return cli.STOPPED_EARLY
  return 0


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
