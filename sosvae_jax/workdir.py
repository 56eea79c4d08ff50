"""A run's folder: one run at a time (a lock), its config and its launch history."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
from typing import Any, Mapping

from flax import traverse_util

CONFIG_FILE = 'config.json'
LAUNCHES_FILE = 'launches.jsonl'
LOCK_FILE = '.lock'


class WorkdirError(ValueError):
  """The workdir cannot hold this run; the message says why and what to do."""


def check_workdir_path(workdir: str, *, keep: bool = True) -> None:
  """Raises WorkdirError when `workdir` cannot be a run folder.

  A missing workdir is created (with its parents): creating it is the one
  sure test, since root passes every permission check and some folders
  (/proc, read-only mounts) refuse new entries whatever their mode says.
  `keep` False removes again the folders the test created (a dry run).
  """
  if not workdir:
    raise WorkdirError('--workdir is empty: pass the folder of the run, e.g. '
                       '--workdir=runs/default.')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir!r} is a file, not a folder: pass a new '
                       'folder name (it is created) or the folder of an earlier run.')
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  target = workdir if os.path.isdir(workdir) else parent
  if not os.path.isdir(target) or not os.access(target, os.W_OK | os.X_OK):
    raise WorkdirError(f'--workdir={workdir!r}: {target!r} is not a writable folder; '
                       'pass a folder you can write to.')
  missing = []  # the folders this test creates, deepest first
  folder = os.path.abspath(workdir)
  while not os.path.exists(folder):
    missing.append(folder)
    folder = os.path.dirname(folder)
  make_folder(workdir, '--workdir')
  if not keep:
    for folder in missing:
      os.rmdir(folder)


def make_folder(path: str, flag: str) -> None:
  """Creates the folder `path` given by `flag` (and its parents) if missing;
  WorkdirError naming the flag when it cannot be created."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'{flag}={path!r} cannot be created ({e.strerror}: '
                       f'{e.filename}); pass a folder you can write to.') from None


class WorkdirLock:
  """Exclusive use of a workdir by one run, held while the run lives.

  An advisory fcntl lock on workdir/.lock: the kernel releases it when the
  holding process dies, so a killed run never leaves a lock that blocks the
  next one. The file records who holds it, for the message of a refused run.
  """

  def __init__(self, workdir: str):
    self._path = os.path.join(workdir, LOCK_FILE)
    self._file = None

  def __enter__(self) -> 'WorkdirLock':
    os.makedirs(os.path.dirname(self._path), exist_ok=True)
    handle = open(self._path, 'a+', encoding='utf-8')  # pylint: disable=consider-using-with
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EACCES, errno.EAGAIN):
        handle.close()
        raise
      handle.seek(0)
      holder = handle.read().strip() or 'another process'
      handle.close()
      raise WorkdirError(
          f'--workdir={os.path.dirname(self._path)!r} is in use by a run that is still '
          f'going ({holder}). Two runs in one workdir would mix their metrics and '
          'checkpoints: wait for it to end, stop it, or pass another --workdir.') from None
    handle.seek(0)
    handle.truncate()
    handle.write(_holder_line())
    handle.flush()
    self._file = handle
    return self

  def __exit__(self, *exc) -> None:
    if self._file is not None:
      self._file.truncate(0)
      fcntl.flock(self._file, fcntl.LOCK_UN)
      self._file.close()
      self._file = None


def _holder_line() -> str:
  started = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
  command = ' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))
  return (f'pid {os.getpid()} on {socket.gethostname()}, started {started}, '
          f'command: {command}')


def _flatten(tree: Mapping[str, Any]) -> dict[str, Any]:
  return traverse_util.flatten_dict(dict(tree), sep='.')


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
  """{dotted field: (old value, new value)} of two JSON-style config dicts."""
  a, b = _flatten(old), _flatten(new)
  missing = '<absent>'
  return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
          if a.get(k, missing) != b.get(k, missing)}


def read_config_file(workdir: str) -> dict[str, Any]:
  """config.json of a run, or WorkdirError naming the damage."""
  path = os.path.join(workdir, CONFIG_FILE)
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise WorkdirError(
        f'{path} is damaged ({e}): it holds the config of the run\'s first launch; '
        'restore it from a copy, or start the run again in a new --workdir.') from e
  if not isinstance(config, dict):
    raise WorkdirError(f'{path} holds {type(config).__name__}, not a config: restore '
                       'it from a copy, or start the run again in a new --workdir.')
  return config


def record_launch(workdir: str, config_json: str, step: int) -> dict[str, tuple]:
  """Keeps the first launch's config.json; appends this launch to launches.jsonl.

  Returns the fields in which this launch differs from config.json (the
  original), for the caller to report or refuse. config.json is never
  rewritten, so it always says how the run was started.
  """
  os.makedirs(workdir, exist_ok=True)
  new = json.loads(config_json)
  path = os.path.join(workdir, CONFIG_FILE)
  if os.path.exists(path):
    changes = config_differences(read_config_file(workdir), new)
  else:
    with open(path, 'w', encoding='utf-8') as f:
      f.write(config_json)
    changes = {}
  entry = {'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
           'step': int(step), 'argv': list(sys.argv),
           'changes': {k: list(v) for k, v in changes.items()}}
  with open(os.path.join(workdir, LAUNCHES_FILE), 'a', encoding='utf-8') as f:
    f.write(json.dumps(entry, default=str) + '\n')
  return changes


def effective_config(workdir: str) -> dict[str, Any]:
  """The config of the latest launch: config.json with every recorded change."""
  config = read_config_file(workdir)
  path = os.path.join(workdir, LAUNCHES_FILE)
  latest = {}
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      for line in f:
        if line.strip():
          try:
            latest = json.loads(line)['changes']
          except (json.JSONDecodeError, KeyError):
            continue  # a torn line of a crashed launch
  for field, (_, value) in latest.items():
    node = config
    *parents, leaf = field.split('.')
    for part in parents:
      node = node.setdefault(part, {})
    if value == '<absent>':
      node.pop(leaf, None)
    else:
      node[leaf] = value
  return config
