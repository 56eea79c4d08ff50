"""Command line: one Table-1-style report over several evaluated runs.

  python -m experiments.report --workdirs=runs/default,runs/beta_vae \
      --out=runs/report

Each workdir must have been evaluated first (python -m experiments.main
--mode=evaluate --workdir=...). Writes report.md (rows = runs; likelihood
metrics, classifier / Inception FID of means and of samples, coherence) and
samples.png (the runs' generated means and samples side by side).
"""

import sys

from absl import app
from absl import flags
from absl import logging

from sosvae_jax.evaluation import report

_WORKDIRS = flags.DEFINE_list('workdirs', None, 'Evaluated run folders, comma-separated.')
_OUT = flags.DEFINE_string('out', None, 'Folder for report.md and samples.png.')
_NAMES = flags.DEFINE_list('names', None, 'Row names (default: folder names).')
flags.mark_flags_as_required(['workdirs', 'out'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _NAMES.value and len(_NAMES.value) != len(_WORKDIRS.value):
    raise app.UsageError(f'--names has {len(_NAMES.value)} entries but --workdirs '
                         f'{len(_WORKDIRS.value)}.')
  try:
    paths = report.write_report(_WORKDIRS.value, _OUT.value, _NAMES.value)
  except FileNotFoundError as e:
    logging.error('%s', e)
    sys.exit(2)
  with open(paths['markdown']) as f:
    print(f.read())
  print(f'Wrote {paths["markdown"]} and {paths["png"]}')


if __name__ == '__main__':
  app.run(main)
