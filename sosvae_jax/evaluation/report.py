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
from sosvae_jax.evaluation import evaluate

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
)
TITLE_HEIGHT = 14
GAP = 8


def load_results(workdir: str) -> dict[str, Any]:
  """A run's eval/results.json; FileNotFoundError saying how to make it."""
  path = os.path.join(workdir, 'eval', evaluate.RESULTS_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: evaluate the run first with `python -m experiments.main '
        f'--mode=evaluate --workdir={workdir}`.')
  with open(path) as f:
    return json.load(f)


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
                  're-evaluate with one --classifier_cache_dir.')
  return notes


def report_markdown(results: Sequence[dict], names: Sequence[str]) -> str:
  """One table: rows = runs, columns = metrics (FID of means and of samples)."""
  columns = [(k, label) for k, label in COLUMNS if any(k in r['metrics'] for r in results)]
  header = ['run', 'likelihood', 'sampler', 'step'] + [label for _, label in columns]
  lines = ['# Comparison of evaluated runs', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, r in zip(names, results):
    values = [evaluate.cell(name), f'`{r["likelihood"]}`', r['sampler'], str(r['step'])]
    values += [evaluate.fmt(r["metrics"].get(k)) for k, _ in columns]
    lines.append('| ' + ' | '.join(values) + ' |')
  notes = ['"means" are the means of p(x|z) and "samples" draws from p(x|z), for z '
           'from the named sampler; FIDs are against the evaluation split.',
           'classifier FID uses a convnet trained on the dataset itself: comparable '
           'between these rows only, never with Inception FID or the papers.']
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


def samples_figure(workdirs: Sequence[str], names: Sequence[str]) -> np.ndarray:
  """Each run's means (top row) and samples (bottom row), runs side by side."""
  panels = []
  for i, (workdir, name) in enumerate(zip(workdirs, names)):
    with np.load(os.path.join(workdir, 'eval', evaluate.SAMPLES_NPZ)) as data:
      rows = [plotting.to_rgb(data['means']), plotting.to_rgb(data['samples'])]
    labels = ['mean', 'sample'] if i == 0 else None
    panels.append(_titled(plotting.grid(rows, labels), name))
  height = max(p.shape[0] for p in panels)
  padded = []
  for p in panels:
    p = np.pad(p, ((0, height - p.shape[0]), (0, GAP), (0, 0)), constant_values=255)
    padded.append(p)
  return np.concatenate(padded, axis=1)


def write_report(workdirs: Sequence[str], out_dir: str,
                 names: Sequence[str] | None = None) -> dict[str, str]:
  """Writes out_dir/report.md and out_dir/samples.png; returns their paths."""
  if not workdirs:
    raise ValueError('no workdirs given: pass --workdirs=run_a,run_b')
  results = [load_results(w) for w in workdirs]
  names = list(names) if names else run_names(workdirs)
  os.makedirs(out_dir, exist_ok=True)
  paths = {'markdown': os.path.join(out_dir, 'report.md'),
           'png': os.path.join(out_dir, 'samples.png')}
  with open(paths['markdown'], 'w') as f:
    f.write(report_markdown(results, names))
  plotting.save_png(samples_figure(workdirs, names), paths['png'])
  return paths
