"""Evaluation settings: their defaults, checks and the config.evaluation section."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import ml_collections

from sosvae_jax import config_checks
from sosvae_jax import paths
from sosvae_jax.config_checks import SAMPLERS
from sosvae_jax.evaluation import classifier as classifier_lib
from sosvae_jax.evaluation import gmm as gmm_lib
from sosvae_jax.evaluation import inception


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
    classifier: settings of the feature classifier (part of its cache key);
      a dict in a config.
    inception_weights: converted Inception .npz; None skips Inception FID.
    coherence_examples: generated images the coherence statistics pool.
    structure_examples: evaluation images (at the posterior mean) and prior
      samples whose low-rank factors the structure report measures; 0 skips
      it. Only for likelihoods with a low-rank factor.
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
  structure_examples: int = 1000
  seed: int = 0

  def __post_init__(self):
    # Read from a config: no shell expanded their `~`.
    for name in ('classifier_cache_dir', 'inception_weights'):
      if value := getattr(self, name):
        object.__setattr__(self, name, paths.expand_user(value, f'config.evaluation.{name}'))

  def problems(self) -> list[str]:
    """Messages for settings that cannot work (empty when all is well)."""
    out = []
    for name in ('num_samples', 'iwae_chunk', 'batch_size', 'mi_samples',
                 'gmm_examples', 'coherence_examples'):
      if getattr(self, name) < 1:
        out.append(f'{name}={getattr(self, name)} must be >= 1')
    for name in ('eval_examples', 'iwae_k', 'mi_examples', 'structure_examples'):
      if getattr(self, name) < 0:
        out.append(f'{name}={getattr(self, name)} must be >= 0 (0: all / skip)')
    if self.num_samples < 2:
      out.append(f'num_samples={self.num_samples}: FID needs at least 2 images')
    if self.mi_examples == 1:
      out.append('mi_examples=1: the MI estimate is bounded by log(mi_examples) = 0, so '
                 'one posterior measures nothing; use 2 or more (the papers: 1000) or 0 '
                 'to skip it')
    if self.sampler is not None and self.sampler not in SAMPLERS:
      out.append(f'sampler={self.sampler!r}: choose one of {SAMPLERS}')
    if self.gmm_components is not None and self.gmm_components < 1:
      out.append(f'gmm_components={self.gmm_components} must be >= 1')
    elif (self.sampler == 'gmm' and self.gmm_components is not None
          and self.gmm_examples >= 1 and self.gmm_components > self.gmm_examples):
      out.append(f'gmm_components={self.gmm_components} is more than gmm_examples='
                 f'{self.gmm_examples}, the posterior means the mixture is fitted to; '
                 'fit more examples or use fewer components')
    if self.gmm_covariance is not None and self.gmm_covariance not in gmm_lib.COVARIANCE_TYPES:
      out.append(f'gmm_covariance={self.gmm_covariance!r}: choose one of '
                 f'{gmm_lib.COVARIANCE_TYPES}')
    if self.inception_weights and not os.path.exists(self.inception_weights):
      out.append(f'inception_weights={self.inception_weights!r} does not exist; '
                 f'download {inception.PYTORCH_FID_URL} and convert it with '
                 'scripts/convert_inception_weights.py')
    return out


# Settings whose None means the run's own config field of the same name, and
# that field's default for a config without it.
_RUN_FIELDS = {'sampler': 'prior', 'gmm_components': 10, 'gmm_covariance': 'full'}


def for_run(settings: EvalSettings, config: Mapping[str, Any]) -> EvalSettings:
  """`settings` with each None that defers to the run's config filled from it."""
  return dataclasses.replace(settings, **{
      k: v if (v := getattr(settings, k)) is not None else config.get(k, default)
      for k, default in _RUN_FIELDS.items()})


# Settings whose default None defers to the run's config (or skips a metric):
# their type, so that `--config.evaluation.sampler=gmm` can set them.
_OPTIONAL_TYPES = {'sampler': str, 'gmm_components': int, 'gmm_covariance': str,
                   'classifier_cache_dir': str, 'inception_weights': str}


def default_config() -> ml_collections.ConfigDict:
  """config.evaluation with EvalSettings' defaults (their only home).

  Overridable on the command line: `--config.evaluation.iwae_k=50`.
  """
  fields = {}
  for field in dataclasses.fields(EvalSettings):
    default = field.default
    if field.name == 'classifier':
      default = ml_collections.ConfigDict(dataclasses.asdict(default))
    elif field.name in _OPTIONAL_TYPES:
      default = ml_collections.FieldReference(default, field_type=_OPTIONAL_TYPES[field.name])
    fields[field.name] = default
  return ml_collections.ConfigDict(fields)


def from_config(section: Mapping[str, Any] | None) -> EvalSettings:
  """EvalSettings from config.evaluation (a ConfigDict or its JSON dict).

  None (a run saved before configs had the section) gives the defaults; an
  unknown field is a TypeError naming it.
  """
  values = dict(section.to_dict() if hasattr(section, 'to_dict') else section or {})
  classifier = {k: tuple(v) if isinstance(v, list) else v
                for k, v in dict(values.pop('classifier', None) or {}).items()}
  return EvalSettings(classifier=classifier_lib.ClassifierSettings(**classifier), **values)


def section_problems(config: ml_collections.ConfigDict) -> list[str]:
  """The problems of the settings a run's evaluation would use (its
  config.evaluation, with the run's own sampler fields where that leaves
  them None), as the config checker words them; empty when it can evaluate."""
  try:
    section = from_config(config.get('evaluation'))
  except TypeError as e:  # an unknown field
    fields = ', '.join(f.name for f in dataclasses.fields(EvalSettings))
    return [f'config.evaluation: {e}; remove that field (the fields are {fields}).']
  def where(problem: str) -> str:
    field = re.match(r'\w+', problem).group()
    from_run = field in _RUN_FIELDS and getattr(section, field) is None
    return 'config.' if from_run else 'config.evaluation.'
  return [f'{where(p)}{p}.' for p in for_run(section, config).problems()]


def check_section(config: ml_collections.ConfigDict) -> None:
  """ConfigError listing the problems of the run's evaluation settings: a run
  is refused at its launch rather than at its evaluation, hours later."""
  config_checks.raise_problems(section_problems(config))
