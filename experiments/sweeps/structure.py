"""What makes SOS-VAE's covariance factor P hold several directions (docs/structure_study.md).

Base config: experiments/configs/default.py. The points cross the factor's
source (its own decoder trunk on stop_gradient(z), the default
`likelihood.factor_trunk=(16, 32)`, or None: the 3x3 factor head on the
mean's detached trunk features, the paper's shared decoder) with the KL
target (the default 25 nats, and 40). Evaluate every point, with its
structure report (docs/structure_study.md's table used the exact mean
gradient, as below; the default now trains the mean by the diagonal term):

  python -m experiments.sweep --config=experiments/configs/default.py \
      --sweep=experiments/sweeps/structure.py --workdir=runs/sweeps/structure \
      --config.likelihood.mean_gradient=full \
      --evaluate --config.evaluation.eval_examples=2000 \
      --config.evaluation.iwae_k=0 --config.evaluation.num_samples=5000
  # seconds: --config=...default.py:smoke --sweep=experiments/sweeps/structure.py:smoke
"""

from sosvae_jax import sweep

OWN_DECODER, SHARED_HEAD = (16, 32), None
FACTOR_SOURCES = (OWN_DECODER, SHARED_HEAD)
KL_TARGETS = (25.0, 40.0)


def get_sweep(arg: str | None = None) -> list[dict]:
  if arg not in (None, 'smoke'):
    raise ValueError(f'Sweep argument {arg!r} is unknown: pass nothing or "smoke".')
  sources = ((8, 16), SHARED_HEAD) if arg == 'smoke' else FACTOR_SOURCES
  return sweep.product(sweep.axis('likelihood.factor_trunk', sources),
                       sweep.axis('constraints.kl.target', KL_TARGETS))
