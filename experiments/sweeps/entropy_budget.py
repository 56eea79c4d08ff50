"""The SOS-VAE entropy ceiling xi_H, over seeds (sosvae_tmlr2022.txt section 3.2).

Base config: experiments/configs/default.py, whose ceiling -3330 nats leaves
70 nats above the floor -3400.6 that the fixed diagonal D = 1e-5 sets
(0.5 * 784 * (log(2 pi e) + log 1e-5)). The grid runs from a tight budget
(30 nats) to the loosened -3200 at which the constraint measured inactive
(design notes: entropy settles at -3289). Only constraint targets and seeds
change, so the whole sweep is one shape group.

  python -m experiments.sweep --config=experiments/configs/default.py \
      --sweep=experiments/sweeps/entropy_budget.py --workdir=runs/sweeps/entropy_budget
  # seconds: --config=...default.py:smoke --sweep=experiments/sweeps/entropy_budget.py:smoke
"""

from sosvae_jax import sweep

CEILINGS = (-3370.0, -3330.0, -3290.0, -3250.0, -3200.0)
SEEDS = (0, 1, 2)
SMOKE_CEILINGS, SMOKE_SEEDS = (-3330.0, -3200.0), (0,)


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in (None, 'smoke'):
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing or "smoke".')
  ceilings, seeds = (SMOKE_CEILINGS, SMOKE_SEEDS) if arg == 'smoke' else (CEILINGS, SEEDS)
  return sweep.product(sweep.axis('constraints.entropy.target', ceilings),
                       sweep.axis('seed', seeds))
