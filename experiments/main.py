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
from sosvae_jax import distributed
from sosvae_jax import input_pipeline
from sosvae_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with an argument: file.py:smoke.',
    lock_config=True)
flags.DEFINE_string('workdir', None, 'Folder for checkpoints, metrics and figures.')
flags.mark_flags_as_required(['workdir'])
# --mode=evaluate: metrics of the workdir's latest checkpoint -> workdir/eval/
# (sosvae_jax/evaluation/evaluate.py); --config is then read from the workdir.
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train, or evaluate a run.')
flags.DEFINE_integer('num_samples', 10000, 'evaluate: generated images for FID '
                     'and coherence (the papers use 50000).')
flags.DEFINE_integer('eval_examples', 0, 'evaluate: test images for ELBO/IWAE; 0 = all.')
flags.DEFINE_integer('iwae_k', 20, 'evaluate: importance samples of the IWAE bound; 0 skips.')
flags.DEFINE_integer('iwae_chunk', 10, 'evaluate: importance samples drawn at once.')
flags.DEFINE_integer('eval_batch_size', 250, 'evaluate: images per jitted call.')
flags.DEFINE_integer('mi_examples', 1000, 'evaluate: posteriors for MI / marginal KL; 0 skips.')
flags.DEFINE_enum('sampler', None, ['prior', 'gmm'], 'evaluate: latent sampler '
                  '(default: config.sampler).')
flags.DEFINE_integer('gmm_components', None, 'evaluate: mixture components '
                     '(default: config.gmm_components).')
flags.DEFINE_bool('classifier_fid', True, 'evaluate: classifier FID (needs labels).')
flags.DEFINE_string('classifier_cache_dir', None, 'evaluate: cache of the feature '
                    'classifier (default ~/.cache/sosvae_jax/classifiers).')
flags.DEFINE_integer('classifier_steps', 2000, 'evaluate: training steps of the '
                     'feature classifier (part of its cache key).')
flags.DEFINE_string('inception_weights', None, 'evaluate: converted Inception .npz '
                    '(scripts/convert_inception_weights.py); unset: no Inception FID.')
flags.DEFINE_integer('eval_seed', 0, 'evaluate: seed of every random draw.')
# Multi-host runs: the same command on every host, each with its own id.
flags.DEFINE_string('coordinator_address', None,
                    'HOST:PORT of process 0 (multi-host), or "auto" on Slurm / '
                    'Open MPI / Cloud TPU; unset for one process.')
flags.DEFINE_integer('num_processes', None, 'Processes in a multi-host run.')
flags.DEFINE_integer('process_id', None, 'This process: 0 .. num_processes - 1.')
flags.DEFINE_list('local_device_ids', None,
                  'Local devices this process drives (default: all visible).')


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
  try:  # Before anything touches a device.
    distributed.initialize_from_flags(
        FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
        [int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids else None)
  except distributed.DistributedSetupError as e:
    logging.error('%s', e)
    sys.exit(2)
  if FLAGS.mode == 'evaluate':
    from sosvae_jax.evaluation import classifier, evaluate  # pylint: disable=g-import-not-at-top
    try:
      evaluate.evaluate_and_write(FLAGS.workdir, evaluate.EvalSettings(
          num_samples=FLAGS.num_samples, eval_examples=FLAGS.eval_examples,
          iwae_k=FLAGS.iwae_k, iwae_chunk=FLAGS.iwae_chunk,
          batch_size=FLAGS.eval_batch_size, mi_examples=FLAGS.mi_examples,
          sampler=FLAGS.sampler, gmm_components=FLAGS.gmm_components,
          classifier_fid=FLAGS.classifier_fid,
          classifier_cache_dir=FLAGS.classifier_cache_dir,
          classifier=classifier.ClassifierSettings(num_steps=FLAGS.classifier_steps),
          inception_weights=FLAGS.inception_weights, seed=FLAGS.eval_seed))
    except (ValueError, FileNotFoundError) as e:  # incl. DataNotFoundError
      logging.error('%s', e)
      sys.exit(2)
    return
  if FLAGS.config is None:
    raise app.UsageError('--config is required for --mode=train.')
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
