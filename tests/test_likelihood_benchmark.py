"""benchmarks/likelihood_benchmark.py runs end to end on a tiny shape."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
