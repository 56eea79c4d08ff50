"""Shared config pieces: data sources, the config argument and ':smoke' shrinking."""

from __future__ import annotations

from typing import Any

import ml_collections

from sosvae_jax.evaluation import settings as eval_settings
from sosvae_jax.models import likelihoods


def parse_arg(arg: str | None, **spec: Any) -> ml_collections.ConfigDict:
  """The config argument of `file.py:smoke,rank=8`, checked against `spec`.

  Every keyword of `spec` names one field and gives its default; a value
  `name=value` is converted to the default's type. A bare `name` sets a bool
  field to True; a field whose default is a tuple of strings is a choice
  (default: the first) that a bare choice also selects (`:svhn`). Anything
  else is an error that lists the valid names, so that a typo such as
  `:smok` stops the run instead of training the full experiment.

  Args:
    arg: the text after ':' (None or '' for none).
    **spec: field name -> default (bool, int, float, str or tuple of str).

  Returns:
    A locked ConfigDict with one field per keyword of `spec`.
  """
  choices = {k: v for k, v in spec.items() if isinstance(v, tuple)}
  parsed = {k: (v[0] if k in choices else v) for k, v in spec.items()}
  for token in filter(None, (t.strip() for t in (arg or '').split(','))):
    name, has_value, text = (t.strip() for t in token.partition('='))
    chosen = [k for k, options in choices.items() if token in options]
    if not has_value and chosen:
      parsed[chosen[0]] = token
    elif name not in spec:
      raise ValueError(f'Config argument {token!r} is unknown; valid: '
                       f'{_valid_arguments(spec)}.')
    elif not has_value:
      if not isinstance(spec[name], bool):
        raise ValueError(f'Config argument {name!r} needs a value: {name}=...')
      parsed[name] = True
    else:
      parsed[name] = _convert(name, text, spec[name])
  config = ml_collections.ConfigDict(parsed)
  config.lock()
  return config


def _valid_arguments(spec: dict[str, Any]) -> str:
  """'smoke, rank=<int>, dataset=fashion_mnist|svhn' for error messages."""
  def describe(name, default):
    if isinstance(default, bool):
      return name
    if isinstance(default, tuple):
      return f'{name}={"|".join(default)}'
    return f'{name}=<{type(default).__name__}>'
  return ', '.join(describe(k, v) for k, v in spec.items())


def _convert(name: str, text: str, default: Any) -> Any:
  """`text` as the type of `default`; ValueError naming the argument."""
  if isinstance(default, tuple):
    if text not in default:
      raise ValueError(f'Config argument {name}={text!r}: choose one of {default}.')
    return text
  if isinstance(default, bool):
    if text.lower() not in ('true', 'false', '1', '0'):
      raise ValueError(f'Config argument {name}={text!r}: expected true or false.')
    return text.lower() in ('true', '1')
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f'Config argument {name}={text!r}: expected '
                     f'{type(default).__name__}.') from None


def fashion_mnist_data() -> ml_collections.ConfigDict:
  """Full Fashion-MNIST from the IDX files of Debian's dataset-fashion-mnist."""
  return ml_collections.ConfigDict(dict(
      source='idx',  # 'idx' or 'tfds'
      name='fashion_mnist',
      idx_dir='/usr/share/datasets/fashion-mnist',
      tfds_data_dir='',  # '' = tfds default (~/tensorflow_datasets)
      folder_dir='',  # source='folder': images, optionally in train/ and test/
      train_split='train',
      eval_split='test',
      image_shape=(28, 28, 1),
      centre_crop=0,
      num_threads=2,
  ))


def base_config() -> ml_collections.ConfigDict:
  """Fields every experiment has; experiments override a few."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = fashion_mnist_data()
  config.model = ml_collections.ConfigDict(dict(
      channels=(16, 32), latent_dim=32, dtype='float32'))
  config.likelihood = ml_collections.ConfigDict(dict(
      name='lowrank_gaussian', rank=25, fixed_diag=1e-5, min_variance=1e-5,
      init_variance=0.05, head_init_stddev=1e-5,
      detach_variance_features=True, capacitance_jitter=0.0, mean_gradient='full'))
  config.constraints = ml_collections.ConfigDict(dict(
      kl=dict(enabled=True, target=25.0, kind='eq', damping=10.0,
              initial_multiplier=0.0, multiplier_lr=10.0),
      entropy=dict(enabled=True, target=-3330.0, kind='le', damping=10.0,
                   initial_multiplier=0.0, multiplier_lr=100.0),
  ))
  config.multiplier_learning_rate = 10.0
  # Weight (beta) of the KL in the plain ELBO, used when no KL constraint is
  # enabled: 1 is the ELBO, beta != 1 a beta-VAE with fixed beta.
  config.kl_weight = 1.0
  config.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=1e-3, grad_clip_norm=0.0, variance_lr_scale=0.1))
  config.batch_size = 64
  config.num_steps = 2500
  config.pretrain_steps = 500
  config.log_every_steps = 100
  config.eval_every_steps = 1000
  config.checkpoint_every_steps = 500
  config.checkpoints_to_keep = 3
  config.max_nonfinite_steps = 20  # consecutive skipped steps before stopping
  config.eval_examples = 1024
  config.num_figure_images = 10
  # Latent sampler of the evaluation (--mode=evaluate): 'prior' z ~ N(0, I), or
  # 'gmm', a Gaussian mixture of gmm_components components ('full' or 'diag'
  # covariance) fitted to posterior means of training images after training
  # (lin2019_balancing_elbo_learned_variance.txt section 3.5).
  config.sampler = 'prior'
  config.gmm_components = 10
  config.gmm_covariance = 'full'
  # --mode=evaluate settings (sosvae_jax/evaluation/settings.py), e.g.
  # --config.evaluation.iwae_k=50.
  config.evaluation = eval_settings.default_config()
  return config


def diagonal_gaussian_likelihood() -> ml_collections.ConfigDict:
  """The beta-VAE's pixel-wise Gaussian: the base likelihood without P and fixed D."""
  config = base_config()
  return ml_collections.ConfigDict(likelihoods.likelihood_section(
      'diagonal_gaussian', config.likelihood, config.data.image_shape[-1]))


# ':smoke' evaluation (config.evaluation fields): every metric of the full
# one on a few dozen images. The classifier keeps its default settings, so a
# smoke evaluation loads the shipped feature classifier instead of training one.
SMOKE_EVALUATION = {
    'eval_examples': 16, 'iwae_k': 2, 'iwae_chunk': 2, 'num_samples': 16,
    'batch_size': 8, 'mi_examples': 8, 'mi_samples': 2, 'coherence_examples': 8,
    'gmm_examples': 64, 'structure_examples': 8}


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """':smoke': the same experiment shrunk to a run of seconds on a CPU."""
  config.model.channels = (8, 16)
  config.model.latent_dim = 4
  if 'rank' in config.likelihood:
    config.likelihood.rank = min(config.likelihood.rank, 3)
  if config.likelihood.get('factor_trunk'):
    config.likelihood.factor_trunk = config.model.channels
  config.batch_size = 8
  config.num_steps = 6
  config.pretrain_steps = min(config.pretrain_steps, 2)
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.eval_examples = 16
  config.num_figure_images = 4
  config.data.num_threads = 1
  config.evaluation.update(SMOKE_EVALUATION)
  return config
