"""A run's checkpoints: the orbax manager, save, resume, restore for reading."""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any, NamedTuple

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from sosvae_jax import config_checks
from sosvae_jax import train_state as train_state_lib
from sosvae_jax import workdir as workdir_lib
from sosvae_jax.train_state import TrainState

CONFIG_JSON = workdir_lib.CONFIG_FILE


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  """The orbax manager of workdir/checkpoints (keeps config.checkpoints_to_keep)."""
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.get('checkpoints_to_keep', 3), create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options,
                               item_handlers=ocp.StandardCheckpointHandler())


def _is_storage_error(error: BaseException) -> bool:
  """An error of the disk, not of the code: an OSError, or TensorStore's
  ValueError for a failed file write ('RESOURCE_EXHAUSTED: ... No space left
  on device [os_error_code='28']')."""
  return isinstance(error, OSError) or (
      isinstance(error, ValueError) and 'os_error_code' in str(error))


@contextlib.contextmanager
def storage_errors(manager: ocp.CheckpointManager):
  """A checkpoint that cannot be written becomes WriteError naming the folder.

  orbax saves in a background thread: a full disk surfaces as OSError (or
  TensorStore's ValueError) at the next save or wait_until_finished, not at
  the save that failed. The unfinished save is left in a folder
  STEP.orbax-checkpoint-tmp that readers skip and the next save of that step
  replaces, so the latest complete checkpoint stays restorable.
  """
  try:
    yield
  except (OSError, ValueError) as e:
    if not _is_storage_error(e):
      raise
    # An earlier save may still be committing in the background: let it
    # finish, or the exit that follows kills it and loses that checkpoint too.
    try:
      manager.wait_until_finished()
    except Exception:  # pylint: disable=broad-except
      pass  # the failed save itself: `e` already reports it
    directory = str(manager.directory)
    steps = checkpoint_steps(os.path.dirname(directory))
    kept = (f'the latest complete checkpoint, step {steps[-1]}, is kept and the run '
            'resumes from it' if steps else 'no checkpoint was complete yet, so the '
            'run starts again')
    # TensorStore appends its whole spec (kilobytes of JSON) to the message.
    cause = workdir_lib.error_cause(e).split(' [tensorstore_spec=')[0]
    raise workdir_lib.WriteError(
        f'Cannot write a checkpoint to {directory}: {cause}; {kept}. Free space on '
        'that disk, then rerun the same command.') from e


def save_checkpoint(manager: ocp.CheckpointManager, state: TrainState, step: int) -> bool:
  """Saves `state` unless it holds a non-finite value (then logs and skips).

  WriteError when this save or the previous one (still in the background)
  cannot be written.
  """
  if not bool(train_state_lib.all_finite(state)):
    logging.error('Not saving step %d: the state holds non-finite values.', step)
    return False
  with storage_errors(manager):
    manager.save(step, args=ocp.args.StandardSave(state), force=True)
  return True


def wait_for_saves(manager: ocp.CheckpointManager) -> None:
  """Waits for the background saves; WriteError if one could not be written."""
  with storage_errors(manager):
    manager.wait_until_finished()


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run last trained with: config.json plus the changes of its
  latest launch (workdir.effective_config).

  config.json keeps the first launch; a resume may change values (never the
  model's structure: check_workdir refuses that), e.g. num_steps or the
  evaluation settings, and readers (evaluation, figures, notebooks) follow
  the latest launch, which wrote the newest checkpoints.
  """
  path = os.path.join(workdir, CONFIG_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(
        f'{path} not found: is {workdir} the workdir of a training run '
        '(python -m experiments.main ... --workdir=DIR)?')
  config = ml_collections.ConfigDict(workdir_lib.effective_config(workdir))
  # A hand-edited config.json would otherwise fail deep inside model building.
  problems = config_checks.model_problems(config)
  if problems:
    lines = '\n'.join(f'  - {p}' for p in problems)
    raise config_checks.ConfigError(
        f'{path} (with the changes recorded in {workdir_lib.LAUNCHES_FILE}) describes no '
        'model that can be built; restore the file from a copy, or train again in a new '
        f'--workdir:\n{lines}')
  return config


# ----------------------------------------------------------------------------
# Checkpoints of another model.
# ----------------------------------------------------------------------------
def _shapes(state) -> dict[str, tuple]:
  """{'params/a/b': (shape, dtype)} for every leaf of a (abstract) state."""
  flat = flax.traverse_util.flatten_dict(flax.serialization.to_state_dict(state),
                                         sep='/')
  return {k: (tuple(np.shape(v)), str(getattr(v, 'dtype', type(v).__name__)))
          for k, v in flat.items()}


def _differing_fields(old, new, prefix: str = '') -> list[str]:
  """'config.a.b was X, now Y' for every leaf where two config dicts differ."""
  tuples = lambda v: tuple(tuples(x) for x in v) if isinstance(v, (list, tuple)) else v
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, '(missing)'), new.get(key, '(missing)')
    if isinstance(a, dict) and isinstance(b, dict):
      out += _differing_fields(a, b, f'{prefix}{key}.')
    elif tuples(a) != tuples(b):
      out.append(f'config.{prefix}{key} was {tuples(a)!r}, now {tuples(b)!r}')
  return out


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the checkpoints in workdir/checkpoints (orbax: one folder per step)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def workdir_problems(config, workdir: str) -> list[str]:
  """A message if workdir's checkpoints hold a model of another shape.

  Compares what fixes shapes (the train state of workdir/config.json and of
  `config`, traced, not computed), then names the config fields that differ.
  """
  steps = checkpoint_steps(workdir)
  if not steps or not os.path.isfile(os.path.join(workdir, CONFIG_JSON)):
    return []
  try:
    old_config = load_config(workdir)
    old = _shapes(train_state_lib.abstract_train_state(old_config))
  except Exception as e:  # pylint: disable=broad-except
    # Unreadable, or from another version: restoring will say if it differs.
    logging.warning('Cannot rebuild the model of %s (%s); not comparing the '
                    'checkpoints.', os.path.join(workdir, CONFIG_JSON), e)
    return []
  new = _shapes(train_state_lib.abstract_train_state(config))
  if old == new:
    return []
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  fields = _differing_fields(old_config.to_dict(),
                             json.loads(config.to_json_best_effort()))
  checkpoints = os.path.join(workdir, 'checkpoints')
  return [f'--workdir={workdir!r} holds checkpoints (steps {steps[0]}..{steps[-1]}) of '
          f'a different model, which cannot be resumed (first differing state '
          f'entry: {diff[0]} {old.get(diff[0], "missing")} -> '
          f'{new.get(diff[0], "missing")}); changed config fields: '
          f'{"; ".join(fields)}. Pass a new --workdir, or delete {checkpoints} '
          'to start fresh.']


def check_workdir(config, workdir: str) -> None:
  """Raises config_checks.ConfigError if workdir holds another model's checkpoints."""
  problems = workdir_problems(config, workdir)
  if problems:
    raise config_checks.ConfigError(problems[0])


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
    flat = lambda tree: {k: tuple(v.shape) if getattr(v, 'shape', None) is not None
                         else None for k, v in flax.traverse_util.flatten_dict(
                             tree, sep='/').items()}
    saved_params, expected_params = flat(saved['params']), flat(expected['params'])
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


# ----------------------------------------------------------------------------
# Resuming.
# ----------------------------------------------------------------------------
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
      if not bool(train_state_lib.all_finite(restored)):
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


# ----------------------------------------------------------------------------
# Restoring for reading (figures, evaluation, notebooks).
# ----------------------------------------------------------------------------
class RestoredRun(NamedTuple):
  """A run's config, model and parameters at its latest checkpoint."""

  config: ml_collections.ConfigDict
  model: Any  # flax.linen VAE
  params: Any
  step: int
  model_state: Any = None  # running statistics of the head ({} for most)

  @property
  def variables(self) -> dict[str, Any]:
    """What `model.apply` takes: {'params': ..., **model_state}."""
    return train_state_lib.model_variables(self.params, self.model_state)


_SHAPES_DIFFER = 'shapes differ from the model of config.json'


def _restore_params(manager, step: int, abstract_state) -> tuple[Any, Any]:
  """Parameters and model state of one checkpoint, checked against the model.

  Only `params` and `model_state` are taken from the saved state, so a
  checkpoint written before another TrainState field was added still gives
  its figures; a model without running statistics needs no model_state.
  """
  # The saved tree placed on one device of this process: without a target,
  # orbax restores onto the devices it was saved from, and a run trained on
  # 4 devices could not be read where there is 1.
  device = jax.local_devices()[0]
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(device)),
      manager.item_metadata(step))
  saved = manager.restore(step, args=ocp.args.StandardRestore(target))
  restored = []
  for field in ('params', 'model_state'):
    abstract = getattr(abstract_state, field)
    if not jax.tree.leaves(abstract):
      restored.append(abstract if field == 'params' else {})
      continue
    if field not in saved:
      raise ValueError(f'the checkpoint has no {field}')
    value = saved[field]
    mismatch = jax.tree.map(lambda a, b: a.shape != np.shape(b), abstract, value)
    if any(jax.tree.leaves(mismatch)):
      raise ValueError(f'{field} {_SHAPES_DIFFER}')
    restored.append(jax.tree.map(lambda a, b: jnp.asarray(b, a.dtype), abstract, value))
  return tuple(restored)


def restore_run(workdir: str) -> RestoredRun:
  """Rebuilds the model of workdir/config.json and its latest parameters.

  Read-only: unlike `restore_latest` (which moves an unreadable checkpoint
  aside so that training can resume), an unreadable checkpoint is left in
  place with a warning and the one before it is tried.
  """
  config = load_config(workdir)
  parts = train_state_lib.build_parts(config)
  abstract_state = train_state_lib.abstract_train_state(config, parts)
  manager = checkpoint_manager(workdir, config)
  steps = sorted(manager.all_steps(), reverse=True)
  if not steps:
    raise FileNotFoundError(f'No checkpoint under {manager.directory}: train '
                            'first (python -m experiments.main).')
  mismatched = []
  for step in steps:
    try:
      params, model_state = _restore_params(manager, step, abstract_state)
    except Exception as e:  # pylint: disable=broad-except
      # Orbax and TensorStore raise many types for unreadable files.
      logging.warning('Cannot read checkpoint %d (%s: %s); trying the one '
                      'before.', step, type(e).__name__, str(e)[:300])
      mismatched += [step] if _SHAPES_DIFFER in str(e) else []
      continue
    manager.close()
    logging.info('Restored parameters of step %d from %s.', step, workdir)
    return RestoredRun(config, parts.model, params, step, model_state)
  manager.close()
  if mismatched == steps:
    raise FileNotFoundError(
        f'Every checkpoint under {manager.directory} (steps {steps}) holds another model '
        f'than {os.path.join(workdir, CONFIG_JSON)} describes (the parameter shapes '
        'differ): was config.json edited? Restore it from a copy; '
        f'{workdir_lib.LAUNCHES_FILE} lists the values of each launch.')
  raise FileNotFoundError(f'No readable checkpoint under {manager.directory} '
                          f'(tried steps {steps}; the warnings above say why): train '
                          'the run again, in a new --workdir.')
