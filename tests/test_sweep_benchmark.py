"""benchmarks/sweep_benchmark.py times every sweep mode end to end (smoke network)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'sweep_benchmark.py')


@pytest.mark.slow
def test_smoke_run_times_every_mode_against_one_process_per_point(tmp_path):
  out = tmp_path / 'sweep.json'
  result = subprocess.run(
      [sys.executable, SCRIPT, '--points=2', '--steps=2', '--smoke', '--eval_examples=16',
       f'--out={out}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads(out.read_text())
  assert set(saved['median_seconds']) == {'vmap', 'loop', 'sequential', 'processes'}
  assert all(t > 0 for t in saved['median_seconds'].values())
  assert saved['speedup_over_processes']['processes'] == 1.0
  assert 'faster than one process per point' in result.stdout


def test_flag_mistakes_are_refused_before_anything_runs():
  for args in (['--points=0'], ['--rounds=-1'], ['stray']):
    result = subprocess.run([sys.executable, SCRIPT, *args], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode != 0 and 'round 0' not in result.stdout, args
