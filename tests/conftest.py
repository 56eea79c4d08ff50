"""Suite-wide setup: one JAX compilation cache for every test and subprocess.

Many tests compile the same programs (the smoke config's train and evaluation
steps, in this process and in the command-line subprocesses); XLA's persistent
cache lets the second compile of the same program load the first one's
executable. The cache lives in a temporary folder of this session only, so a
test never sees executables from another version of the code. Set
SOSVAE_TEST_COMPILATION_CACHE=0 to run without it.
"""

from __future__ import annotations

import os
import shutil
import tempfile

# A cache folder already named (by the user, or by the pytest process that
# started this one as a worker) is used as it is and left in place.
if (os.environ.get('SOSVAE_TEST_COMPILATION_CACHE', '1') != '0'
    and 'JAX_COMPILATION_CACHE_DIR' not in os.environ):
  _CACHE = tempfile.mkdtemp(prefix='sosvae-test-xla-cache-')
  # Environment variables, so that the subprocesses of the command-line tests
  # (they inherit os.environ) share it too.
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.1'

  def pytest_unconfigure(config):  # pylint: disable=unused-argument
    shutil.rmtree(_CACHE, ignore_errors=True)
