"""Metrics to workdir/metrics.jsonl and TensorBoard (tensorboardX, no TF)."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

from absl import logging
from flax import traverse_util
import numpy as np

from sosvae_jax import workdir as workdir_lib

METRICS_FILE = 'metrics.jsonl'
TENSORBOARD_DIR = 'tensorboard'


def _to_python(value: Any) -> Any:
  value = np.asarray(value)
  if value.ndim == 0:
    v = value.item()
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)  # JSON has no NaN / inf literals.
    return v
  return value.tolist()


def _parse_lines(path: str) -> list[dict]:
  """Records of a metrics file; a torn last line (a crash mid-write) is dropped.

  A bad line anywhere else is damage this module did not cause: it raises,
  naming the file and the line.
  """
  with open(path) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for number, line in enumerate(lines, start=1):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as e:
      if number == len(lines):
        logging.warning('%s: dropping its unfinished last line (%d characters; the '
                        'run stopped while writing it).', path, len(line))
        break
      raise ValueError(f'{path}, line {number}, is not JSON ({e}); the file is '
                       'damaged: remove or repair that line.') from e
  return records


class MetricWriter:
  """Appends one JSON object per call; mirrors scalars to TensorBoard.

  Only process 0 writes (pass enabled=False elsewhere). The TensorBoard
  writer opens on first use so that a resumed run (`drop_after`) can tell
  TensorBoard to purge the steps it is about to repeat.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    self._tb = None
    self._purge_step = None
    self._workdir = workdir
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, METRICS_FILE)

  def _board(self):
    if self._tb is None:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # The suffix keeps a quick resume (same second, same host) from
      # overwriting the file of the run it resumes.
      self._tb = SummaryWriter(os.path.join(self._workdir, TENSORBOARD_DIR),
                               purge_step=self._purge_step,
                               filename_suffix=f'.{os.getpid()}.{self._purge_step or 0}')
    return self._tb

  def drop_after(self, step: int) -> None:
    """Removes records of steps > step (a resumed run repeats them).

    In TensorBoard the same steps are hidden by a purge marker at step + 1.
    """
    if not self._enabled:
      return
    if step > 0 and self._tb is None:
      self._purge_step = int(step) + 1
    if not os.path.exists(self._path):
      return
    kept = [r for r in _parse_lines(self._path) if r['step'] <= step]
    # Whole or not at all: a kill mid-rewrite would otherwise lose every record.
    workdir_lib.write_atomic(self._path, ''.join(json.dumps(r) + '\n' for r in kept))

  def write(self, step: int, metrics: Mapping[str, Any], split: str = 'train') -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    # Appended, not rewritten (a long run logs often): a kill or a full disk
    # mid-line leaves a torn last line, which _parse_lines drops.
    try:
      with open(self._path, 'a') as f:
        f.write(json.dumps(record) + '\n')
    except OSError as e:
      raise workdir_lib.write_error(self._path, e) from e
    for k, v in record.items():
      if k not in ('step', 'split') and isinstance(v, (int, float)):
        self._board().add_scalar(f'{split}/{k}', v, int(step))

  def write_hparams(self) -> None:
    """The run's row in TensorBoard's HPARAMS tab (see _session_start), written
    at the start of every launch, after drop_after.

    Every launch writes the same row (run_hparams: config.json), so a resumed
    run adds nothing new and one killed before its first flush loses nothing.
    """
    if self._enabled:
      board = self._board()
      board.file_writer.add_summary(_session_start(run_hparams(self._workdir)), 0)
      board.flush()

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3]."""
    if self._enabled:
      self._board().add_image(name, image, int(step), dataformats='HWC')

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def flat_scalars(tree: Mapping[str, Any], prefix: str = '') -> dict[str, float]:
  """{'a/b': x} for every finite number in a nested dict (lists are skipped)."""
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(flat_scalars(value, f'{name}/'))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      if math.isfinite(value):
        out[name] = float(value)
  return out


def run_hparams(workdir: str) -> dict[str, bool | int | float | str]:
  """A run's config.json under dotted names, values as the hparams plugin takes
  them: the first launch's config, the one record that no launch rewrites."""
  flat = traverse_util.flatten_dict(workdir_lib.read_config_file(workdir), sep='.')
  return {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}


def _session_start(hparams: Mapping[str, Any]):
  """The hparams plugin's session-start summary: it makes the event folder
  it is written to a row of TensorBoard's HPARAMS tab, whose metrics are that
  folder's scalars (the in-loop eval/*, the evaluation's eval/SAMPLER/*).

  No experiment summary goes with it: TensorBoard takes the tab's columns
  from the first one it finds in any run and never updates them, so one
  written at training start would hide the evaluation's metrics and other
  runs' fields; without one it gathers the columns from every row. Of
  several session starts in one folder it keeps the first.
  """
  from tensorboardX.summary import hparams as hparams_summary  # pylint: disable=g-import-not-at-top
  _, start, _ = hparams_summary(hparams, {})
  return start


def write_run_summary(workdir: str, step: int, results: Mapping[str, Any],
                      tag: str = 'eval') -> None:
  """Evaluation results as TensorBoard scalars of the run at `step`, in the
  run's HPARAMS row (written again, as at training start: a run trained
  without one gets it here).

  `results`: nested dict of metrics (every finite number is kept).
  """
  from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  scalars = flat_scalars(results)
  board = os.path.join(workdir, TENSORBOARD_DIR)
  # Event files are named by the second and the host: a second evaluation of
  # the same workdir within that second would overwrite the first's file.
  stamp = f'{time.time_ns()}.{os.getpid()}'
  with SummaryWriter(board, filename_suffix=f'.{stamp}') as tb:
    for name, value in scalars.items():
      tb.add_scalar(f'{tag}/{name}', value, int(step))
    tb.file_writer.add_summary(_session_start(run_hparams(workdir)), 0)


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
  """All records of workdir/metrics.jsonl (optionally of one split)."""
  records = _parse_lines(os.path.join(workdir, METRICS_FILE))
  return [r for r in records if split is None or r.get('split') == split]
