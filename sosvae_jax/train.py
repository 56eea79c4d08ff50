"""Training: TrainState, the pure train step, evaluation and the run loop."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any, Callable, Mapping

from absl import logging
import distrax
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from sosvae_jax import config_checks
from sosvae_jax import input_pipeline
from sosvae_jax import lagrangian
from sosvae_jax import metric_writers
from sosvae_jax import objectives
from sosvae_jax import plotting
from sosvae_jax import sharding
from sosvae_jax.models import build_model
from sosvae_jax.models import VARIANCE_HEADS

Array = jax.Array


@flax.struct.dataclass
class TrainState:
  step: Array  # int32 scalar
  params: Any
  # Flax collections other than params, e.g. 'likelihood_stats' (running
  # statistics of a likelihood head); {} for most models.
  model_state: Any
  opt_state: Any
  multipliers: dict[str, Array]  # lambda_c >= 0, one per constraint
  multiplier_opt_state: Any
  rng: Array  # base key; the step's key is fold_in(rng, step)
  nonfinite_in_a_row: Array  # int32: consecutive skipped (non-finite) steps
  nonfinite_total: Array  # int32: all skipped steps of the run


def all_finite(tree) -> Array:
  """True iff every leaf of a pytree of arrays is finite (a scalar bool)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


# ----------------------------------------------------------------------------
# Pieces of the step.
# ----------------------------------------------------------------------------
def variance_head_mask(params) -> Any:
  """True for parameters of variance heads (frozen during mean pretraining)."""
  def is_variance(path, _):
    names = {getattr(k, 'key', None) for k in path}
    return bool(names & set(VARIANCE_HEADS))
  return jax.tree_util.tree_map_with_path(is_variance, params)


# Flax collections a likelihood head may use (see likelihoods.py).
STATS_COLLECTION = 'likelihood_stats'
PENALTY_COLLECTION = 'penalties'
# Collections of model.init that are not state: sown values are per call.
_NOT_STATE = ('params', PENALTY_COLLECTION, 'intermediates')


def model_variables(params, model_state) -> dict[str, Any]:
  """The variables of `model.apply`: parameters plus running statistics."""
  return {'params': params, **(model_state or {})}


def to_event(dist: distrax.Distribution, x: Array) -> Array:
  """Images x [B, H, W, C] reshaped to (B,) + the distribution's event shape."""
  return x.reshape(x.shape[:1] + tuple(dist.event_shape))


def entropy_or_none(dist: distrax.Distribution) -> Array | None:
  """dist.entropy(), or None for distributions without a closed form."""
  try:
    return dist.entropy()
  except NotImplementedError:
    return None


def variance_or_estimate(dist: distrax.Distribution, rng: Array,
                         num_samples: int = 16) -> Array:
  """dist.variance(); a Monte Carlo estimate where there is no closed form."""
  try:
    return dist.variance()
  except NotImplementedError:
    draws = dist.sample(seed=rng, sample_shape=(num_samples,))
    return jnp.var(draws, axis=0, ddof=1)


def sown_penalties(collection) -> dict[str, Array]:
  """{name: scalar} from the 'penalties' collection (sow keeps tuples)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(collection or {}))
  out: dict[str, Array] = {}
  for path, values in flat.items():
    name = path[-1]
    total = sum(jnp.sum(v) for v in (values if isinstance(values, tuple) else (values,)))
    out[name] = out.get(name, 0.0) + total
  return out


def loss_fn(params, multipliers, model_state, batch: Array, rng: Array,
            step: Array, *, model: nn.Module,
            constraints: Mapping[str, lagrangian.Constraint],
            kl_weight: float = 1.0):
  """Negative Lagrangian of sosvae_tmlr2022.txt eq. 3 on one batch.

  Every per-image term is summed over its event dims, then averaged over the
  (global) batch; constraint values are those batch means. Returns the loss
  and (metrics, updated model_state).
  """
  x = input_pipeline.preprocess(batch)  # (B, H, W, C)
  mutable = [PENALTY_COLLECTION] + [k for k in model_state if k == STATS_COLLECTION]
  out, updates = model.apply(model_variables(params, model_state), x, train=True,
                             step=step, rngs={'sample': rng}, mutable=mutable)
  dist = out.observation
  log_lik = dist.log_prob(to_event(dist, x))  # (B,)
  kl = objectives.gaussian_kl(out.posterior_mean, out.posterior_log_var)  # (B,)
  values = {'kl': jnp.mean(kl)}
  entropy = entropy_or_none(dist)
  if entropy is not None:
    values['entropy'] = jnp.mean(entropy)
  elif 'entropy' in constraints:
    raise ValueError(f'{type(dist).__name__} has no closed-form entropy, so the '
                     'entropy constraint cannot be used with it; set '
                     'config.constraints.entropy.enabled=False.')
  loss = -jnp.mean(log_lik) + lagrangian.constraint_loss(values, multipliers, constraints)
  if 'kl' not in constraints:  # No KL constraint: the ELBO, KL weighted by beta.
    loss += kl_weight * values['kl']
  penalties = sown_penalties(updates.get(PENALTY_COLLECTION))
  for value in penalties.values():
    loss += value
  metrics = {
      'loss': loss,
      'log_likelihood': jnp.mean(log_lik),
      'kl': values['kl'],
      'elbo': jnp.mean(objectives.elbo(log_lik, kl)),
      'mse': jnp.mean(jnp.square(dist.mean().reshape(x.shape) - x)),
  }
  if entropy is not None:
    metrics['entropy'] = values['entropy']
  metrics.update({f'penalty_{k}': v for k, v in penalties.items()})
  new_model_state = dict(model_state)
  new_model_state.update({k: v for k, v in updates.items() if k != PENALTY_COLLECTION})
  return loss, (metrics, new_model_state)


def train_step(state: TrainState, batch: Array, *, model: nn.Module,
               tx: optax.GradientTransformation,
               multiplier_tx: optax.GradientTransformation,
               constraints: Mapping[str, lagrangian.Constraint],
               pretrain_steps: int,
               variance_lr_scale: float = 1.0,
               kl_weight: float = 1.0) -> tuple[TrainState, dict[str, Array]]:
  """One step: descent on the network, projected ascent on the multipliers."""
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, model=model, constraints=constraints,
                        kl_weight=kl_weight),
      argnums=(0, 1), has_aux=True)
  (_, (metrics, model_state)), (grads, mult_grads) = grad_fn(
      state.params, state.multipliers, state.model_state, batch, rng, state.step)
  # Mean-head pretraining: variance heads frozen (sosvae_tmlr2022.txt 3.3).
  pretraining = state.step < pretrain_steps
  grads = jax.tree.map(lambda g, frozen: jnp.where(frozen & pretraining, 0.0, g),
                       grads, variance_head_mask(grads))
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  if variance_lr_scale != 1.0:
    # Slower variance heads: P may only grow as fast as the mean can follow.
    updates = jax.tree.map(lambda u, v: u * variance_lr_scale if v else u,
                           updates, variance_head_mask(updates))
  params = optax.apply_updates(state.params, updates)
  mult_updates, mult_state = multiplier_tx.update(
      mult_grads, state.multiplier_opt_state, state.multipliers)
  multipliers = optax.apply_updates(state.multipliers, mult_updates)
  # A non-finite loss, gradient or update leaves the state as it was; the
  # step counter still advances so that the data order stays a function of
  # the step.
  finite = all_finite((metrics['loss'], grads, mult_grads, params, multipliers,
                       model_state))
  keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
  in_a_row = jnp.where(finite, 0, state.nonfinite_in_a_row + 1).astype(jnp.int32)
  total = (state.nonfinite_total + jnp.where(finite, 0, 1)).astype(jnp.int32)
  metrics.update({f'multiplier_{k}': v for k, v in state.multipliers.items()})
  metrics['grad_norm'] = optax.global_norm(grads)
  metrics['pretraining'] = pretraining.astype(jnp.float32)
  metrics['nonfinite_in_a_row'] = in_a_row
  metrics['nonfinite_total'] = total
  new_state = state.replace(
      step=state.step + 1, params=keep(params, state.params),
      model_state=keep(model_state, state.model_state),
      opt_state=keep(opt_state, state.opt_state),
      multipliers=keep(multipliers, state.multipliers),
      multiplier_opt_state=keep(mult_state, state.multiplier_opt_state),
      nonfinite_in_a_row=in_a_row, nonfinite_total=total)
  return new_state, metrics


def eval_step(variables, batch: Array, rng: Array, *, model: nn.Module) -> dict[str, Array]:
  """ELBO terms on a held-out batch (one posterior sample).

  `variables` is `model_variables(params, model_state)`.
  """
  x = input_pipeline.preprocess(batch)
  out = model.apply(variables, x, rngs={'sample': rng})
  dist = out.observation
  log_lik = dist.log_prob(to_event(dist, x))
  kl = objectives.gaussian_kl(out.posterior_mean, out.posterior_log_var)
  metrics = {
      'log_likelihood': jnp.mean(log_lik),
      'kl': jnp.mean(kl),
      'elbo': jnp.mean(log_lik - kl),
      'mse': jnp.mean(jnp.square(dist.mean().reshape(x.shape) - x)),
  }
  entropy = entropy_or_none(dist)
  if entropy is not None:
    metrics['entropy'] = jnp.mean(entropy)
  return metrics


def observation_images(variables, z: Array, rng: Array, *, model: nn.Module,
                       image_shape) -> dict[str, Array]:
  """Mean, one sample and per-pixel variance of p(x|z), as images."""
  dist = model.apply(variables, z, method=lambda m, z: m.decode(z))
  shape = (z.shape[0],) + tuple(image_shape)
  sample_rng, variance_rng = jax.random.split(rng)
  return {
      'mean': dist.mean().reshape(shape),
      'sample': dist.sample(seed=sample_rng).reshape(shape),
      'variance': variance_or_estimate(dist, variance_rng).reshape(shape),
  }


def reconstruction_images(variables, batch: Array, rng: Array, *,
                          model: nn.Module) -> dict[str, Array]:
  """Input, and mean, sample and variance of p(x|z) for z ~ q(z|x)."""
  x = input_pipeline.preprocess(batch)
  out = model.apply(variables, x, rngs={'sample': rng})
  dist = out.observation
  sample_rng, variance_rng = jax.random.split(rng)
  return {'input': x, 'mean': dist.mean().reshape(x.shape),
          'sample': dist.sample(seed=sample_rng).reshape(x.shape),
          'variance': variance_or_estimate(dist, variance_rng).reshape(x.shape)}


# ----------------------------------------------------------------------------
# Construction.
# ----------------------------------------------------------------------------
def make_optimizer(config) -> optax.GradientTransformation:
  cfg = config.optimizer
  if cfg.learning_rate <= 0:
    raise ValueError(f'config.optimizer.learning_rate={cfg.learning_rate} must be > 0.')
  parts = []
  if cfg.get('grad_clip_norm', 0):
    parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
  parts.append(optax.adam(cfg.learning_rate))
  return optax.chain(*parts)


def create_train_state(config, model: nn.Module, tx, multiplier_tx,
                       constraints) -> TrainState:
  """Fresh parameters, optimizer states and multipliers (built under jit:
  op-by-op initialisation of the network is several times slower)."""
  initial = {k: c.get('initial_multiplier', 0.0) for k, c in config.constraints.items()}
  image_shape = tuple(config.data.image_shape)

  @jax.jit
  def init(rng):
    init_rng, sample_rng, state_rng = jax.random.split(rng, 3)
    dummy = jnp.zeros((1,) + image_shape, jnp.float32)
    variables = model.init({'params': init_rng, 'sample': sample_rng}, dummy)
    params = variables['params']
    model_state = {k: v for k, v in variables.items() if k not in _NOT_STATE}
    multipliers = lagrangian.init_multipliers(constraints, initial)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      model_state=model_state,
                      opt_state=tx.init(params), multipliers=multipliers,
                      multiplier_opt_state=multiplier_tx.init(multipliers),
                      rng=state_rng, nonfinite_in_a_row=jnp.zeros((), jnp.int32),
                      nonfinite_total=jnp.zeros((), jnp.int32))

  return init(jax.random.PRNGKey(config.seed))


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.get('checkpoints_to_keep', 3), create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def _leaf_shapes(tree, prefix: str = '') -> dict[str, tuple | None]:
  """{'a/b/c': shape} for every leaf of a nested dict (array or metadata)."""
  if not isinstance(tree, dict):
    shape = getattr(tree, 'shape', None)
    return {prefix: tuple(shape) if shape is not None else None}
  out = {}
  for key, value in tree.items():
    out.update(_leaf_shapes(value, f'{prefix}/{key}' if prefix else str(key)))
  return out


def check_checkpoint_structure(manager: ocp.CheckpointManager, step: int,
                               state: TrainState) -> None:
  """Raises ConfigError if checkpoint `step` holds another model or format.

  A structural mismatch is not corruption: the checkpoint is fine but belongs
  to a different model (or an older sosvae_jax), so it is left in place and
  the user decides. Unreadable metadata returns silently (the restore that
  follows reports it as corrupt).
  """
  try:
    saved = manager.item_metadata(step)
    saved = getattr(saved, 'tree', saved)
  except Exception:  # pylint: disable=broad-except
    return
  if not isinstance(saved, dict):
    return
  expected = flax.serialization.to_state_dict(state)
  problems = []
  if set(saved) != set(expected):
    problems.append(f'saved fields {sorted(saved)} but this code expects {sorted(expected)}')
  else:
    saved_params = _leaf_shapes(saved['params'])
    expected_params = _leaf_shapes(expected['params'])
    diff = sorted(k for k in set(saved_params) | set(expected_params)
                  if saved_params.get(k, 'missing') != expected_params.get(k, 'missing'))
    if diff:
      shown = ', '.join(f'{k} {saved_params.get(k, "missing")} -> '
                        f'{expected_params.get(k, "missing")}' for k in diff[:4])
      problems.append(f'parameters differ at {shown}{" ..." if len(diff) > 4 else ""}')
  if problems:
    raise config_checks.ConfigError(
        f'Checkpoint at step {step} in {manager.directory} was written for a '
        f'different model or an older sosvae_jax ({"; ".join(problems)}), so it '
        'cannot be resumed. Pass a new --workdir, or move that checkpoints '
        'folder away to start fresh.')


def restore_latest(manager: ocp.CheckpointManager, state: TrainState,
                   workdir: str) -> TrainState:
  """The newest readable checkpoint restored into `state`'s structure.

  A checkpoint that cannot be read (truncated by a crash, corrupted on disk)
  or holds non-finite values is moved to workdir/corrupt_checkpoints/ with a
  warning, and the one before it is tried. With none left, `state` is
  returned unchanged (a fresh start).
  """
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  for step in sorted(manager.all_steps(), reverse=True):
    check_checkpoint_structure(manager, step, state)
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
      if not bool(all_finite(restored)):
        raise ValueError('it holds non-finite values')
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for unreadable files.
      moved = _quarantine_checkpoint(manager, step, workdir)
      logging.warning('Checkpoint at step %d is unreadable (%s: %s); moved it to %s '
                      'and trying the one before.', step, type(e).__name__,
                      str(e).splitlines()[0][:300] if str(e) else '', moved)
      continue
    logging.info('Resumed from checkpoint at step %d.', step)
    return restored
  return state


def _quarantine_checkpoint(manager: ocp.CheckpointManager, step: int,
                           workdir: str) -> str:
  """Moves a bad step folder out of the manager's sight; returns the new path."""
  source = os.path.join(str(manager.directory), str(step))
  target_dir = os.path.join(workdir, 'corrupt_checkpoints')
  os.makedirs(target_dir, exist_ok=True)
  target = os.path.join(target_dir, f'{step}_{int(time.time())}')
  if os.path.exists(source):
    os.replace(source, target)
  manager.reload()
  return target


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, step: int) -> bool:
  """Saves `state` unless it holds a non-finite value (then logs and skips)."""
  if not bool(all_finite(state)):
    logging.error('Not saving step %d: the state holds non-finite values.', step)
    return False
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  return True


class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


class _StopSignal:
  """Records SIGTERM (pre-emption) so the loop can checkpoint and exit."""

  def __init__(self):
    self.received = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM,):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. a notebook worker).
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    self.received = signum

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------
def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def _write_figures(workdir, step, variables, z, rng, eval_batch, jitted_images,
                   jitted_recon, writer, *, write: bool) -> str:
  """Figure-2-style PNGs for prior samples and reconstructions.

  Every process computes them (the jitted functions read globally sharded
  parameters, so in a multi-process run all processes must take part);
  only the one with `write` saves the files.
  """
  prior = jax.device_get(jitted_images(variables, z, rng))
  recon = jax.device_get(jitted_recon(variables, eval_batch, rng))
  fig_dir = os.path.join(workdir, 'figures')
  path = os.path.join(fig_dir, f'samples_{step:07d}.png')
  if not write:
    return path
  os.makedirs(fig_dir, exist_ok=True)
  panel = plotting.observation_panel(prior['mean'], prior['sample'], prior['variance'])
  plotting.save_png(panel, path)
  writer.write_image(step, 'samples', panel)
  panel = plotting.grid(
      [plotting.to_rgb(recon['input']), plotting.to_rgb(recon['mean']),
       plotting.to_rgb(recon['sample']), plotting.heat(recon['variance'])],
      ['input', 'mean', 'sample', 'variance'])
  plotting.save_png(panel, os.path.join(fig_dir, f'reconstructions_{step:07d}.png'))
  writer.write_image(step, 'reconstructions', panel)
  return path


def lower_switch_steps(model_state, step: int):
  """Every `switch_step` statistic later than `step` set to `step`.

  Heads with stages (lin2019_balancing_elbo_learned_variance.txt Algorithm 1)
  compare the train step with their 'switch_step' variable inside jit; the
  loop lowers it when the ELBO stops improving.
  """
  def lower(path, value):
    if getattr(path[-1], 'key', None) == 'switch_step':
      return jnp.minimum(value, jnp.asarray(step, value.dtype))
    return value
  return jax.tree_util.tree_map_with_path(lower, model_state)


class _PlateauWatch:
  """Says once when the eval ELBO stops improving (switch_on_plateau)."""

  def __init__(self, likelihood_config):
    self.enabled = bool(likelihood_config.get('switch_on_plateau', False))
    self.tolerance = float(likelihood_config.get('plateau_tolerance', 0.0))
    self.patience = int(likelihood_config.get('plateau_patience', 1))
    self.best = -np.inf
    self.bad = 0
    self.fired = False

  def stalled(self, elbo: float) -> bool:
    if not self.enabled or self.fired:
      return False
    if elbo > self.best + self.tolerance:
      self.best, self.bad = elbo, 0
      return False
    self.bad += 1
    self.fired = self.bad >= self.patience
    return self.fired


def _log_progress(step: int, num_steps: int, metrics, steps_per_sec: float,
                  elapsed: float) -> None:
  """One progress line: step, loss, constraint values, speed, time left."""
  eta = (num_steps - step) / max(steps_per_sec, 1e-9)
  mult = '  '.join(f'{k.replace("multiplier_", "lambda_")} {float(v):.3g}'
                   for k, v in metrics.items() if k.startswith('multiplier_'))
  skipped = int(metrics.get('nonfinite_total', 0))
  entropy = f'  entropy {float(metrics["entropy"]):.1f}' if 'entropy' in metrics else ''
  logging.info('step %d/%d  loss %.4g  elbo %.1f  kl %.2f%s  %s  '
               '%.1f steps/s  elapsed %s  left %s%s', step, num_steps,
               metrics['loss'], metrics['elbo'], metrics['kl'], entropy,
               mult, steps_per_sec, _format_duration(elapsed), _format_duration(eta),
               f'  skipped {skipped} non-finite steps' if skipped else '')


def _check_nonfinite(in_a_row: int, step: int, limit: int,
                     manager: ocp.CheckpointManager) -> None:
  """Warns about a skipped step; stops the run after `limit` in a row."""
  if in_a_row == 0:
    return
  logging.warning('Step %d: non-finite loss, gradient or update; parameters and '
                  'multipliers left unchanged (%d in a row).', step, in_a_row)
  if in_a_row >= limit:
    manager.wait_until_finished()
    last = manager.latest_step()
    where = (f'the last good checkpoint is step {last} in {manager.directory}'
             if last is not None else 'no checkpoint was written yet')
    raise NonFiniteError(
        f'Stopping at step {step}: {in_a_row} consecutive steps had a non-finite '
        f'loss or gradient (config.max_nonfinite_steps={limit}); {where}. Lower '
        'config.optimizer.learning_rate or set config.optimizer.grad_clip_norm, '
        'then rerun the same command to resume from that checkpoint.')


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) the model of `config`, writing everything to workdir."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0

  # ---------------------------------------------------------------- setup
  # Bad input stops here with one message, before anything compiles.
  config_checks.check_config(config, workdir=workdir, num_devices=jax.device_count())
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  train_source = input_pipeline.get_source(config.data, 'train')
  eval_source = input_pipeline.get_source(config.data, 'eval')
  model = build_model(config)
  tx = make_optimizer(config)
  constraints = lagrangian.constraints_from_config(config.constraints)
  multiplier_tx = lagrangian.multiplier_optimizer(lagrangian.multiplier_learning_rates(
      config.constraints, config.multiplier_learning_rate))
  # On the mesh before restoring, so that orbax restores into the global
  # (replicated) sharding: after a restore onto one local device, the
  # transfer to the mesh would cross hosts in a multi-process run.
  state = jax.device_put(create_train_state(config, model, tx, multiplier_tx,
                                            constraints), sharding.replicated(mesh))
  manager = checkpoint_manager(workdir, config)
  state = restore_latest(manager, state, workdir)
  start_step = int(state.step)
  if is_main:
    with open(os.path.join(workdir, 'config.json'), 'w') as f:
      f.write(config.to_json_best_effort(indent=2))

  step_fn = jax.jit(
      functools.partial(train_step, model=model, tx=tx, multiplier_tx=multiplier_tx,
                        constraints=constraints, pretrain_steps=config.pretrain_steps,
                        variance_lr_scale=config.optimizer.get('variance_lr_scale', 1.0),
                        kl_weight=config.get('kl_weight', 1.0)),
      in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
      out_shardings=sharding.replicated(mesh), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model))
  images_fn = jax.jit(functools.partial(observation_images, model=model,
                                        image_shape=config.data.image_shape))

  recon_fn = jax.jit(functools.partial(reconstruction_images, model=model))

  local_batch = config.batch_size // jax.process_count()
  batches = input_pipeline.train_batches(
      train_source, local_batch, config.seed, start_step,
      num_threads=config.data.get('num_threads', 2),
      process_index=jax.process_index(), process_count=jax.process_count())
  eval_images = input_pipeline.eval_images(eval_source, config.eval_examples)
  num_eval_batches = max(1, len(eval_images) // config.batch_size)
  eval_batches = [eval_images[i * config.batch_size:(i + 1) * config.batch_size]
                  for i in range(num_eval_batches)]
  figure_rng = jax.random.PRNGKey(config.seed + 1)
  figure_z = jax.random.normal(figure_rng, (config.num_figure_images,
                                            config.model.latent_dim))
  figure_batch = eval_images[:config.num_figure_images]
  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  # Steps logged after the checkpoint we resume from will be logged again.
  writer.drop_after(start_step)

  def evaluate(step):
    rng = jax.random.PRNGKey(config.seed + 2)
    variables = model_variables(state.params, state.model_state)
    results = [eval_fn(variables, b, jax.random.fold_in(rng, i))
               for i, b in enumerate(eval_batches)]
    results = jax.tree.map(lambda *v: float(np.mean(v)), *jax.device_get(results))
    results.update({f'multiplier_{k}': float(v)
                    for k, v in jax.device_get(state.multipliers).items()})
    writer.write(step, results, split='eval')
    path = _write_figures(workdir, step, variables, figure_z, figure_rng,
                          figure_batch, images_fn, recon_fn, writer, write=is_main)
    if is_main:
      entropy = (f'  entropy {results["entropy"]:.1f}' if 'entropy' in results else '')
      logging.info('eval step %d: elbo %.1f  kl %.2f%s  -> %s', step,
                   results['elbo'], results['kl'], entropy, path)
    return results

  plateau = _PlateauWatch(config.likelihood)

  # ----------------------------------------------------------------- loop
  logging.info('Training %s for %d steps (from step %d) on %d device(s); workdir %s',
               config.likelihood.name, config.num_steps, start_step,
               mesh.devices.size, workdir)
  t_log, step_log = time.time(), start_step
  t_start = time.time()
  max_nonfinite = config.get('max_nonfinite_steps', 20)
  pending = None  # the previous step's skip counter, read one step late
  with _StopSignal() as stop:
    for step in range(start_step + 1, config.num_steps + 1):
      batch = sharding.global_batch(next(batches), mesh)
      state, metrics = step_fn(state, batch)
      # Reading the previous step's counter lets this step run meanwhile.
      if pending is not None:
        _check_nonfinite(int(pending), step - 1, max_nonfinite, manager)
      pending = metrics['nonfinite_in_a_row']
      if step % config.log_every_steps == 0 or step == config.num_steps:
        metrics = jax.device_get(metrics)
        now = time.time()
        steps_per_sec = (step - step_log) / max(now - t_log, 1e-9)
        t_log, step_log = now, step
        metrics['steps_per_sec'] = steps_per_sec
        writer.write(step, metrics)
        _log_progress(step, config.num_steps, metrics, steps_per_sec, now - t_start)
      if step % config.eval_every_steps == 0 or step == config.num_steps:
        results = evaluate(step)
        if plateau.stalled(results['elbo']):
          state = state.replace(model_state=jax.device_put(
              lower_switch_steps(state.model_state, step), sharding.replicated(mesh)))
          logging.info('Eval ELBO stopped improving at step %d: switching stage '
                       '(config.likelihood.switch_on_plateau).', step)
      if step % config.checkpoint_every_steps == 0 or step == config.num_steps:
        save_checkpoint(manager, state, step)
      if stop.received is not None:
        saved = save_checkpoint(manager, state, step)
        manager.wait_until_finished()
        logging.warning('Received signal %d: %s at step %d; run the same command '
                        'to resume.', stop.received,
                        'checkpoint written' if saved else 'no checkpoint written',
                        step)
        break
    if pending is not None:
      _check_nonfinite(int(pending), step, max_nonfinite, manager)
  if start_step >= config.num_steps:
    logging.info('Nothing to do: checkpoint step %d >= num_steps %d.', start_step,
                 config.num_steps)
  manager.wait_until_finished()
  manager.close()
  writer.flush()
  writer.close()
  return state
