"""Dry run: what a training run would use and whether it may start, without training."""

from __future__ import annotations

import functools
import math
import os
from typing import NamedTuple

import jax
import ml_collections

from sosvae_jax import checkpoints
from sosvae_jax import config_checks
from sosvae_jax import input_pipeline
from sosvae_jax import train_state as train_state_lib
from sosvae_jax import workdir as workdir_lib


class DryRun(NamedTuple):
  """The report's text and the problems that would stop training (none: fine)."""

  text: str
  problems: list[str]


def _dataset_lines(data) -> list[str]:
  """Source, location and images per split; a line saying why for each missing split."""
  folder = functools.partial(input_pipeline.data_folder, data)
  where = {'idx': lambda: folder('idx_dir'),
           'tfds': lambda: (f'tfds {data.get("name", "?")} in '
                            f'{folder("tfds_data_dir") or "the default tfds folder"}'),
           'folder': lambda: folder('folder_dir')}
  lines = [f'dataset: source={data.source}, '
           f'{where.get(data.source, lambda: "?")()}, image shape '
           f'{tuple(data.image_shape)}']
  for split in ('train', 'eval'):
    name = data.train_split if split == 'train' else data.eval_split
    try:
      count = f'{len(input_pipeline.get_source(data, split))} images'
    except (OSError, ValueError) as e:  # incl. DataNotFoundError
      count = f'not readable ({e})'
    lines.append(f'  {split} split {name!r}: {count}')
  return lines


def parameter_count(config: ml_collections.ConfigDict) -> int:
  """Trainable parameters of the run's model: shapes traced, nothing computed."""
  state = train_state_lib.abstract_train_state(config)
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(state.params))


def dry_run(config: ml_collections.ConfigDict, workdir: str) -> DryRun:
  """The resolved config, devices, dataset, model size and the checks' verdict.

  Reads only: nothing is written, into `workdir` or elsewhere (a missing
  workdir is created to test that it can be, then removed again).
  """
  lines = ['config:', str(config).rstrip()]
  devices = jax.devices()
  lines.append(f'devices: {len(devices)} x {devices[0].platform} '
               f'({", ".join(str(d) for d in devices[:4])}'
               f'{", ..." if len(devices) > 4 else ""}); processes: {jax.process_count()}')
  lines += _dataset_lines(config.data)
  problems = []
  try:
    config_checks.check_config(config, num_devices=jax.device_count())
  except config_checks.ConfigError as e:
    problems.append(str(e))
  try:
    workdir_lib.check_workdir_path(workdir, keep=False)
  except workdir_lib.WorkdirError as e:
    problems.append(str(e))
  if not problems:  # the model only builds from a config that passed the checks
    lines.append(f'parameters: {parameter_count(config):,}')
    problems += checkpoints.workdir_problems(config, workdir)
  resumes = os.path.isdir(os.path.join(workdir, 'checkpoints'))
  lines.append(f'workdir: {os.path.abspath(workdir)} '
               f'({"has checkpoints: training resumes" if resumes else "fresh run"})')
  lines.append('checks: ' + ('passed' if not problems else 'FAILED'))
  return DryRun('\n'.join(lines), problems)
