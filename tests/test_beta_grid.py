"""The beta grid sweep file (beta-VAEs vs the optimal sigma-VAE): its ELBO
arithmetic against float64 sums, and its report after a smoke sweep."""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments.sweeps import beta_grid
from sosvae_jax import checkpoints
from sosvae_jax import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _direct_log_likelihood(x, mu, variance):
  return float(np.mean(np.sum(-0.5 * np.log(2 * np.pi * variance)
                              - (x - mu) ** 2 / (2 * variance), axis=1)))


def test_gaussian_elbo_matches_a_float64_sum():
  rng = np.random.default_rng(0)
  x, mu = rng.uniform(size=(5, 30)), rng.uniform(size=(5, 30))
  variance, kl = 0.03, 4.0
  mse = float(np.mean((x - mu) ** 2))
  got = beta_grid.gaussian_elbo(mse, variance, kl, 30)
  np.testing.assert_allclose(got, _direct_log_likelihood(x, mu, variance) - kl, rtol=1e-12)
  # The test-optimal sigma^2 = MSE gives the highest ELBO of any shared sigma.
  best = beta_grid.gaussian_elbo(mse, mse, kl, 30)
  assert all(best >= beta_grid.gaussian_elbo(mse, mse * f, kl, 30) for f in (0.5, 0.9, 1.1, 2))
  np.testing.assert_allclose(
      beta_grid.variance_from_entropy(0.5 * 30 * math.log(2 * math.pi * math.e * 0.02), 30),
      0.02, rtol=1e-12)


def test_log_likelihood_at_another_sigma_matches_a_float64_sum():
  rng = np.random.default_rng(1)
  x, mu = rng.uniform(size=(7, 40)), rng.uniform(size=(7, 40))
  for old, new in ((0.5, 0.005), (0.005, 0.5), (1e-4, 0.3), (0.02, 0.02)):
    got = beta_grid.log_likelihood_at(_direct_log_likelihood(x, mu, old), old, new, 40)
    np.testing.assert_allclose(got, _direct_log_likelihood(x, mu, new), rtol=1e-9)


def test_points_of_the_grid():
  points = beta_grid.get_sweep()
  assert len(points) == (len(beta_grid.BETAS) + 1) * len(beta_grid.SEEDS)
  sigma_vae = [p for p in points if p.get('likelihood.name') == beta_grid.OPTIMAL_SIGMA]
  assert [p['seed'] for p in sigma_vae] == list(beta_grid.SEEDS)
  assert all(p['kl_weight'] == 1.0 for p in sigma_vae)


@pytest.mark.slow
def test_smoke_sweep_reports_each_model_under_its_own_sigma(tmp_path):
  root = tmp_path / 'grid'
  done = subprocess.run(
      [sys.executable, '-m', 'experiments.sweep',
       '--config=experiments/configs/sigma_vae/beta_vae.py:smoke',
       '--sweep=experiments/sweeps/beta_grid.py:smoke', f'--workdir={root}', '--mode=vmap',
       '--config.num_steps=3', '--config.eval_examples=16'],
      cwd=ROOT, capture_output=True, text=True, timeout=900,
      env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert done.returncode == 0, done.stderr[-3000:]
  assert '2 shape group(s)' in done.stdout
  text = (root / sweep.TABLE_MD).read_text()
  assert '## beta-VAE grid vs the optimal sigma-VAE' in text and 'Best beta of the grid' in text
  rows = json.loads((root / sweep.MANIFEST).read_text())['rows']
  result = beta_grid.summary(str(root), rows)
  table = {t['beta']: t for t in result['table']}
  assert set(table) == {0.01, 1.0, None}
  num_dims = 28 * 28
  for beta in (0.01, 1.0):
    # Trained as sigma = sqrt(1/2) with kl_weight beta, scored at sigma^2 =
    # beta / 2: against the ELBO recomputed from the test MSE and KL of the
    # same evaluation (the loop's MSE is of the same decoded means).
    t = table[beta]
    np.testing.assert_allclose(t['sigma'], math.sqrt(beta / 2), rtol=1e-12)
    np.testing.assert_allclose(t['elbo_at_own_sigma'],
                               beta_grid.gaussian_elbo(t['mse'], beta / 2, t['kl'], num_dims),
                               rtol=1e-4)
    assert f'| beta-VAE | {beta:g} |' in text
  assert result['best']['beta'] == max((0.01, 1.0), key=lambda b: table[b]['elbo_at_own_sigma'])
  # The sigma-VAE's effective beta is 2 sigma^2 of its evaluation variance:
  # the (clipped) running average stored in its checkpoint.
  name = next(r['name'] for r in rows if r['likelihood.name'] == beta_grid.OPTIMAL_SIGMA)
  run = checkpoints.restore_run(str(root / name))
  stats = run.model_state['likelihood_stats']['likelihood']['running_variance']
  running = float(stats['total'].squeeze()) / (1 - 0.99 ** int(stats['count']))
  clipped = math.exp(2 * (-6.0 + math.log1p(math.exp(0.5 * math.log(running) + 6.0))))
  np.testing.assert_allclose(table[None]['effective_beta'], 2 * clipped, rtol=1e-3)
  assert '| optimal sigma-VAE | (learned) |' in text
