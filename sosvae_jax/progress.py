"""Progress lines for long work, in a terminal, a log file or a notebook."""

from __future__ import annotations

import sys
import time
from typing import Callable, TextIO


def duration(seconds: float) -> str:
  """'1h02m03s' or '2m03s': how long, to the second."""
  seconds = int(max(seconds, 0))
  minutes, s = divmod(seconds, 60)
  hours, m = divmod(minutes, 60)
  return f'{hours}h{m:02d}m{s:02d}s' if hours else f'{m}m{s:02d}s'


class Progress:
  """Prints `what: i/total  details  (elapsed, ~remaining)` now and then.

  Whole lines (no carriage returns), so they read the same in a terminal, in
  a redirected log and in a Jupyter cell's output; at most one line every
  `every_seconds` plus the first and the last. Work that may end early (EM
  that converges) calls `done()` with its own closing words.
  """

  def __init__(self, what: str, total: int, *, every_seconds: float = 5.0,
               stream: TextIO | None = None, clock: Callable[[], float] = time.monotonic):
    self._what, self._total = what, max(int(total), 1)
    self._every, self._clock = every_seconds, clock
    self._stream = stream
    self._start = clock()
    self._last = None
    self._closed = False

  def _print(self, text: str) -> None:
    stream = self._stream if self._stream is not None else sys.stderr
    print(text, file=stream, flush=True)

  def update(self, count: int, details: str | Callable[[], str] = '') -> None:
    """Reports that `count` of `total` units are done (throttled).

    `details` may be a function, called only when a line is printed (so that
    e.g. a device value is fetched only then).
    """
    now = self._clock()
    last = count >= self._total
    if not (self._last is None or last or now - self._last >= self._every):
      return
    self._last = now
    elapsed = now - self._start
    left = elapsed / max(count, 1) * (self._total - count) if count else 0.0
    eta = '' if last or not count else f', ~{duration(left)} left'
    details = details() if callable(details) else details
    extra = f'  {details}' if details else ''
    self._print(f'{self._what}: {count}/{self._total}{extra}  '
                f'({duration(elapsed)}{eta})')
    if last:
      self._closed = True

  def done(self, summary: str = '') -> None:
    """Closing line (once), e.g. 'converged after 37 iterations'."""
    if self._closed:
      return
    self._closed = True
    extra = f': {summary}' if summary else ''
    self._print(f'{self._what} done{extra} ({duration(self._clock() - self._start)})')


class StepRate:
  """Steps per second since the previous reading, for a loop's log lines."""

  def __init__(self, step: int, clock: Callable[[], float] = time.time):
    self._clock = clock
    self._step, self._time = step, clock()

  def read(self, step: int) -> float:
    """Steps per second from the previous reading (or the start) to `step`."""
    now = self._clock()
    rate = (step - self._step) / max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return rate
