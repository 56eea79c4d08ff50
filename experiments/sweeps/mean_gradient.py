"""Is SOS-VAE's mean sharp on every seed? The exact gradient against the diagonal one.

Base config: experiments/configs/default.py. The points cross
`likelihood.mean_gradient` ('full', the exact likelihood's gradient, and
'diagonal', the mean trained by log N(x; mu, D) alone while P and D see the
full likelihood at a held mean) with three seeds. With the exact gradient a
seed whose P grows early settles on a blurred mean; docs/structure_study.md
has the table. Train the seeds of one setting side by side and evaluate:

  python -m experiments.sweep --config=experiments/configs/default.py \
      --sweep=experiments/sweeps/mean_gradient.py --workdir=runs/sweeps/mean_gradient \
      --mode=vmap --evaluate --config.evaluation.eval_examples=2000 \
      --config.evaluation.iwae_k=0 --config.evaluation.num_samples=5000
  # seconds: --config=...default.py:smoke --sweep=experiments/sweeps/mean_gradient.py:smoke
"""

from sosvae_jax import sweep
from sosvae_jax.distributions.lowrank import MEAN_GRADIENTS

SEEDS = (0, 1, 2)


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in (None, 'smoke'):
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing or "smoke".')
  seeds = SEEDS[:2] if arg == 'smoke' else SEEDS
  return sweep.product(sweep.axis('likelihood.mean_gradient', MEAN_GRADIENTS),
                       sweep.axis('seed', seeds))
