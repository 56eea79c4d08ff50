"""beta-VAE over a grid of beta vs the optimal sigma-VAE, on real Fashion-MNIST.

rybkin2021_sigma_vae_calibrated_decoders.txt section 3: the beta-VAE loss
SSE + beta KL is, up to the factor beta, the negative ELBO of a Gaussian
decoder with fixed sigma = sqrt(beta / 2). The optimal sigma-VAE (section 4)
finds sigma itself, so its "effective beta" is 2 sigma^2; the paper's claim
is that it lands near the best beta of a hand-tuned grid.

Every model is the appendix-B network of experiments/configs/sigma_vae/
(Fashion-MNIST, 28x28) trained for the same --steps with
sosvae_jax.train.train_and_evaluate, one workdir per model under --workdir
(a finished run is reused, not retrained). All ELBOs are under the same
Gaussian observation model on the test set, in nats per image:

* elbo_at_own_sigma: the model's ELBO with its own sigma (sqrt(beta / 2) for
  the beta-VAEs; the running-average sigma for the sigma-VAE);
* elbo_at_test_optimal_sigma: the same decoder means with the shared sigma
  that is optimal on the test set plugged in, sigma^2 = test MSE, i.e.
  -S/2 (log(2 pi MSE) + 1) - KL.

Run (CPU, about 2 minutes per 1000 steps and model on 2 cores):
  python -m experiments.beta_grid --workdir=runs/beta_grid --steps=2000
Smoke (seconds): python -m experiments.beta_grid --workdir=/tmp/bg --smoke

Writes WORKDIR/beta_grid.json and WORKDIR/beta_grid.md and prints the table.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from experiments import cli
from experiments.configs.sigma_vae import common as sigma_common
from sosvae_jax import metric_writers
from sosvae_jax import train
from sosvae_jax import workdir as workdir_lib

# Brackets the expected optimum on Fashion-MNIST (2 x MSE ~ 0.02-0.04) by two
# decades on either side.
DEFAULT_BETAS = (0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
SMOKE_BETAS = (0.01, 1.0)

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Root folder: one sub-folder per model.')
flags.DEFINE_integer('steps', None, 'Training steps of every model (default: 2000, '
                     'or the smoke config\'s with --smoke).', lower_bound=1)
flags.DEFINE_list('betas', None, 'Grid of beta (the paper\'s convention, loss = SSE + '
                  'beta KL); default: ' + ','.join(map(str, DEFAULT_BETAS)))
flags.DEFINE_integer('batch_size', None, 'Batch size of every model (default: the '
                     'appendix-B config\'s 128); smaller is faster on a CPU.', lower_bound=1)
flags.DEFINE_bool('smoke', False, 'Tiny networks and batches: a run of seconds.')
flags.DEFINE_integer('eval_examples', None, 'Test images for the ELBO (default 10000; '
                     'the smoke config\'s with --smoke).', lower_bound=1)


def model_config(likelihood: dict, steps: int, smoke: bool, eval_examples: int | None):
  """The appendix-B config with the given likelihood, trained for `steps`."""
  config = sigma_common.get_config(likelihood, 'smoke' if smoke else None)
  config.num_steps = steps
  if FLAGS.batch_size is not None:
    config.batch_size = FLAGS.batch_size
  config.eval_every_steps = steps
  config.checkpoint_every_steps = steps
  config.log_every_steps = min(config.log_every_steps, steps)
  if eval_examples:
    config.eval_examples = eval_examples
  return config


def beta_vae_likelihood(beta: float) -> dict:
  """Fixed sigma = sqrt(beta / 2): the beta-VAE with a valid ELBO."""
  return dict(name='gaussian_fixed_sigma', sigma=math.sqrt(beta / 2.0))


SIGMA_VAE_LIKELIHOOD = dict(name='gaussian_optimal_sigma', optimal_sigma_axes='shared',
                            optimal_sigma_stop_gradient=True, running_average_decay=0.99,
                            min_log_sigma=-6.0)


def gaussian_elbo(mse: float, variance: float, kl: float, num_dims: int) -> float:
  """Mean ELBO of N(mu, variance I) decoders given the mean per-element MSE.

  E log N(x; mu, s^2 I) = -S/2 log(2 pi s^2) - S mse / (2 s^2), minus the KL.
  """
  return (-0.5 * num_dims * math.log(2 * math.pi * variance)
          - 0.5 * num_dims * mse / variance - kl)


def variance_from_entropy(entropy: float, num_dims: int) -> float:
  """The shared sigma^2 of N(mu, sigma^2 I) with entropy S/2 log(2 pi e sigma^2)."""
  return math.exp(2.0 * entropy / num_dims) / (2 * math.pi * math.e)


def final_eval(workdir: str) -> dict[str, Any]:
  records = metric_writers.read_metrics(workdir, split='eval')
  if not records:
    raise RuntimeError(f'{workdir}/metrics.jsonl has no evaluation record.')
  return max(records, key=lambda r: r['step'])


def summarise(name: str, beta: float | None, variance: float, record: dict,
              num_dims: int) -> dict[str, Any]:
  """One table row from a run's last evaluation."""
  mse, kl = record['mse'], record['kl']
  return dict(
      model=name, beta=beta, sigma=math.sqrt(variance), effective_beta=2 * variance,
      elbo_at_own_sigma=record['elbo'],
      elbo_at_test_optimal_sigma=gaussian_elbo(mse, mse, kl, num_dims),
      kl=kl, mse=mse, step=record['step'])


def run_grid(root: str, betas: Sequence[float], steps: int, smoke: bool,
             eval_examples: int | None) -> dict[str, Any]:
  """Trains (or reuses) every model and returns the rows and the summary."""
  rows = []
  runs = [(f'beta_{b:g}', b, beta_vae_likelihood(b)) for b in betas]
  runs.append(('optimal_sigma_vae', None, SIGMA_VAE_LIKELIHOOD))
  for name, beta, likelihood in runs:
    config = model_config(likelihood, steps, smoke, eval_examples)
    num_dims = math.prod(config.data.image_shape)
    workdir = os.path.join(root, name)
    logging.info('Training %s for %d steps in %s', name, steps, workdir)
    train.train_and_evaluate(config, workdir)
    record = final_eval(workdir)
    variance = (beta / 2.0 if beta is not None
                else variance_from_entropy(record['entropy'], num_dims))
    rows.append(summarise(name, beta, variance, record, num_dims))
  grid = [r for r in rows if r['beta'] is not None]
  best = max(grid, key=lambda r: r['elbo_at_own_sigma'])
  sigma_vae = rows[-1]
  return dict(steps=steps, smoke=smoke, rows=rows,
              best_beta=best['beta'], best_beta_elbo=best['elbo_at_own_sigma'],
              sigma_vae_effective_beta=sigma_vae['effective_beta'],
              sigma_vae_elbo=sigma_vae['elbo_at_own_sigma'])


def markdown(result: dict[str, Any]) -> str:
  lines = [
      f'Fashion-MNIST test set, {result["steps"]} steps per model'
      f'{" (smoke)" if result["smoke"] else ""}; ELBOs in nats per image.', '',
      '| model | beta | sigma | effective beta = 2 sigma^2 | ELBO at own sigma | '
      'ELBO at test-optimal sigma | KL | MSE |',
      '|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    beta = f'{r["beta"]:g}' if r['beta'] is not None else '(learned)'
    lines.append(f'| {r["model"]} | {beta} | {r["sigma"]:.4g} | {r["effective_beta"]:.4g} | '
                 f'{r["elbo_at_own_sigma"]:.1f} | {r["elbo_at_test_optimal_sigma"]:.1f} | '
                 f'{r["kl"]:.2f} | {r["mse"]:.5f} |')
  lines += ['', f'Best beta of the grid (highest ELBO at its own sigma): '
            f'{result["best_beta"]:g} (ELBO {result["best_beta_elbo"]:.1f}).',
            f'Optimal sigma-VAE: effective beta {result["sigma_vae_effective_beta"]:.4g} '
            f'(ELBO {result["sigma_vae_elbo"]:.1f}).']
  return '\n'.join(lines) + '\n'


def _betas() -> list[float]:
  """--betas as positive numbers (a user mistake ends in exit code 2)."""
  if not FLAGS.betas:
    return list(SMOKE_BETAS if FLAGS.smoke else DEFAULT_BETAS)
  try:
    betas = [float(b) for b in FLAGS.betas]
  except ValueError as e:
    raise app.UsageError(f'--betas={",".join(FLAGS.betas)}: {e}; give numbers, e.g. '
                         '--betas=0.001,0.01,0.1.', exitcode=cli.USER_ERROR) from e
  bad = [b for b in betas if not b > 0]
  if bad:
    raise app.UsageError(f'--betas={FLAGS.betas}: every beta must be > 0 '
                         f'(sigma = sqrt(beta / 2)); got {bad}.', exitcode=cli.USER_ERROR)
  return betas


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}', exitcode=cli.USER_ERROR)
  if not FLAGS.workdir:
    raise app.UsageError('--workdir is required.', exitcode=cli.USER_ERROR)
  try:
    workdir_lib.check_workdir_path(FLAGS.workdir)
  except workdir_lib.WorkdirError as e:
    cli.fail(str(e))
  betas = _betas()
  steps = FLAGS.steps if FLAGS.steps is not None else (
      sigma_common.get_config(SIGMA_VAE_LIKELIHOOD, 'smoke').num_steps
      if FLAGS.smoke else 2000)
  root = os.path.abspath(FLAGS.workdir)
  os.makedirs(root, exist_ok=True)
  result = run_grid(root, betas, steps, FLAGS.smoke, FLAGS.eval_examples)
  table = markdown(result)
  with open(os.path.join(root, 'beta_grid.json'), 'w') as f:
    json.dump(result, f, indent=2)
  with open(os.path.join(root, 'beta_grid.md'), 'w') as f:
    f.write(table)
  print(table)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
