"""Shared test set-up: a smoke model with its state and jitted train step; a
run's TensorBoard files read back; experiments.main on tfds mock data."""

import glob
import os
import struct

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import default
from sosvae_jax import train


# `python -c MOCK_MAIN FLAGS...`: experiments.main with FLAGS on 64 tfds mock
# images (pass --config.data.source=tfds).
MOCK_MAIN = """
import sys
import tensorflow_datasets as tfds
from absl import app
from experiments import main
with tfds.testing.mock_data(num_examples=64):
  app.run(main.main, argv=[sys.argv[0]] + sys.argv[1:])
"""


def smoke_step(config=None, multiplier_lr=None, *, pretrain_steps=0,
               variance_lr_scale=1.0, kl_weight=1.0):
  """(config, initial state, jitted train step) of `train.setup` for a smoke config.

  multiplier_lr: one rate for every multiplier (default: the config's).
  pretrain_steps, variance_lr_scale, kl_weight: set in a copy of the config
  (defaults: no pretraining, no slower variance heads, the plain ELBO).
  """
  config = (config or default.get_config('smoke')).copy_and_resolve_references()
  with config.unlocked():
    config.pretrain_steps = pretrain_steps
    config.optimizer.variance_lr_scale = variance_lr_scale
    config.kl_weight = kl_weight
    if multiplier_lr is not None:
      for constraint in config.constraints.values():
        constraint.multiplier_lr = multiplier_lr
  run = train.setup(config)
  return config, run.state, jax.jit(run.step)


def flat(tree) -> np.ndarray:
  """Every leaf of a pytree of arrays, raveled and joined, in float64 (exact
  for float32 leaves)."""
  return np.concatenate([np.zeros(0)] + [np.ravel(np.asarray(x, np.float64))
                                         for x in jax.tree.leaves(tree)])


def random_batch(seed: int, batch_size: int = 8, shape=(28, 28, 1)) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch_size,) + tuple(shape),
                                                          dtype=np.uint8))


def tensorboard_events(workdir) -> dict[str, list]:
  """{event folder relative to workdir/tensorboard: its Events in file order}."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  board = os.path.join(workdir, 'tensorboard')
  folders = {}
  for path in sorted(glob.glob(os.path.join(board, '**', 'events.*'), recursive=True)):
    with open(path, 'rb') as f:
      data = f.read()
    events, pos = folders.setdefault(os.path.relpath(os.path.dirname(path), board), []), 0
    while pos < len(data):  # TFRecord: length, its crc, the Event, its crc
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      events.append(event_pb2.Event.FromString(data[pos + 12:pos + 12 + length]))
      pos += 12 + length + 4
  return folders


def hparams_rows(workdir) -> dict[str, dict]:
  """TensorBoard's HPARAMS tab for one run, built from its event files as
  TensorBoard does: every event folder holding a session start is a row, with
  the hparams of its first one and, as metrics, the last value of each of the
  folder's scalars. Each row also lists every session start's hparams
  ('starts') and whether the folder holds an experiment summary."""
  from tensorboardX.proto import plugin_hparams_pb2  # pylint: disable=g-import-not-at-top
  rows = {}
  for folder, events in tensorboard_events(workdir).items():
    starts, experiment, metrics = [], False, {}
    for event in events:
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == 'hparams':
          data = plugin_hparams_pb2.HParamsPluginData.FromString(
              value.metadata.plugin_data.content)
          experiment |= data.HasField('experiment')
          if data.HasField('session_start_info'):
            starts.append({k: getattr(v, v.WhichOneof('kind'))
                           for k, v in data.session_start_info.hparams.items()})
        elif value.HasField('simple_value'):
          if event.step >= metrics.get(value.tag, (-1, 0.0))[0]:
            metrics[value.tag] = (event.step, value.simple_value)
    if starts:
      rows[folder] = {'hparams': starts[0], 'starts': starts, 'experiment': experiment,
                      'metrics': metrics}
  return rows
