"""TrainState and the pieces that fix its shapes: model, optimizers, constraints."""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from sosvae_jax import lagrangian
from sosvae_jax.models import build_model
from sosvae_jax.models import PENALTY_COLLECTION
from sosvae_jax.models import variance_parameter_mask

Array = jax.Array

# Named streams of the one root key jax.random.key(config.seed).
STREAMS = ('params', 'sample', 'train', 'figures', 'eval')
# Collections of model.init that are not state: sown values are per call.
_NOT_STATE = ('params', PENALTY_COLLECTION, 'intermediates')


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar
  params: Any
  # Flax collections other than params, e.g. the running statistics of a
  # likelihood head; {} for most models.
  model_state: Any
  opt_state: Any
  multipliers: dict[str, Array]  # lambda_c >= 0, one per constraint
  multiplier_opt_state: Any
  rng: Array  # raw key data; the step's key is fold_in(rng, step)
  nonfinite_in_a_row: Array  # int32: consecutive skipped (non-finite) steps
  nonfinite_total: Array  # int32: all skipped steps of the run


@flax.struct.dataclass
class Hypers:
  """Per-run values the train step reads as arrays, not as compiled constants.

  A single run passes its own (train.step_function); a sweep stacks the
  Hypers of several runs along a leading model axis and vmaps the same step
  over them, so both execute the same maths. The learning rate is not here:
  optax.inject_hyperparams keeps it in the optimizer state.
  """

  kl_weight: Array  # float32: beta of the plain ELBO (no KL constraint)
  pretrain_steps: Array  # int32: optimizer updates with the variance heads frozen
  variance_lr_scale: Array  # float32
  targets: dict[str, Array]  # {constraint: xi}
  dampings: dict[str, Array]  # {constraint: c}
  multiplier_lrs: dict[str, Array]  # {constraint: ascent rate}
  likelihood: dict[str, Array]  # TRACED_LIKELIHOOD_FIELDS the head has


# Likelihood head fields a train step may take as arrays (the head clones
# itself with them): a fixed sigma.
TRACED_LIKELIHOOD_FIELDS = ('sigma',)


def hypers_from_config(config) -> Hypers:
  """The Hypers of one run's config, as float32 / int32 arrays."""
  constraints = lagrangian.constraints_from_config(config.constraints)
  f32 = lambda v: jnp.asarray(v, jnp.float32)
  rates = lagrangian.multiplier_learning_rates(config.constraints,
                                               config.multiplier_learning_rate)
  return Hypers(
      kl_weight=f32(config.get('kl_weight', 1.0)),
      pretrain_steps=jnp.asarray(int(config.pretrain_steps), jnp.int32),
      variance_lr_scale=f32(config.optimizer.get('variance_lr_scale', 1.0)),
      targets={k: f32(c.target) for k, c in constraints.items()},
      dampings={k: f32(c.damping) for k, c in constraints.items()},
      multiplier_lrs={k: f32(v) for k, v in rates.items()},
      likelihood={k: f32(config.likelihood[k]) for k in TRACED_LIKELIHOOD_FIELDS
                  if k in config.likelihood})


def with_likelihood_fields(model: nn.Module, fields: Mapping[str, Array]) -> nn.Module:
  """The model with its likelihood head's fields replaced (traced values)."""
  if not fields:
    return model
  return model.clone(likelihood=model.likelihood.clone(**fields))


class RunParts(NamedTuple):
  """What a run is built from; equal configs give equal (hashable) parts."""

  model: nn.Module
  tx: optax.GradientTransformation
  multiplier_tx: optax.GradientTransformation
  constraints: dict[str, lagrangian.Constraint]


def rng_streams(root: Array) -> dict[str, Array]:
  """{stream name: key}: independent keys split from one root key."""
  return dict(zip(STREAMS, jax.random.split(root, len(STREAMS))))


@jax.jit
def all_finite(tree) -> Array:
  """True iff every leaf of a pytree of arrays is finite (a scalar bool).

  Jitted: called on a whole state outside a step (checkpoints), op by op it
  compiled two small programs per leaf shape, seconds per launch.
  """
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def model_variables(params, model_state) -> dict[str, Any]:
  """The variables of `model.apply`: parameters plus running statistics."""
  return {'params': params, **(model_state or {})}


# ----------------------------------------------------------------------------
# Optimizers.
# ----------------------------------------------------------------------------
def make_optimizer(config, hypers: Hypers | None = None) -> optax.GradientTransformation:
  """Adam on the network, with the variance heads frozen and slowed by label.

  The parameters of the likelihood's variance heads (its registry entry names
  them) are labelled 'variance'; optax.multi_transform gives them a schedule
  that is 0 for the first config.pretrain_steps updates (mean-head
  pretraining, sosvae_tmlr2022.txt section 3.3: their gradients are zero
  before clipping and Adam, so Adam's moments see zeros while frozen) and a
  scale config.optimizer.variance_lr_scale on their updates afterwards.
  The learning rate goes through optax.inject_hyperparams, so it lives in
  the optimizer state (a sweep may give each model its own).

  The freeze counts optimizer updates: a skipped (non-finite) step, which
  keeps the old optimizer state, lengthens it by one step.

  With `hypers` the freeze length and the scale are its (possibly traced)
  values, else the config's; the optimizer state's structure is the same.
  """
  cfg = config.optimizer
  if cfg.learning_rate <= 0:
    raise ValueError(f'config.optimizer.learning_rate={cfg.learning_rate} must be > 0.')
  name = config.likelihood.name

  def labels(params):
    mask = variance_parameter_mask(params, name)
    return jax.tree.map(lambda v: 'variance' if v else 'other', mask)

  def on_variance(transform):
    return optax.multi_transform({'variance': transform, 'other': optax.identity()},
                                 labels)

  pretrain_steps = int(config.pretrain_steps) if hypers is None else hypers.pretrain_steps
  variance_lr_scale = (cfg.get('variance_lr_scale', 1.0) if hypers is None
                       else hypers.variance_lr_scale)
  frozen_then_free = optax.join_schedules(
      [optax.constant_schedule(0.0), optax.constant_schedule(1.0)], [pretrain_steps])
  parts = [on_variance(optax.scale_by_schedule(frozen_then_free))]
  if cfg.get('grad_clip_norm', 0):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.inject_hyperparams(optax.adam)(learning_rate=cfg.learning_rate))
  # Slower variance heads: P may only grow as fast as the mean can follow.
  # Always present, so that the optimizer state has one structure whatever
  # the scale (a resume or a sweep may change it).
  parts.append(on_variance(optax.scale(variance_lr_scale)))
  return optax.chain(*parts)


def multiplier_optimizer(config) -> optax.GradientTransformation:
  """Projected ascent on the multipliers at each constraint's rate."""
  return lagrangian.multiplier_optimizer(lagrangian.multiplier_learning_rates(
      config.constraints, config.multiplier_learning_rate))


def build_parts(config) -> RunParts:
  """Model, both optimizers and the constraints described by `config`."""
  return RunParts(model=build_model(config), tx=make_optimizer(config),
                  multiplier_tx=multiplier_optimizer(config),
                  constraints=lagrangian.constraints_from_config(config.constraints))


# ----------------------------------------------------------------------------
# State.
# ----------------------------------------------------------------------------
def init_variables(model: nn.Module, image_shape, streams: Mapping[str, Array]
                   ) -> tuple[Any, Any]:
  """(params, model_state) of a fresh model for images of `image_shape`."""
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  variables = model.init({'params': streams['params'], 'sample': streams['sample']},
                         dummy)
  return variables['params'], {k: v for k, v in variables.items() if k not in _NOT_STATE}


def create_train_state(config, parts: RunParts, root: Array) -> TrainState:
  """Fresh parameters, optimizer states and multipliers from the root key.

  Pure: jit it (op-by-op initialisation is several times slower), or vmap it
  over root keys for several models at once.
  """
  streams = rng_streams(root)
  params, model_state = init_variables(parts.model, config.data.image_shape, streams)
  initial = {k: c.get('initial_multiplier', 0.0) for k, c in config.constraints.items()}
  multipliers = lagrangian.init_multipliers(parts.constraints, initial)
  zero = jnp.zeros((), jnp.int32)
  return TrainState(step=zero, params=params, model_state=model_state,
                    opt_state=parts.tx.init(params), multipliers=multipliers,
                    multiplier_opt_state=parts.multiplier_tx.init(multipliers),
                    rng=jax.random.key_data(streams['train']),
                    nonfinite_in_a_row=zero, nonfinite_total=zero)


# Initialisation is threefry hashing plus a few float transforms, run once per
# model. XLA:CPU compiles it 1.6-2.8x faster at its lowest level (2-3 s
# against 4-15 s on 2 cores; benchmarks/init_compile_benchmark.py), and the
# initial values then differ from the optimised program's in about 4 % of
# entries, by at most 4 ulp.
INIT_COMPILER_OPTIONS = {'xla_backend_optimization_level': 0}


def call_init(fn, *args):
  """Compiles and calls a one-off initialisation `fn(*args)`.

  On CPU with INIT_COMPILER_OPTIONS; elsewhere jax.jit's defaults.
  """
  lowered = jax.jit(fn).lower(*args)
  options = INIT_COMPILER_OPTIONS if jax.default_backend() == 'cpu' else None
  return lowered.compile(compiler_options=options)(*args)


def abstract_train_state(config, parts: RunParts | None = None) -> TrainState:
  """The shapes and dtypes of `create_train_state`: traced, not computed."""
  parts = parts or build_parts(config)
  return jax.eval_shape(lambda: create_train_state(config, parts,
                                                   jax.random.key(0)))
