"""Which decoder? Every observation model of the five papers on one trunk.

Base config: experiments/configs/default.py (the SOS-VAE default): its
encoder, decoder trunk, latent size (32), batch (64), Adam 1e-3, data
(Fashion-MNIST) and the study's STEPS are shared by every point. A point
takes from its model's own config file only what makes the model: the whole
likelihood section and the objective (KL weight or KL constraint, entropy
constraint, mean-only pretraining, the variance heads' learning-rate scale).
Step counts of a model's schedule (pretraining, Lin's stage switch, Dorta's
variance-minimiser switch) keep their fraction of that config's run.

Objectives, as each paper trains its model:
* sigma-VAE decoders (rybkin2021_sigma_vae_calibrated_decoders.txt): the
  plain ELBO; the beta-VAE row is SSE + beta KL at the best beta of
  experiments/sweeps/beta_grid.py, trained as the decoder with sigma =
  sqrt(beta / 2) and the KL unweighted (the same loss up to the factor beta),
  so that its ELBO is a real one;
* Lin et al.'s two-stage decoder (lin2019_balancing_elbo_learned_variance.txt):
  the plain ELBO, stage two from 16/30 of the run;
* the diagonal Gaussian with a variance head and Dorta's structured Gaussian
  (dorta2018_vae_structured_residuals.txt), as SOS-VAE's Table 1 trains
  them: a KL constraint of 25 nats;
* SOS-VAE (sosvae_tmlr2022.txt): KL constraint and entropy ceiling; with the
  paper's shared factor head; and without the entropy constraint (its
  appendix A).

The whole study, resumable (a rerun skips what is finished), both samplers:

  python -m experiments.sweep --config=experiments/configs/default.py \
      --sweep=experiments/sweeps/decoders.py --workdir=runs/sweeps/decoders \
      --evaluate --samplers=prior,gmm
  # seed 0 of every model first: --sweep=experiments/sweeps/decoders.py:first_seed
  # seconds: --config=experiments/configs/default.py:smoke --sweep=...decoders.py:smoke

The evaluation settings are the study's own (EVALUATION below), set by every
point, so that all models are measured alike.

sweep.md ends with `report`: per model, mean +/- std over seeds of the
likelihoods, KL, MSE, classifier FIDs with both samplers, the coherence of
sample - mean, step time and parameter count; a verdict per paper claim;
and decoders.png, the mean and one sample of p(x|z) per model for the same
prior z's (docs/results.md shows them).
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import ml_collections
import numpy as np

from experiments.configs import beta_vae as diagonal_config
from experiments.configs import common
from experiments.configs import default as sos_config
from experiments.configs import sos_shared_head
from experiments.configs.lin2019 import fashion_mnist as lin_config
from experiments.configs.sigma_vae import bernoulli
from experiments.configs.sigma_vae import beta_vae as sigma_beta_vae
from experiments.configs.sigma_vae import bitwise_categorical
from experiments.configs.sigma_vae import categorical
from experiments.configs.sigma_vae import gaussian
from experiments.configs.sigma_vae import logistic_mixture
from experiments.configs.sigma_vae import optimal_sigma
from experiments.configs.sigma_vae import per_image_optimal_sigma
from experiments.configs.sigma_vae import per_pixel_sigma
from experiments.configs.sigma_vae import shared_sigma
from experiments.configs.sigma_vae import student_t
from experiments.configs.table1 import fmnist_structured
from sosvae_jax import metric_writers
from sosvae_jax import plotting
from sosvae_jax import sweep
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.evaluation import results as results_lib
from sosvae_jax.models import likelihoods

STEPS = 1500
SEEDS = (0, 1, 2)
# ':first_seed' trains seed 0 of every model: a first look at the whole table
# (its points are the full study's, which a later run without it completes).
GRIDS = {None: (STEPS, SEEDS), 'first_seed': (STEPS, SEEDS[:1]), 'smoke': (6, (0,))}
# The study's evaluation (every point the same): IWAE with K = 20 on 1000 test
# images (lin2019's Table 3 protocol: 500 x 20), FIDs of 5000 generated
# images per sampler; the smoke grid's are seconds long.
EVALUATION = {'evaluation.eval_examples': 1000, 'evaluation.iwae_k': 20,
              'evaluation.num_samples': 5000, 'evaluation.mi_examples': 0}
SMOKE_EVALUATION = {f'evaluation.{k}': v for k, v in common.SMOKE_EVALUATION.items()}
# The best beta of experiments/sweeps/beta_grid.py (highest test ELBO at its
# own sigma; docs/results.md, the beta grid).
BEST_BETA = 0.03
SAMPLERS = ('prior', 'gmm')
# The config fields that make a model's objective, taken from its own config.
OBJECTIVE_FIELDS = ('kl_weight', 'constraints.kl.enabled', 'constraints.kl.target',
                    'constraints.entropy.enabled', 'constraints.entropy.target',
                    'optimizer.variance_lr_scale')
# Step counts that keep their fraction of the model's own run.
SCHEDULE_FIELDS = ('pretrain_steps', 'likelihood.switch_step',
                   'likelihood.variance_minimiser_switch_step')


class Model(NamedTuple):
  """One row of the study: its label, its own config and what it changes there."""

  label: str
  get_config: Callable[[str | None], ml_collections.ConfigDict]
  changes: Mapping[str, Any] = {}


def _no_entropy_constraint(arg):
  config = sos_config.get_config(arg)
  config.constraints.entropy.enabled = False
  return config


# In the order they train: the calibrated Gaussians (sigma-VAE), Lin et al.,
# the Table 1 trio and SOS-VAE's variants, then the costlier discrete heads
# (256 or 8 logits, or a mixture, per subpixel).
MODELS = (
    Model('gaussian_unit', gaussian.get_config),
    Model('beta_vae', sigma_beta_vae.get_config,
          {'likelihood.sigma': math.sqrt(BEST_BETA / 2), 'kl_weight': 1.0}),
    Model('shared_sigma', shared_sigma.get_config),
    Model('pixel_sigma', per_pixel_sigma.get_config),
    Model('optimal_sigma', optimal_sigma.get_config),
    Model('optimal_sigma_per_image', per_image_optimal_sigma.get_config),
    Model('student_t', student_t.get_config),
    Model('lin_two_stage', lin_config.get_config),
    Model('diagonal_gaussian', diagonal_config.get_config),
    Model('dorta_structured', fmnist_structured.get_config),
    Model('sos_vae', sos_config.get_config),
    Model('sos_shared_head', sos_shared_head.get_config),
    Model('sos_no_entropy', _no_entropy_constraint),
    Model('bernoulli', bernoulli.get_config),
    Model('categorical', categorical.get_config),
    Model('bitwise_categorical', bitwise_categorical.get_config),
    Model('logistic_mixture', logistic_mixture.get_config),
)
LABELS = tuple(m.label for m in MODELS)


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split('.'):
    if part not in node:
      return None
    node = node[part]
  return node


def model_overrides(model: Model, steps: int, smoke: bool) -> dict[str, Any]:
  """The point overrides of `model` for a study of `steps` steps."""
  config = model.get_config('smoke' if smoke else None)
  section = likelihoods.likelihood_section(config.likelihood.name, config.likelihood,
                                           config.data.image_shape[-1])
  overrides = {sweep.LABEL: model.label, 'num_steps': steps,
               **{f'likelihood.{k}': v for k, v in section.items()},
               **{f: _get(config, f) for f in OBJECTIVE_FIELDS}}
  for field in SCHEDULE_FIELDS:
    value = _get(config, field)
    if value is not None:
      overrides[field] = round(value * steps / config.num_steps)
  overrides.update(model.changes)
  overrides.update(SMOKE_EVALUATION if smoke else EVALUATION)
  return overrides


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in GRIDS:
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing, '
                     f'{", ".join(repr(a) for a in GRIDS if a)}.')
  steps, seeds = GRIDS[arg]
  models = [model_overrides(m, steps, arg == 'smoke') for m in MODELS]
  return sweep.product(models, sweep.axis('seed', seeds))


# ----------------------------------------------------------------------------
# What each finished point measured.
# ----------------------------------------------------------------------------
def objective(config: Mapping[str, Any]) -> str:
  """The objective a point trained with, in words, read from its config."""
  constraints = config['constraints']
  parts = []
  if constraints['kl']['enabled']:
    parts.append(f'KL = {constraints["kl"]["target"]:g}')
  if constraints['entropy']['enabled']:
    parts.append(f'H <= {constraints["entropy"]["target"]:g}')
  if parts:
    return 'constraints ' + ', '.join(parts)
  return 'ELBO' if config['kl_weight'] == 1.0 else f'ELBO, KL x {config["kl_weight"]:g}'


def likelihood_kind(name: str) -> str:
  """'mass' (a distribution over 8-bit levels), 'density' (over [0, 1]) or
  'neither' (the Bernoulli on intensities: normalised over {0, 1} only)."""
  if name == 'bernoulli':
    return 'neither'
  return 'mass' if likelihoods.LIKELIHOODS[name].discrete else 'density'


def step_seconds(workdir: str) -> float | None:
  """Seconds per train step in the fastest logged interval after the first
  (which holds the compilation): the interval least slowed by other jobs on
  the machine and by the evaluations, which fall into some intervals."""
  records = metric_writers.read_metrics(workdir, split='train')
  rates = [r['steps_per_sec'] for r in records[1:]
           if isinstance(r.get('steps_per_sec'), (int, float)) and r['steps_per_sec'] > 0]
  return 1.0 / max(rates) if rates else None


def point_measurements(workdir: str, metrics: Mapping[str, float]) -> dict[str, Any]:
  """The numbers of one finished point: metrics.jsonl's and the evaluations'."""
  out = {k: metrics.get(k) for k in ('elbo', 'iwae', 'kl', 'mse_means', 'entropy')}
  if out['mse_means'] is None:
    out['mse_means'] = metrics.get('mse')
  for sampler in SAMPLERS:
    results = sweep.read_json(
        results_lib.eval_file(workdir, results_lib.RESULTS_JSON, sampler)) or {}
    m = results.get('metrics', {})
    for key in ('fid_classifier_means', 'fid_classifier_samples'):
      out[f'{key}_{sampler}'] = m.get(key)
    if sampler == 'prior':
      out['coherence_autocorrelation'] = m.get('coherence_autocorrelation')
      out['coherence_high_frequency_fraction'] = m.get('coherence_high_frequency_fraction')
      out['num_params'] = results.get('num_params')
      out['num_dims'] = results.get('num_dims')
      out['bits_per_dim'] = m.get('nll_iwae_bits_per_dim', m.get('nll_elbo_bits_per_dim'))
  out['step_seconds'] = step_seconds(workdir)
  return out


COLUMNS = ('elbo', 'iwae', 'bits_per_dim', 'kl', 'mse_means', 'entropy',
           'fid_classifier_means_prior', 'fid_classifier_samples_prior',
           'fid_classifier_means_gmm', 'fid_classifier_samples_gmm',
           'coherence_autocorrelation', 'coherence_high_frequency_fraction',
           'step_seconds', 'num_params')


def summary(root: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
  """{label: {'objective', 'likelihood', 'kind', 'seeds', 'points', COLUMN:
  (mean, std, n)}} over each model's finished points, in MODELS order."""
  points: dict[str, list[dict]] = {}
  info: dict[str, dict] = {}
  for r in rows:
    label = r.get(sweep.LABEL)
    info.setdefault(label, {'points': 0})['points'] += 1
    if r['status'] != sweep.FINISHED:
      continue
    workdir = os.path.join(root, r['name'])
    config = workdir_lib.effective_config(workdir)
    info[label].update(objective=objective(config), likelihood=config['likelihood']['name'],
                       kind=likelihood_kind(config['likelihood']['name']))
    points.setdefault(label, []).append(point_measurements(workdir, r['metrics']))
  table = {}
  for label in [l for l in LABELS if l in info] + [l for l in info if l not in LABELS]:
    measured = points.get(label, [])
    row = dict(info[label], seeds=len(measured))
    for c in COLUMNS:
      row[c] = sweep.mean_std([m.get(c) for m in measured])
    table[label] = row
  return table


# ----------------------------------------------------------------------------
# The report at the end of sweep.md.
# ----------------------------------------------------------------------------
def _pm(stat: tuple[float, float, int], digits: int = 4) -> str:
  mean, std, n = stat
  if not n:
    return '-'
  text = f'{mean:.{digits}g}'
  return text if n < 2 else f'{text} +/- {std:.2g}'


def _mean(table, label: str, column: str) -> float | None:
  row = table.get(label)
  if row is None or not row[column][2]:
    return None
  return row[column][0]


def _claim(text: str, evidence: Sequence[tuple[str, str]], holds: Callable[..., bool],
           table) -> tuple[str, str, str]:
  """(claim, the numbers, verdict); `evidence` = (label, column) pairs whose
  means `holds` takes in order."""
  values = [_mean(table, label, column) for label, column in evidence]
  numbers = ', '.join(f'{label} {column} {v:.4g}' if v is not None else
                      f'{label} {column} (not measured)'
                      for (label, column), v in zip(evidence, values))
  if any(v is None for v in values):
    return text, numbers, 'not testable yet: a model has no finished point'
  return text, numbers, 'holds' if holds(*values) else 'does not hold here'


def claims(table) -> list[tuple[str, str, str]]:
  """Each paper claim, the numbers that test it and its verdict."""
  fid = 'fid_classifier_samples_prior'
  return [
      _claim('sigma-VAE: a learned shared sigma has a better likelihood than the '
             'unit-variance Gaussian VAE and the best beta-VAE',
             [('shared_sigma', 'iwae'), ('gaussian_unit', 'iwae'), ('beta_vae', 'iwae')],
             lambda s, u, b: s > u and s > b, table),
      _claim('sigma-VAE: a learned shared sigma gives better samples (FID) than the '
             'unit-variance Gaussian VAE and the best beta-VAE',
             [('shared_sigma', fid), ('gaussian_unit', fid), ('beta_vae', fid)],
             lambda s, u, b: s < u and s < b, table),
      _claim('sigma-VAE: the calibrated discrete decoders (categorical, logistic mixture) '
             'give better samples than the naive Gaussian VAE',
             [('categorical', fid), ('logistic_mixture', fid), ('gaussian_unit', fid)],
             lambda c, l, u: c < u and l < u, table),
      _claim('sigma-VAE: the Bernoulli on intensities is poor (worst sample FID of the '
             'calibrated decoders)',
             [('bernoulli', fid), ('shared_sigma', fid), ('categorical', fid),
              ('optimal_sigma', fid)],
             lambda b, *others: b > max(others), table),
      _claim('sigma-VAE: a learned per-pixel sigma gets a good ELBO (above the shared '
             'sigma\'s) but poor samples (FID above the shared sigma\'s)',
             [('pixel_sigma', 'elbo'), ('shared_sigma', 'elbo'), ('pixel_sigma', fid),
              ('shared_sigma', fid)],
             lambda pe, se, pf, sf: pe > se and pf > sf, table),
      _claim('sigma-VAE: the analytic optimal sigma gives the best log-likelihood of the '
             'Gaussian decoders with one sigma (unit, beta, learned shared, optimal '
             'per image)',
             [('optimal_sigma', 'iwae'), ('gaussian_unit', 'iwae'), ('beta_vae', 'iwae'),
              ('shared_sigma', 'iwae'), ('optimal_sigma_per_image', 'iwae')],
             lambda o, *others: o >= max(others), table),
      _claim('sigma-VAE: the per-image optimal sigma gives the best visual quality '
             '(lowest sample FID of the sigma-VAE decoders)',
             [('optimal_sigma_per_image', fid), ('optimal_sigma', fid),
              ('shared_sigma', fid), ('pixel_sigma', fid), ('gaussian_unit', fid),
              ('beta_vae', fid), ('categorical', fid), ('bitwise_categorical', fid),
              ('logistic_mixture', fid), ('student_t', fid), ('bernoulli', fid)],
             lambda p, *others: p <= min(others), table),
      _claim('Lin et al.: the two-stage decoder\'s samples with the mixture sampler '
             'have a lower FID than with the prior sampler',
             [('lin_two_stage', 'fid_classifier_samples_gmm'), ('lin_two_stage', fid)],
             lambda g, p: g < p, table),
      _claim('Lin et al.: the two-stage decoder has a lower FID than one stage (the '
             'closed-form global variance, the optimal shared sigma), both with the '
             'mixture sampler',
             [('lin_two_stage', 'fid_classifier_samples_gmm'),
              ('optimal_sigma', 'fid_classifier_samples_gmm')],
             lambda t, o: t < o, table),
      _claim('Lin et al.: the input-dependent variance has a higher IWAE log-likelihood '
             'than the global variance',
             [('lin_two_stage', 'iwae'), ('optimal_sigma', 'iwae')],
             lambda t, o: t > o, table),
      _claim('Dorta et al.: the structured precision has a higher log-likelihood than '
             'the diagonal Gaussian (same KL constraint)',
             [('dorta_structured', 'iwae'), ('diagonal_gaussian', 'iwae')],
             lambda s, d: s > d, table),
      _claim('Dorta et al.: its samples\' residuals are locally correlated (lag-1 '
             'autocorrelation of sample - mean above the diagonal Gaussian\'s)',
             [('dorta_structured', 'coherence_autocorrelation'),
              ('diagonal_gaussian', 'coherence_autocorrelation')],
             lambda s, d: s > d, table),
      _claim('SOS-VAE Table 1: its samples have a lower FID than the beta-VAE\'s '
             '(diagonal Gaussian) and Dorta\'s samples',
             [('sos_vae', fid), ('diagonal_gaussian', fid), ('dorta_structured', fid)],
             lambda s, d, t: s < d and s < t, table),
      _claim('SOS-VAE Table 1: its samples are about as good as its means (sample FID '
             'within 1.5x of the means\' FID), unlike the beta-VAE\'s',
             [('sos_vae', fid), ('sos_vae', 'fid_classifier_means_prior'),
              ('diagonal_gaussian', fid), ('diagonal_gaussian', 'fid_classifier_means_prior')],
             lambda s, sm, d, dm: s <= 1.5 * sm and d > 1.5 * dm, table),
      _claim('SOS-VAE appendix A: without the entropy constraint the variance grows '
             '(higher entropy of p(x|z)) and the samples get worse',
             [('sos_no_entropy', 'entropy'), ('sos_vae', 'entropy'),
              ('sos_no_entropy', fid), ('sos_vae', fid)],
             lambda ne, e, nf, f: ne > e and nf > f, table),
  ]


FIGURE_PNG = 'decoders.png'
FIGURE_IMAGES = 6


def figure(root: str, rows: Sequence[Mapping[str, Any]]) -> np.ndarray | None:
  """One row per model (its first finished seed): mean and sample of p(x|z)
  side by side for the same first FIGURE_IMAGES prior z's (every point draws
  them from the same evaluation seed and latent size)."""
  panels, labels = [], []
  for label in LABELS:
    for r in rows:
      if r.get(sweep.LABEL) != label or r['status'] != sweep.FINISHED:
        continue
      path = results_lib.eval_file(os.path.join(root, r['name']), results_lib.SAMPLES_NPZ,
                                   'prior')
      if not os.path.isfile(path):
        continue
      with np.load(path) as grid_images:
        means = grid_images['means'][:FIGURE_IMAGES]
        samples = grid_images['samples'][:FIGURE_IMAGES]
      pairs = np.stack([means, samples], 1).reshape((-1,) + means.shape[1:])
      panels.append(plotting.to_rgb(np.clip(pairs, 0.0, 1.0)))
      labels.append(label)
      break
  if not panels or len({p.shape for p in panels}) > 1:
    return None
  return plotting.grid(panels, labels, label_width=150)


def report(root: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """The decoder study (markdown): the tables, the claims, the figure."""
  table = summary(root, rows)
  lines = [
      '## Which decoder? The decoder study', '',
      'Test set; mean +/- std over the finished seeds. ELBO and IWAE in nats per '
      'image (higher is better); bits/dim from the IWAE bound, a mass over 8-bit '
      'levels for the discrete decoders and a density + log2(255) for the '
      'continuous ones (the `kind` column: only rows of one kind compare by '
      'likelihood, and a density compares with a mass only where it is flat '
      'on each 1/255 bin; the Bernoulli is no distribution over 8-bit images). '
      'FID: classifier FID (lower is better) of the means and of samples of '
      'p(x|z), z from the prior or from a Gaussian mixture fitted to posterior '
      'means. Coherence of sample - mean (prior): lag-1 autocorrelation and share '
      'of energy above half Nyquist (white noise: 0.81). Step: seconds per train '
      'step in the fastest logged interval.', '',
      '| model | objective | kind | seeds | ELBO | IWAE | bits/dim | KL | MSE of means '
      '| entropy |',
      '|---|---|---|---|---|---|---|---|---|---|']
  for label, row in table.items():
    lines.append(
        f'| {label} | {row.get("objective", "-")} | {row.get("kind", "-")} | '
        f'{row["seeds"]} / {row["points"]} | {_pm(row["elbo"], 6)} | {_pm(row["iwae"], 6)} | '
        f'{_pm(row["bits_per_dim"])} | {_pm(row["kl"], 3)} | {_pm(row["mse_means"], 3)} | '
        f'{_pm(row["entropy"], 5)} |')
  lines += ['', '| model | FID means (prior) | FID samples (prior) | FID means (mixture) '
            '| FID samples (mixture) | autocorrelation | high-frequency share | '
            'step (s) | parameters |', '|---|---|---|---|---|---|---|---|---|']
  for label, row in table.items():
    lines.append(
        f'| {label} | {_pm(row["fid_classifier_means_prior"], 3)} | '
        f'{_pm(row["fid_classifier_samples_prior"], 3)} | '
        f'{_pm(row["fid_classifier_means_gmm"], 3)} | '
        f'{_pm(row["fid_classifier_samples_gmm"], 3)} | '
        f'{_pm(row["coherence_autocorrelation"], 3)} | '
        f'{_pm(row["coherence_high_frequency_fraction"], 3)} | '
        f'{_pm(row["step_seconds"], 3)} | {_pm(row["num_params"], 7)} |')
  lines += ['', '### The papers\' claims', '', '| claim | numbers (means over seeds) | '
            'verdict |', '|---|---|---|']
  lines += [f'| {c} | {n} | {v} |' for c, n, v in claims(table)]
  image = figure(root, rows)
  if image is not None:
    plotting.save_png(image, os.path.join(root, FIGURE_PNG))
    lines += ['', 'Mean and one sample of p(x|z) per model, pairs side by side, for the '
              'same prior z\'s (seed 0):', '', f'![decoders]({FIGURE_PNG})']
  return '\n'.join(lines) + '\n'
