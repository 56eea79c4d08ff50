"""Exit codes and user-error handling shared by every command line of experiments/.

Exit codes (a scheduler or a script can tell these apart):
  0  done.
  1  an internal error (a bug): Python's traceback is shown.
  2  a user mistake (flag, config file or field, data file, image folder,
     workdir): one message naming the thing, its value, why and what to do;
     nothing was compiled or trained.
  3  training stopped on non-finite steps (config.max_nonfinite_steps in a
     row); the last good checkpoint is kept, the message says what to change.
  4  stopped early but resumable: SIGTERM / SIGINT (Ctrl-C) or a pre-emption
     notice; a checkpoint was written, rerun the same command to continue.
  5  an output file or checkpoint could not be written (a full disk, a quota,
     a read-only folder): one message naming the file and the cause; every
     file keeps its previous whole version and the latest complete
     checkpoint stays restorable, so once there is room the same command
     resumes.
  130  interrupted where nothing could be saved: Ctrl-C while the command
     starts (experiments/quiet_start.py), a second Ctrl-C while the last
     checkpoint is written, or Ctrl-C in a one-process run before its train
     loop (a multi-process run stops at the loop's first step: 4); the last
     complete checkpoint is kept.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from typing import Sequence

from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import quiet_start

USER_ERROR = 2
NON_FINITE = 3
STOPPED_EARLY = 4
WRITE_FAILED = 5
INTERRUPTED = quiet_start.INTERRUPTED


# The DEFINE_* below are the calling entry point's flags (its --helpshort).
flags.disclaim_key_flags()

# Path flags whose `~` their parser expanded, as given ('--workdir', '~/x'):
# logged by parse_flags once logging is set up.
_EXPANDED: list[tuple[str, str]] = []


def _expand(flag: str, path: str) -> str:
  """`path` with `~` expanded, noted in _EXPANDED if it had one."""
  resolved = os.path.expanduser(path)
  if resolved != path:
    _EXPANDED.append((flag, path))
  return resolved


class _PathParser(flags.ArgumentParser):
  """A path with `~` expanded: the shell expands it in `--workdir ~/x` but
  leaves `--workdir=~/x` alone, which would make a folder named `~`."""

  def __init__(self, name: str):
    self._flag = f'--{name}'

  def parse(self, argument: str) -> str:
    return _expand(self._flag, argument)

  def flag_type(self) -> str:
    return 'path'


class _PathListParser(flags.ListParser):
  """Comma-separated paths, each with `~` expanded (see _PathParser)."""

  def __init__(self, name: str):
    super().__init__()
    self._flag = f'--{name}'

  def parse(self, argument: str | list[str]) -> list[str]:
    return [_expand(self._flag, p) for p in super().parse(argument)]

  def flag_type(self) -> str:
    return 'comma separated list of paths'


class _ConfigFileParser(flags.ArgumentParser):
  """config_flags' parser of a config file argument (file.py:arg), given the
  path with `~` expanded (see _PathParser)."""

  def __init__(self, name: str, parser: flags.ArgumentParser):
    self._flag = f'--{name}'
    self._parser = parser

  def parse(self, argument: str):
    return self._parser.parse(_expand(self._flag, argument))

  def flag_type(self) -> str:
    return self._parser.flag_type()


def DEFINE_path(name: str, default: str | None, help_string: str,  # pylint: disable=invalid-name
                **kwargs) -> flags.FlagHolder:
  """A string flag holding a file or folder path, `~` expanded."""
  return flags.DEFINE(_PathParser(name), name, default, help_string,
                      serializer=flags.ArgumentSerializer(), **kwargs)


def DEFINE_path_list(name: str, default: list[str] | None, help_string: str,  # pylint: disable=invalid-name
                     **kwargs) -> flags.FlagHolder:
  """A comma-separated list of paths, each `~` expanded."""
  return flags.DEFINE(_PathListParser(name), name, default, help_string,
                      serializer=flags.CsvListSerializer(','), **kwargs)


def DEFINE_config_file(name: str, help_string: str) -> flags.FlagHolder:  # pylint: disable=invalid-name
  """config_flags.DEFINE_config_file (locked config, --NAME.field overrides)
  whose file path has `~` expanded."""
  holder = config_flags.DEFINE_config_file(name, None, help_string, lock_config=True)
  flags.FLAGS[name].parser = _ConfigFileParser(name, flags.FLAGS[name].parser)
  return holder


def _log_expanded() -> None:
  """Sets up logging, then logs the folder each `~` of a path flag led to."""
  from sosvae_jax import logs  # pylint: disable=g-import-not-at-top
  from sosvae_jax import paths  # pylint: disable=g-import-not-at-top
  logs.setup()
  for flag, path in _EXPANDED:
    paths.expand_user(path, flag)
  _EXPANDED.clear()


def user_error_types() -> tuple[type[BaseException], ...]:
  """The exceptions that mean a wrong input (each message says what to do)."""
  # Imported here: a command's flags are parsed (and --help answered) before
  # jax and the package load.
  from sosvae_jax import config_checks  # pylint: disable=g-import-not-at-top
  from sosvae_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from sosvae_jax import workdir  # pylint: disable=g-import-not-at-top
  return (config_checks.ConfigError, input_pipeline.DataNotFoundError,
          input_pipeline.DataError, workdir.WorkdirError)


def fail(message: str, code: int = USER_ERROR) -> None:
  """Logs `message` as one error and exits with `code` (no traceback)."""
  logging.error('%s', message)
  sys.exit(code)


@contextlib.contextmanager
def write_failure_ends_quietly():
  """An output that could not be written (workdir.WriteError: a full disk)
  ends the command with its message and exit code WRITE_FAILED instead of a
  traceback; the message names the file, the cause and what to do."""
  from sosvae_jax import workdir  # pylint: disable=g-import-not-at-top
  try:
    yield
  except workdir.WriteError as e:
    fail(str(e), WRITE_FAILED)


@contextlib.contextmanager
def interrupt_ends_quietly(what: str):
  """Ctrl-C inside the block ends the command with one line and exit code
  INTERRUPTED instead of a KeyboardInterrupt traceback. For commands that
  only read a run (evaluation, figures, reports): they keep nothing that a
  rerun would not redo."""
  quiet_start.handled()
  try:
    yield
  except KeyboardInterrupt:
    fail(f'Interrupted (Ctrl-C) while {what}; nothing of the run was changed: '
         'rerun the same command to start again.', INTERRUPTED)


def _flag_error_text(error: flags.Error) -> str:
  """The last line of a flag error: config_flags wraps the config file's
  traceback into the message, of which only the final error is the news."""
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  flag = lines[0].rstrip(':') if lines else ''
  cause = lines[-1] if len(lines) > 1 else ''
  return f'{flag}: {cause}' if cause and cause not in flag else flag


def _unknown_override(argv: Sequence[str], error: Exception) -> str:
  """What to say when a --config.a.b=... override names a missing field.

  config_flags raises a bare KeyError / AttributeError holding only the
  missing key (and ConfigDict's did-you-mean hint); the argument is found
  by that key.
  """
  text = str(error).strip('"\'')
  missing = re.search(r"'?([\w-]+)'?", text)
  hint = re.search(r'(Did you mean .*)', text)
  for arg in argv:
    path = arg[len('--config.'):].split('=', 1)[0] if arg.startswith('--config.') else ''
    if missing and missing.group(1) in path.split('.'):
      return (f'{arg}: the config has no field config.{path} '
              f'({missing.group(1)!r} is unknown{"; " + hint.group(1) if hint else ""}); '
              'check the spelling (--helpfull lists every --config.* field)')
  return f'a --config.* override names a field the config does not have ({text})'


def _no_get_config(argv: Sequence[str], error: Exception) -> str | None:
  """What to say when the --config file loads but defines no get_config().

  config_flags raises a bare AttributeError for it, which would otherwise
  read as a misspelt --config.* override.
  """
  if not isinstance(error, AttributeError) or 'get_config' not in str(error):
    return None
  given = [a for a in argv if a.startswith('--config=')]
  return (f'{given[-1] if given else "--config"}: the file defines no get_config(), so '
          'it is no config file; pass one such as experiments/configs/default.py')


def _config_file_error(argv: Sequence[str], error: BaseException) -> str | None:
  """What to say when the --config file itself fails while it is loaded (a
  syntax error, an exception in its body or its get_config()); else None.
  The file is the user's, so its line and error are the news, not the flag
  parser's traceback."""
  given = [a.split('=', 1)[1] for a in argv if a.startswith('--config=')]
  if not given:
    return None
  from sosvae_jax import config_checks  # pylint: disable=g-import-not-at-top
  where = config_checks.failure_in_file(
      error, os.path.expanduser(given[-1].partition(':')[0]))
  if where is None:
    return None
  return (f'--config={given[-1]}: the config file fails at {where}; fix the file, or '
          'pass another such as experiments/configs/default.py')


def _config_load_error() -> str | None:
  """The error of a --config file that could not be loaded, else None.

  config_flags defers a missing or unimportable file's error to the first
  use of the config, which would be deep inside the run.
  """
  if 'config' not in flags.FLAGS or flags.FLAGS['config'].value is None:
    return None
  try:
    flags.FLAGS['config'].value.keys()
  except OSError as e:
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    return (f'--config={flags.FLAGS["config"].serialize().split("=", 1)[-1]}: the '
            f'config file cannot be loaded ({lines[-1] if lines else e}); pass an '
            'existing file such as experiments/configs/default.py')
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing for app.run(..., flags_parser=parse_flags), with
  every flag mistake (unknown flag or config field, bad value, a config
  file that raises) ending in one line and exit code 2."""
  try:
    remaining = flags.FLAGS(argv)
    message = _config_load_error()
    if message is None:
      _log_expanded()
      return remaining
  except flags.Error as e:
    message = _flag_error_text(e)
  except Exception as e:  # pylint: disable=broad-except
    message = _no_get_config(argv[1:], e) or _config_file_error(argv[1:], e)
    if message is None and isinstance(e, (AttributeError, KeyError)):
      message = _unknown_override(argv[1:], e)
    if message is None:
      raise
  sys.stderr.write(f'Error: {message}\nPass --helpshort to see the flags.\n')
  sys.exit(USER_ERROR)
