"""experiments/beta_grid.py end to end with --smoke, and its ELBO arithmetic."""

from __future__ import annotations

import json
import math
import os

from absl import flags
import numpy as np
import pytest

from experiments import beta_grid
from sosvae_jax import checkpoints


def test_gaussian_elbo_matches_a_float64_sum():
  rng = np.random.default_rng(0)
  x, mu = rng.uniform(size=(5, 30)), rng.uniform(size=(5, 30))
  variance, kl = 0.03, 4.0
  direct = np.mean(np.sum(-0.5 * np.log(2 * np.pi * variance)
                          - (x - mu) ** 2 / (2 * variance), axis=1)) - kl
  got = beta_grid.gaussian_elbo(float(np.mean((x - mu) ** 2)), variance, kl, 30)
  np.testing.assert_allclose(got, direct, rtol=1e-12)
  # The test-optimal sigma^2 = MSE gives the highest ELBO of any shared sigma.
  mse = float(np.mean((x - mu) ** 2))
  best = beta_grid.gaussian_elbo(mse, mse, kl, 30)
  assert all(best >= beta_grid.gaussian_elbo(mse, mse * f, kl, 30) for f in (0.5, 0.9, 1.1, 2))
  np.testing.assert_allclose(
      beta_grid.variance_from_entropy(0.5 * 30 * math.log(2 * math.pi * math.e * 0.02), 30),
      0.02, rtol=1e-12)


def test_smoke_grid_prints_and_writes_one_table(tmp_path, capsys):
  root = str(tmp_path)
  argv = ['beta_grid', f'--workdir={root}', '--smoke', '--steps=2', '--betas=0.05',
          '--eval_examples=16']
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    beta_grid.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  printed = capsys.readouterr().out
  with open(os.path.join(root, 'beta_grid.json')) as f:
    result = json.load(f)
  with open(os.path.join(root, 'beta_grid.md')) as f:
    assert f.read() in printed
  assert [r['model'] for r in result['rows']] == ['beta_0.05', 'optimal_sigma_vae']
  assert result['best_beta'] == 0.05 and result['steps'] == 2
  fixed, sigma_vae = result['rows']
  # The fixed-sigma model's own ELBO, recomputed from its test MSE and KL,
  # equals the loop's evaluation ELBO: the same Gaussian observation model.
  num_dims = 28 * 28
  np.testing.assert_allclose(
      beta_grid.gaussian_elbo(fixed['mse'], 0.025, fixed['kl'], num_dims),
      fixed['elbo_at_own_sigma'], rtol=1e-4)
  np.testing.assert_allclose(fixed['sigma'], math.sqrt(0.025), rtol=1e-9)
  for row in result['rows']:
    assert row['elbo_at_test_optimal_sigma'] >= row['elbo_at_own_sigma'] - 1e-3 * abs(
        row['elbo_at_own_sigma'])
  # The sigma-VAE's effective beta is 2 sigma^2 of its evaluation variance:
  # the (clipped) running average stored in its checkpoint.
  run = checkpoints.restore_run(os.path.join(root, 'optimal_sigma_vae'))
  stats = run.model_state['likelihood_stats']['likelihood']['running_variance']
  running = float(stats['total'].squeeze()) / (1 - 0.99 ** int(stats['count']))
  clipped = math.exp(2 * (-6.0 + math.log1p(math.exp(0.5 * math.log(running) + 6.0))))
  np.testing.assert_allclose(sigma_vae['effective_beta'], 2 * clipped, rtol=1e-3)
  assert result['sigma_vae_effective_beta'] == sigma_vae['effective_beta']


def test_bad_betas_are_refused(tmp_path):
  argv = ['beta_grid', f'--workdir={tmp_path}', '--betas=0.1,-1']
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    with pytest.raises(Exception, match='-1'):
      beta_grid.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
