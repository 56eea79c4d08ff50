"""Long work prints progress: the EM fit, the classifier, any loop."""

import io

import numpy as np

from sosvae_jax import progress
from sosvae_jax.evaluation import gmm


class _Clock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_lines_are_throttled_and_close_with_the_total():
  out, clock = io.StringIO(), _Clock()
  bar = progress.Progress('Work', 10, every_seconds=5.0, stream=out, clock=clock)
  calls = []
  for i in range(1, 11):
    clock.now = float(i)
    bar.update(i, lambda i=i: calls.append(i) or f'x={i}')
  lines = out.getvalue().splitlines()
  # First call, then one line per 5 s, then the last.
  assert [l.split()[1] for l in lines] == ['1/10', '6/10', '10/10']
  assert calls == [1, 6, 10]  # details computed only for printed lines
  assert '~0m04s left' in lines[1] or '~0m03s left' in lines[1]
  bar.done('ignored')  # already closed by the last update
  assert len(out.getvalue().splitlines()) == 3


def test_step_rate_counts_steps_since_the_previous_reading():
  clock = _Clock()
  clock.now = 100.0
  rate = progress.StepRate(500, clock=clock)  # a resumed loop starts at 500
  clock.now = 104.0
  assert rate.read(540) == 10.0
  clock.now = 105.0
  assert rate.read(560) == 20.0


def test_durations_read_in_minutes_or_hours():
  assert progress.duration(-3) == '0m00s'
  assert progress.duration(125.7) == '2m05s'
  assert progress.duration(3 * 3600 + 62) == '3h01m02s'


def test_em_fit_reports_iterations_and_convergence():
  rng = np.random.default_rng(0)
  z = np.concatenate([rng.normal(-3, 1, (200, 2)), rng.normal(3, 1, (200, 2))])
  out = io.StringIO()
  mixture = gmm.fit_gaussian_mixture(z, 2, progress_stream=out)
  text = out.getvalue()
  assert text.startswith('Gaussian-mixture EM (2 components, 400 points): 1/200')
  assert 'mean log density' in text
  assert text.strip().splitlines()[-1].startswith(
      f'Gaussian-mixture EM (2 components, 400 points) done: converged after '
      f'{mixture.iterations} iterations')
