"""The beta-VAE over a grid of beta against the optimal sigma-VAE, over seeds.

rybkin2021_sigma_vae_calibrated_decoders.txt sections 3 and 4. Base config:
experiments/configs/sigma_vae/beta_vae.py (the appendix-B network, loss
SSE + beta KL: a Gaussian decoder with sigma = sqrt(1/2) and kl_weight =
beta). That loss is, up to the factor beta, the negative ELBO of the same
decoder with sigma = sqrt(beta / 2) and the KL unweighted, so every beta of
the grid is a calibrated Gaussian decoder with a hand-picked sigma. The
optimal sigma-VAE (`likelihood.name=gaussian_optimal_sigma`, kl_weight 1)
finds sigma itself; its "effective beta" is 2 sigma^2. The paper's claim: it
lands near the best beta of a hand-tuned grid, with an ELBO at least as good.

The grid brackets the expected optimum on Fashion-MNIST (2 x MSE ~
0.02-0.04) by two decades on either side. The betas share one compiled step
with --mode=vmap; the sigma-VAE is a second group.

  python -m experiments.sweep --config=experiments/configs/sigma_vae/beta_vae.py \
      --sweep=experiments/sweeps/beta_grid.py --workdir=runs/sweeps/beta_grid --mode=vmap
  # README's table (fewer betas and steps, one seed):
  python -m experiments.sweep --config=experiments/configs/sigma_vae/beta_vae.py \
      --sweep=experiments/sweeps/beta_grid.py:readme --workdir=runs/sweeps/beta_grid_readme \
      --mode=vmap --config.num_steps=600 --config.batch_size=64 --config.eval_examples=2000
  # seconds: --config=...beta_vae.py:smoke --sweep=experiments/sweeps/beta_grid.py:smoke

sweep.md ends with `report`: every model's test ELBO at its own sigma and
with the test-optimal shared sigma plugged in, the effective betas, and
whether the claim holds.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

from sosvae_jax import sweep
from sosvae_jax import workdir as workdir_lib

BETAS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
GRIDS = {None: (BETAS, SEEDS), 'readme': ((0.003, 0.01, 0.03, 0.1, 0.3), (0,)),
         'smoke': ((0.01, 1.0), (0,))}
FIXED_SIGMA, OPTIMAL_SIGMA = 'gaussian_fixed_sigma', 'gaussian_optimal_sigma'


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in GRIDS:
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing, '
                     f'{", ".join(repr(a) for a in GRIDS if a)}.')
  betas, seeds = GRIDS[arg]
  sigma_vae = [{'likelihood.name': OPTIMAL_SIGMA, 'kl_weight': 1.0}]
  return sweep.product(sweep.axis('kl_weight', betas) + sigma_vae, sweep.axis('seed', seeds))


# ----------------------------------------------------------------------------
# The ELBO of a Gaussian decoder at another sigma.
# ----------------------------------------------------------------------------
def gaussian_elbo(mse: float, variance: float, kl: float, num_dims: int) -> float:
  """Mean ELBO of N(mu, variance I) decoders given the mean per-element MSE.

  E log N(x; mu, s^2 I) = -S/2 log(2 pi s^2) - S mse / (2 s^2), minus the KL.
  """
  return (-0.5 * num_dims * math.log(2 * math.pi * variance)
          - 0.5 * num_dims * mse / variance - kl)


def log_likelihood_at(log_likelihood: float, variance: float, new_variance: float,
                      num_dims: int) -> float:
  """E log N(x; mu, new_variance I) from E log N(x; mu, variance I) of the same means.

  The squared error is recovered from the first: E|x - mu|^2 = -2 variance
  (log_likelihood + S/2 log(2 pi variance)); exact for the same z samples.
  """
  squared_error = -2.0 * variance * (log_likelihood + 0.5 * num_dims
                                     * math.log(2 * math.pi * variance))
  return (-0.5 * num_dims * math.log(2 * math.pi * new_variance)
          - 0.5 * squared_error / new_variance)


def variance_from_entropy(entropy: float, num_dims: int) -> float:
  """The shared sigma^2 of N(mu, sigma^2 I) with entropy S/2 log(2 pi e sigma^2)."""
  return math.exp(2.0 * entropy / num_dims) / (2 * math.pi * math.e)


def model_row(config: Mapping[str, Any], metrics: Mapping[str, float]) -> dict[str, Any] | None:
  """A finished point's numbers under its own sigma, or None for another model.

  A fixed-sigma decoder with kl_weight w is the decoder with variance
  sigma^2 w and the KL unweighted (beta = 2 sigma^2 w); the optimal
  sigma-VAE's variance is read from its entropy (kl_weight must be 1).
  """
  likelihood, num_dims = config['likelihood'], math.prod(config['data']['image_shape'])
  weight, kl, mse = config['kl_weight'], metrics['kl'], metrics['mse']
  if likelihood['name'] == FIXED_SIGMA:
    variance = likelihood['sigma'] ** 2 * weight
    elbo = log_likelihood_at(metrics['log_likelihood'], likelihood['sigma'] ** 2,
                             variance, num_dims) - kl
    # 12 digits: sqrt(1/2)^2 * 2 is 1 + 2e-16; the grid's betas group exactly.
    beta = float(f'{2.0 * variance:.12g}')
  elif likelihood['name'] == OPTIMAL_SIGMA and weight == 1.0:
    variance = variance_from_entropy(metrics['entropy'], num_dims)
    elbo, beta = metrics['elbo'], None
  else:
    return None
  return dict(beta=beta, sigma=math.sqrt(variance), effective_beta=2.0 * variance,
              elbo_at_own_sigma=elbo,
              elbo_at_test_optimal_sigma=gaussian_elbo(mse, mse, kl, num_dims), kl=kl, mse=mse)


# ----------------------------------------------------------------------------
# The report at the end of sweep.md.
# ----------------------------------------------------------------------------
COLUMNS = ('sigma', 'effective_beta', 'elbo_at_own_sigma', 'elbo_at_test_optimal_sigma',
           'kl', 'mse')


def summary(root: str, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Each model's columns as mean over its finished seeds, the best beta of the
  grid (highest mean ELBO at its own sigma) and the sigma-VAE's numbers."""
  models: dict[Any, list[dict]] = {}
  for r in rows:
    if r['status'] != sweep.FINISHED:
      continue
    config = workdir_lib.effective_config(os.path.join(root, r['name']))
    row = model_row(config, r['metrics'])
    if row is not None:
      models.setdefault(row['beta'], []).append(row)
  table = []
  for beta, runs in models.items():
    mean = {c: sum(run[c] for run in runs) / len(runs) for c in COLUMNS}
    spread = {c: max(run[c] for run in runs) - min(run[c] for run in runs) for c in COLUMNS}
    table.append(dict(beta=beta, seeds=len(runs), **mean,
                      elbo_range=spread['elbo_at_own_sigma']))
  table.sort(key=lambda t: (t['beta'] is None, t['beta'] or 0.0))
  grid = [t for t in table if t['beta'] is not None]
  sigma_vae = next((t for t in table if t['beta'] is None), None)
  best = max(grid, key=lambda t: t['elbo_at_own_sigma']) if grid else None
  return dict(table=table, best=best, sigma_vae=sigma_vae)


def report(root: str, rows: Sequence[Mapping[str, Any]]) -> str:
  """The beta grid against the optimal sigma-VAE (markdown)."""
  result = summary(root, rows)
  lines = ['## beta-VAE grid vs the optimal sigma-VAE', '',
           'Test set; ELBOs in nats per image, means over the finished seeds '
           '(range: max - min of the ELBO at own sigma). A beta-VAE is scored as the '
           'Gaussian decoder with sigma = sqrt(beta / 2) its loss implies.', '',
           '| model | beta | sigma | effective beta = 2 sigma^2 | ELBO at own sigma | '
           'range | ELBO at test-optimal sigma | KL | MSE | seeds |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for t in result['table']:
    model = 'optimal sigma-VAE' if t['beta'] is None else 'beta-VAE'
    beta = '(learned)' if t['beta'] is None else f'{t["beta"]:g}'
    spread = f'{t["elbo_range"]:.1f}' if t['seeds'] > 1 else '-'
    lines.append(f'| {model} | {beta} | {t["sigma"]:.4g} | {t["effective_beta"]:.4g} | '
                 f'{t["elbo_at_own_sigma"]:.1f} | {spread} | '
                 f'{t["elbo_at_test_optimal_sigma"]:.1f} | {t["kl"]:.2f} | {t["mse"]:.5f} | '
                 f'{t["seeds"]} |')
  best, sigma_vae = result['best'], result['sigma_vae']
  lines.append('')
  if best is None or sigma_vae is None:
    lines.append('No conclusion yet: the grid or the sigma-VAE has no finished point.')
    return '\n'.join(lines) + '\n'
  beats = [t for t in result['table'] if t['beta'] is not None
           and t['elbo_at_own_sigma'] >= sigma_vae['elbo_at_own_sigma']]
  lines += [f'Best beta of the grid (highest ELBO at its own sigma): {best["beta"]:g} '
            f'(ELBO {best["elbo_at_own_sigma"]:.1f}).',
            f'Optimal sigma-VAE: effective beta {sigma_vae["effective_beta"]:.4g} '
            f'(ELBO {sigma_vae["elbo_at_own_sigma"]:.1f}).',
            'The claim holds: the sigma-VAE\'s ELBO beats every beta of the grid.' if not beats
            else 'The claim does not hold here: beta ' + ', '.join(
                f'{t["beta"]:g}' for t in beats) + ' reaches the sigma-VAE\'s ELBO.']
  return '\n'.join(lines) + '\n'
