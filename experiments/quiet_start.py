"""Ctrl-C while a command starts ends it at once: exit code 130 and one line.

Python's own handler would print a KeyboardInterrupt traceback from whichever
import, flag parser or config file was running. Nothing is written while a
command starts, so there is nothing to save. (Like every Python handler, this
one runs when the interpreter regains control: a call blocked in C++, such as
`jax.distributed.initialize` waiting for its coordinator, ends first.)

Importing this module installs the handler when the program is one of the
commands of experiments/ run as a script (`python -m experiments.<name>`);
tests and notebooks that import those modules keep Python's handler. Each
command gives SIGINT back (`handled`) where its own handling begins: the
train loop's checkpoint on Ctrl-C, or cli.interrupt_ends_quietly.
"""

import os
import signal
import sys

INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C'd process


def _exit_at_once(signum, frame) -> None:
  del signum, frame
  os.write(2, b'Interrupted (Ctrl-C) while the command was starting: nothing was '
              b'written; rerun the same command.\n')
  os._exit(INTERRUPTED)  # pylint: disable=protected-access


def handled() -> None:
  """Ctrl-C raises KeyboardInterrupt again, for the command to handle."""
  if signal.getsignal(signal.SIGINT) is _exit_at_once:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_as_command() -> bool:
  spec = getattr(sys.modules.get('__main__'), '__spec__', None)
  return bool(spec and spec.name.startswith('experiments.'))


if _run_as_command():
  signal.signal(signal.SIGINT, _exit_at_once)
