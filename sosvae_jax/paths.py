"""Paths the user types: `~` expanded, since no shell expands it in `--flag=~/x`
or in a config field, and the folder it resolved to logged."""

from __future__ import annotations

import functools
import os

from absl import logging


def expand_user(path: str, name: str) -> str:
  """`path` with a leading `~` / `~user` expanded; logs once where it led.

  Args:
    path: a path as given (a flag's value, a config field).
    name: what gave it, for the log line: '--workdir', 'config.data.idx_dir'.
  """
  resolved = os.path.expanduser(path)
  if resolved != path:
    _log_resolved(name, path, os.path.abspath(resolved))
  return resolved


@functools.lru_cache(maxsize=None)
def _log_resolved(name: str, given: str, resolved: str) -> None:
  """One line per (name, value): the readers of a field call expand_user often."""
  logging.info('%s=%s resolves to %s', name, given, resolved)
