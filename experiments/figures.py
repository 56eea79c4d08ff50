"""Command line: the SOS-VAE paper's figures from a run's latest checkpoint.

  python -m experiments.figures --workdir=runs/default \
      [--out=runs/default/paper_figures] [--seed=0] [--ppca_examples=2000]

Writes figure2.png, figure4.png ... figure7.png and figure7.json (see
sosvae_jax/figures.py); figures 4-7 only for the low-rank likelihood.
"""

# First: a Ctrl-C during the imports below ends the command quietly.
from experiments import quiet_start  # pylint: disable=unused-import,g-bad-import-order
import os

from absl import app
from absl import flags

from experiments import cli
from sosvae_jax import checkpoints
from sosvae_jax import figures
from sosvae_jax import logs
from sosvae_jax import workdir as workdir_lib

FLAGS = flags.FLAGS
cli.DEFINE_path('workdir', None, 'Workdir of a training run (config.json, checkpoints/).')
cli.DEFINE_path('out', None, 'Output folder; default WORKDIR/paper_figures.')
flags.DEFINE_integer('seed', 0, 'Seed of the prior samples and the noises.')
flags.DEFINE_integer('num_samples', 8, 'Prior samples (columns of Figure 2).', lower_bound=1)
flags.DEFINE_integer('example', 0, 'Prior sample (column of Figure 2) used by Figures 4-6.',
                     lower_bound=0)
flags.DEFINE_integer('ppca_examples', 2000, 'Training images the PPCA of Figure 7 is fitted to.',
                     lower_bound=1)
flags.DEFINE_enum('figure5_mode', 'scale', ['scale', 'set'],
                  "Figure 5: 'scale' multiplies the sample's coefficient (eq. 5), "
                  "'set' sets it to the scale in standard deviations.")
flags.mark_flags_as_required(['workdir'])
flags.register_multi_flags_validator(
    ['example', 'num_samples'], lambda f: f['example'] < f['num_samples'],
    '--example picks one of the --num_samples prior samples, so it must be '
    'below --num_samples: lower --example or raise --num_samples.')


def _check_out(out: str | None) -> None:
  """An --out that is a file would fail only after the model is loaded."""
  if out and os.path.exists(out) and not os.path.isdir(out):
    cli.fail(f'--out={out!r} is a file, not a folder: pass a folder for the figures '
             '(it is created).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=cli.USER_ERROR)
  logs.setup()
  _check_out(FLAGS.out)
  try:
    # First, so that nothing is created in a folder that is no run.
    checkpoints.load_config(FLAGS.workdir)
    if FLAGS.out:
      workdir_lib.make_folder(FLAGS.out, '--out')
    with cli.interrupt_ends_quietly('rendering figures'), cli.write_failure_ends_quietly():
      written = figures.render_figures(
          FLAGS.workdir, FLAGS.out, seed=FLAGS.seed, num_samples=FLAGS.num_samples,
          example=FLAGS.example,
          ppca_examples=FLAGS.ppca_examples, figure5_mode=FLAGS.figure5_mode)
  except (FileNotFoundError, ValueError) as e:  # messages say what to do
    cli.fail(str(e))
  for name, path in written.items():
    print(f'{name}: {path}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
