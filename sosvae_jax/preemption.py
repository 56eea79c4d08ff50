"""When to checkpoint and stop early: a pre-empted, terminated or interrupted run."""

from __future__ import annotations

import os
import signal

import jax
import orbax.checkpoint as ocp

# Signals after which a single-process run saves a checkpoint and stops:
# a scheduler's SIGTERM and the user's Ctrl-C alike.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Exit status of a second signal (e.g. Ctrl-C twice): 128 + SIGINT, what a
# shell reports for a process that Ctrl-C killed.
FORCED_EXIT = 128 + signal.SIGINT


def _name(signum: int) -> str:
  return 'SIGINT (Ctrl-C)' if signum == signal.SIGINT else signal.Signals(signum).name


def _signals_to_handle() -> tuple[int, ...]:
  """The signals this process handles itself.

  One process: SIGTERM and SIGINT. Several: JAX's preemption notifier
  (started by jax.distributed.initialize) owns SIGTERM and tells every
  process, so only SIGINT is caught, to be passed on to it as SIGTERM;
  without the preemption service there is no way to agree and Ctrl-C stays
  a KeyboardInterrupt.
  """
  if jax.process_count() == 1:
    return STOP_SIGNALS
  return (signal.SIGINT,) if jax.config.jax_enable_preemption_service else ()


class PreemptionWatch:
  """Says at which step to write a last checkpoint and stop.

  With several processes every one must stop at the same step (one that
  stops alone leaves the others hanging in a collective, and orbax's
  multi-host save waits for all), so the step is orbax's preemption sync
  point, which all processes agree on: a SIGTERM reaches it through JAX's
  preemption notifier, and a Ctrl-C in any process is handed to that
  notifier as a SIGTERM to itself. A single process stops on SIGTERM or
  SIGINT at the next step. Either way a second signal while the last
  checkpoint is written exits at once (FORCED_EXIT), for a user who would
  rather lose the last steps than wait.

  A run's set-up is watched too (a watch with no manager, passed to the
  loop's as `earlier`): a KeyboardInterrupt inside a JAX trace or compile
  leaves state that crashes the interpreter's exit (a segfault instead of
  exit code 130), so a signal there is acted on once the set-up ends
  (end_setup); a second one still exits at once. A single process then ends
  before the loop on a Ctrl-C (KeyboardInterrupt: nothing to save yet) and
  stops at the loop's first step on a SIGTERM. Several processes stop
  together at the loop's first sync point: one that a Ctrl-C ended alone
  would leave the others waiting for it in their first collective and
  itself waiting for them in jax.distributed's shutdown.
  """

  def __init__(self, manager: ocp.CheckpointManager | None, *,
               earlier: 'PreemptionWatch | None' = None):
    """`earlier`: the watch of the run's set-up, whose signal counts here."""
    self._manager = manager
    self.received: int | None = earlier.received if earlier is not None else None
    self._previous = {}
    self._single = True

  def __enter__(self) -> 'PreemptionWatch':
    self._single = jax.process_count() == 1
    for sig in _signals_to_handle():
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. a notebook worker).
        pass
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    if self.received is not None:
      # os.write and os._exit: safe inside a handler, and nothing waits for
      # the checkpoint threads (a half-written step is skipped on resume).
      os.write(2, f'{_name(signum)} again: exiting at once without waiting for the '
                  'checkpoint; rerun the same command to resume from the last '
                  'complete one.\n'.encode())
      os._exit(FORCED_EXIT)  # pylint: disable=protected-access
    self.received = signum
    if not self._single:
      # JAX's preemption notifier catches SIGTERM and tells every process.
      os.kill(os.getpid(), signal.SIGTERM)

  def __exit__(self, *exc) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}

  def end_setup(self) -> None:
    """Raises KeyboardInterrupt where a Ctrl-C reached a single process's
    set-up (several processes stop at the loop's first sync point)."""
    if self._single and self.received == signal.SIGINT:
      raise KeyboardInterrupt

  def reached(self, step: int) -> bool:
    """True when the run should save `step` and stop (the same step in every
    process of a multi-process run)."""
    if self._single and self.received is not None:
      return True
    return self._manager is not None and self._manager.reached_preemption(step)

  def reason(self) -> str:
    return (f'Stopped by {_name(self.received)}' if self.received is not None
            else 'Reached the pre-emption sync point')
