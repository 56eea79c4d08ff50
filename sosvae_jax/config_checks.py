"""Start-up checks of a config: every problem found, in one readable error."""

from __future__ import annotations

import math
import os
import traceback
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from sosvae_jax import input_pipeline
from sosvae_jax import lagrangian
from sosvae_jax.models import LIKELIHOODS

MODELS = ('conv',)
SAMPLERS = ('prior', 'gmm')
# The constraint values train.loss_fn computes; any other name fails in jit.
CONSTRAINT_VALUES = ('kl', 'entropy')

_MISSING = object()


class ConfigError(ValueError):
  """A config that cannot train; the message lists every problem, one a line."""


def failure_in_file(error: BaseException, path: str) -> str | None:
  """"line N ('code') with Type: message" when `error` arose in the user's
  Python file `path` (a config or sweep file), else None.

  A file is to blame when the traceback passes through it (its body, or a
  function of it such as get_config()) or a SyntaxError names it; an error
  that never passed through it is not its fault and keeps its traceback.
  """
  path = os.path.abspath(path)
  if isinstance(error, SyntaxError):
    if not error.filename or os.path.abspath(error.filename) != path:
      return None
    line, code, cause = error.lineno, (error.text or '').strip(), error.msg
  else:
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == path]
    if not frames:
      return None
    line, code, cause = frames[-1].lineno, frames[-1].line, str(error).strip()
  return f'line {line} ({code!r}) with {type(error).__name__}{": " + cause if cause else ""}'


def _get(config, field: str, default: Any = _MISSING) -> Any:
  """config['a.b.c'] by dotted path; `default` where a part is missing."""
  node = config
  for part in field.split('.'):
    if not hasattr(node, 'get') or part not in node:
      return default
    node = node[part]
  return node


def _problem(field: str, value: Any, why: str, fix: str) -> str:
  return f'config.{field}={value!r}: {why}; {fix}.'


def _enabled_constraints(config) -> dict[str, Any]:
  return {name: c for name, c in config.constraints.items() if c.get('enabled', True)}


# ----------------------------------------------------------------------------
# Names chosen from registries.
# ----------------------------------------------------------------------------
def _check_choice(field: str, value: Any, choices: Sequence[str]) -> list[str]:
  if value in choices:
    return []
  flag = f'--config.{field}'
  return [_problem(field, value, f'unknown, the choices are {tuple(choices)}',
                   f'pass {flag}={choices[0]} or another of them')]


def _check_names(config) -> list[str]:
  problems = _check_choice('likelihood.name', config.likelihood.name,
                           sorted(LIKELIHOODS))
  if config.model.get('name'):
    problems += _check_choice('model.name', config.model.name, MODELS)
  problems += _check_choice('data.source', config.data.source, input_pipeline.SOURCES)
  if config.data.source == 'tfds':
    problems += _check_choice('data.name', config.data.get('name'),
                              input_pipeline.TFDS_DATASETS)
  if config.get('sampler'):
    problems += _check_choice('sampler', config.sampler, SAMPLERS)
  for name, c in _enabled_constraints(config).items():
    if name not in CONSTRAINT_VALUES:
      problems.append(
          f'config.constraints.{name}: unknown constraint {name!r}, the train step '
          f'computes only {CONSTRAINT_VALUES}; rename it to one of them or set '
          f'--config.constraints.{name}.enabled=False.')
    problems += _check_choice(f'constraints.{name}.kind', c.get('kind'), lagrangian.KINDS)
  return problems


# ----------------------------------------------------------------------------
# Shapes: image, strides, rank.
# ----------------------------------------------------------------------------
def _image_shape(config) -> tuple[int, int, int] | None:
  """config.data.image_shape if it is three positive ints, else None."""
  shape = tuple(config.data.get('image_shape', ()) or ())
  ok = len(shape) == 3 and all(isinstance(n, int) and n > 0 for n in shape)
  return shape if ok else None


def _check_shapes(config) -> list[str]:
  problems = []
  shape = _image_shape(config)
  if shape is None:
    problems.append(_problem(
        'data.image_shape', config.data.get('image_shape'),
        'must be three positive integers (height, width, channels)',
        "pass e.g. --config.data.image_shape='(28, 28, 1)'"))
  elif shape[-1] not in (1, 3):
    problems.append(_problem(
        'data.image_shape', shape, f'images are grayscale (C=1) or RGB (C=3), not C={shape[-1]}',
        'set the last entry to 1 or 3'))
  channels = tuple(config.model.get('channels', ()) or ())
  if not channels or not all(isinstance(c, int) and c > 0 for c in channels):
    problems.append(_problem(
        'model.channels', channels, 'the encoder needs at least one conv layer, each '
        'with a positive number of channels', "pass e.g. --config.model.channels='(16, 32)'"))
  elif shape is not None:
    problems += _check_strides(shape, channels)
  problems += _check_dtype(config.model.get('dtype', 'float32'))
  latent = config.model.get('latent_dim')
  if not isinstance(latent, int) or latent <= 0:
    problems.append(_problem('model.latent_dim', latent, 'must be a positive integer',
                             'pass e.g. --config.model.latent_dim=32'))
  return problems


def _check_dtype(name: Any) -> list[str]:
  """config.model.dtype: a floating dtype that JAX computes in as configured."""
  try:
    dtype = jnp.dtype(name)
  except TypeError:
    dtype = None
  if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
    return [_problem('model.dtype', name, 'the networks compute in a floating-point '
                     'dtype', 'pass --config.model.dtype=float32 (or bfloat16 for '
                     'mixed precision)')]
  if dtype.itemsize > 4 and not jax.config.jax_enable_x64:
    return [_problem('model.dtype', name, 'JAX computes in 32 bits unless 64-bit mode '
                     'is on, so the run would silently use float32',
                     'set the environment variable JAX_ENABLE_X64=1, or pass '
                     '--config.model.dtype=float32')]
  return []


def _check_strides(shape: tuple[int, int, int], channels: tuple[int, ...]) -> list[str]:
  """H and W must survive len(channels) halvings (ConvEncoder) exactly."""
  height, width, _ = shape
  factor = 2 ** len(channels)
  if height % factor == 0 and width % factor == 0:
    return []
  fits = 0  # The most halvings both sides allow.
  while height % 2 ** (fits + 1) == 0 and width % 2 ** (fits + 1) == 0:
    fits += 1
  sizes = sorted({factor * max(1, n // factor) for n in (height, width)} |
                 {factor * -(-n // factor) for n in (height, width)})
  fix = (f'use {fits} channel entr{"y" if fits == 1 else "ies"}' if fits else
         'no number of channel entries fits this size')
  fix += f', or image sides divisible by {factor} (e.g. {" or ".join(map(str, sizes))})'
  return [_problem(
      'model.channels', channels,
      f'with config.data.image_shape={shape} the encoder halves the image once per '
      f'channel entry ({len(channels)} stride-2 convs) and the decoder doubles it back, '
      f'so H={height} and W={width} must be divisible by 2**{len(channels)} = {factor}',
      fix)]


# ----------------------------------------------------------------------------
# Numbers: rates, counts, variances.
# ----------------------------------------------------------------------------
# (field, strict: value must be > 0, else >= 0; why).
_SIGNED_FIELDS = (
    ('optimizer.learning_rate', True, "Adam's step size: 0 never moves the "
     'parameters and a negative rate climbs the loss'),
    ('multiplier_learning_rate', True, 'the ascent rate of the Lagrange multipliers: '
     'with 0 or less they cannot enforce the constraints'),
    ('optimizer.variance_lr_scale', False, "scales the variance heads' updates: a "
     'negative scale climbs the loss, 0 freezes them'),
    ('optimizer.grad_clip_norm', False, 'the global-norm clip, 0 = off; a negative '
     'norm flips the gradient'),
    ('batch_size', True, 'the global batch must hold at least one image'),
    ('num_steps', True, 'the number of training steps'),
    ('pretrain_steps', False, 'steps with the variance heads frozen, 0 = no pretraining'),
    ('eval_examples', True, 'evaluation needs at least one test image'),
    ('num_figure_images', True, 'the figures need at least one image'),
    ('log_every_steps', True, 'the loop logs when step % log_every_steps == 0'),
    ('eval_every_steps', True, 'the loop evaluates when step % eval_every_steps == 0'),
    ('checkpoint_every_steps', True,
     'the loop saves when step % checkpoint_every_steps == 0'),
    ('checkpoints_to_keep', True, 'how many checkpoints orbax keeps; with 0 none '
     'survives to resume from'),
    ('max_nonfinite_steps', True, 'consecutive non-finite steps before the run '
     'stops; with 0 or less the first skipped step would stop it'),
    ('kl_weight', False, 'the weight (beta) of the KL in the ELBO: a negative '
     'weight rewards a large KL'),
)


def _check_sign(field: str, value: Any, strict: bool, why: str) -> list[str]:
  if value is None or value is _MISSING:
    return []
  bound = '> 0' if strict else '>= 0'
  if isinstance(value, (int, float)) and math.isinf(value):
    return [_problem(field, value, f'must be finite ({why})',
                     f'set --config.{field} to a finite value {bound}')]
  if isinstance(value, (int, float)) and (value > 0 or (not strict and value == 0)):
    return []
  return [_problem(field, value, f'must be {bound} ({why})',
                   f'set --config.{field} to a value {bound}')]


def _check_pretraining(config) -> list[str]:
  """The variance heads must get at least one step after the pretraining."""
  pretrain, steps = config.get('pretrain_steps'), config.get('num_steps')
  entry = LIKELIHOODS.get(config.likelihood.name)
  if (entry is None or not entry.variance_heads or not isinstance(pretrain, int)
      or not isinstance(steps, int) or steps <= 0 or pretrain < steps):
    return []
  return [_problem(
      'pretrain_steps', pretrain,
      f'>= config.num_steps={steps}: the variance heads of {config.likelihood.name} '
      f'({", ".join(entry.variance_heads)}) are frozen for the first pretrain_steps '
      'steps, so they would never train and the run would end at its initial '
      'variance',
      'set --config.pretrain_steps below num_steps ('
      + (f'e.g. {steps // 5}; ' if steps >= 5 else '') + '0 = no pretraining)')]


# The data order's shuffle (grain) takes an unsigned 32-bit seed.
_SEED_RANGE = (0, 2**32 - 1)


def _check_seed(seed: Any) -> list[str]:
  low, high = _SEED_RANGE
  if isinstance(seed, int) and low <= seed <= high:
    return []
  return [_problem('seed', seed, f'must be an integer in [{low}, {high}] (it seeds '
                   "the data order's shuffle, which takes an unsigned 32-bit seed)",
                   'set --config.seed to a value in that range, e.g. 0')]


def _check_figure_images(config) -> list[str]:
  """The reconstructions of the figures come from the first eval_examples images."""
  shown, examples = config.get('num_figure_images'), config.get('eval_examples')
  if not (isinstance(shown, int) and isinstance(examples, int) and 0 < examples < shown):
    return []
  return [_problem(
      'num_figure_images', shown, f'> config.eval_examples={examples}: the figures '
      'reconstruct the first eval_examples evaluation images, so they would show only '
      f'{examples} reconstructions next to {shown} prior samples',
      f'set --config.num_figure_images to at most {examples}, or raise '
      '--config.eval_examples')]


def _check_numbers(config, num_devices: int) -> list[str]:
  problems = []
  for field, strict, why in _SIGNED_FIELDS:
    problems += _check_sign(field, _get(config, field), strict, why)
  for name, c in _enabled_constraints(config).items():
    problems += _check_sign(
        f'constraints.{name}.multiplier_lr', c.get('multiplier_lr'), True,
        'the ascent rate of this multiplier; 0 does not freeze it but falls back to '
        'config.multiplier_learning_rate')
    problems += _check_sign(
        f'constraints.{name}.damping', c.get('damping'), False,
        'the penalty c * infeasibility^2: a negative damping rewards violating the '
        'constraint, 0 = no damping')
  problems += _check_pretraining(config)
  kl = _enabled_constraints(config).get('kl')
  target = None if kl is None else kl.get('target')
  if isinstance(target, (int, float)) and target < 0:
    problems.append(_problem(
        'constraints.kl.target', target, 'a KL divergence is never negative, so the '
        'constraint can never be met and its multiplier grows without bound',
        'set --config.constraints.kl.target to a value >= 0 (nats, e.g. 25)'))
  problems += _check_seed(config.get('seed'))
  problems += _check_figure_images(config)
  batch = config.get('batch_size')
  if isinstance(batch, int) and batch > 0 and batch % num_devices:
    problems.append(_problem(
        'batch_size', batch, f'the batch is split evenly over the {num_devices} '
        f'devices, so it must be a multiple of {num_devices}',
        f'set --config.batch_size to a multiple of {num_devices}, e.g. '
        f'{max(num_devices, batch - batch % num_devices)}'))
  return problems


# ----------------------------------------------------------------------------
# The entropy ceiling.
# ----------------------------------------------------------------------------
def entropy_floor(config) -> tuple[float, str] | None:
  """The least entropy (nats) p(x|z) can have and the field setting it, or None.

  The rule belongs to the likelihood's registry entry (e.g. 0.5 * S *
  (log(2 pi e) + log d) for a variance of at least a diagonal d). None for
  likelihoods without one, an unknown likelihood, or an invalid shape or
  variance.
  """
  entry = LIKELIHOODS.get(config.likelihood.name)
  floor = None if entry is None else entry.min_entropy(config)
  if floor is None:
    return None
  value, field = floor
  return value, f'likelihood.{field}'


def _check_entropy_target(config) -> list[str]:
  entropy = _enabled_constraints(config).get('entropy')
  floor = entropy_floor(config)
  if entropy is None or floor is None:
    return []
  target = entropy.get('target')
  value, field = floor
  if not isinstance(target, (int, float)) or target >= value:
    return []
  smallest = math.ceil(value * 10) / 10
  shape = _image_shape(config)
  d = LIKELIHOODS[config.likelihood.name].fields(config.likelihood, shape[-1]).get(
      field.split('.')[-1])
  what = 'learned diagonal (at its floor)' if field.endswith('min_variance') else 'fixed diagonal'
  return [_problem(
      'constraints.entropy.target', target,
      f'infeasible: the {what} alone gives p(x|z) an entropy of '
      f'0.5*S*(log(2*pi*e) + log d) = {value:.1f} nats (d = config.{field} = '
      f'{d!r}, S = {math.prod(shape)}) and P P^T only '
      'adds entropy',
      f'set --config.constraints.entropy.target to at least {smallest}, the smallest '
      'feasible target (the margin above it is the entropy left for P)')]


# ----------------------------------------------------------------------------
# Data on disk.
# ----------------------------------------------------------------------------
def _check_idx(config) -> list[str]:
  data = config.data
  problems, missing = [], []
  directory = input_pipeline.data_folder(data, 'idx_dir')
  for field in ('train_split', 'eval_split'):
    split = data.get(field)
    if split not in input_pipeline.IDX_FILES:
      problems += _check_choice(f'data.{field}', split, sorted(input_pipeline.IDX_FILES))
      continue
    path = os.path.join(directory, input_pipeline.IDX_FILES[split][0])
    if not (os.path.exists(path) or os.path.exists(path + '.gz')):
      missing.append(path + '[.gz]')
  if missing:
    problems.append(_problem(
        'data.idx_dir', directory, f'Fashion-MNIST IDX file(s) {", ".join(missing)} '
        'not found', 'install them with `sudo apt-get install dataset-fashion-mnist` '
        '(Debian/Ubuntu), or set --config.data.idx_dir to a folder holding the IDX '
        'files (train-images-idx3-ubyte[.gz], t10k-images-idx3-ubyte[.gz])'))
  shape = tuple(data.get('image_shape', ()) or ())
  if shape != (28, 28, 1):
    problems.append(_problem('data.image_shape', shape, 'IDX images are 28x28 grayscale',
                             "pass --config.data.image_shape='(28, 28, 1)'"))
  return problems


def _check_tfds(config) -> list[str]:
  data = config.data
  if data.get('name') not in input_pipeline.TFDS_DATASETS:
    return []  # Reported by _check_names.
  for split in ('train', 'eval'):
    try:
      input_pipeline.get_source(data, split)
    except input_pipeline.DataNotFoundError as e:
      # One line is enough: the same command prepares every split.
      return [f'config.data.name={data.name!r} (source tfds): {e}']
  return []


def _check_folder(config) -> list[str]:
  data = config.data
  folder_dir = input_pipeline.data_folder(data, 'folder_dir')
  if not folder_dir:
    return [_problem('data.folder_dir', folder_dir, "source 'folder' reads its images "
                     'from this folder', 'set --config.data.folder_dir to a folder of images')]
  problems = []
  for split, other in ((data.train_split, data.eval_split),
                       (data.eval_split, data.train_split)):
    try:
      paths = input_pipeline.folder_image_paths(folder_dir, split, other)
    except input_pipeline.DataNotFoundError as e:
      if str(e) not in problems:  # A missing folder fails both splits alike.
        problems.append(str(e))
      continue
    batch = config.get('batch_size')
    if split == data.train_split and isinstance(batch, int) and len(paths) < batch:
      problems.append(
          f'the training split holds {len(paths)} image(s), fewer than '
          f'config.batch_size={batch}, so every batch would repeat images; add images '
          f'or set --config.batch_size to at most {len(paths)}.')
  problems = [f'config.data.folder_dir={folder_dir!r}: {p}' for p in problems]
  if data.get('centre_crop'):
    problems.append(_problem('data.centre_crop', data.centre_crop, 'folder images are '
                             'neither cropped nor resized', 'set it to 0 and store '
                             'the images at config.data.image_shape'))
  return problems


_DATA_CHECKS: dict[str, Callable[[Any], list[str]]] = {
    'idx': _check_idx, 'tfds': _check_tfds, 'folder': _check_folder}


# ----------------------------------------------------------------------------
# Entry point.
# ----------------------------------------------------------------------------
_MODEL_SECTIONS = ('data', 'model', 'likelihood')


def model_problems(config) -> list[str]:
  """The problems of the fields the networks are built from: the sections,
  the likelihood and model names, the shapes and the likelihood's fields."""
  missing = [s for s in _MODEL_SECTIONS if not hasattr(config.get(s), 'get')]
  if missing:
    return [f'config.{s}: the section is missing (the model is built from '
            f'config.{", config.".join(_MODEL_SECTIONS)})' for s in missing]
  problems = _check_choice('likelihood.name', config.likelihood.get('name'),
                           sorted(LIKELIHOODS))
  if config.model.get('name'):
    problems += _check_choice('model.name', config.model.name, MODELS)
  problems += _check_shapes(config)
  entry = LIKELIHOODS.get(config.likelihood.get('name'))
  if entry is not None and not problems:  # its checks assume sound shapes
    problems += entry.problems(config)
  return problems


def check_config(config: ml_collections.ConfigDict, *,
                 num_devices: int | None = None) -> None:
  """Raises one ConfigError listing every problem of `config`, if any.

  Run at start-up, before anything compiles: names against the registries,
  shapes against the network's strides and the rank, signs of rates and
  counts, the entropy ceiling against its floor and the data on disk (the
  checkpoints already in a workdir: checkpoints.check_workdir).

  Args:
    config: the experiment config.
    num_devices: devices the batch is split over (default jax.device_count()).
  """
  num_devices = jax.device_count() if num_devices is None else num_devices
  problems = _check_names(config)
  problems += _check_shapes(config)
  problems += _check_numbers(config, num_devices)
  problems += _check_entropy_target(config)
  entry = LIKELIHOODS.get(config.likelihood.name)
  if entry is not None:
    problems += entry.problems(config)
  if config.data.source in _DATA_CHECKS:
    problems += _DATA_CHECKS[config.data.source](config)
  raise_problems(problems)


def raise_problems(problems: Sequence[str]) -> None:
  """Raises one ConfigError listing `problems`, one a line; nothing if none."""
  if problems:
    lines = '\n'.join(f'  - {p}' for p in problems)
    raise ConfigError(f'The config has {len(problems)} problem(s); fix them and run '
                      f'again:\n{lines}')
