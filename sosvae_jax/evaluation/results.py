"""An evaluation's files: results.json, results.md, samples.npz/png and gmm.json.

Each evaluation writes them twice: under the plain names (the latest
evaluation, whatever its sampler) and under names carrying its sampler
(results_prior.json, samples_gmm.npz, ...), so that evaluating a run with the
mixture sampler keeps its prior results and a report can pick either.
"""

from __future__ import annotations

import io
import json
import os
from typing import Any, NamedTuple

import numpy as np

from sosvae_jax import plotting
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.evaluation import gmm as gmm_lib
from sosvae_jax.evaluation import structure

RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
SAMPLES_NPZ = 'samples.npz'
SAMPLES_PNG = 'samples.png'
GMM_JSON = 'gmm.json'


class Evaluation(NamedTuple):
  """What `evaluate_run` measured, split by where it is written."""

  results: dict[str, Any]  # JSON-ready: metrics, the run's identity, notes
  mixture: gmm_lib.GaussianMixture | None  # the fitted latent sampler, if any
  grid_images: dict[str, np.ndarray]  # {'means', 'samples'}: [N, H, W, C]


# (key, label) in table order; 'means'/'samples' rows come from fid_* keys.
LIKELIHOOD_ROWS = (
    ('elbo', 'ELBO (nats)'), ('log_likelihood', 'E_q log p(x|z) (nats)'),
    ('kl', 'KL(q(z|x) || p(z)) (nats)'), ('iwae', 'IWAE bound (nats)'),
    ('nll_elbo_nats', 'NLL from ELBO (nats)'), ('nll_iwae_nats', 'NLL from IWAE (nats)'),
    ('nll_elbo_bits_per_dim', 'NLL from ELBO (bits/dim)'),
    ('nll_iwae_bits_per_dim', 'NLL from IWAE (bits/dim)'),
    ('mse_means', 'MSE of means of p(x|z), z ~ q(z|x)'),
    ('mutual_information', 'mutual information I(x; z) (nats)'),
    ('mutual_information_bound', '  its upper bound log N (nats)'),
    ('marginal_kl', 'marginal KL(m(z) || p(z)) (nats)'),
)
def eval_file(workdir: str, name: str, sampler: str | None = None) -> str:
  """workdir/eval/NAME, or its copy for one sampler (results.json -> results_gmm.json)."""
  if sampler:
    stem, ext = os.path.splitext(name)
    name = f'{stem}_{sampler}{ext}'
  return os.path.join(workdir, 'eval', name)


FID_ROWS = (('classifier', 'classifier FID (not Inception FID)'),
            ('inception', 'Inception FID (pool3)'))


def cell(text: str) -> str:
  """Text safe inside a markdown table cell (pipes escaped)."""
  return str(text).replace('|', '\\|')


def fmt(value: float | None) -> str:
  """A metric in a table cell: 4 significant digits, 6 from 10^4 on; '-' if absent."""
  if value is None:
    return '-'
  return f'{value:.4g}' if abs(value) < 1e4 else f'{value:.6g}'


def results_markdown(results: dict[str, Any]) -> str:
  """The markdown of eval/results.md."""
  m = results['metrics']
  lines = [f'# Evaluation of {results["workdir"]} (step {results["step"]})', '',
           f'likelihood `{results["likelihood"]}` '
           f'({"discrete mass" if results["discrete"] else "continuous density"}); '
           f'sampler **{results["sampler"]}**: {results["description"]}; '
           f'{results["eval_examples"]} evaluation images, {results["num_samples"]} '
           f'generated images, IWAE K = {results["iwae_k"]}.', '',
           '| metric | value |', '|---|---|']
  lines += [f'| {cell(label)} | {fmt(m[key])} |' for key, label in LIKELIHOOD_ROWS
            if key in m]
  lines += ['', f'Generated images (sampler: {results["sampler"]}), against the '
            'evaluation split:', '',
            f'| metric | {cell("means of p(x|z)")} | {cell("samples of p(x|z)")} |',
            '|---|---|---|']
  for net, label in FID_ROWS:
    if f'fid_{net}_means' in m:
      lines.append(f'| {label} | {fmt(m[f"fid_{net}_means"])} | '
                   f'{fmt(m[f"fid_{net}_samples"])} |')
  lines.append('| lag-1 autocorrelation of sample - mean | - | '
               f'{fmt(m["coherence_autocorrelation"])} |')
  lines.append('| high-frequency energy fraction of sample - mean (white noise: '
               f'{m["coherence_white_noise_high_frequency_fraction"]:.3f}) | - | '
               f'{fmt(m["coherence_high_frequency_fraction"])} |')
  if any(f'structure_{k}' in m for k in structure.REPORT_KEYS):
    lines += ['', 'Structure of the covariance factor P (evaluation/structure.py; '
              'mean over images):', '',
              f'| metric | {cell("test images at the posterior mean")} | '
              f'{cell("prior samples")} |', '|---|---|---|']
    for key in structure.REPORT_KEYS:
      lines.append(f'| {cell(structure.REPORT_LABELS[key])} | '
                   f'{fmt(m.get(f"structure_{key}"))} | '
                   f'{fmt(m.get(f"structure_prior_{key}"))} |')
  info = results['feature_networks']
  if 'classifier' in info:
    lines += ['', f'Classifier: {info["classifier"]["path"]} (test accuracy '
              f'{info["classifier"]["test_accuracy"]:.4f}).']
  lines += [''] + [f'* {note}' for note in results['notes']]
  return '\n'.join(lines) + '\n'


def write_results(workdir: str, evaluation: Evaluation) -> dict[str, str]:
  """Writes eval/results.json, results.md, samples.npz, samples.png (+ gmm.json).

  Each file is written whole or not at all (workdir.write_atomic): a report
  never reads half a results.json. WriteError if the disk is full.
  """
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  results, mixture, grid_images = evaluation
  npz = io.BytesIO()
  np.savez(npz, **grid_images)
  contents = {
      'json': json.dumps(results, indent=2, default=str),
      'markdown': results_markdown(results),
      'npz': npz.getvalue(),
      'png': plotting.png_bytes(plotting.grid(
          [plotting.to_rgb(grid_images['means']), plotting.to_rgb(grid_images['samples'])],
          [f'{results["sampler"]} mean', f'{results["sampler"]} sample'])),
  }
  files = {'json': RESULTS_JSON, 'markdown': RESULTS_MD, 'npz': SAMPLES_NPZ,
           'png': SAMPLES_PNG}
  # The plain names hold the latest evaluation; a copy per sampler keeps the
  # prior and the mixture results of one workdir side by side.
  sampler = str(results['sampler'])
  paths = {key: eval_file(workdir, name) for key, name in files.items()}
  paths.update({f'{key}_{sampler}': eval_file(workdir, name, sampler)
                for key, name in files.items()})
  for key, path in paths.items():
    workdir_lib.write_atomic(path, contents[key.removesuffix(f'_{sampler}')])
  if mixture is not None:
    paths['gmm'] = os.path.join(out_dir, GMM_JSON)
    workdir_lib.write_atomic(paths['gmm'], json.dumps(mixture.to_dict()))
  return paths
