"""Log set-up shared by every entry point and notebook: INFO, without library chatter."""

from __future__ import annotations

import logging as std_logging
import sys

from absl import logging

# INFO records of these packages say nothing a user acts on (orbax: ~25 lines
# per checkpoint; grain: worker set-up); their warnings and errors still show.
_QUIET_PACKAGES = ('/orbax/', '/grain/', '/tensorflow_datasets/', '/etils/')
# Dropped at any level below ERROR. jax probes every backend it knows at
# start-up and logs each one missing ("Unable to initialize backend 'tpu'")
# on a machine never meant to have it; tfds warns, for every split it opens,
# about version folders it scanned that hold no dataset_info.json.
_QUIET_MESSAGES = ('Unable to initialize backend', 'Variant folder %s has no %s')


class QuietLibraries(std_logging.Filter):
  """Drops library INFO chatter and known harmless notes; keeps other warnings."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.levelno >= std_logging.ERROR:
      return True
    if any(m in str(record.msg) for m in _QUIET_MESSAGES):
      return False
    path = record.pathname.replace('\\', '/')
    return (record.levelno >= std_logging.WARNING
            or not any(p in path for p in _QUIET_PACKAGES))


def _add_once(handler: std_logging.Handler) -> None:
  if not any(isinstance(f, QuietLibraries) for f in handler.filters):
    handler.addFilter(QuietLibraries())


def setup(verbosity: int = logging.INFO, *, to_stderr: bool = False) -> None:
  """absl logging at `verbosity` through the quiet filter.

  Args:
    verbosity: absl level (logging.INFO shows training and progress lines).
    to_stderr: also outside `app.run` (a notebook, a plain script): absl then
      writes its lines to stderr, which Jupyter shows under the cell.
  """
  logging.set_verbosity(verbosity)
  handler = logging.get_absl_handler()
  _add_once(handler)
  # The same filter on the root logger's other handlers (a notebook's), and on
  # the loggers that speak before absl's handler is installed.
  for h in std_logging.getLogger().handlers:
    _add_once(h)
  std_logging.getLogger('jax._src.xla_bridge').addFilter(QuietLibraries())
  if to_stderr:
    logging.use_absl_handler()
    handler.python_handler.stream = sys.stderr
