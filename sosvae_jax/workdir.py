"""A run's folder: one run at a time (a lock), its config and its launch history,
and the one way every output file is written (whole or not at all)."""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import uuid
from typing import Any, Mapping

from flax import traverse_util

CONFIG_FILE = 'config.json'
LAUNCHES_FILE = 'launches.jsonl'
LOCK_FILE = '.lock'


class WorkdirError(ValueError):
  """The workdir cannot hold this run; the message says why and what to do."""


class WriteError(Exception):
  """An output file could not be written (a full disk, a quota, a read-only
  folder); the message names the file, the cause and what to do.

  Not a ValueError: the input was fine, so a rerun of the same command, once
  the disk has room, succeeds (experiments/cli.py: exit code WRITE_FAILED).
  """


def error_cause(error: BaseException) -> str:
  """'No space left on device (ENOSPC)' for an OSError, else the error's text."""
  if isinstance(error, OSError) and error.strerror:
    return f'{error.strerror} ({errno.errorcode.get(error.errno, error.errno)})'
  return str(error)


def write_error(path: str, error: BaseException) -> WriteError:
  """The WriteError of `error`, met while writing `path`."""
  return WriteError(
      f'Cannot write {path}: {error_cause(error)}. Its previous version, if it had '
      'one, is kept whole. Free space on that disk (or make the folder writable), then '
      'rerun the same command: a training run resumes from its latest checkpoint.')


def _write_bytes(fd: int, data: bytes) -> None:
  """All of `data` to the open file `fd` (os.write may write less than asked)."""
  view = memoryview(data)
  while view:
    view = view[os.write(fd, view):]


def write_atomic(path: str, data: str | bytes) -> None:
  """Writes `path` whole or not at all; WriteError if it cannot be written.

  A reader (a report, a resumed run, a kill at any instant) sees the old file
  or the new one, never a torn one: the bytes go to a temporary file in the
  same folder (same file system, so the rename is atomic), are fsynced, and
  os.replace puts it in place. On failure the temporary file is removed; a
  SIGKILL can leave one behind (`.NAME.*.tmp`), never a torn `path`. The
  unique name lets concurrent writers (a sweep's array jobs) race safely:
  the last replace wins.
  """
  data = data.encode('utf-8') if isinstance(data, str) else data
  folder, name = os.path.split(os.path.abspath(path))
  tmp = os.path.join(folder, f'.{name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')
  try:
    # Mode 0o666 less the umask, as open() gives: readable by whoever read
    # the file before.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
      _write_bytes(fd, data)
      os.fsync(fd)  # else a power cut after the rename can leave it empty
    finally:
      os.close(fd)
    os.replace(tmp, path)
  except BaseException as e:
    try:
      os.remove(tmp)
    except OSError:
      pass  # never created, or already renamed
    if isinstance(e, OSError):
      raise write_error(path, e) from e
    raise


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
    write_atomic(path, config_json)
    changes = {}
  entry = {'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
           'step': int(step), 'argv': list(sys.argv),
           'changes': {k: list(v) for k, v in changes.items()}}
  # Rewritten whole, not appended: a launch killed mid-append would leave a
  # line without its newline, the next launch's line would be glued to it,
  # and effective_config would skip both, silently reading an older launch.
  launches = os.path.join(workdir, LAUNCHES_FILE)
  old = ''
  if os.path.exists(launches):
    with open(launches, encoding='utf-8') as f:
      old = f.read()
  if old and not old.endswith('\n'):
    old += '\n'  # a torn line of a file written by older code: kept, ended
  write_atomic(launches, old + json.dumps(entry, default=str) + '\n')
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
