"""benchmarks/likelihood_benchmark.py runs end to end on a tiny shape."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_tiny_run_prints_ratios_flops_and_accuracy(tmp_path):
  out = tmp_path / 'likelihood.json'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'likelihood_benchmark.py'),
       '--shapes=40x3', '--rank=4', '--repeats=2', '--peak_size=64',
       '--methods=ours,autodiff,tfp,distrax_scale', f'--out={out}'],
      capture_output=True, text=True, timeout=300, check=True)
  assert 'share of peak' in result.stdout and 'geo. mean' in result.stdout
  row = json.loads(out.read_text())['rows'][0]
  assert set(row['ratio_to_ours']) == {'autodiff', 'tfp', 'distrax_scale'}
  assert row['ours_gflops'] > 0 and 0 < row['ours_peak_share']
  # The floor: the two batched matmuls alone, timed in the same rounds.
  assert 'the two batched matmuls alone' in result.stdout
  assert row['median_ms']['dots'] > 0 and row['dots_peak_share'] > 0 and row['ours_over_dots'] > 0
  # The same distribution: ours, autodiff and tfp agree with float64;
  # distrax's scale form is another distribution and does not.
  for method in ('ours', 'autodiff', 'tfp'):
    assert max(row['accuracy'][method].values()) < 1e-4, method
  assert row['accuracy']['distrax_scale']['log_prob_rel'] > 1e-3
  # The float64 reference itself agrees with a dense scipy Cholesky.
  check = float(result.stdout.split('dense scipy, S=784): ')[1].split()[0])
  assert check < 1e-10


@pytest.mark.slow
def test_a_stuck_call_ends_the_run_with_its_name_and_the_advice():
  """A deadlocked XLA:CPU call never returns: the watchdog ends the run."""
  script = (
      'import sys, time\n'
      f'sys.path.insert(0, {os.path.join(ROOT, "benchmarks")!r})\n'
      'import likelihood_benchmark as lb\n'
      'lb.FLAGS(["lb"])\n'
      'print(lb.time_rounds({"quick": lambda: None}, 2, timeout=5.0))\n'
      'lb.time_rounds({"stuck": lambda: time.sleep(60)}, 1, timeout=0.5)\n'
      'print("not reached")\n')
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 3, result.stderr[-2000:]
  assert "{'quick': [" in result.stdout and 'not reached' not in result.stdout
  assert 'Stuck: stuck (round 1) has not returned after 0.5 s' in result.stderr
  assert 'XLA_FLAGS="--xla_cpu_multi_thread_eigen=false' in result.stderr
