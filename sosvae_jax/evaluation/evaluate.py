"""Evaluation command: every metric of a trained run, written to workdir/eval/.

`evaluate_run(workdir)` restores the latest checkpoint (figures.restore_run)
and measures, on the evaluation split and on generated images:

* ELBO, log-likelihood, KL and MSE of the means of p(x|z), z ~ q(z|x);
* the IWAE bound with K importance samples (lin2019_balancing_elbo_learned_variance.txt
  Table 3 uses K = 20), chunked over samples (estimators.chunked_iwae);
  negative log-likelihoods in nats and bits per dimension from both bounds;
* mutual information I(x; z) and marginal KL(m(z) || p(z)) on a subset
  (rybkin2021_sigma_vae_calibrated_decoders.txt section 5.2 eq. 6);
* for images generated from z ~ the sampler (the prior N(0, I), or a
  Gaussian mixture fitted to posterior means of training images,
  lin2019_balancing_elbo_learned_variance.txt section 3.5): classifier FID
  (classifier.py; NOT Inception FID) of the means of p(x|z) and of samples
  from it, Inception FID of both when an Inception weights file is given,
  each against the evaluation split, as sosvae_tmlr2022.txt Table 1 reports
  means and samples separately; and the spatial coherence of sample - mean
  (coherence.py).

Bits per dimension: a discrete likelihood's log_prob is a mass over 8-bit
levels, so bpd = -log p / (S ln 2). A continuous density on [0, 1] becomes a
mass over bins of width 1/256 by adding log2(256) = 8 bits per dimension,
which assumes the density is flat within a bin; with variances below the
bin width (the SOS-VAE's D = 1e-5 is sigma 0.003 < 1/256) that is false and
the number can even be negative: compare those runs in nats.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax import figures
from sosvae_jax import input_pipeline
from sosvae_jax import likelihoods
from sosvae_jax import objectives
from sosvae_jax import plotting
from sosvae_jax import train
from sosvae_jax.evaluation import classifier as classifier_lib
from sosvae_jax.evaluation import coherence
from sosvae_jax.evaluation import estimators
from sosvae_jax.evaluation import features as features_lib
from sosvae_jax.evaluation import frechet
from sosvae_jax.evaluation import gmm as gmm_lib
from sosvae_jax.evaluation import inception

Array = jax.Array
SAMPLERS = ('prior', 'gmm')
NUM_GRID_IMAGES = 10
RESULTS_JSON = 'results.json'
RESULTS_MD = 'results.md'
SAMPLES_NPZ = 'samples.npz'
SAMPLES_PNG = 'samples.png'


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """What `evaluate_run` measures and on how much data.

  Attributes:
    num_samples: generated images for FID and coherence (the papers: 50,000).
    eval_examples: evaluation-split images for ELBO and IWAE; 0 = all.
    iwae_k: importance samples K of the IWAE bound; 0 skips it.
    iwae_chunk: importance samples drawn at once per batch.
    batch_size: images per jitted call.
    mi_examples: posteriors in the MI / marginal KL estimate (cost ~ N^2);
      0 skips it.
    mi_samples: z draws per posterior there.
    sampler: 'prior' or 'gmm'; None = config.sampler (default 'prior').
    gmm_components: None = config.gmm_components (default 10).
    gmm_covariance: 'full' or 'diag'; None = config.gmm_covariance.
    gmm_examples: training images whose posterior means the mixture is fit to.
    classifier_fid: compute classifier FID (needs class labels).
    classifier_cache_dir: None = classifier.DEFAULT_CACHE_DIR.
    classifier: settings of the feature classifier (part of its cache key).
    inception_weights: converted Inception .npz; None skips Inception FID.
    coherence_examples: generated images the coherence statistics pool.
    seed: seeds every random draw of the evaluation.
  """

  num_samples: int = 10000
  eval_examples: int = 0
  iwae_k: int = 20
  iwae_chunk: int = 10
  batch_size: int = 250
  mi_examples: int = 1000
  mi_samples: int = 10
  sampler: str | None = None
  gmm_components: int | None = None
  gmm_covariance: str | None = None
  gmm_examples: int = 10000
  classifier_fid: bool = True
  classifier_cache_dir: str | None = None
  classifier: classifier_lib.ClassifierSettings = classifier_lib.ClassifierSettings()
  inception_weights: str | None = None
  coherence_examples: int = 1000
  seed: int = 0

  def problems(self) -> list[str]:
    """Messages for settings that cannot work (empty when all is well)."""
    out = []
    for name in ('num_samples', 'iwae_chunk', 'batch_size', 'mi_samples',
                 'gmm_examples', 'coherence_examples'):
      if getattr(self, name) < 1:
        out.append(f'{name}={getattr(self, name)} must be >= 1')
    for name in ('eval_examples', 'iwae_k', 'mi_examples'):
      if getattr(self, name) < 0:
        out.append(f'{name}={getattr(self, name)} must be >= 0 (0: all / skip)')
    if self.num_samples < 2:
      out.append(f'num_samples={self.num_samples}: FID needs at least 2 images')
    if self.sampler is not None and self.sampler not in SAMPLERS:
      out.append(f'sampler={self.sampler!r}: choose one of {SAMPLERS}')
    if self.gmm_components is not None and self.gmm_components < 1:
      out.append(f'gmm_components={self.gmm_components} must be >= 1')
    if self.gmm_covariance is not None and self.gmm_covariance not in gmm_lib.COVARIANCE_TYPES:
      out.append(f'gmm_covariance={self.gmm_covariance!r}: choose one of '
                 f'{gmm_lib.COVARIANCE_TYPES}')
    if self.inception_weights and not os.path.exists(
        os.path.expanduser(self.inception_weights)):
      out.append(f'inception_weights={self.inception_weights!r} does not exist; '
                 f'download {inception.PYTORCH_FID_URL} and convert it with '
                 'scripts/convert_inception_weights.py')
    return out


# --------------------------------------------------------- jitted pieces ----


def _elbo_terms(variables, batch: Array, key: Array, *, model) -> dict[str, Array]:
  """Per-image ELBO terms for one posterior draw; arrays only (jit-friendly)."""
  x = input_pipeline.preprocess(batch)  # (B, H, W, C)
  mean, log_var = model.apply(variables, x, method='encode')  # (B, L) each
  z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape, mean.dtype)
  dist = model.apply(variables, z, x, method='decode')
  log_lik = dist.log_prob(train.to_event(dist, x))  # (B,)
  squared = jnp.square(dist.mean().reshape(x.shape) - x)
  return {'log_likelihood': log_lik,
          'kl': objectives.gaussian_kl(mean, log_var),
          'squared_error': jnp.mean(squared, axis=(1, 2, 3)),
          'posterior_mean': mean, 'posterior_log_var': log_var}


def _log_normal(z: Array, mean: Array | float, log_var: Array | float) -> Array:
  """log N(z; mean, diag exp(log_var)) summed over the last axis."""
  return -0.5 * jnp.sum(jnp.log(2 * jnp.pi) + log_var
                        + jnp.square(z - mean) * jnp.exp(-log_var), -1)


def _iwae_log_weights(variables, batch: Array, key: Array, n: int, *,
                      model) -> Array:
  """[n, B] log p(x|z) + log p(z) - log q(z|x) for n draws z ~ q(z|x)."""
  x = input_pipeline.preprocess(batch)
  b = x.shape[0]
  mean, log_var = model.apply(variables, x, method='encode')
  eps = jax.random.normal(key, (n,) + mean.shape, mean.dtype)
  z = mean + jnp.exp(0.5 * log_var) * eps  # (n, B, L)
  tiled = jnp.broadcast_to(x, (n,) + x.shape).reshape((n * b,) + x.shape[1:])
  dist = model.apply(variables, z.reshape(n * b, -1), tiled, method='decode')
  log_px = dist.log_prob(train.to_event(dist, tiled)).reshape(n, b)
  return log_px + _log_normal(z, 0.0, 0.0) - _log_normal(z, mean, log_var)


def _encode_means(variables, batch: Array, *, model) -> Array:
  return model.apply(variables, input_pipeline.preprocess(batch), method='encode')[0]


def _generate(variables, z: Array, key: Array, *, model,
              image_shape: tuple[int, ...]) -> tuple[Array, Array]:
  """(means, samples) of p(x|z) as images [B, H, W, C]; no target (generation)."""
  dist = model.apply(variables, z, method='decode')
  shape = (z.shape[0],) + tuple(image_shape)
  return dist.mean().reshape(shape), dist.sample(seed=key).reshape(shape)


@functools.lru_cache(maxsize=16)
def _compiled(fn, model, image_shape: tuple[int, ...] | None = None):
  """jax.jit of fn bound to `model`, cached: flax modules compare by structure,
  so evaluating several runs of one architecture compiles each piece once."""
  kwargs = {'model': model}
  if image_shape is not None:
    kwargs['image_shape'] = image_shape
  static = (3,) if fn is _iwae_log_weights else ()  # n, the samples per chunk
  return jax.jit(functools.partial(fn, **kwargs), static_argnums=static)


# ---------------------------------------------------------------- pieces ----


def _batches(images: np.ndarray, batch_size: int):
  """(n, batch) pairs: n real images, the last batch padded by repetition."""
  for start in range(0, len(images), batch_size):
    batch = images[start:start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, 0)])
    yield n, batch


class _Progress:
  """Logs 'what i/n (elapsed, left)' at most every `every` seconds."""

  def __init__(self, what: str, total: int, every: float = 20.0):
    self.what, self.total, self.every = what, total, every
    self.t0 = self.last = time.time()

  def update(self, done: int) -> None:
    now = time.time()
    if now - self.last >= self.every or done >= self.total:
      rate = done / max(now - self.t0, 1e-9)
      logging.info('%s %d/%d (%.0f s, about %.0f s left)', self.what, done, self.total,
                   now - self.t0, (self.total - done) / max(rate, 1e-9))
      self.last = now


def _likelihood_metrics(run, images: np.ndarray, s: EvalSettings,
                        key: Array) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """ELBO terms and IWAE over `images`; also the posterior means and log variances."""
  variables = run.variables
  terms_fn = _compiled(_elbo_terms, run.model)
  weights_fn = _compiled(_iwae_log_weights, run.model)
  sums = {'log_likelihood': 0.0, 'kl': 0.0, 'squared_error': 0.0, 'iwae': 0.0}
  post_means, post_log_vars = [], []
  progress = _Progress('likelihood metrics: images', len(images))
  done = 0
  for i, (n, batch) in enumerate(_batches(images, s.batch_size)):
    terms = jax.device_get(terms_fn(variables, batch, jax.random.fold_in(key, 2 * i)))
    for name in ('log_likelihood', 'kl', 'squared_error'):
      sums[name] += float(np.sum(np.asarray(terms[name], np.float64)[:n]))
    post_means.append(terms['posterior_mean'][:n])
    post_log_vars.append(terms['posterior_log_var'][:n])
    if s.iwae_k:
      bound = estimators.chunked_iwae(
          lambda x, k, m: weights_fn(variables, x, k, m), batch,
          jax.random.fold_in(key, 2 * i + 1), s.iwae_k, min(s.iwae_chunk, s.iwae_k))
      sums['iwae'] += float(np.sum(np.asarray(bound, np.float64)[:n]))
    done += n
    progress.update(done)
  means = {k: v / len(images) for k, v in sums.items()}
  metrics = {'log_likelihood': means['log_likelihood'], 'kl': means['kl'],
             'elbo': means['log_likelihood'] - means['kl'],
             'mse_means': means['squared_error']}
  if s.iwae_k:
    metrics['iwae'] = means['iwae']
  return metrics, np.concatenate(post_means), np.concatenate(post_log_vars)


def bits_per_dim(log_p: float, num_dims: int, discrete: bool) -> float:
  """-log p / (S ln 2), plus 8 for a density on [0, 1] (module docstring)."""
  bpd = -log_p / (num_dims * math.log(2.0))
  return bpd if discrete else bpd + 8.0


def _fit_sampler(run, s: EvalSettings, key: Array) -> tuple[Any, dict]:
  """(draw(n, seed) -> z [n, L], description) for the prior or a fitted GMM."""
  config = run.config
  sampler = s.sampler or config.get('sampler', 'prior') or 'prior'
  latent = config.model.latent_dim
  if sampler not in SAMPLERS:
    raise ValueError(f'config.sampler={sampler!r}: choose one of {SAMPLERS}.')
  if sampler == 'prior':
    draw = lambda n, seed: np.asarray(
        jax.random.normal(jax.random.fold_in(key, seed), (n, latent)))
    return draw, {'sampler': 'prior', 'description': 'z ~ N(0, I)'}
  components = s.gmm_components or config.get('gmm_components', 10)
  covariance = s.gmm_covariance or config.get('gmm_covariance', 'full')
  train_images = input_pipeline.eval_images(
      input_pipeline.get_source(config.data, 'train'), s.gmm_examples)
  encode = _compiled(_encode_means, run.model)
  z = np.concatenate([np.asarray(encode(run.variables, b))[:n]
                      for n, b in _batches(train_images, s.batch_size)])
  t0 = time.time()
  mixture = gmm_lib.fit_gaussian_mixture(z, components, covariance_type=covariance,
                                         seed=s.seed)
  logging.info('Fitted a %d-component %s Gaussian mixture to %d posterior means in '
               '%.1f s (%d EM iterations, converged %s).', components, covariance,
               len(z), time.time() - t0, mixture.iterations, mixture.converged)
  draw = lambda n, seed: mixture.sample(n, seed=[s.seed, seed]).astype(np.float32)
  return draw, {'sampler': 'gmm', 'description':
                f'z ~ {components}-component {covariance}-covariance Gaussian '
                f'mixture fitted to posterior means of {len(z)} training images',
                'gmm_components': components, 'gmm_covariance': covariance,
                'gmm_fit_examples': len(z), 'mixture': mixture}


def _feature_networks(run, s: EvalSettings) -> tuple[dict[str, Any], dict]:
  """{'classifier': fn, 'inception': fn} as enabled, and their descriptions."""
  nets, info = {}, {}
  if s.classifier_fid:
    trained = classifier_lib.load_or_train_classifier(
        run.config.data, cache_dir=s.classifier_cache_dir, settings=s.classifier)
    nets['classifier'] = trained.feature_fn()
    info['classifier'] = {'path': trained.path, 'test_accuracy': trained.test_accuracy,
                          'feature_dim': trained.meta['feature_dim']}
  if s.inception_weights:
    weights = inception.load_inception_weights(s.inception_weights)
    inception_fn = inception.feature_fn(weights)
    # Samples of a Gaussian leave [0, 1]; real images never do: clip as a PNG would.
    nets['inception'] = lambda x: inception_fn(np.clip(x, 0.0, 1.0))
    info['inception'] = {'weights': os.path.abspath(s.inception_weights)}
  return nets, info


def _generated_statistics(run, draw, nets, s: EvalSettings, key: Array
                          ) -> tuple[dict, dict[str, float], dict[str, np.ndarray]]:
  """Streams num_samples generated images through the feature networks.

  Returns ({(net, 'means'|'samples'): FeatureStatistics}, coherence metrics,
  the first NUM_GRID_IMAGES means and samples).
  """
  generate = _compiled(_generate, run.model, tuple(run.config.data.image_shape))
  stats = {(net, kind): frechet.FeatureStatistics() for net in nets
           for kind in ('means', 'samples')}
  kept = {'means': [], 'samples': []}
  progress = _Progress('generated images', s.num_samples)
  done, chunk = 0, 0
  while done < s.num_samples:
    n = min(s.batch_size, s.num_samples - done)
    z = draw(s.batch_size, chunk)  # one shape for every call: one compilation
    means, samples = (np.asarray(a)[:n] for a in generate(
        run.variables, jnp.asarray(z), jax.random.fold_in(key, chunk)))
    for net, fn in nets.items():
      for kind, images in (('means', means), ('samples', samples)):
        for f in features_lib.features_in_chunks(fn, images, s.batch_size):
          stats[(net, kind)].update(f)
    have = sum(len(k) for k in kept['means'])
    if have < max(s.coherence_examples, NUM_GRID_IMAGES):
      kept['means'].append(means)
      kept['samples'].append(samples)
    done += n
    chunk += 1
    progress.update(done)
  means = np.concatenate(kept['means'])
  samples = np.concatenate(kept['samples'])
  m = min(s.coherence_examples, len(means))
  coh = jax.device_get(coherence.residual_coherence(jnp.asarray(samples[:m]),
                                                    jnp.asarray(means[:m])))
  coh = {k: float(v) for k, v in coh.items()}
  return stats, coh, {'means': means[:NUM_GRID_IMAGES],
                      'samples': samples[:NUM_GRID_IMAGES]}


def _reference_statistics(run, nets, s: EvalSettings) -> dict[str, tuple]:
  """(mu, cov) of each feature network over the whole evaluation split."""
  source = input_pipeline.get_source(run.config.data, 'eval')
  images = np.asarray(input_pipeline.eval_images(source, len(source)), np.float32) / 255.0
  return {net: features_lib.statistics_in_chunks(fn, images, s.batch_size)
          for net, fn in nets.items()}


# ------------------------------------------------------------------ main ----


def evaluate_run(workdir: str, settings: EvalSettings | None = None,
                 **overrides) -> dict[str, Any]:
  """Every metric of the run in `workdir` (latest checkpoint); see the module doc.

  Args:
    workdir: a training run's workdir.
    settings: EvalSettings; keyword `overrides` replace its fields.

  Returns:
    JSON-ready dict: 'metrics' (name -> float), the run's identity, the
    sampler, the feature networks and notes. Write it with `write_results`.
  """
  s = dataclasses.replace(settings or EvalSettings(), **overrides)
  problems = s.problems()
  if problems:
    raise ValueError('Evaluation settings: ' + '; '.join(problems) + '.')
  t0 = time.time()
  run = figures.restore_run(workdir)
  config = run.config
  entry = likelihoods.LIKELIHOODS[config.likelihood.name]
  num_dims = int(np.prod(config.data.image_shape))
  key = jax.random.PRNGKey(s.seed)
  keys = dict(zip(('elbo', 'mi', 'sampler', 'generate'), jax.random.split(key, 4)))
  logging.info('Evaluating %s (step %d, likelihood %s).', workdir, run.step,
               config.likelihood.name)

  # Feature networks first: a missing label file or weights file fails early.
  nets, nets_info = _feature_networks(run, s)

  eval_source = input_pipeline.get_source(config.data, 'eval')
  images = input_pipeline.eval_images(eval_source, s.eval_examples or len(eval_source))
  metrics, post_mean, post_log_var = _likelihood_metrics(run, images, s, keys['elbo'])
  metrics['nll_elbo_nats'] = -metrics['elbo']
  metrics['nll_elbo_bits_per_dim'] = bits_per_dim(metrics['elbo'], num_dims, entry.discrete)
  if 'iwae' in metrics:
    metrics['nll_iwae_nats'] = -metrics['iwae']
    metrics['nll_iwae_bits_per_dim'] = bits_per_dim(metrics['iwae'], num_dims,
                                                    entry.discrete)
  if s.mi_examples:
    n = min(s.mi_examples, len(post_mean))
    mi, marginal_kl = estimators.mutual_information_and_marginal_kl(
        jnp.asarray(post_mean[:n]), jnp.asarray(post_log_var[:n]), keys['mi'],
        s.mi_samples)
    metrics.update(mutual_information=float(mi), marginal_kl=float(marginal_kl),
                   mutual_information_bound=math.log(n))

  draw, sampler_info = _fit_sampler(run, s, keys['sampler'])
  mixture = sampler_info.pop('mixture', None)
  stats, coh, grid_images = _generated_statistics(run, draw, nets, s, keys['generate'])
  metrics.update({f'coherence_{k}': v for k, v in coh.items()})
  reference = _reference_statistics(run, nets, s)
  for (net, kind), st in stats.items():
    metrics[f'fid_{net}_{kind}'] = frechet.frechet_distance(*st.statistics(),
                                                            *reference[net])

  notes = ['classifier FID uses the penultimate features of a small convnet trained '
           'on this dataset (evaluation/classifier.py); it is comparable only '
           'between runs that used the same classifier, never with Inception FID.']
  if not entry.discrete:
    notes.append('bits/dim of a density on [0, 1] add 8 bits (bins of 1/256); not '
                 'meaningful when variances are below the bin width: compare nats.')
  if 'inception' not in nets:
    notes.append('Inception FID not computed (no --inception_weights given).')
  return {
      'workdir': os.path.abspath(workdir), 'step': int(run.step),
      'likelihood': config.likelihood.name, 'discrete': bool(entry.discrete),
      'image_shape': list(config.data.image_shape), 'num_dims': num_dims,
      'eval_examples': len(images), 'num_samples': s.num_samples,
      'iwae_k': s.iwae_k, 'mi_examples': min(s.mi_examples, len(images)),
      **sampler_info, 'feature_networks': nets_info, 'metrics': metrics,
      'notes': notes, 'seconds': round(time.time() - t0, 1),
      'settings': {k: v for k, v in dataclasses.asdict(s).items()},
      '_mixture': mixture, '_grid': grid_images,
  }


# --------------------------------------------------------------- writers ----

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
FID_ROWS = (('classifier', 'classifier FID (not Inception FID)'),
            ('inception', 'Inception FID (pool3)'))


def cell(text: str) -> str:
  """Text safe inside a markdown table cell (pipes escaped)."""
  return str(text).replace('|', '\\|')


def fmt(value) -> str:
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
  info = results['feature_networks']
  if 'classifier' in info:
    lines += ['', f'Classifier: {info["classifier"]["path"]} (test accuracy '
              f'{info["classifier"]["test_accuracy"]:.4f}).']
  lines += [''] + [f'* {note}' for note in results['notes']]
  return '\n'.join(lines) + '\n'


def write_results(workdir: str, results: dict[str, Any]) -> dict[str, str]:
  """Writes eval/results.json, results.md, samples.npz, samples.png (+ gmm.json)."""
  out_dir = os.path.join(workdir, 'eval')
  os.makedirs(out_dir, exist_ok=True)
  results = dict(results)
  mixture, grid_images = results.pop('_mixture', None), results.pop('_grid')
  paths = {'json': os.path.join(out_dir, RESULTS_JSON),
           'markdown': os.path.join(out_dir, RESULTS_MD),
           'npz': os.path.join(out_dir, SAMPLES_NPZ),
           'png': os.path.join(out_dir, SAMPLES_PNG)}
  with open(paths['json'], 'w') as f:
    json.dump(results, f, indent=2, default=str)
  with open(paths['markdown'], 'w') as f:
    f.write(results_markdown(results))
  # results.json is the latest evaluation; a copy per sampler keeps the prior
  # and the mixture results of one workdir side by side.
  sampler = str(results['sampler'])
  for key, ext in (('json', '.json'), ('markdown', '.md')):
    paths[f'{key}_{sampler}'] = os.path.join(out_dir, f'results_{sampler}{ext}')
    shutil.copyfile(paths[key], paths[f'{key}_{sampler}'])
  np.savez(paths['npz'], **grid_images)
  plotting.save_png(plotting.grid(
      [plotting.to_rgb(grid_images['means']), plotting.to_rgb(grid_images['samples'])],
      [f'{results["sampler"]} mean', f'{results["sampler"]} sample']), paths['png'])
  if mixture is not None:
    paths['gmm'] = os.path.join(out_dir, 'gmm.json')
    with open(paths['gmm'], 'w') as f:
      json.dump(mixture.to_dict(), f)
  return paths


def evaluate_and_write(workdir: str, settings: EvalSettings | None = None,
                       **overrides) -> dict[str, Any]:
  """`evaluate_run` then `write_results`; logs the table and returns the results."""
  results = evaluate_run(workdir, settings, **overrides)
  paths = write_results(workdir, results)
  logging.info('Evaluation written to %s and %s (%.0f s):\n%s', paths['json'],
               paths['markdown'], results['seconds'], results_markdown(results))
  return {k: v for k, v in results.items() if not k.startswith('_')}
