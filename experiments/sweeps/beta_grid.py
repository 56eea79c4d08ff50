"""The KL-weight (beta) grid of the beta-VAE, over seeds.

Base config: experiments/configs/sigma_vae/beta_vae.py (loss SSE + beta KL,
the paper's convention: rybkin2021_sigma_vae_calibrated_decoders.txt
section 3). The grid brackets the expected optimum on Fashion-MNIST (2 x MSE
~ 0.02-0.04) by two decades on either side. Every point differs only in
kl_weight and seed, so the whole sweep is one shape group.

  python -m experiments.sweep --config=experiments/configs/sigma_vae/beta_vae.py \
      --sweep=experiments/sweeps/beta_grid.py --workdir=runs/sweeps/beta_grid
  # seconds: --config=...beta_vae.py:smoke --sweep=experiments/sweeps/beta_grid.py:smoke
"""

from sosvae_jax import sweep

BETAS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SEEDS = (0, 1, 2)
SMOKE_BETAS, SMOKE_SEEDS = (0.01, 1.0), (0,)


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in (None, 'smoke'):
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing or "smoke".')
  betas, seeds = (SMOKE_BETAS, SMOKE_SEEDS) if arg == 'smoke' else (BETAS, SEEDS)
  return sweep.product(sweep.axis('kl_weight', betas), sweep.axis('seed', seeds))
