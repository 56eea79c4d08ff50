"""Training: the pure train step, the run set-up and the run loop."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from typing import Callable, Mapping, NamedTuple

from absl import logging
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from sosvae_jax import checkpoints
from sosvae_jax import config_checks
from sosvae_jax import input_pipeline
from sosvae_jax import lagrangian
from sosvae_jax import metric_writers
from sosvae_jax import objectives
from sosvae_jax import plateau
from sosvae_jax import preemption
from sosvae_jax import progress
from sosvae_jax import sharding
from sosvae_jax import snapshots
from sosvae_jax import train_state as train_state_lib
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.distributions import lowrank
from sosvae_jax.models import LIKELIHOODS
from sosvae_jax.models import PENALTY_COLLECTION
from sosvae_jax.models import STATS_COLLECTION
from sosvae_jax.train_state import all_finite
from sosvae_jax.train_state import Hypers
from sosvae_jax.train_state import model_variables
from sosvae_jax.train_state import RunParts
from sosvae_jax.train_state import TrainState

Array = jax.Array


# ----------------------------------------------------------------------------
# The step.
# ----------------------------------------------------------------------------
def sown_penalties(collection) -> dict[str, Array]:
  """{name: scalar} from the penalties collection (sow keeps tuples)."""
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(collection or {}))
  out: dict[str, Array] = {}
  for path, values in flat.items():
    name = path[-1]
    total = sum(jnp.sum(v) for v in (values if isinstance(values, tuple) else (values,)))
    out[name] = out.get(name, 0.0) + total
  return out


def _batch_means(terms: Mapping[str, Array]) -> dict[str, Array]:
  """Metrics of a batch from the per-image ELBO terms."""
  means = {k: jnp.mean(v) for k, v in terms.items()}
  means['mse'] = means.pop('squared_error')
  return means


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
  metrics = _batch_means(objectives.elbo_terms(out, x))
  if 'entropy' in constraints and 'entropy' not in metrics:
    raise ValueError(f'{type(out.observation).__name__} has no closed-form entropy, '
                     'so the entropy constraint cannot be used with it; set '
                     'config.constraints.entropy.enabled=False.')
  loss = -metrics['log_likelihood'] + lagrangian.constraint_loss(
      metrics, multipliers, constraints)
  if 'kl' not in constraints:  # No KL constraint: the ELBO, KL weighted by beta.
    loss += kl_weight * metrics['kl']
  penalties = sown_penalties(updates.get(PENALTY_COLLECTION))
  for value in penalties.values():
    loss += value
  metrics['loss'] = loss
  metrics.update({f'penalty_{k}': v for k, v in penalties.items()})
  new_model_state = dict(model_state)
  new_model_state.update({k: v for k, v in updates.items() if k != PENALTY_COLLECTION})
  return loss, (metrics, new_model_state)


def train_step(state: TrainState, batch: Array, hypers: Hypers, *, model: nn.Module,
               optimizer: Callable[[Hypers], optax.GradientTransformation],
               constraints: Mapping[str, lagrangian.Constraint]
               ) -> tuple[TrainState, dict[str, Array]]:
  """One step: descent on the network, projected ascent on the multipliers.

  Every per-run value (KL weight, constraint targets and dampings,
  multiplier rates, pretraining length, variance learning-rate scale, fixed
  sigma) comes from `hypers`, so that a sweep can vmap this step over a
  leading model axis of (state, batch, hypers). `optimizer(hypers)` is the
  network's optax transformation (train_state.make_optimizer): the
  mean-head pretraining freeze and the variance heads' learning-rate scale
  are part of it; `constraints` gives the kinds, `hypers` the numbers.
  """
  model = train_state_lib.with_likelihood_fields(model, hypers.likelihood)
  constraints = lagrangian.with_values(constraints, hypers.targets, hypers.dampings)
  tx = optimizer(hypers)
  multiplier_tx = lagrangian.multiplier_optimizer(hypers.multiplier_lrs)
  rng = jax.random.fold_in(state.rng, state.step)
  grad_fn = jax.value_and_grad(
      functools.partial(loss_fn, model=model, constraints=constraints,
                        kl_weight=hypers.kl_weight),
      argnums=(0, 1), has_aux=True)
  (_, (metrics, model_state)), (grads, mult_grads) = grad_fn(
      state.params, state.multipliers, state.model_state, batch, rng, state.step)
  pretraining = state.step < hypers.pretrain_steps
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
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
  return _batch_means(objectives.elbo_terms(out, x))


# ----------------------------------------------------------------------------
# Set-up.
# ----------------------------------------------------------------------------
class RunSetup(NamedTuple):
  """A run's pieces: what `setup` returns."""

  parts: RunParts  # model, tx, multiplier_tx, constraints
  state: TrainState  # fresh, on the default device
  step: Callable[[TrainState, Array], tuple[TrainState, dict[str, Array]]]


def hyper_step_function(config, parts: RunParts) -> Callable:
  """train_step bound to the pieces that fix shapes and control flow: pure,
  (state, batch, hypers) -> (state, metrics). A sweep vmaps it over a
  leading model axis; every config sharing these pieces may pass its Hypers."""
  return functools.partial(train_step, model=parts.model,
                           optimizer=functools.partial(train_state_lib.make_optimizer, config),
                           constraints=parts.constraints)


def step_function(config, parts: RunParts) -> Callable:
  """train_step bound to the run's pieces and its own Hypers: pure, (state,
  batch) -> (state, metrics); jit it with the shardings of the caller."""
  return functools.partial(hyper_step_function(config, parts),
                           hypers=train_state_lib.hypers_from_config(config))


def setup(config) -> RunSetup:
  """Model, optimizers, constraints, a fresh state and the step of `config`.

  The state is built by train_state.call_init from jax.random.key(config.seed);
  the step is not jitted (the caller knows the shardings and what to donate).
  """
  parts = train_state_lib.build_parts(config)
  state = train_state_lib.call_init(
      functools.partial(train_state_lib.create_train_state, config, parts),
      jax.random.key(config.seed))
  return RunSetup(parts, state, step_function(config, parts))


# ----------------------------------------------------------------------------
# The run.
# ----------------------------------------------------------------------------
class NonFiniteError(RuntimeError):
  """Too many consecutive non-finite steps."""


# ----------------------------------------------------------------------------
# Why a run diverged.
# ----------------------------------------------------------------------------
def capacitance_diagnosis(cov_factor: np.ndarray, cov_diag: np.ndarray, *,
                          capacitance_jitter: float | None) -> str:
  """What the low-rank likelihood's R x R capacitance C = I + P^T D^-1 P
  factorisation did on a batch, or '' where it factorised every image.

  jnp.linalg.cholesky returns NaN instead of raising, so without this a
  failed factorisation shows only as a non-finite loss. The remedy
  config.likelihood.capacitance_jitter is advised only where it is off.

  Args:
    cov_factor: P, [B, S, R].
    cov_diag: d, [B, S].
    capacitance_jitter: the jitter the likelihood used (None or 0: off).
  """
  check = lowrank.capacitance_check(cov_factor, cov_diag,
                                    capacitance_jitter=capacitance_jitter)
  what = 'the R x R capacitance I + P^T D^-1 P of the low-rank likelihood'
  images = check.finite.size
  if not check.finite.all():
    return (f'{what} is non-finite for {int((~check.finite).sum())} of {images} images '
            '(P or D is non-finite or D underflows)')
  if not check.plain_failed.any():
    return ''
  plain, failed = int(check.plain_failed.sum()), int(check.failed.sum())
  condition = (f'condition numbers up to {check.condition[check.plain_failed].max():.2g} '
               f'(float64 estimate; {check.dtype} holds '
               f'~{np.finfo(check.dtype).precision + 1} digits)')
  too_large = 'the factor P has grown far larger than the diagonal D allows'
  others = ('raise config.likelihood.fixed_diag or min_variance, or lower '
            'config.optimizer.variance_lr_scale')
  if not capacitance_jitter:
    return (f'{what} has {condition} and its {check.dtype} Cholesky returned NaN for '
            f'{plain} of {images} images: {too_large} (set '
            '--config.likelihood.capacitance_jitter=1e-6 to retry a failed '
            f'factorisation with jitter, see README; or {others})')
  remedy = f'the jitter remedy (config.likelihood.capacitance_jitter={capacitance_jitter:g})'
  remedied = check.plain_failed & ~check.failed
  added = f'{check.jitter_added[remedied].max():.2g}' if remedied.any() else ''
  if not failed:
    return (f'not {what}: its {check.dtype} Cholesky failed for {plain} of {images} '
            f'images ({condition}), but {remedy} factorised every one of them, adding '
            f'up to {added} to its diagonal ({too_large})')
  overflow = check.failed & check.overflow
  short = check.failed & ~check.overflow  # a larger jitter may mend these
  return (f'{what} has {condition}; its {check.dtype} Cholesky failed for {plain} of '
          f'{images} images, and {remedy} '
          + (f'factorised {int(remedied.sum())} of them, adding up to {added} to its '
             'diagonal, but ' if remedied.any() else '')
          + f'failed for {failed}: '
          + '; '.join(filter(None, (
              f'C exceeds the range of {check.dtype} for {int(overflow.sum())}, which no '
              'jitter mends' if overflow.any() else '',
              f'for {int(short.sum())} even the last of its '
              f'{lowrank.CAPACITANCE_JITTER_TRIES} tries, adding '
              f'{check.jitter_added[short].max():.2g}, did not factorise'
              if short.any() else '')))
          + f'. {too_large[0].upper()}{too_large[1:]} ('
          + (f'raise config.likelihood.capacitance_jitter above {capacitance_jitter:g}; or '
             if short.any() else '')
          + f'{others})')


def batch_diagnosis(config: ml_collections.ConfigDict, model: nn.Module,
                    state: TrainState, batch: Array, rng: Array) -> str:
  """Why `batch` [B, H, W, C] (uint8) gives a non-finite loss, where a known
  cause can be checked (capacitance_diagnosis), else ''."""
  if not LIKELIHOODS[config.likelihood.name].low_rank or jax.process_count() > 1:
    return ''
  observation = model.apply(model_variables(state.params, state.model_state),
                            input_pipeline.preprocess(batch), rngs={'sample': rng}).observation
  # The jitter the likelihood was built with, not a default.
  return capacitance_diagnosis(
      *jax.device_get((observation.cov_factor, observation.cov_diag)),
      capacitance_jitter=observation.capacitance_jitter)


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
               mult, steps_per_sec, progress.duration(elapsed), progress.duration(eta),
               f'  skipped {skipped} non-finite steps' if skipped else '')


def _check_nonfinite(in_a_row: int, step: int, limit: int,
                     manager: ocp.CheckpointManager,
                     diagnose: Callable[[], str] | None = None) -> None:
  """Warns about a skipped step; stops the run after `limit` in a row.

  `diagnose` names the quantity that failed (e.g. capacitance_diagnosis), or
  returns ''.
  """
  if in_a_row == 0:
    return
  logging.warning('Step %d: non-finite loss, gradient or update; parameters and '
                  'multipliers left unchanged (%d in a row).', step, in_a_row)
  if in_a_row >= limit:
    checkpoints.wait_for_saves(manager)
    last = manager.latest_step()
    where = (f'the last good checkpoint is step {last} in {manager.directory}'
             if last is not None else 'no checkpoint was written yet')
    try:
      cause = diagnose() if diagnose is not None else ''
    except Exception as e:  # pylint: disable=broad-except
      # A diagnosis must never hide the message it adds to.
      logging.warning('Could not diagnose the non-finite steps: %s', e)
      cause = ''
    raise NonFiniteError(
        f'Stopping at step {step}: {in_a_row} consecutive steps had a non-finite '
        f'loss or gradient (config.max_nonfinite_steps={limit}); {where}. '
        + (f'Cause found on the last batch: {cause}. ' if cause else '') +
        'Lower config.optimizer.learning_rate or set config.optimizer.grad_clip_norm, '
        'then rerun the same command to resume from that checkpoint.')


def _log_launch_changes(changes: Mapping[str, tuple], start_step: int) -> None:
  """Says how this launch differs from the run's first (config.json)."""
  if not changes:
    return
  lines = '; '.join(f'{field}: {old!r} -> {new!r}' for field, (old, new) in changes.items())
  logging.warning('Resuming at step %d with config values that differ from the first '
                  'launch (config.json keeps the first, launches.jsonl every launch): %s',
                  start_step, lines)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains (or resumes) the model of `config`, writing everything to workdir.

  Returns the last state; its step is below config.num_steps when a signal
  or a pre-emption stopped the run early (a checkpoint of that step is kept).
  The workdir is locked for the run (workdir.WorkdirLock, by process 0).
  """
  # Bad input stops here with one message, before anything compiles.
  config_checks.check_config(config, num_devices=jax.device_count())
  workdir_lib.check_workdir_path(workdir)
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  with contextlib.ExitStack() as stack:
    if jax.process_index() == 0:
      stack.enter_context(workdir_lib.WorkdirLock(workdir))
    # A signal during the set-up is acted on when it ends (PreemptionWatch).
    setup_watch = stack.enter_context(preemption.PreemptionWatch(None))
    return _train_and_evaluate_locked(config, workdir, setup_watch)


def _train_and_evaluate_locked(config: ml_collections.ConfigDict, workdir: str,
                               setup_watch: preemption.PreemptionWatch) -> TrainState:
  """train_and_evaluate once the config is checked and the workdir is ours."""
  is_main = jax.process_index() == 0

  # ---------------------------------------------------------------- setup
  checkpoints.check_workdir(config, workdir)
  mesh = sharding.make_mesh()
  sharding.check_batch_size(config.batch_size, mesh)
  train_source = input_pipeline.get_source(config.data, 'train')
  eval_source = input_pipeline.get_source(config.data, 'eval')
  run = setup(config)
  model = run.parts.model
  # On the mesh before restoring, so that orbax restores into the global
  # (replicated) sharding: after a restore onto one local device, the
  # transfer to the mesh would cross hosts in a multi-process run.
  state = jax.device_put(run.state, sharding.replicated(mesh))
  manager = checkpoints.checkpoint_manager(workdir, config)
  state = checkpoints.restore_latest(manager, state, workdir)
  start_step = int(state.step)
  if is_main:
    # Only a launch that passed every check is recorded.
    _log_launch_changes(workdir_lib.record_launch(
        workdir, config.to_json_best_effort(indent=2), start_step), start_step)

  step_fn = jax.jit(run.step,
                    in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                    out_shardings=sharding.replicated(mesh), donate_argnums=0)
  eval_fn = jax.jit(functools.partial(eval_step, model=model))
  images_fn = jax.jit(functools.partial(snapshots.observation_images, model=model,
                                        image_shape=config.data.image_shape))
  recon_fn = jax.jit(functools.partial(snapshots.reconstruction_images, model=model))

  local_batch = config.batch_size // jax.process_count()
  batches = input_pipeline.train_batches(
      train_source, local_batch, config.seed, start_step,
      num_threads=config.data.get('num_threads', 2),
      process_index=jax.process_index(), process_count=jax.process_count())
  eval_images = input_pipeline.first_images(eval_source, config.eval_examples)
  num_eval_batches = max(1, len(eval_images) // config.batch_size)
  eval_batches = [eval_images[i * config.batch_size:(i + 1) * config.batch_size]
                  for i in range(num_eval_batches)]
  streams = train_state_lib.rng_streams(jax.random.key(config.seed))
  figure_z_rng, figure_rng = jax.random.split(streams['figures'])
  figure_z = jax.random.normal(figure_z_rng, (config.num_figure_images,
                                              config.model.latent_dim))
  figure_batch = eval_images[:config.num_figure_images]
  writer = metric_writers.MetricWriter(workdir, enabled=is_main)
  # Steps logged after the checkpoint we resume from will be logged again.
  writer.drop_after(start_step)
  writer.write_hparams()

  def evaluate(step):
    variables = model_variables(state.params, state.model_state)
    results = [eval_fn(variables, b, jax.random.fold_in(streams['eval'], i))
               for i, b in enumerate(eval_batches)]
    results = jax.tree.map(lambda *v: float(np.mean(v)), *jax.device_get(results))
    results.update({f'multiplier_{k}': float(v)
                    for k, v in jax.device_get(state.multipliers).items()})
    writer.write(step, results, split='eval')
    # Every process computes the images (the jitted functions read globally
    # sharded parameters); only the main one writes them.
    prior = jax.device_get(images_fn(variables, figure_z, figure_rng))
    recon = jax.device_get(recon_fn(variables, figure_batch, figure_rng))
    if is_main:
      # A diverging model draws NaN images; the run must end with its own
      # non-finite message, not a plotting error.
      finite = all(np.all(np.isfinite(v)) for v in jax.tree.leaves((prior, recon)))
      path = (snapshots.write_snapshots(workdir, step, prior, recon, writer) if finite
              else 'no snapshots: the images hold non-finite values')
      entropy = (f'  entropy {results["entropy"]:.1f}' if 'entropy' in results else '')
      logging.info('eval step %d: elbo %.1f  kl %.2f%s  -> %s', step,
                   results['elbo'], results['kl'], entropy, path)
    return results

  def diagnose() -> str:
    """Why the last batch is non-finite, where a known cause can be checked."""
    return batch_diagnosis(config, model, state, batch, streams['eval'])

  watch = plateau.PlateauWatch(config.likelihood)
  setup_watch.end_setup()

  # ----------------------------------------------------------------- loop
  logging.info('Training %s for %d steps (from step %d) on %d device(s); workdir %s',
               config.likelihood.name, config.num_steps, start_step,
               mesh.devices.size, workdir)
  rate = progress.StepRate(start_step)
  t_start = time.time()
  max_nonfinite = config.get('max_nonfinite_steps', 20)
  pending = None  # the previous step's skip counter, read one step late
  with preemption.PreemptionWatch(manager, earlier=setup_watch) as stop:
    for step in range(start_step + 1, config.num_steps + 1):
      batch = sharding.global_batch(next(batches), mesh)
      state, metrics = step_fn(state, batch)
      # Reading the previous step's counter lets this step run meanwhile.
      if pending is not None:
        _check_nonfinite(int(pending), step - 1, max_nonfinite, manager, diagnose)
      pending = metrics['nonfinite_in_a_row']
      if step % config.log_every_steps == 0 or step == config.num_steps:
        metrics = jax.device_get(metrics)
        steps_per_sec = rate.read(step)
        metrics['steps_per_sec'] = steps_per_sec
        writer.write(step, metrics)
        _log_progress(step, config.num_steps, metrics, steps_per_sec, time.time() - t_start)
      if step % config.eval_every_steps == 0 or step == config.num_steps:
        results = evaluate(step)
        if watch.stalled(results['elbo']):
          state = state.replace(model_state=jax.device_put(
              plateau.lower_switch_steps(state.model_state, step),
              sharding.replicated(mesh)))
          logging.info('Eval ELBO stopped improving at step %d: switching stage '
                       '(config.likelihood.switch_on_plateau).', step)
      if step % config.checkpoint_every_steps == 0 or step == config.num_steps:
        checkpoints.save_checkpoint(manager, state, step)
      if stop.reached(step):
        saved = checkpoints.save_checkpoint(manager, state, step)
        checkpoints.wait_for_saves(manager)
        logging.warning('%s: %s at step %d; rerun the same command to resume.',
                        stop.reason(),
                        'checkpoint written' if saved else 'no checkpoint written',
                        step)
        break
    if pending is not None:
      _check_nonfinite(int(pending), step, max_nonfinite, manager, diagnose)
  if start_step >= config.num_steps:
    logging.info('Nothing to do: checkpoint step %d >= num_steps %d.', start_step,
                 config.num_steps)
  checkpoints.wait_for_saves(manager)
  manager.close()
  writer.flush()
  writer.close()
  return state
