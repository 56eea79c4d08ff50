"""Metrics to workdir/metrics.jsonl and TensorBoard (tensorboardX, no TF)."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np


def _to_python(value: Any) -> Any:
  value = np.asarray(value)
  if value.ndim == 0:
    v = value.item()
    if isinstance(v, float) and not math.isfinite(v):
      return str(v)  # JSON has no NaN / inf literals.
    return v
  return value.tolist()


class MetricWriter:
  """Appends one JSON object per call; mirrors scalars to TensorBoard.

  Only process 0 writes (pass enabled=False elsewhere).
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, 'metrics.jsonl')
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def drop_after(self, step: int) -> None:
    """Removes records of steps > step (a resumed run repeats them)."""
    if not self._enabled or not os.path.exists(self._path):
      return
    with open(self._path) as f:
      lines = [l for l in f if l.strip() and json.loads(l)['step'] <= step]
    with open(self._path, 'w') as f:
      f.writelines(lines)

  def write(self, step: int, metrics: Mapping[str, Any], split: str = 'train') -> None:
    if not self._enabled:
      return
    record = {'step': int(step), 'split': split}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
    for k, v in record.items():
      if k not in ('step', 'split') and isinstance(v, (int, float)):
        self._tb.add_scalar(f'{split}/{k}', v, int(step))

  def write_image(self, step: int, name: str, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3]."""
    if self._enabled:
      self._tb.add_image(name, image, int(step), dataformats='HWC')

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str, split: str | None = None) -> list[dict]:
  """All records of workdir/metrics.jsonl (optionally of one split)."""
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r.get('split') == split]
