"""Command line: train (or resume) a model described by a config file, or evaluate it.

  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/default [--config.likelihood.rank=10 ...]
  python -m experiments.main --mode=evaluate --workdir=runs/default \
      [--config=experiments/configs/default.py --config.evaluation.iwae_k=50 ...]
  python -m experiments.main --mode=check --config=... --workdir=...
      # dry run: resolved config, devices, data, parameters, checks (writes nothing)

Exit codes (experiments/cli.py): 0 done, 2 a user mistake (one message, nothing
ran), 3 stopped on non-finite steps, 4 stopped early by SIGTERM / Ctrl-C or a
pre-emption with a checkpoint written (rerun the same command to resume), 5 a
file or checkpoint could not be written (disk full: free space, then rerun).
"""

# First: a Ctrl-C during the imports below ends the command quietly.
from experiments import quiet_start  # pylint: disable=g-bad-import-order
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import cli
from sosvae_jax import checkpoints
from sosvae_jax import distributed
from sosvae_jax import dry_run
from sosvae_jax import logs
from sosvae_jax import train
from sosvae_jax.evaluation import settings

FLAGS = flags.FLAGS
cli.DEFINE_config_file('config', 'Config file, optionally with an argument: file.py:smoke.')
cli.DEFINE_path('workdir', None, 'Folder for checkpoints, metrics and figures.')
flags.mark_flags_as_required(['workdir'])
# --mode=evaluate: metrics of the workdir's latest checkpoint -> workdir/eval/
# (sosvae_jax/evaluation/evaluate.py). The model comes from the workdir; the
# settings from config.evaluation of --config if given (overrides such as
# --config.evaluation.iwae_k=50), else of the run's own config.json.
# --mode=check: a dry run that only reads (sosvae_jax/dry_run.py); exit 2 if
# the checks fail.
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate', 'check'],
                  'Train, evaluate a run, or check a config without training.')
# Multi-host runs: the same command on every host, each with its own id.
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0 (multi-host), or "auto" on Slurm / '
                    'Open MPI / Cloud TPU; unset for one process.')
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
flags.DEFINE_integer('process_id', None, 'This process: 0 .. num_processes - 1.')
flags.DEFINE_list('local_device_ids', None,
                  'Local devices this process drives (default: all visible).')


def _evaluate(workdir: str, config) -> None:
  """--mode=evaluate: every metric of the run in `workdir` (workdir/eval/)."""
  from sosvae_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
  try:
    config = config if config is not None else checkpoints.load_config(workdir)
    eval_settings = settings.from_config(config.get('evaluation'))
  except (ValueError, TypeError, FileNotFoundError) as e:  # TypeError: an unknown field
    cli.fail(str(e))
  try:
    with cli.interrupt_ends_quietly('evaluating'), cli.write_failure_ends_quietly():
      evaluate.evaluate_and_write(workdir, eval_settings)
  except (ValueError, FileNotFoundError) as e:  # incl. DataNotFoundError
    # Not TypeError: past the settings, one is a bug and keeps its traceback.
    cli.fail(str(e))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=cli.USER_ERROR)
  logs.setup()
  try:  # Before anything touches a device.
    distributed.initialize_from_flags(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        distributed.parse_local_device_ids(FLAGS.local_device_ids))
  except distributed.DistributedSetupError as e:
    logging.error('%s', e)
    sys.exit(2)
  if FLAGS.mode == 'evaluate':
    _evaluate(FLAGS.workdir, FLAGS.config)
    return
  if FLAGS.config is None:
    raise app.UsageError(f'--config is required for --mode={FLAGS.mode}: pass e.g. '
                         '--config=experiments/configs/default.py.', exitcode=cli.USER_ERROR)
  # The run's config.json carries its evaluation settings: refuse them now,
  # not when the trained run is evaluated.
  if FLAGS.mode == 'check':
    report = dry_run.dry_run(FLAGS.config, FLAGS.workdir)
    print(report.text, flush=True)
    problems = report.problems + settings.section_problems(FLAGS.config)
    if problems:
      cli.fail('\n'.join(problems), cli.USER_ERROR)
    return
  quiet_start.handled()  # from here a Ctrl-C is caught below, or saved by the train loop
  try:
    settings.check_section(FLAGS.config)
    with cli.write_failure_ends_quietly():
      state = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except cli.user_error_types() as e:
    cli.fail(str(e), cli.USER_ERROR)
  except train.NonFiniteError as e:
    cli.fail(str(e), cli.NON_FINITE)
  except KeyboardInterrupt:
    # Ctrl-C outside the train loop (start-up, compiling, a multi-process
    # run): there is no newer state than the last checkpoint to save.
    cli.fail('Interrupted (Ctrl-C) outside the train loop: nothing to save; rerun the '
             'same command to start or resume.', cli.INTERRUPTED)
  if int(state.step) < FLAGS.config.num_steps:  # a signal or pre-emption
    sys.exit(cli.STOPPED_EARLY)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
