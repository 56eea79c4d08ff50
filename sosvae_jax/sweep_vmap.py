"""The one-program sweep engine: a shape group's points trained side by side in
one compiled step, vmapped over them or looped over them (--mode=vmap / loop)."""

from __future__ import annotations

import contextlib
import functools
import math
import time
from typing import Any, Callable, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from sosvae_jax import checkpoints
from sosvae_jax import config_checks
from sosvae_jax import input_pipeline
from sosvae_jax import lagrangian
from sosvae_jax import metric_writers
from sosvae_jax import plateau
from sosvae_jax import preemption
from sosvae_jax import progress
from sosvae_jax import sharding
from sosvae_jax import snapshots
from sosvae_jax import sweep
from sosvae_jax import train
from sosvae_jax import train_state as train_state_lib
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.train_state import Hypers
from sosvae_jax.train_state import TrainState

Array = jax.Array
MODEL_AXIS = 'model'
DATA_AXIS = 'data'


# ----------------------------------------------------------------------------
# Stacking: a leading model axis over the points' pytrees.
# ----------------------------------------------------------------------------
def stack(trees: Sequence[Any]) -> Any:
  """Pytrees of equal structure -> one pytree with a leading axis [M, ...]."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree: Any, index: int) -> Any:
  """The `index`-th model of a stacked pytree."""
  return jax.tree.map(lambda x: x[index], tree)


# How a group's points share one compiled program: 'vmap' vectorises the
# one-point function over the model axis; 'loop' compiles it once and applies
# it to each point in turn. On XLA:CPU a convolution whose kernel is batched
# (what vmap makes of each point's own weights) runs as a grouped convolution
# several times slower than the points' convolutions one by one
# (benchmarks/sweep_benchmark.py), so there 'loop' is the faster.
STRATEGIES = ('vmap', 'loop')
_take = jax.jit(unstack)
_stack = jax.jit(stack)


def over_points(fn: Callable, strategy: str, in_axes: int | tuple = 0,
                **jit_kwargs) -> Callable:
  """Compiled fn over the leading model axis of the arguments whose in_axes
  is 0 (the others, None, are shared), its outputs stacked: jit of a vmap
  (with `jit_kwargs`: shardings, donation), or a loop over the points of one
  jit-compiled fn."""
  if strategy == 'vmap':
    return jax.jit(jax.vmap(fn, in_axes=in_axes), **jit_kwargs)
  if strategy != 'loop':
    raise ValueError(f'strategy={strategy!r}: one of {STRATEGIES}.')
  single = jax.jit(fn)

  def looped(*args):
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    num = next(jax.tree.leaves(a)[0].shape[0] for a, ax in zip(args, axes) if ax == 0)
    return _stack([single(*(_take(a, i) if ax == 0 else a for a, ax in zip(args, axes)))
                   for i in range(num)])
  return looped


def stacked_hypers(configs: Sequence[ml_collections.ConfigDict]) -> Hypers:
  """The points' Hypers along a leading model axis."""
  return stack([train_state_lib.hypers_from_config(c) for c in configs])


def check_traceable(points: Sequence[sweep.Point]) -> None:
  """ValueError unless the points differ only in SHARED_PROGRAM_FIELDS."""
  bad = [f for f in sweep.varying_values(points) if not sweep.shares_program(f)]
  if bad:
    raise ValueError(f'The vmap engine got points that differ in {bad}: they change '
                     'shapes or control flow (sweep.group_points splits them).')


# ----------------------------------------------------------------------------
# Mesh: the model axis and the data axis over the devices.
# ----------------------------------------------------------------------------
def mesh_shape(num_points: int, batch_size: int, num_devices: int) -> tuple[int, int]:
  """(model, data): as many devices on the model axis as divide the number of
  points, of the rest as many as divide the batch on the data axis."""
  model = math.gcd(num_points, num_devices)
  return model, math.gcd(batch_size, num_devices // model)


def sweep_mesh(num_points: int, batch_size: int,
               devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """The (model, data) mesh of `mesh_shape`; devices that fit neither axis
  are left out (with a warning)."""
  devices = list(devices if devices is not None else jax.devices())
  model, data = mesh_shape(num_points, batch_size, len(devices))
  if model * data < len(devices):
    logging.warning('Sweep mesh: %d points x batch %d use %d x %d of the %d devices.',
                    num_points, batch_size, model, data, len(devices))
  return jax.make_mesh((model, data), (MODEL_AXIS, DATA_AXIS),
                       devices=devices[:model * data],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def model_sharding(mesh) -> NamedSharding:
  """Every leaf's leading (model) axis split over the mesh's model axis."""
  return NamedSharding(mesh, P(MODEL_AXIS))


def batch_sharding(mesh) -> NamedSharding:
  """Batches [M, B, H, W, C]: models over the model axis, images over data."""
  return NamedSharding(mesh, P(MODEL_AXIS, DATA_AXIS))


# ----------------------------------------------------------------------------
# State: a fresh stacked state, each point's checkpoint restored into it.
# ----------------------------------------------------------------------------
def init_states(configs: Sequence[ml_collections.ConfigDict],
                parts: train_state_lib.RunParts) -> TrainState:
  """The fresh states of single runs of `configs`, stacked [M, ...].

  One vmapped create_train_state over the seeds' root keys; each point's
  learning rate (optax.inject_hyperparams state) and initial multipliers
  are then its own config's, as its single run would have them.
  """
  def one(root, learning_rate, multipliers):
    state = train_state_lib.create_train_state(configs[0], parts, root)
    return state.replace(
        opt_state=optax.tree_utils.tree_set(state.opt_state, learning_rate=learning_rate),
        multipliers=multipliers,
        multiplier_opt_state=parts.multiplier_tx.init(multipliers))

  roots = jnp.stack([jax.random.key_data(jax.random.key(c.seed)) for c in configs])
  rates = jnp.asarray([c.optimizer.learning_rate for c in configs], jnp.float32)
  multipliers = stack([
      lagrangian.init_multipliers(
          parts.constraints, {k: v.get('initial_multiplier', 0.0)
                              for k, v in c.constraints.items()})
      for c in configs])
  return train_state_lib.call_init(
      jax.vmap(lambda r, lr, m: one(jax.random.wrap_key_data(r), lr, m)),
      roots, rates, multipliers)


def restore_states(managers, states: TrainState, workdirs: Sequence[str]) -> TrainState:
  """Each point's newest readable checkpoint (or its fresh state), restacked."""
  return stack([checkpoints.restore_latest(m, unstack(states, i), w)
                for i, (m, w) in enumerate(zip(managers, workdirs))])


# ----------------------------------------------------------------------------
# Batches: one stream per distinct seed.
# ----------------------------------------------------------------------------
class Batches:
  """Stacked batches [M, B, H, W, C]: point i gets the batch its own single
  run would read at that step (the data order is a function of the seed).

  Points with the same seed share one stream (one read per step); points
  with different seeds read different streams.
  """

  def __init__(self, source, configs: Sequence[ml_collections.ConfigDict], start_step: int):
    self._seeds = [c.seed for c in configs]
    self._streams = {
        s: input_pipeline.train_batches(source, configs[0].batch_size, s, start_step,
                                        num_threads=configs[0].data.get('num_threads', 2))
        for s in dict.fromkeys(self._seeds)}

  def __next__(self) -> np.ndarray:
    batches = {s: next(stream) for s, stream in self._streams.items()}
    return np.stack([batches[s] for s in self._seeds])


# ----------------------------------------------------------------------------
# Evaluation, per point as a single run's.
# ----------------------------------------------------------------------------
def _with_hypers(fn: Callable, model) -> Callable:
  """fn(..., model=model with the point's traced likelihood fields)."""
  def call(hypers: Hypers, *args):
    return fn(*args, model=train_state_lib.with_likelihood_fields(model, hypers.likelihood))
  return call


class Evaluator:
  """The eval metrics and snapshots of train_and_evaluate, for every point at once."""

  def __init__(self, configs, model, eval_source, strategy: str = 'vmap'):
    config = configs[0]
    images = input_pipeline.first_images(eval_source, config.eval_examples)
    num = max(1, len(images) // config.batch_size)
    self.batches = [images[i * config.batch_size:(i + 1) * config.batch_size]
                    for i in range(num)]
    self.figure_batch = images[:config.num_figure_images]
    streams = [train_state_lib.rng_streams(jax.random.key(c.seed)) for c in configs]
    self.eval_keys = jnp.stack([s['eval'] for s in streams])
    figure = [jax.random.split(s['figures']) for s in streams]
    self.figure_rngs = jnp.stack([f[1] for f in figure])
    self.figure_z = jnp.stack([
        jax.random.normal(f[0], (config.num_figure_images, config.model.latent_dim))
        for f in figure])
    points = functools.partial(over_points, strategy=strategy)
    self._eval = points(_with_hypers(train.eval_step, model), in_axes=(0, 0, None, 0))
    self._prior = points(_with_hypers(functools.partial(
        snapshots.observation_images, image_shape=config.data.image_shape), model))
    self._recon = points(_with_hypers(snapshots.reconstruction_images, model),
                         in_axes=(0, 0, None, 0))

  def metrics(self, states: TrainState, hypers: Hypers) -> list[dict[str, float]]:
    """Each point's eval record: batch-mean ELBO terms and its multipliers."""
    variables = train_state_lib.model_variables(states.params, states.model_state)
    per_batch = [self._eval(hypers, variables, b,
                            jax.vmap(jax.random.fold_in, in_axes=(0, None))(self.eval_keys, i))
                 for i, b in enumerate(self.batches)]
    per_batch = jax.device_get(per_batch)
    multipliers = jax.device_get(states.multipliers)
    return [{**{k: float(np.mean([r[k][m] for r in per_batch])) for k in per_batch[0]},
             **{f'multiplier_{k}': float(v[m]) for k, v in multipliers.items()}}
            for m in range(len(self.eval_keys))]

  def images(self, states: TrainState, hypers: Hypers) -> tuple[Any, Any]:
    """Host copies of the prior and reconstruction snapshots, [M, ...] leaves."""
    variables = train_state_lib.model_variables(states.params, states.model_state)
    prior = self._prior(hypers, variables, self.figure_z, self.figure_rngs)
    recon = self._recon(hypers, variables, self.figure_batch, self.figure_rngs)
    return jax.device_get((prior, recon))


# ----------------------------------------------------------------------------
# The engine.
# ----------------------------------------------------------------------------
class DifferentSteps(RuntimeError):
  """The points' checkpoints are of different steps: no shared step counter."""


def run_vmap(points: Sequence[sweep.Point], strategy: str = 'vmap') -> list[sweep.Outcome]:
  """The points of one shape group trained together (sweep.RunGroup), by
  `strategy` (STRATEGIES).

  Points at different checkpoint steps (a sweep stopped half-way through
  writing checkpoints, or points added later) cannot share a step counter:
  they are trained one after another (sweep.run_sequential), each resuming
  from its own checkpoint.
  """
  starts = {p.index: (checkpoints.checkpoint_steps(p.workdir) or [0])[-1] for p in points}
  if len(set(starts.values())) > 1:
    logging.warning('Points %s are at different steps %s: training them one after '
                    'another.', [p.index for p in points], starts)
    return sweep.run_sequential(points)
  t0 = time.time()
  try:
    outcomes = train_points(points, strategy=strategy)
  except DifferentSteps as e:
    logging.warning('%s: training points %s one after another.', e,
                    [p.index for p in points])
    return sweep.run_sequential(points)
  except Exception as e:  # pylint: disable=broad-except
    logging.exception('Vmapped points %s failed.', [p.index for p in points])
    message = sweep.error_message(e)
    return [sweep.Outcome(sweep.FAILED, message, time.time() - t0) for _ in points]
  seconds = time.time() - t0
  return [o if o is not None else _outcome(p, seconds) for p, o in zip(points, outcomes)]


def _outcome(point: sweep.Point, seconds: float) -> sweep.Outcome:
  if sweep.is_trained(point.workdir, point.config.num_steps):
    return sweep.Outcome(sweep.FINISHED, '', seconds)
  return sweep.Outcome(sweep.UNFINISHED, 'stopped before num_steps (signal)', seconds)


def train_points(points: Sequence[sweep.Point],
                 devices: Sequence[jax.Device] | None = None,
                 strategy: str = 'vmap') -> list[sweep.Outcome | None]:
  """train.train_and_evaluate for every point, in one compiled step
  (over_points: vmapped, or looped over the points).

  Each point's workdir is written as its single run writes it (config.json,
  launches.jsonl, metrics.jsonl, figures, checkpoints), and each point
  reads the batches its own seed gives, so a point trained here equals its
  single run up to float rounding. Returns None for a point that ran to
  its end or was stopped by a signal, an Outcome for one that failed.
  """
  check_traceable(points)
  if jax.process_count() > 1:
    raise ValueError('The vmap engine runs in one process; spread a sweep over '
                     'machines with --index (one point per job).')
  for p in points:
    config_checks.check_config(p.config, num_devices=jax.device_count())
    workdir_lib.check_workdir_path(p.workdir)
    checkpoints.check_workdir(p.config, p.workdir)
  with contextlib.ExitStack() as stack_:
    for p in points:
      stack_.enter_context(workdir_lib.WorkdirLock(p.workdir))
    return _train_locked(points, devices, strategy)


def _train_locked(points: Sequence[sweep.Point], devices,
                  strategy: str) -> list[sweep.Outcome | None]:
  """train_points once every workdir is ours."""
  # ---------------------------------------------------------------- setup
  configs = [p.config for p in points]
  config = configs[0]  # every shape, cadence and data field is the group's
  # A loop steps one point at a time: its devices all go to the data axis.
  mesh = sweep_mesh(len(points) if strategy == 'vmap' else 1, config.batch_size, devices)
  on_models, on_batch = model_sharding(mesh), batch_sharding(mesh)
  parts = train_state_lib.build_parts(config)
  hypers = jax.device_put(stacked_hypers(configs), on_models)
  managers = [checkpoints.checkpoint_manager(p.workdir, p.config) for p in points]
  states = restore_states(managers, init_states(configs, parts), [p.workdir for p in points])
  steps = sorted(set(int(s) for s in jax.device_get(states.step)))
  if len(steps) > 1:  # a checkpoint was unreadable and an older one restored
    for m in managers:
      m.close()
    raise DifferentSteps(f'the points restored steps {steps}')
  states = jax.device_put(states, on_models)
  start_step = steps[0]
  for p in points:
    changes = workdir_lib.record_launch(p.workdir, p.config.to_json_best_effort(indent=2),
                                        start_step)
    if changes:
      logging.warning('Point %d resumes at step %d with config changes %s.',
                      p.index, start_step, changes)
  step_fn = over_points(train.hyper_step_function(config, parts), strategy,
                        in_shardings=(on_models, on_batch, on_models),
                        out_shardings=on_models, donate_argnums=0)
  batches = Batches(input_pipeline.get_source(config.data, 'train'), configs, start_step)
  evaluator = Evaluator(configs, parts.model, input_pipeline.get_source(config.data, 'eval'),
                        strategy)
  writers = [metric_writers.MetricWriter(p.workdir) for p in points]
  for w in writers:
    w.drop_after(start_step)
    w.write_hparams()
  watches = [plateau.PlateauWatch(c.likelihood) for c in configs]
  failed: list[sweep.Outcome | None] = [None] * len(points)
  live = lambda: [i for i in range(len(points)) if failed[i] is None]

  def evaluate(step):
    records = evaluator.metrics(states, hypers)
    prior, recon = evaluator.images(states, hypers)
    for i in live():
      writers[i].write(step, records[i], split='eval')
      images = unstack((prior, recon), i)
      if all(np.all(np.isfinite(v)) for v in jax.tree.leaves(images)):
        snapshots.write_snapshots(points[i].workdir, step, *images, writers[i])
    return records

  def save(step):
    for i in live():
      # Replicated over the devices, as a single run on this machine saves it.
      point = jax.device_put(unstack(states, i), sharding.replicated(sharding.make_mesh()))
      checkpoints.save_checkpoint(managers[i], point, step)

  def check_nonfinite(in_a_row, step):
    for i in live():
      try:
        train._check_nonfinite(int(in_a_row[i]), step, config.get('max_nonfinite_steps', 20),  # pylint: disable=protected-access
                               managers[i])
      except train.NonFiniteError as e:
        failed[i] = sweep.Outcome(sweep.NONFINITE, sweep.error_message(e))

  # ----------------------------------------------------------------- loop
  rate = progress.StepRate(start_step)
  pending = None
  with preemption.PreemptionWatch(managers[0]) as stop:
    # Logged once SIGTERM / SIGINT stop the loop cleanly.
    logging.info('Training %d points of %s together (%s) for %d steps (from step %d) on a '
                 '%s mesh', len(points), config.likelihood.name, strategy, config.num_steps,
                 start_step, dict(mesh.shape))
    for step in range(start_step + 1, config.num_steps + 1):
      batch = jax.device_put(next(batches), on_batch)
      states, metrics = step_fn(states, batch, hypers)
      if pending is not None:
        check_nonfinite(pending, step - 1)
        if not live():
          break
      pending = metrics['nonfinite_in_a_row']
      if step % config.log_every_steps == 0 or step == config.num_steps:
        metrics = jax.device_get(metrics)
        steps_per_sec = rate.read(step)
        for i in live():
          writers[i].write(step, {**unstack(metrics, i), 'steps_per_sec': steps_per_sec})
        logging.info('step %d/%d, %d points: loss %s  %.1f steps/s', step,
                     config.num_steps, len(live()),
                     ' '.join(f'{float(v):.4g}' for v in metrics['loss']), steps_per_sec)
      if step % config.eval_every_steps == 0 or step == config.num_steps:
        records = evaluate(step)
        for i in live():
          if watches[i].stalled(records[i]['elbo']):
            lowered = plateau.lower_switch_steps(unstack(states.model_state, i), step)
            states = states.replace(model_state=jax.device_put(jax.tree.map(
                lambda s, new: s.at[i].set(new), states.model_state, lowered), on_models))
            logging.info('Point %d: eval ELBO stopped improving at step %d: switching '
                         'stage.', points[i].index, step)
      if step % config.checkpoint_every_steps == 0 or step == config.num_steps:
        save(step)
      if stop.reached(step):
        save(step)
        logging.warning('%s at step %d; rerun the same command to resume.',
                        stop.reason(), step)
        break
    if pending is not None and live():
      check_nonfinite(pending, step)
  for m in managers:
    checkpoints.wait_for_saves(m)
    m.close()
  for w in writers:
    w.flush()
    w.close()
  return failed


sweep.ENGINES['vmap'] = run_vmap
sweep.ENGINES['loop'] = functools.partial(run_vmap, strategy='loop')
