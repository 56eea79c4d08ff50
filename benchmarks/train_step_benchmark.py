"""Train-step speed, memory and input-pipeline wait of every likelihood.

  python benchmarks/train_step_benchmark.py                 # full (GPU)
  python benchmarks/train_step_benchmark.py --quick         # CPU, minutes

Every likelihood of `models.LIKELIHOODS` gets the same encoder and
decoder trunk: `common.base_config()` with only `likelihood.name` changed
(rank 25 for the low-rank normal), at each `--image_shapes` size. The step is
the one `train_and_evaluate` runs: `train.train_step` jitted with the data
sharding over all devices and the state donated. For each image shape:

* images/s: the steps of all likelihoods are interleaved round by round
  (each round times one step of every likelihood, block_until_ready), so
  a burst of load from other processes slows all of them alike; times are
  medians, and the ratio to the beta-VAE ('diagonal_gaussian', the same
  network with a per-pixel Gaussian) is the median of within-round ratios;
* peak memory of the step: argument + output + temp bytes of the compiled
  step's `memory_analysis()` (all platforms); on GPUs also the device's
  `peak_bytes_in_use` after the likelihood's steps (a running maximum over
  the process);
* input-pipeline wait (28x28x1 only: real Fashion-MNIST through the grain
  pipeline of the run loop): time blocked in `next(batches)` as a share of
  the wall time of `--pipeline_steps` steps, for the beta-VAE and SOS-VAE;
* per-part breakdown (`--breakdown`, beta-VAE and SOS-VAE): pieces of the
  step compiled on their own and timed in the same rounds as the steps, on
  the step's own parameters and image batch:
    trunk        encoder + reparameterisation + decoder trunk, forward and
                 backward (a fixed random cotangent on the trunk features);
    heads        the likelihood's heads from the trunk features (and z) to
                 the distribution's parameters, forward and backward (to
                 their weights and to the features);
    factor head  the factor head alone (with its factor decoder where
                 likelihood.factor_trunk is set), likewise;
    lik fwd      log_prob + entropy of the batch from the parameters (one
                 shared factorisation, as in the step);
    lik fwd+bwd  the same with its gradient w.r.t. the parameters the step
                 trains (mean and P; d too when it is learned);
    rest         step - trunk - heads - lik fwd+bwd: KL, Lagrangian,
                 optimizer and whatever XLA fuses differently in the whole
                 step (parts compiled alone do not add up exactly).
  For the beta-VAE the density is elementwise and stays inside `rest`.

`--factor_trunk=16,32` gives the SOS-VAE its own factor decoder
(likelihood.factor_trunk), `--factor_basis=128` its basis decoder
(likelihood.factor_basis), to compare the step with and without them.

64x64x3 batches are random uint8 (no 64x64 dataset is on these machines);
speed does not depend on pixel values. A likelihood that fails to build or
compile is skipped with its error printed. Writes everything to --out.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# Run from a checkout without installing: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import cli
from experiments.configs import common
from sosvae_jax import input_pipeline
from sosvae_jax import objectives
from sosvae_jax.models import likelihoods
from sosvae_jax.models import vae
from sosvae_jax import sharding
from sosvae_jax import train
from sosvae_jax import train_state

FLAGS = flags.FLAGS
flags.DEFINE_list('likelihoods', None, 'Likelihood names (default: every registered one).')
flags.DEFINE_list('image_shapes', ['28x28x1', '64x64x3'], 'HxWxC sizes.')
flags.DEFINE_integer('batch_size', 64, 'Global batch per step.')
flags.DEFINE_integer('rank', 25, 'config.likelihood.rank (low-rank normal).')
flags.DEFINE_integer('repeats', 20, 'Timed rounds (one step of every likelihood each).')
flags.DEFINE_integer('pipeline_steps', 100, 'Steps of the input-pipeline wait measurement.')
flags.DEFINE_bool('breakdown', True, 'Time the parts of the beta-VAE and SOS-VAE steps.')
flags.DEFINE_list('factor_trunk', None, 'likelihood.factor_trunk of the SOS-VAE (e.g. 16,32); '
                  'default: its config default.')
flags.DEFINE_integer('factor_basis', None, 'likelihood.factor_basis of the SOS-VAE (e.g. '
                     '128: P from a learned basis, experiments/configs/sos_basis.py).')
flags.DEFINE_bool('quick', False, 'CPU settings: --repeats=5 --pipeline_steps=30, and at '
                  '64x64x3 only the two likelihoods of the target.')
cli.DEFINE_path('out', None, 'JSON output; default '
                'benchmarks/results/train_step_<platform>.json.')

BASELINE = 'diagonal_gaussian'  # the beta-VAE of sosvae_tmlr2022.txt section 4.1
SOS_VAE = 'lowrank_gaussian'
TARGET_MAX_RATIO = 1.3  # SOS-VAE step / beta-VAE step, rank 25
TARGET_MAX_WAIT_SHARE = 0.05


def device_description() -> dict[str, str | int]:
  device = jax.devices()[0]
  return {'platform': device.platform, 'device_kind': device.device_kind,
          'device_count': jax.device_count(), 'jax_version': jax.__version__,
          'host': platform.platform(), 'cpu_count': os.cpu_count() or 0}


def make_config(name: str, image_shape: tuple[int, int, int], batch_size: int, rank: int):
  config = common.base_config()
  config.likelihood = ml_collections.ConfigDict(likelihoods.likelihood_section(
      name, config.likelihood, image_shape[-1]))
  if 'rank' in config.likelihood:
    config.likelihood.rank = rank
  if name == SOS_VAE and FLAGS.factor_trunk:
    config.likelihood.factor_trunk = tuple(int(c) for c in FLAGS.factor_trunk)
  if name == SOS_VAE and FLAGS.factor_basis:
    config.likelihood.factor_basis = FLAGS.factor_basis
  config.data.image_shape = image_shape
  config.batch_size = batch_size
  return config


def build_step(config, mesh):
  """(jitted step as in train_and_evaluate, initial state on the mesh, model)."""
  with config.unlocked():
    config.pretrain_steps = 0  # time the step that trains every head
  run = train.setup(config)
  step = jax.jit(run.step,
                 in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh), donate_argnums=0)
  return step, jax.device_put(run.state, sharding.replicated(mesh)), run.parts.model


# ----------------------------------------------------------------------------
# Per-part breakdown: pieces of the step, each compiled on its own.
# ----------------------------------------------------------------------------
def _trunk_out(module, x, eps):
  mean, log_var = module.encode(x)
  z = mean + jnp.exp(0.5 * log_var) * eps  # as VAE.__call__, with fixed noise
  return module.trunk(z), z


def _head_out(module, features, z, x):
  latent = {'z': z} if vae.reads_latent(module.likelihood) else {}
  return module.likelihood(features, x, train=True, **latent)


def _parameters(dist) -> dict:
  """The distribution's parameters that its heads produce."""
  if hasattr(dist, 'cov_factor'):
    return {'loc': dist.loc, 'cov_factor': dist.cov_factor, 'cov_diag': dist.cov_diag}
  return {'mean': dist.mean(), 'variance': dist.variance()}


def _cotangent(tree, seed: int):
  """A fixed random cotangent shaped like `tree`, drawn once, outside the timing."""
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [jax.random.normal(k, leaf.shape, leaf.dtype)
                                      for leaf, k in zip(leaves, keys)])


def _pairing(tree, cotangent):
  """<tree, cotangent>: a scalar whose gradient is the step's kind of backward."""
  return sum(jnp.vdot(a, c) for a, c in zip(jax.tree.leaves(tree), jax.tree.leaves(cotangent)))


def part_calls(model, variables, batch) -> dict:
  """name -> call() of each part of the step (module docstring), compiled."""
  x = input_pipeline.preprocess(jnp.asarray(batch))  # (B, H, W, C)
  latent = jax.eval_shape(lambda v: model.apply(v, x, method=lambda m, x: m.encode(x)),
                          variables)[0]
  eps = jax.random.normal(jax.random.key(1), latent.shape, latent.dtype)
  features, z = jax.jit(lambda v: model.apply(v, x, eps, method=_trunk_out))(variables)
  dist = jax.jit(lambda v: model.apply(v, features, z, x, method=_head_out))(variables)
  params = variables['params']
  with_params = lambda p: {**variables, 'params': p}
  trunk = lambda p, c: _pairing(model.apply(with_params(p), x, eps, method=_trunk_out)[0], c)
  # Heads: gradients w.r.t. their weights and the trunk features, as in the step.
  heads = lambda p, f, c: _pairing(_parameters(
      model.apply(with_params(p), f, z, x, method=_head_out)), c)
  parts = {'trunk': (jax.value_and_grad(trunk), (params, _cotangent(features, 2))),
           'heads': (jax.value_and_grad(heads, argnums=(0, 1)),
                     (params, features, _cotangent(_parameters(dist), 3)))}
  if hasattr(dist, 'cov_factor'):
    factor = lambda p, f, c: _pairing(
        model.apply(with_params(p), f, z, x, method=_head_out).cov_factor, c)
    leaves, treedef = jax.tree.flatten(dist)  # (loc, cov_factor, cov_diag)
    value = objectives.to_event(dist, x)

    def density(*leaves):
      log_prob, entropy = objectives.log_prob_and_entropy(
          jax.tree.unflatten(treedef, leaves), value)
      return jnp.sum(log_prob) + 0.5 * jnp.sum(entropy)  # both cotangents live

    # d is a parameter only where a head predicts it (not SOS-VAE's fixed D).
    trained = (0, 1, 2) if 'diag' in params['likelihood'] else (0, 1)
    parts.update({
        'factor head': (jax.value_and_grad(factor, argnums=(0, 1)),
                        (params, features, _cotangent(dist.cov_factor, 4))),
        'lik fwd': (density, tuple(leaves)),
        'lik fwd+bwd': (jax.value_and_grad(density, argnums=trained), tuple(leaves))})
  calls = {}
  for name, (fn, args) in parts.items():
    call = functools.partial(jax.jit(fn), *args)
    jax.block_until_ready(call())  # compile and warm up
    calls[name] = call
  return calls


def breakdown_ms(step_times: list[float], part_times: dict[str, list[float]]) -> dict:
  """Median ms of every part, plus the derived lik bwd and rest."""
  ms = {k: 1e3 * statistics.median(v) for k, v in part_times.items()}
  ms['step'] = 1e3 * statistics.median(step_times)
  if 'lik fwd+bwd' in ms:
    ms['lik bwd'] = ms['lik fwd+bwd'] - ms['lik fwd']
  ms['rest'] = ms['step'] - ms['trunk'] - ms['heads'] - ms.get('lik fwd+bwd', 0.0)
  return ms


def _memory(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
  except Exception as e:  # pylint: disable=broad-except  # backend-specific
    return {'error': type(e).__name__}
  if m is None:
    return {'error': 'unavailable'}
  out = {f: int(getattr(m, f)) for f in ('argument_size_in_bytes', 'output_size_in_bytes',
                                          'temp_size_in_bytes', 'alias_size_in_bytes')
         if hasattr(m, f)}
  # Donated arguments alias outputs: count those bytes once.
  out['peak_estimate_bytes'] = (out.get('argument_size_in_bytes', 0) +
                                out.get('output_size_in_bytes', 0) +
                                out.get('temp_size_in_bytes', 0) -
                                out.get('alias_size_in_bytes', 0))
  return out


def _device_peak() -> int | None:
  stats = jax.devices()[0].memory_stats()  # None on CPU
  return int(stats['peak_bytes_in_use']) if stats and 'peak_bytes_in_use' in stats else None


class Case:
  """One likelihood at one image shape: compiled step, state, a batch."""

  def __init__(self, name, config, mesh, batch, breakdown=False):
    self.name = name
    step, self.state, model = build_step(config, mesh)
    # Parts read a copy of the first parameters: the step donates its state.
    variables = jax.tree.map(jnp.copy, train_state.model_variables(
        self.state.params, self.state.model_state))
    self.parts = part_calls(model, variables, batch) if breakdown else {}
    self.part_times: dict[str, list[float]] = {k: [] for k in self.parts}
    self.batch = sharding.global_batch(batch, mesh)
    t0 = time.perf_counter()
    self.step = step.lower(self.state, self.batch).compile()
    self.compile_s = time.perf_counter() - t0
    self.memory = _memory(self.step)
    self.run_once()  # warm-up
    self.times: list[float] = []
    self.note = ''

  def run_once(self) -> float:
    t0 = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    return time.perf_counter() - t0

  def run_parts(self) -> None:
    for name, call in self.parts.items():
      t0 = time.perf_counter()
      jax.block_until_ready(call())
      self.part_times[name].append(time.perf_counter() - t0)


def measure_shape(image_shape, names, mesh, repeats) -> dict:
  """Interleaved step times, ratios to the beta-VAE, memory, for one size."""
  rng = np.random.default_rng(0)
  batch = rng.integers(0, 256, (FLAGS.batch_size,) + image_shape, dtype=np.uint8)
  cases, skipped = {}, {}
  for name in names:
    config = make_config(name, image_shape, FLAGS.batch_size, FLAGS.rank)
    breakdown = FLAGS.breakdown and name in (BASELINE, SOS_VAE)
    try:
      try:
        cases[name] = Case(name, config, mesh, batch, breakdown)
      except ValueError as e:
        if 'entropy constraint' not in str(e):
          raise
        # No closed-form entropy: the same step without that constraint.
        config.constraints.entropy.enabled = False
        cases[name] = Case(name, config, mesh, batch, breakdown)
        cases[name].note = 'entropy constraint off (no closed-form entropy)'
        print(f'  {name}: {cases[name].note}', flush=True)
    except Exception as e:  # pylint: disable=broad-except  # report and go on
      skipped[name] = f'{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}'
      print(f'  {name}: skipped ({skipped[name]})', flush=True)
      continue
    print(f'  {name}: compiled in {cases[name].compile_s:.1f} s', flush=True)
  for _ in range(repeats):
    for case in cases.values():
      case.times.append(case.run_once())
      case.run_parts()
  rows = {}
  base = cases.get(BASELINE)
  for name, case in cases.items():
    median = statistics.median(case.times)
    rows[name] = {
        'median_step_s': median, 'min_step_s': min(case.times), 'times_s': case.times,
        'images_per_s': FLAGS.batch_size / median, 'compile_s': case.compile_s,
        'memory_analysis': case.memory, 'device_peak_bytes_so_far': _device_peak(),
        'note': case.note,
        'step_over_beta_vae': (statistics.median(
            np.divide(case.times, base.times).tolist()) if base else None)}
    if case.parts:
      rows[name]['parts_ms'] = breakdown_ms(case.times, case.part_times)
      rows[name]['part_times_s'] = case.part_times
  return {'image_shape': list(image_shape), 'results': rows, 'skipped': skipped}


def pipeline_wait(names, mesh, steps) -> dict:
  """Share of step time spent waiting for the real Fashion-MNIST pipeline."""
  out = {}
  for name in names:
    config = make_config(name, (28, 28, 1), FLAGS.batch_size, FLAGS.rank)
    try:
      source = input_pipeline.get_source(config.data, 'train')
    except input_pipeline.DataNotFoundError as e:
      return {'skipped': str(e).splitlines()[0]}
    step, state, _ = build_step(config, mesh)
    batches = input_pipeline.train_batches(
        source, FLAGS.batch_size, config.seed, num_threads=config.data.num_threads)
    state, metrics = step(state, sharding.global_batch(next(batches), mesh))  # compile
    jax.block_until_ready(metrics)
    wait = 0.0
    t_start = time.perf_counter()
    for _ in range(steps):  # as the run loop: dispatch is asynchronous
      t0 = time.perf_counter()
      local = next(batches)
      wait += time.perf_counter() - t0
      state, metrics = step(state, sharding.global_batch(local, mesh))
    jax.block_until_ready((state, metrics))
    total = time.perf_counter() - t_start
    out[name] = {'wait_s': wait, 'total_s': total, 'wait_share': wait / total,
                 'steps': steps, 'num_threads': config.data.num_threads}
    print(f'  {name}: input wait {wait:.3f} s of {total:.2f} s '
          f'({100 * wait / total:.2f}% of step time)', flush=True)
  return out


def _parse_shape(text: str) -> tuple[int, int, int]:
  h, w, c = (int(v) for v in text.lower().split('x'))
  return (h, w, c)


def _mb(row) -> str:
  mem = row['memory_analysis']
  return f'{mem["peak_estimate_bytes"] / 2**20:.1f}' if 'peak_estimate_bytes' in mem else '-'


def format_table(shape_result: dict) -> str:
  lines = ['| likelihood | step ms | images/s | step / beta-VAE | memory MB (args+out+temp) |',
           '|---|---|---|---|---|']
  for name, r in shape_result['results'].items():
    ratio = '-' if r['step_over_beta_vae'] is None else f'{r["step_over_beta_vae"]:.2f}'
    lines.append(f'| {name} | {1e3 * r["median_step_s"]:.1f} | {r["images_per_s"]:.0f} | '
                 f'{ratio} | {_mb(r)} |')
  for name, why in shape_result['skipped'].items():
    lines.append(f'| {name} | skipped: {why[:120]} | | | |')
  parts = ['trunk', 'heads', 'factor head', 'lik fwd', 'lik bwd', 'rest']
  broken = {n: r['parts_ms'] for n, r in shape_result['results'].items() if 'parts_ms' in r}
  if broken:
    lines += ['', 'per-part median ms (parts compiled alone; factor head is inside heads; '
              'lik bwd = lik fwd+bwd - lik fwd; rest = step - trunk - heads - lik fwd+bwd):',
              '', '| likelihood | step | ' + ' | '.join(parts) + ' |',
              '|---|---|' + '---|' * len(parts)]
    for name, ms in broken.items():
      lines.append(f'| {name} | {ms["step"]:.1f} | '
                   + ' | '.join(f'{ms[p]:.1f}' if p in ms else '-' for p in parts) + ' |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  repeats = 5 if FLAGS.quick and FLAGS['repeats'].using_default_value else FLAGS.repeats
  pipeline_steps = (30 if FLAGS.quick and FLAGS['pipeline_steps'].using_default_value
                    else FLAGS.pipeline_steps)
  if FLAGS.factor_trunk and FLAGS.factor_basis:
    raise app.UsageError('Pass --factor_trunk or --factor_basis, not both: P comes '
                         'from one factor decoder.')
  names = FLAGS.likelihoods or list(likelihoods.LIKELIHOODS)
  unknown = sorted(set(names) - set(likelihoods.LIKELIHOODS))
  if unknown:
    raise app.UsageError(f'Unknown --likelihoods {unknown}; registered: '
                         f'{sorted(likelihoods.LIKELIHOODS)}.')
  device = device_description()
  mesh = sharding.make_mesh()
  sharding.check_batch_size(FLAGS.batch_size, mesh)
  print(f'device: {device["platform"]} / {device["device_kind"]} '
        f'({device["device_count"]} device(s)), jax {device["jax_version"]}')
  print(f'batch {FLAGS.batch_size}, rank {FLAGS.rank}, repeats {repeats}; memory from the '
        'compiled step\'s memory_analysis()' + (
            ' and device peak_bytes_in_use' if _device_peak() is not None else
            ' (device memory_stats() unavailable on this platform)'))
  shapes = {}
  for text in FLAGS.image_shapes:
    shape = _parse_shape(text)
    shape_names = names
    if FLAGS.quick and shape != (28, 28, 1):
      shape_names = [n for n in names if n in (BASELINE, SOS_VAE)]
    print(f'{text}: {len(shape_names)} likelihoods', flush=True)
    shapes[text] = measure_shape(shape, shape_names, mesh, repeats)
  print('input pipeline (real Fashion-MNIST, grain):', flush=True)
  wait = pipeline_wait([n for n in (BASELINE, SOS_VAE) if n in names], mesh, pipeline_steps)

  verdicts = []
  for text, result in shapes.items():
    print(f'\n{text}, batch {FLAGS.batch_size}: median step time; ratios are medians of '
          'within-round ratios')
    print(format_table(result))
    sos = result['results'].get(SOS_VAE)
    if sos and sos['step_over_beta_vae'] is not None:
      ratio = sos['step_over_beta_vae']
      verdicts.append(f'target SOS-VAE / beta-VAE step <= {TARGET_MAX_RATIO} at {text}, '
                      f'R={FLAGS.rank}: {ratio:.2f} -> '
                      f'{"met" if ratio <= TARGET_MAX_RATIO else "NOT met"}')
  for name, w in wait.items():
    if isinstance(w, dict):
      verdicts.append(f'target input wait < {100 * TARGET_MAX_WAIT_SHARE:.0f}% of step time '
                      f'({name}, 28x28x1): {100 * w["wait_share"]:.2f}% -> '
                      f'{"met" if w["wait_share"] < TARGET_MAX_WAIT_SHARE else "NOT met"}')
  print()
  for line in verdicts:
    print(line)

  out = FLAGS.out or os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results',
                                  f'train_step_{device["platform"]}.json')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, 'w') as f:
    json.dump({'date_utc': datetime.datetime.now(datetime.timezone.utc).isoformat(),
               'device': device,
               'flags': {'likelihoods': names, 'image_shapes': list(FLAGS.image_shapes),
                         'batch_size': FLAGS.batch_size, 'rank': FLAGS.rank,
                         'repeats': repeats, 'pipeline_steps': pipeline_steps,
                         'quick': FLAGS.quick, 'breakdown': FLAGS.breakdown,
                         'factor_trunk': FLAGS.factor_trunk,
                         'factor_basis': FLAGS.factor_basis},
               'shapes': shapes, 'input_pipeline': wait, 'targets': verdicts,
               'tables': {k: format_table(v) for k, v in shapes.items()}}, f, indent=2)
  print(f'wrote {out}')


if __name__ == '__main__':
  app.run(main)
