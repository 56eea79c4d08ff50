"""Command line: train (or resume) a model described by a config file.

  python -m experiments.main --config=experiments/configs/default.py \
      --workdir=runs/default [--config.likelihood.rank=10 ...]
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sosvae_jax import config_checks
from sosvae_jax import input_pipeline
from sosvae_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument: file.py:smoke.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and figures.')
flags.mark_flags_as_required(['config', 'workdir'])


class _QuietLibraries(logging.logging.Filter):
  """Drops INFO chatter of orbax and grain; warnings and errors still show."""

  def filter(self, record) -> bool:
    noisy = ('/orbax/' in record.pathname or '/grain/' in record.pathname)
    return not (noisy and record.levelno < logging.logging.WARNING)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (config_checks.ConfigError, input_pipeline.DataNotFoundError) as e:
    logging.error('%s', e)
    sys.exit(2)
  except train.NonFiniteError as e:
    logging.error('%s', e)
    sys.exit(3)


if __name__ == '__main__':
  app.run(main)
