"""One config over seeds 0, 1, 2: is a result a property of the config or of a seed?

  python -m experiments.sweep --config=experiments/configs/sos_basis.py \
      --sweep=experiments/sweeps/seeds.py --workdir=runs/sweeps/sos_basis --evaluate
  # seconds: --config=...:smoke --sweep=experiments/sweeps/seeds.py:smoke
"""

from sosvae_jax import sweep

SEEDS = (0, 1, 2)


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in (None, 'smoke'):
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing or "smoke".')
  return sweep.axis('seed', SEEDS[:2] if arg == 'smoke' else SEEDS)
