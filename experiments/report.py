"""Command line: one Table-1-style report over several evaluated runs.

  python -m experiments.report --workdirs=runs/default,runs/beta_vae \
      --out=runs/report [--sampler=prior|gmm]

Each workdir must have been evaluated first (python -m experiments.main
--mode=evaluate --workdir=...). Writes report.md (rows = runs; likelihood
metrics, classifier / Inception FID of means and of samples, coherence) and
samples.png (the runs' generated means and samples side by side).
"""

# First: a Ctrl-C during the imports below ends the command quietly.
from experiments import quiet_start  # pylint: disable=unused-import,g-bad-import-order
from absl import app
from absl import flags

from experiments import cli
from sosvae_jax.evaluation import report

_WORKDIRS = cli.DEFINE_path_list('workdirs', None, 'Evaluated run folders, comma-separated.')
_OUT = cli.DEFINE_path('out', None, 'Folder for report.md and samples.png.')
_NAMES = flags.DEFINE_list('names', None, 'Row names (default: folder names).')
_SAMPLER = flags.DEFINE_enum('sampler', None, ['prior', 'gmm'],
                             "Show every run's evaluation with this latent sampler "
                             '(default: each run\'s latest evaluation).')
flags.mark_flags_as_required(['workdirs', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=cli.USER_ERROR)
  if _NAMES.value and len(_NAMES.value) != len(_WORKDIRS.value):
    raise app.UsageError(f'--names has {len(_NAMES.value)} entries but --workdirs '
                         f'{len(_WORKDIRS.value)}: give one name per workdir.',
                         exitcode=cli.USER_ERROR)
  try:
    with cli.interrupt_ends_quietly('writing the report'), cli.write_failure_ends_quietly():
      paths = report.write_report(_WORKDIRS.value, _OUT.value, _NAMES.value,
                                  _SAMPLER.value)
  except (FileNotFoundError, ValueError) as e:  # messages say what to do
    cli.fail(str(e))
  with open(paths['markdown']) as f:
    print(f.read())
  print(f'Wrote {paths["markdown"]} and {paths["png"]}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
