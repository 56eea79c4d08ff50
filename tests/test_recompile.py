"""No recompilation after the first step, and the train state is donated.

A smoke run of `train_and_evaluate` (6 steps, evaluation and checkpoints at
steps 3 and 6) with `train.train_step` and `train.eval_step` wrapped by
`chex.assert_max_traces(n=1)` (a second trace raises), and `jax.jit` inside
the train module wrapped so that every call of the donating step checks that
the state it was given has been deleted, i.e. its buffers were donated to the
new state (donate_argnums=0); see test_state_buffers_donated for the step
after a checkpoint.
"""

from __future__ import annotations

import types

import chex
import jax
import pytest

from experiments.configs import default
from sosvae_jax import train

_NUM_STEPS = 6  # the smoke config: evaluation and checkpoints at 3 and 6


class _DonationCheck:
  """Stands in for `jax` inside sosvae_jax.train; records, per call of the
  jitted function that donates its first argument, whether all of that
  argument's buffers were deleted."""

  def __init__(self):
    self.step_calls = []

  def __getattr__(self, name):
    return getattr(jax, name)

  def jit(self, fun, *args, **kwargs):
    jitted = jax.jit(fun, *args, **kwargs)
    if kwargs.get('donate_argnums') != 0:
      return jitted

    def call(state, *rest):
      leaves = jax.tree.leaves(state)
      out = jitted(state, *rest)
      self.step_calls.append(all(x.is_deleted() for x in leaves))
      return out
    return call


@pytest.fixture(scope='module')
def checked_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('recompile')
  donation = _DonationCheck()
  with pytest.MonkeyPatch.context() as mp:
    # A second trace of either function raises inside the run.
    mp.setattr(train, 'train_step', chex.assert_max_traces(train.train_step, n=1))
    mp.setattr(train, 'eval_step', chex.assert_max_traces(train.eval_step, n=1))
    mp.setattr(train, 'jax', donation)
    config = default.get_config('smoke')
    assert config.num_steps == _NUM_STEPS
    state = train.train_and_evaluate(config, str(workdir))
  chex.clear_trace_counter()
  return types.SimpleNamespace(donation=donation, state=state)


@pytest.mark.slow
def test_train_and_eval_steps_traced_once(checked_run):
  # Reaching the end means neither function was traced twice, though the
  # step ran 6 times and eval_step at steps 3 and 6 on several batches.
  assert int(checked_run.state.step) == _NUM_STEPS
  assert len(checked_run.donation.step_calls) == _NUM_STEPS


def test_a_second_trace_is_caught():
  # The guard itself: a shape change retraces, and chex refuses it.
  fn = jax.jit(chex.assert_max_traces(lambda x: x + 1, n=1))
  fn(jax.numpy.zeros(2))
  with pytest.raises(AssertionError):
    fn(jax.numpy.zeros(3))


@pytest.mark.slow
def test_state_buffers_donated(checked_run):
  # Every leaf of the state given to the step was consumed (donated): the
  # step updates parameters and optimizer state in place, without a second
  # copy alive. Exception: the step right after a checkpoint (steps 3 and 6
  # save; step 4 follows). Orbax saves asynchronously and on CPU its host
  # "copy" is a zero-copy view of the device buffers, held until the write
  # finishes, so XLA cannot reuse them and copies once (measured: only step
  # 4 keeps its input). Not asserted either way for that step: on GPUs the
  # device-to-host copy releases the buffers.
  config = default.get_config('smoke')
  after_save = {s + 1 for s in range(1, _NUM_STEPS + 1) if s % config.checkpoint_every_steps == 0}
  donated = {i + 1: ok for i, ok in enumerate(checked_run.donation.step_calls)}
  assert len(donated) == _NUM_STEPS
  assert {s: ok for s, ok in donated.items() if s not in after_save} == {
      s: True for s in donated if s not in after_save}
  assert len(set(donated) - after_save) >= 4  # most steps are checked
