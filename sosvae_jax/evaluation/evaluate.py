"""Evaluation command: every metric of a trained run, written to workdir/eval/.

`evaluate_run(workdir)` restores the latest checkpoint (checkpoints.restore_run)
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
levels, so bpd = -log p / (S ln 2). A continuous density on data k / 255
becomes a mass over the discrete decoders' own bins (width 1/255 around each
level) by adding log2(255) bits per dimension
(distributions.density_bits_per_dim), which assumes the density is flat
within a bin; with variances below the bin width (the SOS-VAE's D = 1e-5 is
sigma 0.003 < 1/255) that is false and the number can even be negative:
compare those runs in nats.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from sosvae_jax import checkpoints
from sosvae_jax import distributions
from sosvae_jax import input_pipeline
from sosvae_jax import metric_writers
from sosvae_jax.models import likelihoods
from sosvae_jax import objectives
from sosvae_jax import observation
from sosvae_jax import progress as progress_lib
from sosvae_jax.config_checks import SAMPLERS
from sosvae_jax.evaluation import classifier as classifier_lib
from sosvae_jax.evaluation import coherence
from sosvae_jax.evaluation import estimators
from sosvae_jax.evaluation import features as features_lib
from sosvae_jax.evaluation import frechet
from sosvae_jax.evaluation import gmm as gmm_lib
from sosvae_jax.evaluation import inception
from sosvae_jax.evaluation import structure
from sosvae_jax.evaluation.results import Evaluation
from sosvae_jax.evaluation.results import results_markdown
from sosvae_jax.evaluation.results import write_results
from sosvae_jax.evaluation import settings as settings_lib
from sosvae_jax.evaluation.settings import EvalSettings

Array = jax.Array
NUM_GRID_IMAGES = 10


# --------------------------------------------------------- jitted pieces ----


def _elbo_terms(variables, batch: Array, key: Array, *, model) -> dict[str, Array]:
  """Per-image ELBO terms for one posterior draw; arrays only (jit-friendly)."""
  x = input_pipeline.preprocess(batch)  # (B, H, W, C)
  out = model.apply(variables, x, rngs={'sample': key})
  return {**objectives.elbo_terms(out, x), 'posterior_mean': out.posterior_mean,
          'posterior_log_var': out.posterior_log_var}


def _iwae_log_weights(variables, batch: Array, key: Array, n: int, *,
                      model) -> Array:
  """[n, B] log p(x|z) + log p(z) - log q(z|x) for n draws z ~ q(z|x)."""
  x = input_pipeline.preprocess(batch)

  def log_weight(k):
    # vmap batches only what depends on the key: x is encoded once.
    return objectives.log_importance_weight(
        model.apply(variables, x, rngs={'sample': k}), x)

  return jax.vmap(log_weight)(jax.random.split(key, n))


def _encode_means(variables, batch: Array, *, model) -> Array:
  return model.apply(variables, input_pipeline.preprocess(batch), method='encode')[0]


def _generate(variables, z: Array, key: Array, *, model,
              image_shape: tuple[int, ...]) -> tuple[Array, Array]:
  """(means, samples) of p(x|z) as images [B, H, W, C]; no target (generation)."""
  dist = model.apply(variables, z, method='decode')
  shape = (z.shape[0],) + tuple(image_shape)
  return dist.mean().reshape(shape), dist.sample(seed=key).reshape(shape)


def _lowrank_parts(variables, z: Array, *, model) -> tuple[Array, Array]:
  """(mean [B, S], covariance factor P [B, S, R]) of a low-rank p(x|z)."""
  dist = model.apply(variables, z, method='decode')
  return dist.loc, dist.cov_factor


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


def _likelihood_metrics(run, images: np.ndarray, s: EvalSettings,
                        key: Array) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
  """ELBO terms and IWAE over `images`; also the posterior means and log variances."""
  variables = run.variables
  terms_fn = _compiled(_elbo_terms, run.model)
  weights_fn = _compiled(_iwae_log_weights, run.model)
  sums = {'log_likelihood': 0.0, 'kl': 0.0, 'squared_error': 0.0, 'iwae': 0.0}
  post_means, post_log_vars = [], []
  progress = progress_lib.Progress('Likelihood metrics: images', len(images),
                                   every_seconds=20.0)
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


def _structure(run, images: np.ndarray, post_mean: np.ndarray, s: EvalSettings,
               key: Array) -> tuple[dict[str, float], dict[str, Any]]:
  """Structure of P (evaluation/structure.py) on test images at the posterior
  mean, against a PCA basis of their residuals, and on prior samples.

  Returns ({'structure_<name>' / 'structure_prior_<name>': float}, the two
  full reports with their mean singular-value spectra).
  """
  n = min(s.structure_examples, len(images))
  parts = _compiled(_lowrank_parts, run.model)

  def decode(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = [jax.device_get(parts(run.variables, jnp.asarray(z[i:i + s.batch_size])))
           for i in range(0, len(z), s.batch_size)]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])

  pixel = observation.central_pixel_index(tuple(run.config.data.image_shape))
  mean, factor = decode(post_mean[:n])
  x = np.asarray(input_pipeline.preprocess(images[:n]), np.float32).reshape(n, -1)
  test = structure.structure_report(factor, x - mean, pixel_index=pixel)
  z = np.asarray(jax.random.normal(key, (n, post_mean.shape[-1])))
  prior = structure.structure_report(decode(z)[1], None, pixel_index=pixel)
  metrics = {f'structure_{k}': float(test[k]) for k in structure.REPORT_KEYS if k in test}
  metrics.update({f'structure_prior_{k}': float(prior[k])
                  for k in structure.REPORT_KEYS if k in prior})
  return metrics, {'test_posterior_mean': test, 'prior': prior, 'images': n}


def _structure_key(key: Array) -> Array:
  """The prior draws of the structure report, from the evaluation's key."""
  return jax.random.fold_in(key, 5)


def _posterior_means(run, images: np.ndarray, batch_size: int) -> np.ndarray:
  encode = _compiled(_encode_means, run.model)
  return np.concatenate([np.asarray(encode(run.variables, b))[:n]
                         for n, b in _batches(images, batch_size)])


def structure_of_run(run: checkpoints.RestoredRun, images: np.ndarray,
                     settings: EvalSettings | None = None, *,
                     seed: int = 0) -> tuple[dict[str, float], dict[str, Any]]:
  """The structure report of --mode=evaluate for a restored low-rank run.

  Args:
    run: checkpoints.restore_run(workdir) of a likelihood with a low-rank factor.
    images: uint8 test images [N, H, W, C]; the first
      `settings.structure_examples` are decoded at their posterior means.
    settings: EvalSettings (structure_examples, batch_size).
    seed: the prior samples' seed.

  Returns:
    ({'structure_<name>' / 'structure_prior_<name>': float}, the two full
    reports with their mean singular-value spectra).
  """
  name = run.config.likelihood.name
  if not likelihoods.LIKELIHOODS[name].low_rank:
    raise ValueError(f'Likelihood {name!r} has no low-rank covariance factor: the '
                     'structure report applies to low-rank likelihoods only.')
  s = settings or EvalSettings()
  n = min(s.structure_examples, len(images))
  post_mean = _posterior_means(run, images[:n], s.batch_size)
  return _structure(run, images[:n], post_mean, s,
                    _structure_key(jax.random.PRNGKey(seed)))


def bits_per_dim(log_p: float, num_dims: int, discrete: bool) -> float:
  """-log p / (S ln 2), plus log2(255) for a density (module docstring)."""
  if discrete:
    return float(distributions.bits_per_dim(log_p, num_dims))
  return float(distributions.density_bits_per_dim(log_p, num_dims))


def _fit_sampler(run, s: EvalSettings, key: Array) -> tuple[Any, dict]:
  """(draw(n, seed) -> z [n, L], description) for the prior or a fitted GMM."""
  config = run.config
  sampler = s.sampler  # for_run filled the run's own where s had none
  latent = config.model.latent_dim
  if sampler not in SAMPLERS:
    raise ValueError(f'config.sampler={sampler!r}: choose one of {SAMPLERS}.')
  if sampler == 'prior':
    draw = lambda n, seed: np.asarray(
        jax.random.normal(jax.random.fold_in(key, seed), (n, latent)))
    return draw, {'sampler': 'prior', 'description': 'z ~ N(0, I)'}
  components, covariance = s.gmm_components, s.gmm_covariance
  train_images = input_pipeline.load_images(config.data, 'train', s.gmm_examples)
  z = _posterior_means(run, train_images, s.batch_size)
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
  progress = progress_lib.Progress('Generated images', s.num_samples,
                                   every_seconds=20.0)
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
  images = np.asarray(input_pipeline.load_images(run.config.data, 'eval'), np.float32) / 255.0
  return {net: features_lib.statistics_in_chunks(fn, images, s.batch_size)
          for net, fn in nets.items()}


# ------------------------------------------------------------------ main ----


def evaluate_run(workdir: str, settings: EvalSettings | None = None,
                 **overrides) -> Evaluation:
  """Every metric of the run in `workdir` (latest checkpoint); see the module doc.

  Args:
    workdir: a training run's workdir.
    settings: EvalSettings; keyword `overrides` replace its fields.

  Returns:
    Evaluation: a JSON-ready dict ('metrics' (name -> float), the run's
    identity, the sampler, the feature networks and notes), the fitted
    mixture sampler and the images of samples.png. Write it with
    `write_results`.
  """
  return evaluate_run_samplers(workdir, settings, None, **overrides)[0]


def evaluate_run_samplers(workdir: str, settings: EvalSettings | None,
                          samplers: Sequence[str] | None, **overrides) -> list[Evaluation]:
  """`evaluate_run` for each latent sampler of `samplers` (None: the one of
  the settings): the likelihood metrics are measured once and shared, the
  generated images, FIDs and coherence are each sampler's own."""
  s = dataclasses.replace(settings or EvalSettings(), **overrides)
  problems = s.problems() + [f'sampler={x!r}: choose one of {SAMPLERS}'
                             for x in samplers or () if x not in SAMPLERS]
  if not problems:  # then those of the run's own sampler fields
    s = settings_lib.for_run(s, checkpoints.load_config(workdir))
    problems = s.problems()
  if problems:
    raise ValueError('Evaluation settings: ' + '; '.join(problems) + '.')
  t0 = time.time()
  run = checkpoints.restore_run(workdir)
  config = run.config
  entry = likelihoods.LIKELIHOODS[config.likelihood.name]
  num_dims = int(np.prod(config.data.image_shape))
  key = jax.random.PRNGKey(s.seed)
  keys = dict(zip(('elbo', 'mi', 'sampler', 'generate'), jax.random.split(key, 4)))
  keys['structure'] = _structure_key(key)
  logging.info('Evaluating %s (step %d, likelihood %s).', workdir, run.step,
               config.likelihood.name)

  # Feature networks first: a missing label file or weights file fails early.
  nets, nets_info = _feature_networks(run, s)

  images = input_pipeline.load_images(config.data, 'eval', s.eval_examples or None)
  metrics, post_mean, post_log_var = _likelihood_metrics(run, images, s, keys['elbo'])
  metrics['nll_elbo_nats'] = -metrics['elbo']
  metrics['nll_elbo_bits_per_dim'] = bits_per_dim(metrics['elbo'], num_dims, entry.discrete)
  if 'iwae' in metrics:
    metrics['nll_iwae_nats'] = -metrics['iwae']
    metrics['nll_iwae_bits_per_dim'] = bits_per_dim(metrics['iwae'], num_dims,
                                                    entry.discrete)
  structure_info = None
  if entry.low_rank and s.structure_examples:
    structure_metrics, structure_info = _structure(run, images, post_mean, s,
                                                   keys['structure'])
    metrics.update(structure_metrics)
  if s.mi_examples:
    n = min(s.mi_examples, len(post_mean))
    mi, marginal_kl = estimators.mutual_information_and_marginal_kl(
        jnp.asarray(post_mean[:n]), jnp.asarray(post_log_var[:n]), keys['mi'],
        s.mi_samples)
    metrics.update(mutual_information=float(mi), marginal_kl=float(marginal_kl),
                   mutual_information_bound=math.log(n))

  notes = ['classifier FID uses the penultimate features of a small convnet trained '
           'on this dataset (evaluation/classifier.py); it is comparable only '
           'between runs that used the same classifier, never with Inception FID.']
  if not entry.discrete:
    notes.append('bits/dim of a density on data k/255 add log2(255) = 7.994 bits: '
                 'level k owns the bin of width 1/255 around k/255, as in the '
                 'discrete decoders, so a density flat on each bin reports the '
                 'same number as its mass; not meaningful when variances are '
                 'below the bin width: compare nats.')
  if 'inception' not in nets:
    notes.append('Inception FID not computed (no config.evaluation.inception_weights '
                 'given).')
  reference = _reference_statistics(run, nets, s)
  evaluations = []
  for sampler in samplers or (s.sampler,):
    t1 = time.time()
    sampler_metrics = dict(metrics)
    draw, sampler_info = _fit_sampler(run, dataclasses.replace(s, sampler=sampler),
                                      keys['sampler'])
    mixture = sampler_info.pop('mixture', None)
    stats, coh, grid_images = _generated_statistics(run, draw, nets, s, keys['generate'])
    sampler_metrics.update({f'coherence_{k}': v for k, v in coh.items()})
    for (net, kind), st in stats.items():
      sampler_metrics[f'fid_{net}_{kind}'] = frechet.frechet_distance(*st.statistics(),
                                                                      *reference[net])
    results = {
        'workdir': os.path.abspath(workdir), 'step': int(run.step),
        'likelihood': config.likelihood.name, 'discrete': bool(entry.discrete),
        'image_shape': list(config.data.image_shape), 'num_dims': num_dims,
        'eval_examples': len(images), 'num_samples': s.num_samples,
        'iwae_k': s.iwae_k, 'mi_examples': min(s.mi_examples, len(images)),
        'num_params': int(sum(np.size(p) for p in jax.tree.leaves(run.variables['params']))),
        **sampler_info, 'feature_networks': nets_info, 'metrics': sampler_metrics,
        'notes': notes,
        # The shared part once, each sampler's own part to it.
        'seconds': round(time.time() - t1 + (t1 - t0 if not evaluations else 0.0), 1),
        **({'structure': structure_info} if structure_info else {}),
        'settings': {k: v for k, v in dataclasses.asdict(
            dataclasses.replace(s, sampler=sampler)).items()},
    }
    evaluations.append(Evaluation(results, mixture, grid_images))
  return evaluations


def evaluate_and_write(workdir: str, settings: EvalSettings | None = None,
                       samplers: Sequence[str] | None = None, **overrides) -> dict[str, Any]:
  """`evaluate_run_samplers` then `write_results` for each sampler (results.json
  is the last one's, results_SAMPLER.json each one's); logs the tables and
  returns the last results.

  TensorBoard (workdir/tensorboard) also gets the metrics as scalars
  eval/SAMPLER/NAME at the run's step: metrics of the run's HPARAMS row.
  """
  evaluations = evaluate_run_samplers(workdir, settings, samplers, **overrides)
  for evaluation in evaluations:
    paths = write_results(workdir, evaluation)
    results = evaluation.results
    logging.info('Evaluation written to %s and %s (%.0f s):\n%s', paths['json'],
                 paths['markdown'], results['seconds'], results_markdown(results))
  if jax.process_index() == 0:
    metric_writers.write_run_summary(
        workdir, results['step'],
        {e.results['sampler']: e.results['metrics'] for e in evaluations})
  return results
