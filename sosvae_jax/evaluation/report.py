"""Table-1-style comparison of several evaluated runs, with their samples side by side.

sosvae_tmlr2022.txt Table 1 compares models by FID of the means of p(x|z)
and of samples from it. `write_report(workdirs, out_dir)` reads each run's
eval/results.json (written by `python -m experiments.main --mode=evaluate`)
and writes out_dir/report.md (one row per run: likelihood metrics,
classifier / Inception FID of means and of samples, coherence) and
out_dir/samples.png (each run's generated means and samples, side by side).
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image
from PIL import ImageDraw

from sosvae_jax import plotting
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.evaluation import results as results_lib

# (metrics key, column header); columns whose key no run has are left out.
COLUMNS = (
    ('elbo', 'ELBO (nats)'), ('iwae', 'IWAE (nats)'),
    ('nll_iwae_bits_per_dim', 'NLL IWAE (bits/dim)'), ('kl', 'KL'),
    ('mse_means', 'MSE means'), ('mutual_information', 'MI'),
    ('marginal_kl', 'marginal KL'),
    ('fid_classifier_means', 'classifier FID means'),
    ('fid_classifier_samples', 'classifier FID samples'),
    ('fid_inception_means', 'Inception FID means'),
    ('fid_inception_samples', 'Inception FID samples'),
    ('coherence_autocorrelation', 'lag-1 autocorr. (sample - mean)'),
    ('coherence_high_frequency_fraction', 'high-freq. fraction'),
    ('structure_participation_ratio', 'PR of P'),
    ('structure_num_components', 'components of P'),
    ('structure_span_share', 'span(P) share'),
    ('structure_pca_span_share', 'PCA share'),
    ('structure_centre_negative_share', 'neg. share'),
)
TITLE_HEIGHT = 14
GAP = 8
# The samples figure as a grid that reads at README width (~800 pixels): each
# run's images wrapped into rows of SAMPLE_COLUMNS, RUNS_PER_ROW runs a row.
SAMPLE_COLUMNS = 5
RUNS_PER_ROW = 2


# What a report reads of every results.json besides its metrics.
_RUN_KEYS = ('likelihood', 'sampler', 'step')


def _evaluate_command(workdir: str, sampler: str | None) -> str:
  extra = f' --config.evaluation.sampler={sampler}' if sampler else ''
  return f'`python -m experiments.main --mode=evaluate --workdir={workdir}{extra}`'


def load_results(workdir: str, sampler: str | None = None) -> dict[str, Any]:
  """A run's eval/results.json (the latest evaluation), or that of one sampler.

  FileNotFoundError saying how to make it.
  """
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f'--workdirs entry {workdir!r} is not a folder: pass the '
                            'workdirs of trained and evaluated runs.')
  path = results_lib.eval_file(workdir, results_lib.RESULTS_JSON, sampler)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: evaluate the run first with '
        f'{_evaluate_command(workdir, sampler)}.')
  again = f'evaluate the run again with {_evaluate_command(workdir, sampler)}.'
  try:
    with open(path) as f:
      results = json.load(f)
  except json.JSONDecodeError as e:  # e.g. an evaluation killed mid-write
    raise ValueError(f'{path} is not valid JSON ({e}): {again}') from None
  if not isinstance(results, dict) or not isinstance(results.get('metrics'), dict):
    raise ValueError(f'{path} holds no evaluation (no "metrics" object; edited by '
                     f'hand?): {again}')
  missing = [key for key in _RUN_KEYS if key not in results]
  if missing:
    raise ValueError(f'{path} holds no evaluation of a run (no '
                     f'{", ".join(repr(k) for k in missing)}; edited by hand?): {again}')
  return results


def run_names(workdirs: Sequence[str]) -> list[str]:
  """Folder names, or the full paths where two folders share a name."""
  names = [os.path.basename(os.path.normpath(w)) for w in workdirs]
  return [os.path.normpath(w) if names.count(n) > 1 else n
          for w, n in zip(workdirs, names)]


def _consistency_notes(results: Sequence[dict]) -> list[str]:
  """Warnings where the runs were evaluated differently (numbers not comparable)."""
  notes = []
  for key, what in (('num_samples', 'numbers of generated images'),
                    ('eval_examples', 'numbers of evaluation images'),
                    ('iwae_k', 'IWAE K')):
    values = sorted({r.get(key) for r in results}, key=str)
    if len(values) > 1:
      notes.append(f'The runs used different {what} ({values}).')
  classifiers = {r.get('feature_networks', {}).get('classifier', {}).get('path')
                 for r in results} - {None}
  if len(classifiers) > 1:
    notes.append('The runs used DIFFERENT feature classifiers '
                  f'({sorted(classifiers)}): their classifier FIDs are not comparable; '
                  're-evaluate with one --config.evaluation.classifier_cache_dir.')
  return notes


def report_markdown(results: Sequence[dict], names: Sequence[str]) -> str:
  """One table: rows = runs, columns = metrics (FID of means and of samples)."""
  columns = [(k, label) for k, label in COLUMNS if any(k in r['metrics'] for r in results)]
  header = ['run', 'likelihood', 'sampler', 'step'] + [label for _, label in columns]
  lines = ['# Comparison of evaluated runs', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, r in zip(names, results):
    values = [results_lib.cell(name), f'`{r["likelihood"]}`', r['sampler'], str(r['step'])]
    values += [results_lib.fmt(r["metrics"].get(k)) for k, _ in columns]
    lines.append('| ' + ' | '.join(values) + ' |')
  notes = ['"means" are the means of p(x|z) and "samples" draws from p(x|z), for z '
           'from the named sampler; FIDs are against the evaluation split.',
           'classifier FID uses a convnet trained on the dataset itself: comparable '
           'between these rows only, never with Inception FID or the papers.']
  if any(k.startswith('structure_') for k, _ in columns):
    notes.append('Structure of the covariance factor P on test images at the '
                 'posterior mean (evaluation/structure.py): PR = participation ratio '
                 'of its singular values, components with s_i >= 0.1 s_1, share of '
                 'the residual energy inside span(P) and inside a PCA basis of equal '
                 "rank, negative share of the centre pixel's covariance row.")
  notes += [f'{n}: {r["description"]}; {r["eval_examples"]} evaluation images, '
            f'{r["num_samples"]} generated.' for n, r in zip(names, results)]
  classifier = results[0].get('feature_networks', {}).get('classifier')
  if classifier:
    notes.append(f'Classifier {classifier["path"]}, test accuracy '
                 f'{classifier["test_accuracy"]:.4f}.')
  notes += _consistency_notes(results)
  return '\n'.join(lines + [''] + [f'* {n}' for n in notes]) + '\n'


def _titled(image: np.ndarray, title: str) -> np.ndarray:
  """A white strip with `title` above a uint8 image [H, W, 3]."""
  strip = Image.new('RGB', (image.shape[1], TITLE_HEIGHT), (255, 255, 255))
  ImageDraw.Draw(strip).text((3, 1), title, fill=(0, 0, 0))
  return np.concatenate([np.asarray(strip), image], axis=0)


def _run_panel(means: np.ndarray, samples: np.ndarray, name: str) -> np.ndarray:
  """One run: rows of SAMPLE_COLUMNS means, each above its samples, titled."""
  rows, labels = [], []
  for m, x in zip(plotting.wrap(plotting.to_rgb(means), SAMPLE_COLUMNS),
                  plotting.wrap(plotting.to_rgb(samples), SAMPLE_COLUMNS)):
    rows += [m, x]
    labels += ['mean', 'sample']
  return _titled(plotting.grid(rows, labels), name)


def samples_figure(workdirs: Sequence[str], names: Sequence[str],
                   sampler: str | None = None) -> np.ndarray:
  """Each run's means and samples, RUNS_PER_ROW runs a row, rows one under another."""
  panels = []
  for workdir, name in zip(workdirs, names):
    path = results_lib.eval_file(workdir, results_lib.SAMPLES_NPZ, sampler)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f'{path} not found: evaluate the run again with '
          f'{_evaluate_command(workdir, sampler)}.')
    with np.load(path) as data:
      panels.append(_run_panel(data['means'], data['samples'], name))
  height = max(p.shape[0] for p in panels)
  width = max(p.shape[1] for p in panels)
  padded = [np.pad(p, ((0, height - p.shape[0]), (0, width - p.shape[1] + GAP), (0, 0)),
                   constant_values=255) for p in panels]
  rows = [np.concatenate(padded[i:i + RUNS_PER_ROW], axis=1)
          for i in range(0, len(padded), RUNS_PER_ROW)]
  return plotting.stack(rows, pad=GAP)


def write_report(workdirs: Sequence[str], out_dir: str,
                 names: Sequence[str] | None = None,
                 sampler: str | None = None) -> dict[str, str]:
  """Writes out_dir/report.md and out_dir/samples.png; returns their paths.

  `sampler` ('prior' or 'gmm'): every run's evaluation with that sampler;
  None: each run's latest evaluation.
  """
  if not workdirs:
    raise ValueError('no workdirs given: pass --workdirs=run_a,run_b')
  # The folder is checked first: it is cheap, and a bad --out is then named
  # whatever the runs hold.
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise ValueError(f'--out={out_dir!r} is a file, not a folder: pass a folder for '
                     'report.md and samples.png.')
  workdir_lib.make_folder(out_dir, '--out')
  results = [load_results(w, sampler) for w in workdirs]
  names = list(names) if names else run_names(workdirs)
  paths = {'markdown': os.path.join(out_dir, 'report.md'),
           'png': os.path.join(out_dir, 'samples.png')}
  workdir_lib.write_atomic(paths['markdown'], report_markdown(results, names))
  plotting.save_png(samples_figure(workdirs, names, sampler), paths['png'])
  return paths
